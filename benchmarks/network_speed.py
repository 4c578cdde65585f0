"""Speed and memory of the AMIR network on this machine (CPU, or CUDA when present).

Prints, for each configuration and size: slices/s with batching per precision (fp32, bf16 and fp16
autocast, and on CUDA a model cast with `model.to(torch.bfloat16)`), the published computation's
fp32 slices/s in the same run (`AMIR.set_computation(reference=True)`) and the speed-up over it, peak
memory, the fraction of the matrix-product peak reached, and each low precision's PSNR against fp32
in every task's evaluation window. The published computation and each precision are timed in
turns (one forward of each, then again, --repeats times; medians), so that a busy machine's load
falls on all of them alike. A configuration runs with its shipped weights where the registry
has them (`amir-s`), else with seeded random ones (`amir`). Rows are appended as JSON lines, with the
device named, to benchmarks/results/network_speed.jsonl (--out). Batch: 16 at 256x256 on CUDA,
scaled by pixels (8 at 512x512), 1 on the CPU like `amir restore` (--batch).

    python benchmarks/network_speed.py                      # the GPU table: amir, amir-s at 256 and 512
    python benchmarks/network_speed.py --configs amir --sizes 512 --precisions bf16 --compile   # compiled (minutes)
    python benchmarks/network_speed.py --quick              # amir-tiny at 64x64 on the CPU: checks the script
    python benchmarks/network_speed.py --experts sparse --norm permuted   # another computation
    python benchmarks/network_speed.py --sizes 256 --repeats 7            # the CPU table (about 3 minutes on 2 cores)
    python benchmarks/network_speed.py --engine plain                     # PyTorch's operators only (amir restore --engine plain)
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from amir_cli.device import ENGINES
from amir_cli.network import AMIR, get_config

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16, "bf16-cast": torch.bfloat16}
RESULTS = Path(__file__).resolve().parent / "results"


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def paired_median_seconds(fns: dict, repeats: int) -> dict:
    """Median seconds of each function, timed in turns (each once, then each again, ...) after one
    warm-up call each."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_peak(device, dtype) -> float:
    """GFLOP/s of a large square matrix product (a small probe first: emulated types crawl)."""
    rate = 0.0
    sizes = (8192,) if device.type == "cuda" else (2048,) if dtype == torch.float32 else (256, 2048)
    for n in sizes:
        a = torch.rand(n, n, device=device, dtype=dtype)
        b = torch.rand(n, n, device=device, dtype=dtype)
        rate = 2 * n**3 / median_seconds(lambda: a @ b, 20 if device.type == "cuda" else 3) / 1e9
        if rate < 5:
            break
    return rate


def forward(model, x, precision):
    """One batch: autocast for "bf16" and "fp16"; "bf16-cast" expects a model cast to bf16."""
    dtype = DTYPES[precision]
    if precision.endswith("-cast"):
        with torch.inference_mode():
            return model(x.to(dtype))
    with torch.inference_mode(), torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        return model(x)


def cast_copy(model, precision):
    """The model a precision runs: itself, or a bf16 copy for "bf16-cast"."""
    if not precision.endswith("-cast"):
        return model
    import copy

    return copy.deepcopy(model).to(DTYPES[precision])


def build_model(config: str, device):
    """(model, weights): the shipped weights when the registry has an entry named like the
    configuration (their expert routing and bf16 error are what users get), else a seeded random one."""
    from amir_cli import weights

    if any(e.name == config for e in weights.entries()):
        return weights.load_model(config, device), "shipped"
    torch.manual_seed(0)
    return AMIR(get_config(config)).eval().to(device), "random"


def gflop_per_slice(model, size, device) -> float:
    """Multiply-adds of the published computation, counted as 2 FLOP each."""
    reference = AMIR(model.config).to(device).eval().set_computation(reference=True)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        reference(torch.rand(1, 1, size, size, device=device))
    return counter.get_total_flops() / 1e9


