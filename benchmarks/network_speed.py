"""Speed and memory of the AMIR network on this machine (CPU, or CUDA when present).

Prints, for `amir` and `amir-s` at 256x256 and 512x512: median seconds per slice in fp32 and
bf16 (fp16 too on CUDA), slices/s with batching, peak memory, the fraction of the matrix-product
peak reached, the speed-up over the reference path that follows the published computation, and
the bf16 output's PSNR against fp32 in each task's evaluation window (also where bf16 is emulated,
when that takes under a minute). A configuration runs with its shipped weights where the registry
has them (`amir-s`), else with seeded random ones (`amir`).

    python benchmarks/network_speed.py [--sizes 256 512] [--configs amir amir-s] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from amir_cli.network import AMIR, get_config, set_reference_mode

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


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
    dtype = DTYPES[precision]
    with torch.inference_mode(), torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        return model(x)


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
    set_reference_mode(True)
    try:
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            model(torch.rand(1, 1, size, size, device=device))
    finally:
        set_reference_mode(False)
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


def bf16_fidelity(model, device, size) -> dict:
    """PSNR (dB) of the bf16 output against fp32, per task, in each task's evaluation window."""
    from amir_cli.imaging.intensity import EVAL_WINDOW, NORM_RANGE
    from amir_cli.metrics import psnr

    torch.manual_seed(0)
    smooth = torch.nn.functional.avg_pool2d(torch.rand(1, 1, size + 8, size + 8), 9, 1)
    result = {}
    for task, (lo, hi) in NORM_RANGE.items():
        wlo, whi = EVAL_WINDOW[task]
        # an image that spans the evaluation window, in normalised units
        x = ((smooth - smooth.min()) / (smooth.max() - smooth.min()) * (whi - wlo) + wlo - lo) / (hi - lo)
        x = x.to(device)
        ref, low = (forward(model, x, p).float().cpu().numpy()[0, 0] * (hi - lo) + lo for p in ("fp32", "bf16"))
        result[task] = round(psnr(low, ref, (wlo, whi)), 1)
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["amir", "amir-s"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[256, 512])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=None, help="batch for slices/s (default 4 on CPU, 16 on CUDA)")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    args = ap.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch = args.batch or (16 if device.type == "cuda" else 4)
    precisions = ["fp32", "bf16", "fp16"] if device.type == "cuda" else ["fp32", "bf16"]
    peaks = {p: matmul_peak(device, DTYPES[p] or torch.float32) for p in precisions}
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}")
    print("matrix-product peak: " + ", ".join(f"{p} {v:.1f} GFLOP/s" for p, v in peaks.items()))
    # bf16 without native support is emulated and far slower than fp32: timing it would take hours.
    slow = [p for p in precisions if p != "fp32" and peaks[p] < peaks["fp32"] / 2]
    for p in slow:
        print(f"note: {p} skipped for the network: this processor has no native {p} "
              f"({peaks[p]:.1f} vs {peaks['fp32']:.1f} GFLOP/s fp32)")

    rows = []
    for config in args.configs:
        model, source = build_model(config, device)
        for size in args.sizes:
            x = torch.rand(1, 1, size, size, device=device)
            gflop = gflop_per_slice(model, size, device)
            row = {"config": config, "weights": source, "size": size, "gflop": round(gflop, 1)}
            for p in precisions:
                if p in slow:
                    continue
                t = median_seconds(lambda: forward(model, x, p), args.repeats)
                row[f"{p}_s"] = round(t, 4)
                row[f"{p}_peak_frac"] = round(gflop / t / peaks[p], 3)
            set_reference_mode(True)
            row["reference_fp32_s"] = round(median_seconds(lambda: forward(model, x, "fp32"), max(1, args.repeats - 1)), 4)
            set_reference_mode(False)
            row["speedup_vs_reference"] = round(row["reference_fp32_s"] / row["fp32_s"], 2)
            xb = torch.rand(batch, 1, size, size, device=device)
            for p in precisions:
                if p not in slow:
                    row[f"{p}_slices_per_s_b{batch}"] = round(batch / median_seconds(lambda: forward(model, xb, p), args.repeats), 2)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
                forward(model, x, "fp32")
                row["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 1024**3, 3)
            else:
                mem = cpu_peak_memory(config, size)
                row["peak_memory_gb"] = round(mem["peak_gb"], 3)
                row["activation_memory_gb"] = round(mem["above_loaded_model_gb"], 3)
            if "bf16" not in slow or 3 * gflop / peaks["bf16"] < 60:  # three emulated slices in a minute
                row["bf16_psnr_vs_fp32_db"] = bf16_fidelity(model, device, size)
            rows.append(row)
            print(json.dumps(row), flush=True)

    keys = [k for k in rows[0] if k not in ("config", "weights", "size")]
    print("\n| config | weights | size | " + " | ".join(keys) + " |")
    print("|---|---|---|" + "---|" * len(keys))
    for r in rows:
        print(f"| {r['config']} | {r['weights']} | {r['size']} | " + " | ".join(str(r.get(k, "")) for k in keys) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "matmul_peak_gflops": peaks, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
