#!/usr/bin/env bash
# Set up a fresh machine and run the test suite (the README's test command).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v dciodvfy >/dev/null || ! command -v dcm2niix >/dev/null; then
    apt-get update -qq && apt-get install -y -qq dicom3tools dcm2niix >/dev/null
fi
# a torch already here (a CUDA build, say) is kept; else PyTorch's CPU-only build, not PyPI's CUDA one
if ! python -c "import torch" 2>/dev/null; then
    python -m pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
        || python -m pip install -q torch==2.13.0  # an offline mirror of PyPI
fi
python -m pip install -q -e ".[test]"
python -m pytest "$@"