def cpu_peak_memory(config: str, size: int) -> dict:
    """Peak resident memory (VmHWM) of a fresh process running one fp32 slice, model included.

    ru_maxrss would not do: a child started from this process inherits its high-water mark."""
    code = (
        "import re,torch;from amir_cli.network import AMIR,get_config\n"
        "hwm=lambda: int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
        f"m=AMIR(get_config({config!r})).eval();x=torch.rand(1,1,{size},{size});base=hwm()\n"
        "with torch.inference_mode(): m(x)\n"
        "print(base,hwm())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    base, peak = (int(v) / 1024**2 for v in out)  # kB
    return {"peak_gb": peak, "above_loaded_model_gb": peak - base}


def fidelity(model, device, size, precision="bf16", low_model=None) -> dict:
    """PSNR (dB) of a low precision's output against fp32, per task, in each task's evaluation window."""
    from amir_cli.metrics import psnr
    from amir_cli.tasks import EVAL_WINDOW, NORM_RANGE

    torch.manual_seed(0)
    smooth = torch.nn.functional.avg_pool2d(torch.rand(1, 1, size + 8, size + 8), 9, 1)
    result = {}
    for task, (lo, hi) in NORM_RANGE.items():
        wlo, whi = EVAL_WINDOW[task]
        # an image that spans the evaluation window, in normalised units
        x = ((smooth - smooth.min()) / (smooth.max() - smooth.min()) * (whi - wlo) + wlo - lo) / (hi - lo)
        x = x.to(device)
        ref, low = (forward(m, x, p).float().cpu().numpy()[0, 0] * (hi - lo) + lo
                    for m, p in ((model, "fp32"), (low_model or model, precision)))
        result[task] = round(psnr(low, ref, (wlo, whi)), 1)
    return result


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU, {torch.get_num_threads()} threads"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip()
    except OSError:
        return ""


def default_batch(device, size: int) -> int:
    return max(1, 16 * 256**2 // size**2) if device.type == "cuda" else 1


def measure(model, config, source, size, args, device, precisions, slow, peaks) -> dict:
    batch = args.batch or default_batch(device, size)
    gflop = gflop_per_slice(model, size, device)
    from amir_cli.restore import engine

    row = {"config": config, "weights": source, "size": size, "batch": batch, "gflop": round(gflop, 1),
           "computation": {"experts": args.experts, "norm": args.norm}, "engine": engine(model, device),
           "compile": args.compile}
    xb = torch.rand(batch, 1, size, size, device=device)
    reference = AMIR(model.config).to(device).eval().set_computation(reference=True)
    reference.load_state_dict(model.state_dict())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    forward(reference, xb, "fp32")
    if device.type == "cuda":
        row["reference_fp32_peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 1024**3, 3)
    runs, timed = {}, {"reference": lambda: forward(reference, xb, "fp32")}
    for p in (p for p in precisions if p not in slow):
        m = cast_copy(model, p)
        run = torch.compile(m, mode=args.compile) if args.compile else m
        runs[p] = m
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        forward(run, xb, p)  # compiles, when asked
        sync()
        if args.compile:
            row[f"{p}_compile_s"] = round(time.perf_counter() - t0, 1)
        if device.type == "cuda":
            row[f"{p}_peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 1024**3, 3)
        timed[p] = lambda run=run, p=p: forward(run, xb, p)
    seconds = paired_median_seconds(timed, args.repeats)
    row["reference_fp32_slices_per_s"] = round(batch / seconds["reference"], 2)
    for p, m in runs.items():
        t = seconds[p]
        row[f"{p}_slices_per_s"] = round(batch / t, 2)
        row[f"{p}_speedup_vs_reference_fp32"] = round(row[f"{p}_slices_per_s"] / row["reference_fp32_slices_per_s"], 2)
        row[f"{p}_peak_frac"] = round(gflop * batch / t / peaks[p.removesuffix("-cast")], 3)
        if p != "fp32":
            row[f"{p}_psnr_vs_fp32_db"] = fidelity(model, device, size, p, m)
    if device.type != "cuda":
        mem = cpu_peak_memory(config, size)
        row["peak_memory_gb"] = round(mem["peak_gb"], 3)
        row["activation_memory_gb"] = round(mem["above_loaded_model_gb"], 3)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["amir", "amir-s"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[256, 512])
    ap.add_argument("--precisions", nargs="+", choices=list(DTYPES), default=None,
                    help="default: fp32 bf16 fp16 bf16-cast on CUDA, fp32 bf16 on the CPU")
    ap.add_argument("--repeats", type=int, default=5, help="timed turns (medians)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--batch", type=int, default=None, help="batch for slices/s (default 16 x 256^2 / size^2 on CUDA, 1 on CPU)")
    ap.add_argument("--engine", default="auto", choices=ENGINES, help="as amir restore --engine")
    ap.add_argument("--heap", default="kept", choices=["kept", "default"],
                    help="kept: glibc keeps freed memory, as amir restore has it (both computations alike)")
    ap.add_argument("--experts", default="auto", choices=["auto", "dense", "sparse"])
    ap.add_argument("--norm", default="auto", choices=["auto", "channels", "permuted"])
    ap.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                    help="torch.compile the fast model (MODE: default, reduce-overhead, max-autotune)")
    ap.add_argument("--quick", action="store_true", help="amir-tiny at 64x64, one repeat: checks the script")
    ap.add_argument("--out", default=str(RESULTS / "network_speed.jsonl"), help="JSON lines appended here ('' for none)")
    args = ap.parse_args()
    if args.quick:
        args.configs, args.sizes, args.repeats = ["amir-tiny"], [64], 1

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.heap == "kept":
        from amir_cli.device import keep_freed_memory

        keep_freed_memory()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precisions = args.precisions or (["fp32", "bf16", "fp16", "bf16-cast"] if device.type == "cuda" else ["fp32", "bf16"])
    if "fp32" not in precisions:
        precisions = ["fp32", *precisions]
    peaks = {p: matmul_peak(device, DTYPES[p] or torch.float32) for p in dict.fromkeys(p.removesuffix("-cast") for p in precisions)}
    name = device_name(device)
    print(f"device: {name}; torch {torch.__version__}")
    print("matrix-product peak: " + ", ".join(f"{p} {v:.1f} GFLOP/s" for p, v in peaks.items()))
    # bf16 without native support is emulated and far slower than fp32: timing it would take hours.
    slow = [p for p in precisions if p != "fp32" and peaks[p.removesuffix("-cast")] < peaks["fp32"] / 2 and not args.quick]
    for p in slow:
        print(f"note: {p} skipped for the network: this processor has no native {p} "
              f"({peaks[p.removesuffix('-cast')]:.1f} vs {peaks['fp32']:.1f} GFLOP/s fp32)")

    stamp = {"device": name, "torch": torch.__version__, "commit": git_commit(), "heap": args.heap,
             "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    rows = []
    for config in args.configs:
        model, source = build_model(config, device)
        model.set_computation(experts=args.experts, norm=args.norm, engine=args.engine)
        for size in args.sizes:
            row = measure(model, config, source, size, args, device, precisions, slow, peaks)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.out:
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                with open(args.out, "a") as f:
                    f.write(json.dumps({**stamp, **row}) + "\n")

    keys = ["engine", "batch", "reference_fp32_slices_per_s", "reference_fp32_peak_memory_gb"] + [f"{p}_{k}" for p in precisions if p not in slow
            for k in ("slices_per_s", "speedup_vs_reference_fp32", "peak_memory_gb", "psnr_vs_fp32_db", "compile_s")]
    keys = [k for k in keys if any(k in r for r in rows)] + (["peak_memory_gb"] if device.type != "cuda" else [])
    print(f"\n{name}, torch {torch.__version__}, experts {args.experts}, norm {args.norm}, compile {args.compile}, "
          f"heap {args.heap}")
    print("| config | weights | size | " + " | ".join(keys) + " |")
    print("|---|---|---|" + "---|" * len(keys))
    for r in rows:
        cells = [" ".join(f"{t}:{v}" for t, v in r[k].items()) if isinstance(r.get(k), dict) else str(r.get(k, "")) for k in keys]
        print(f"| {r['config']} | {r['weights']} | {r['size']} | " + " | ".join(cells) + " |")
    if args.out:
        print(f"rows appended to {args.out}")


if __name__ == "__main__":
    main()
