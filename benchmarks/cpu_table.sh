#!/usr/bin/env bash
# The CPU speed tables in one command, each against the published computation in the same run with
# the two timed in turns: the operator profile of amir-s and the paper configuration at 256x256; the
# network's time per 256x256 slice (fp32, batch 1, medians of 7: both in one process with the same
# heap, then each as its own program in fresh processes); a training step of amir-s (batch 4,
# patch 64, forward + backward + Adam, medians of 20); `amir restore` of a 100-slice 256x256 CT with
# the default and the plain engine (process time against the network's own, peak memory) and of a
# 12-slice 1024x1024 CT (peak memory, also with the fused engine). About 15 minutes on 2 idle cores. JSON lines and the printed
# tables go to DIR (default benchmarks/results); THREADS (default 2) torch threads.
#
#     bash benchmarks/cpu_table.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-benchmarks/results}
threads=${THREADS:-2}
mkdir -p "$dir"
export OMP_NUM_THREADS=$threads  # the restore processes too
python benchmarks/network_profile.py --threads "$threads" --reference --out "$dir/network_profile_cpu.txt"
python benchmarks/network_speed.py --configs amir-s amir --sizes 256 --repeats 7 --threads "$threads" \
    --out "$dir/network_speed.jsonl" | tee "$dir/network_speed_cpu.txt"
python benchmarks/network_processes.py --threads "$threads" --out "$dir/network_processes.jsonl" \
    | tee "$dir/network_processes_cpu.txt"
python benchmarks/train_speed.py --configs amir-s --patches 64 --batch 4 --steps 20 --reference --threads "$threads" \
    --devices cpu --out "$dir/train_speed.jsonl" | tee "$dir/train_speed_cpu.txt"
python benchmarks/restore_speed.py --engines plain auto --out "$dir/restore_speed.jsonl" | tee "$dir/restore_speed_cpu.txt"
python benchmarks/restore_speed.py --size 1024 --slices 12 --repeats 1 --engines plain auto fused --out "$dir/restore_speed.jsonl" \
    | tee "$dir/restore_memory_cpu.txt"
