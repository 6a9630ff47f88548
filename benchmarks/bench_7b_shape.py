"""The released model's size on a CPU box (issue 32): a training checkpoint of Llama-2-7B's exact shapes taken
through ``openrag merge``, ``openrag eval --limit 2`` and ``openrag ask``, with the peak memory and the wall time
of each step.

    python benchmarks/bench_7b_shape.py [--shape 7b|small|tiny] [--workdir DIR] [--max_new_tokens 16] \\
        [--output FILE.json] [--keep]

The build writes, with seeded random weights, what a user who trained on GPUs brings to the CPU box:

* ``base/``: the dense base, bf16, in safetensors shards of at most 2 GB with their index (Llama-2-7B: hidden 4096,
  FFN 11008, 32 layers, 32 heads, vocabulary 32,000; 6.74B parameters, 13.5 GB), and a word-level tokenizer of
  exactly that vocabulary (the words of ``examples/``, then filler tokens);
* ``checkpoint/``: an ``openrag train`` adapter checkpoint over it with the released layout's experts (8 x
  adapter_dim 512, top-2, in every layer: 1.07B parameters, float32 as training saves them), the reflection tokens'
  embedding rows, and the released recipe's LoRA (r 64 on q, k, v, o, gate, up, down, embed_tokens and lm_head).

Then ``openrag merge`` (bf16, the base's dtype), ``openrag eval --task hotpotqa --limit 2`` on
``examples/hotpotqa_dev100.jsonl`` and ``openrag ask`` one question over ``examples/passages.json``, both on the merged
folder. Each step (the build too) runs in a process of its own, so that its peak resident memory (``ru_maxrss`` of
that child, from ``wait4``) is its own; time is wall time, imports included. Random weights answer junk until
``--max_new_tokens``: the work is that of real answers of that length.

``--shape small`` (0.22B) and ``--shape tiny`` run the same steps in seconds, as a smoke test of the script.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's openrag, in the build's process too (the steps run from ROOT)
EXAMPLES = ROOT / "examples"
SHARD_BYTES = 2 * 1024**3
QUESTION = "What government position was held by the woman who portrayed Corliss Archer in the film Kiss and Tell?"


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    vocab: int
    experts: int
    adapter_dim: int
    lora_r: int


SHAPES = {
    "7b": Shape(4096, 11008, 32, 32, 32000, 8, 512, 64),  # Llama-2-7B with the released 8 x 135M experts and LoRA
    "small": Shape(1024, 2816, 16, 16, 8000, 8, 128, 16),  # 0.22B, in the 7B's proportions (the vocabulary small)
    "tiny": Shape(64, 172, 2, 4, 2000, 8, 16, 4),
}


# --- the build (in a child process) ----------------------------------------------------------------------------


def llama_config(shape: Shape):
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=shape.hidden, intermediate_size=shape.intermediate, num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads, num_key_value_heads=shape.heads, vocab_size=shape.vocab,
        max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
        dtype="bfloat16",
    )  # fmt: skip


def word_tokenizer(vocab_size: int):
    """A word-level tokenizer of exactly ``vocab_size`` entries: the words of examples/, most frequent first, then
    filler tokens (Llama-2's 32,000 rows without its SentencePiece model)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    text = " ".join(p.read_text() for p in sorted(EXAMPLES.glob("*.json*")))
    words = [w for w, _ in Counter(re.findall(r"\w+|[^\w\s]", text)).most_common(vocab_size - 3)]
    words += [f"<filler_{i}>" for i in range(vocab_size - 3 - len(words))]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def random_tensor(shape, dtype: torch.dtype, generator: torch.Generator, ones: bool = False) -> torch.Tensor:
    if ones:  # RMSNorm weights
        return torch.ones(shape, dtype=dtype)
    return (torch.randn(shape, generator=generator) * 0.02).to(dtype)


def write_sharded(shapes: dict[str, tuple], folder: Path, dtype: torch.dtype, generator: torch.Generator) -> None:
    """Random tensors of ``shapes`` as ``model-*.safetensors`` shards of at most SHARD_BYTES and their index; only
    one shard is in memory at a time."""
    from safetensors.torch import save_file

    shards: list[list[str]] = [[]]
    size = 0
    for key, shape in shapes.items():
        nbytes = torch.Size(shape).numel() * dtype.itemsize
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes
    weight_map = {}
    for n, keys in enumerate(shards, start=1):
        name = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: random_tensor(shapes[k], dtype, generator, ones=k.endswith("norm.weight")) for k in keys},
                  str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in keys})
    total = sum(torch.Size(s).numel() for s in shapes.values()) * dtype.itemsize
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def build(shape: Shape, work: Path) -> None:
    """``work/base`` (dense, bf16) and ``work/checkpoint`` (adapter layout: experts, new token rows, LoRA)."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM

    from openrag.model.experts import MoEConfig, inject_moe
    from openrag.model.layouts import ADAPTER_LORA_DIR, ADAPTER_WEIGHTS, NEW_EMBED_KEY, NEW_LM_HEAD_KEY, AdapterConfig, moe_state_dict
    from openrag.model.reflection import add_reflection_tokens
    from openrag.training.args import RELEASED_LORA_TARGETS

    generator = torch.Generator().manual_seed(0)
    base, checkpoint = work / "base", work / "checkpoint"
    base.mkdir(parents=True)
    config = llama_config(shape)
    tokenizer = word_tokenizer(shape.vocab)
    with torch.device("meta"):  # names and shapes only
        model = LlamaForCausalLM(config)
    write_sharded({k: tuple(v.shape) for k, v in model.state_dict().items()}, base, torch.bfloat16, generator)
    config.save_pretrained(base)
    tokenizer.save_pretrained(base)

    # The trained model, as training builds it (reflection tokens, experts, then LoRA), still on the meta device.
    add_reflection_tokens(None, tokenizer)
    with torch.device("meta"):
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        moe = MoEConfig(shape.experts, 2, shape.adapter_dim, 0.25)
        inject_moe(model, moe.num_experts, moe.topk, moe.adapter_dim, moe.moe_scaling)
        lora = LoraConfig(r=shape.lora_r, lora_alpha=16, lora_dropout=0.1, target_modules=RELEASED_LORA_TARGETS.split(","),
                          bias="none", task_type="CAUSAL_LM")
        peft_model = get_peft_model(model, lora)
    n_new = len(tokenizer) - shape.vocab
    tensors = {k: random_tensor(tuple(v.shape), torch.float32, generator) for k, v in moe_state_dict(model).items()}
    tensors |= {key: random_tensor((n_new, shape.hidden), torch.float32, generator) for key in (NEW_EMBED_KEY, NEW_LM_HEAD_KEY)}
    checkpoint.mkdir()
    save_file(tensors, str(checkpoint / ADAPTER_WEIGHTS))
    del tensors
    lora_shapes = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(peft_model, save_embedding_layers=False).items()}
    lora_tensors = {k: random_tensor(shape, torch.float32, generator) for k, shape in lora_shapes.items()}  # as training saves
    lora.base_model_name_or_path = str(base)
    lora.save_pretrained(str(checkpoint / ADAPTER_LORA_DIR))
    save_file(lora_tensors, str(checkpoint / ADAPTER_LORA_DIR / "adapter_model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(checkpoint)
    AdapterConfig(base_model=str(base), num_base_tokens=shape.vocab, moe=moe.to_dict(), lora=True,
                  extra={"prompt_format": "training"}).write(checkpoint)


# --- the steps, each in a process of its own ----------------------------------------------------------------------


def measured(name: str, command: list[str], work: Path) -> dict:
    """Run ``command``: its wall time, its peak resident memory (its own ``ru_maxrss``, from wait4) and its peak
    anonymous memory (RssAnon, sampled every 20 ms). Resident memory counts the pages of files it maps too (a
    checkpoint's safetensors), which the kernel can drop; anonymous memory is what it must have. SystemExit with
    its log if it fails."""
    log_path = work / f"{name}.log"
    start, peak_anon = time.perf_counter(), 0
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            peak_anon = max(peak_anon, anonymous_kb(process.pid))
            time.sleep(0.02)
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{name} exited with {code}:\n{log_path.read_text()[-4000:]}")
    result = {"step": name, "wall_s": round(seconds, 1), "peak_rss_gb": round(usage.ru_maxrss / 1024**2, 2),
              "peak_anon_gb": round(peak_anon / 1024**2, 2)}
    print(f"{name:>6}: {result['wall_s']:8.1f} s  peak RSS {result['peak_rss_gb']:6.2f} GB  peak anonymous "
          f"{result['peak_anon_gb']:6.2f} GB", flush=True)
    return result


def anonymous_kb(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # it has just exited
        return 0
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("RssAnon:")), 0)


def answered(work: Path) -> dict:
    """What the eval and ask steps produced: the eval's rows (question and prediction) and the end of ask's output,
    the proof that each step answered and did not just load."""
    log = (work / "ask.log").read_text()
    ask = json.loads(log[log.index("{"):])  # --json: the answer object, after any log lines
    rows = [json.loads(line) for line in (work / "eval" / "hotpotqa.jsonl").read_text().splitlines() if line.strip()]
    return {"eval_rows": [{"question": r["question"], "prediction": r["prediction"]} for r in rows],
            "ask": {"question": QUESTION, "answer": ask["text"], "retrieved": ask["retrieved"]}}


def folder_gb(folder: Path, pattern: str = "**/*.safetensors") -> float:
    return round(sum(p.stat().st_size for p in folder.glob(pattern)) / 1024**3, 2)


def machine() -> dict:
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return {"cores": os.cpu_count(), "mem_total_gb": round(int(meminfo["MemTotal"].split()[0]) / 1024**2, 1),
            "mem_available_gb_at_start": round(int(meminfo["MemAvailable"].split()[0]) / 1024**2, 1),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M %Z")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="7b", choices=sorted(SHAPES))
    parser.add_argument("--workdir", default=None, help="where the checkpoints go (default: a new temporary folder; "
                        "the 7B shape needs about 35 GB of disk)")
    parser.add_argument("--max_new_tokens", type=int, default=16)
    parser.add_argument("--output", default=None, help="also write the report here (JSON)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints")
    parser.add_argument("--build_only", action="store_true", help=argparse.SUPPRESS)  # the build's own process
    args = parser.parse_args()
    shape = SHAPES[args.shape]
    if args.build_only:
        build(shape, Path(args.workdir))
        return

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_7b_shape."))
    work.mkdir(parents=True, exist_ok=True)
    if any(work.iterdir()):
        raise SystemExit(f"--workdir {work} is not empty; give a new folder")
    report = {"shape": {"name": args.shape, **asdict(shape)}, "max_new_tokens": args.max_new_tokens, "machine": machine()}
    openrag = [sys.executable, "-m", "openrag"]
    merged, tokens = work / "merged", ["--max_new_tokens", str(args.max_new_tokens), "--device", "cpu"]
    steps = {
        "build": [sys.executable, __file__, "--shape", args.shape, "--workdir", str(work), "--build_only"],
        "merge": [*openrag, "merge", "--model_path", str(work / "checkpoint"), "--output_dir", str(merged)],
        "eval": [*openrag, "eval", "--task", "hotpotqa", "--dataset", str(EXAMPLES / "hotpotqa_dev100.jsonl"), "--limit", "2",
                 "--model_name", str(merged), "--output_file", str(work / "eval" / "hotpotqa.jsonl"), "--no_progress", *tokens],
        "ask": [*openrag, "ask", QUESTION, "--passages", str(EXAMPLES / "passages.json"), "--model_name", str(merged), "--json", *tokens],
    }
    try:
        report["steps"] = [measured(name, command, work) for name, command in steps.items()]
        report["disk_gb"] = {"base": folder_gb(work / "base"), "checkpoint": folder_gb(work / "checkpoint"),
                             "merged": folder_gb(merged), "merged_largest_file": max(
                                 round(p.stat().st_size / 1024**3, 2) for p in merged.glob("*.safetensors"))}
        report["answered"] = answered(work)
        report["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
