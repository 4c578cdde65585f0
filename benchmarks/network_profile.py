"""Where the AMIR network spends its CPU time: operators by self CPU time (torch.profiler).

For each configuration (`amir-s` with its shipped weights where the registry has them, the paper
configuration `amir` with seeded random ones) and computation (ours, and the published one with
--reference), runs --repeats forwards of a --size x --size fp32 slice after a warm-up under the
profiler and prints the --top operators by self CPU time: milliseconds per slice, share, calls per
slice. The tables are also written to benchmarks/results/network_profile_cpu.txt (--out).

    python benchmarks/network_profile.py                        # amir-s and amir at 256x256 (about a minute)
    python benchmarks/network_profile.py --configs amir-s --reference   # also the published computation
    python benchmarks/network_profile.py --quick                # amir-tiny at 64x64: checks the script
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from network_speed import build_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def operator_table(model, size: int, batch: int, repeats: int, top: int) -> tuple[str, float]:
    """(Markdown table of the top operators by self CPU time, ms per slice in all)."""
    x = torch.rand(batch, 1, size, size)
    with torch.inference_mode():
        model(x)  # warm-up: allocator, oneDNN primitives
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(repeats):
                model(x)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    slices = repeats * batch
    total = sum(e.self_cpu_time_total for e in events) / 1e3 / slices
    lines = ["| operator | ms/slice | share | calls/slice |", "|---|---:|---:|---:|"]
    for e in events[:top]:
        ms = e.self_cpu_time_total / 1e3 / slices
        lines.append(f"| {e.key} | {ms:.1f} | {ms / total:.1%} | {e.count / slices:g} |")
    rest = total - sum(e.self_cpu_time_total for e in events[:top]) / 1e3 / slices
    lines.append(f"| (all others) | {rest:.1f} | {rest / total:.1%} | |")
    return "\n".join(lines), total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["amir-s", "amir"])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=None, help="profiled forwards (default: 5 for amir-s, 1 for amir)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--reference", action="store_true", help="also profile the published computation")
    ap.add_argument("--quick", action="store_true", help="amir-tiny at 64x64: checks the script")
    ap.add_argument("--out", default=str(RESULTS / "network_profile_cpu.txt"), help="tables written here ('' for none)")
    args = ap.parse_args()
    if args.quick:
        args.configs, args.size = ["amir-tiny"], 64
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    report = [f"CPU, {args.threads} threads, torch {torch.__version__}; {args.size}x{args.size} fp32, batch {args.batch}"]
    for config in args.configs:
        model, source = build_model(config, device)
        computations = [("ours", {})] + ([("published", {"reference": True})] if args.reference else [])
        for label, computation in computations:
            model.set_computation(**computation)
            repeats = args.repeats or (1 if config == "amir" else 5)
            table, total = operator_table(model, args.size, args.batch, repeats, args.top)
            report.append(f"\n{config} ({source} weights), {label} computation: {total:.0f} ms/slice of operator "
                          f"self time ({repeats} forwards profiled)\n\n{table}")
            print(report[-1], flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report[0] + "\n" + "\n".join(report[1:]) + "\n")
        print(f"\ntables written to {args.out}")


if __name__ == "__main__":
    main()
