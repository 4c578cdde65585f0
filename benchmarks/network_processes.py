"""The network per slice as each program runs it: the published computation in a process of its own
(glibc's default heap), against ours as `amir restore` runs it (its heap, `device.keep_freed_memory`,
and its engine), on the CPU in fp32, batch 1.

Each round starts one fresh process per side, alternating (published, ours, published, ours, ...),
so that a busy machine's load falls on both alike; a process times --slices forwards, each on a new
random --size x --size slice (the experts' routing changes from slice to slice, as in a volume),
after four warm-up forwards (one for the paper configuration), and reports its median. The table gives the median over --rounds of
each side and their ratio; rows are appended to benchmarks/results/network_processes.jsonl (--out).
`network_speed.py` times both computations in one process instead (the same heap for both).

    python benchmarks/network_processes.py                       # amir-s and amir at 256x256 (about 3 minutes on 2 cores)
    python benchmarks/network_processes.py --configs amir-s --rounds 3 --slices 5    # quicker
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, statistics, sys, time
import torch
sys.path.insert(0, {bench!r})
from network_speed import build_model
config, size, slices, warmup, side, threads, engine = {config!r}, {size}, {slices}, {warmup}, {side!r}, {threads}, {engine!r}
torch.set_num_threads(threads)
if side == "ours":
    from amir_cli.device import keep_freed_memory
    keep_freed_memory()
model, _ = build_model(config, torch.device("cpu"))
model.set_computation(reference=True) if side == "published" else model.set_computation(engine=engine)
times = []
with torch.inference_mode():
    for i in range(slices + warmup):
        x = torch.rand(1, 1, size, size)
        t0 = time.perf_counter()
        model(x)
        if i >= warmup:  # after oneDNN has built its kernels and the heap has grown
            times.append(time.perf_counter() - t0)
print(json.dumps(statistics.median(times)))
"""


def one_process(config: str, size: int, slices: int, side: str, threads: int, engine: str, warmup: int = 4) -> float:
    code = CHILD.format(bench=str(Path(__file__).resolve().parent), config=config, size=size, slices=slices,
                        warmup=warmup, side=side, threads=threads, engine=engine)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"{side} {config}: {out.stderr.strip()}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["amir-s", "amir"])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--slices", type=int, default=None, help="timed slices per process (default 10 for amir-s, 2 for amir)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--engine", default="auto", choices=["auto", "fused", "plain"], help="ours: amir restore --engine")
    ap.add_argument("--quick", action="store_true", help="amir-tiny at 64x64, 2 rounds: checks the script")
    ap.add_argument("--out", default=str(RESULTS / "network_processes.jsonl"), help="JSON lines appended here ('' for none)")
    args = ap.parse_args()
    if args.quick:
        args.configs, args.size, args.rounds = ["amir-tiny"], 64, 2
    rows = []
    for config in args.configs:
        slices = args.slices or (2 if config == "amir" else 10)
        seconds = {"published": [], "ours": []}
        for _ in range(args.rounds):
            for side in seconds:
                seconds[side].append(one_process(config, args.size, slices, side, args.threads, args.engine,
                                                 warmup=1 if config == "amir" else 4))
        published, ours = (statistics.median(seconds[s]) for s in ("published", "ours"))
        rows.append({"config": config, "size": args.size, "threads": args.threads, "engine": args.engine,
                     "rounds": args.rounds, "slices_per_process": slices, "published_s": round(published, 4),
                     "ours_s": round(ours, 4), "speedup": round(published / ours, 2),
                     "published_runs_s": [round(s, 4) for s in seconds["published"]],
                     "ours_runs_s": [round(s, 4) for s in seconds["ours"]],
                     "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
        print(json.dumps(rows[-1]), flush=True)
    print(f"\nCPU, {args.threads} threads, fp32, batch 1, {args.size}x{args.size}, a fresh process per side and round")
    print("| config | published s/slice | ours s/slice | speed-up | rounds |\n|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['config']} | {r['published_s']:.3f} | {r['ours_s']:.3f} | {r['speedup']:.2f}x | {r['rounds']} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        print(f"rows appended to {args.out}")


if __name__ == "__main__":
    main()
