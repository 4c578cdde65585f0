"""The network per slice as each program runs it: the published computation in a process of its own
(glibc's default heap and OpenMP wait policy), against ours as `amir restore` runs it (its heap,
`device.keep_freed_memory`, its OpenMP wait policy, `device.wait_passively_if_busy`, and its engine),
on the CPU in fp32, batch 1.

Each round starts one fresh process per side, alternating (published, ours, published, ours, ...),
so that a busy machine's load falls on both alike; a process times --slices forwards, each on a new
random --size x --size slice (the experts' routing changes from slice to slice, as in a volume),
after four warm-up forwards (one for the paper configuration), and reports its median. The table gives the median over --rounds of
each side and their ratio; rows are appended to benchmarks/results/network_processes.jsonl (--out).
`network_speed.py` times both computations in one process instead (the same heap for both).
With --load N, N other programs keep the CPU busy (a Python loop each) while the sides run, and a
third side runs ours with OpenMP's default wait policy (its threads spin at each barrier).

    python benchmarks/network_processes.py                       # amir-s and amir at 256x256 (about 3 minutes on 2 cores)
    python benchmarks/network_processes.py --configs amir-s --rounds 3 --slices 5    # quicker
    python benchmarks/network_processes.py --configs amir-s --load 1    # beside one busy program
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

from amir_cli.device import ENGINES

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, statistics, sys, time
config, size, slices, warmup, side, threads, engine = {config!r}, {size}, {slices}, {warmup}, {side!r}, {threads}, {engine!r}
if side != "published":  # as the commands; the wait policy is read when torch loads
    from amir_cli.device import keep_freed_memory, wait_passively_if_busy
    if side == "ours":
        wait_passively_if_busy()
    keep_freed_memory()
import torch
sys.path.insert(0, {bench!r})
from network_speed import build_model
torch.set_num_threads(threads)
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
    if side == "ours-spin":  # OpenMP's default, whatever this shell set
        env.pop("OMP_WAIT_POLICY", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"{side} {config}: {out.stderr.strip()}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(config: str, args) -> dict:
    """The row of one configuration: --rounds fresh processes per side, in turns."""
    slices = args.slices or (2 if config == "amir" else 10)
    seconds = {"published": [], "ours": [], **({"ours-spin": []} if args.load else {})}
    for _ in range(args.rounds):
        for side in seconds:
            seconds[side].append(one_process(config, args.size, slices, side, args.threads, args.engine,
                                             warmup=1 if config == "amir" else 4))
    published, ours = (statistics.median(seconds[s]) for s in ("published", "ours"))
    return {"config": config, "size": args.size, "threads": args.threads, "engine": args.engine, "load": args.load,
            "rounds": args.rounds, "slices_per_process": slices, "published_s": round(published, 4),
            "ours_s": round(ours, 4), "speedup": round(published / ours, 2),
            "published_runs_s": [round(s, 4) for s in seconds["published"]],
            "ours_runs_s": [round(s, 4) for s in seconds["ours"]],
            **({"ours_spinning_s": round(statistics.median(seconds["ours-spin"]), 4)} if args.load else {}),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["amir-s", "amir"])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--slices", type=int, default=None, help="timed slices per process (default 10 for amir-s, 2 for amir)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--engine", default="auto", choices=ENGINES, help="ours: amir restore --engine")
    ap.add_argument("--load", type=int, default=0, metavar="N", help="other programs keeping the CPU busy meanwhile")
    ap.add_argument("--quick", action="store_true", help="amir-tiny at 64x64, 2 rounds: checks the script")
    ap.add_argument("--out", default=str(RESULTS / "network_processes.jsonl"), help="JSON lines appended here ('' for none)")
    args = ap.parse_args()
    if args.quick:
        args.configs, args.size, args.rounds = ["amir-tiny"], 64, 2
    rows = []
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load)]
    try:
        for config in args.configs:
            rows.append(measure(config, args))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        for p in busy:
            p.kill()
    load = f", beside {args.load} busy program{'s' if args.load > 1 else ''}" if args.load else ""
    print(f"\nCPU, {args.threads} threads, fp32, batch 1, {args.size}x{args.size}, a fresh process per side and round{load}")
    spinning = "ours, threads spinning s/slice | " if args.load else ""
    print(f"| config | published s/slice | {spinning}ours s/slice | speed-up | rounds |")
    print("|---|---:|---:|---:|---:|" + ("---:|" if args.load else ""))
    for r in rows:
        spun = f"{r['ours_spinning_s']:.3f} | " if args.load else ""
        print(f"| {r['config']} | {r['published_s']:.3f} | {spun}{r['ours_s']:.3f} | {r['speedup']:.2f}x | {r['rounds']} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        print(f"rows appended to {args.out}")


if __name__ == "__main__":
    main()
