#!/usr/bin/env bash
# The GPU speed table in one command: the network at 256x256 and 512x512 in fp32, bf16 and fp16
# autocast and as a bf16-cast model, against the published computation in the same run (slices/s,
# peak memory, fidelity against fp32), then `amir restore` of a 300x512x512 CT in fp32 and bf16.
# About 3 minutes on one H100 after start-up. JSON lines and the printed tables go to DIR
# (default benchmarks/results); extra arguments go to network_speed.py (for example --compile).
#
#     bash benchmarks/gpu_table.sh [DIR] [network_speed.py options]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-benchmarks/results}
shift || true
mkdir -p "$dir"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
python benchmarks/network_speed.py --configs amir amir-s --sizes 256 512 --out "$dir/network_speed.jsonl" "$@" \
    | tee "$dir/network_speed_gpu.txt"
python benchmarks/restore_speed.py --device cuda --size 512 --slices 300 --precisions fp32 bf16 --batch-size 16 \
    --out "$dir/restore_speed.jsonl" | tee "$dir/restore_speed_gpu.txt"
