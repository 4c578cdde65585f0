#!/usr/bin/env python
"""Training speed of `amir train`: iterations/s of the optimisation step, and of the data pipeline.

    python benchmarks/train_speed.py                         # amir-s and amir, batch 8, patch 64 and 128, CPU (+ CUDA)
    python benchmarks/train_speed.py --data TRAIN_DATA --workers 8   # also batches/s of the data loader

The step (forward in train mode, L1 + 0.001 x load loss, backward, Adam) runs on random tensors, so
data loading is excluded; its time is the median over --steps steps after one warm-up step.
With --data, the on-the-fly degradation pipeline is timed separately: one process making batches
(median seconds per batch) and, with --workers N, the DataLoader's batches/s. The training rate is
about min(step rate, loader rate). Prints a Markdown table; --json writes the rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch


def step_time(config: str, batch: int, patch: int, steps: int, device: str, amp: bool,
              computation: dict | None = None) -> dict:
    from amir_cli.network import AMIR, get_config

    torch.manual_seed(0)
    model = AMIR(get_config(config)).to(device).train().set_computation(**(computation or {}))
    opt = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.9, 0.999))
    x = torch.rand(batch, 1, patch, patch, device=device)
    y = torch.rand(batch, 1, patch, patch, device=device)
    times = []
    for i in range(steps + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=amp):
            pred, load = model(x)
        loss = (pred.float() - y).abs().mean() + 0.001 * load.float()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - t)
    med = statistics.median(times)
    mem = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    what = "step, published computation" if (computation or {}).get("reference") else "step"
    return {"what": what, "config": config, "batch": batch, "patch": patch, "device": device, "amp_bf16": amp,
            "steps": steps, "s_per_it": med, "it_per_s": 1.0 / med, "peak_gib": mem}


def data_time(data: str, batch: int, patch: int, batches: int, workers: int, crops: int) -> list[dict]:
    from amir_cli.tasks import TASKS
    from amir_cli.training.sampling import PatchSampler, SamplerOptions, make_loader
    from amir_cli.training.volumes import load_volumes

    vols, _, _ = load_volumes(data)
    sampler = PatchSampler(vols, TASKS, SamplerOptions(batch_size=batch, patch_size=patch, crops_per_slice=crops), seed=0)
    sampler.batch(0)  # projector matrices are built once per grid size
    times = []
    for it in range(1, batches + 1):
        t = time.perf_counter()
        sampler.batch(it)
        times.append(time.perf_counter() - t)
    rows = [{"what": "data, 1 process", "batch": batch, "patch": patch, "crops_per_slice": crops, "batches": batches,
             "s_per_it": statistics.median(times), "it_per_s": 1.0 / statistics.median(times)}]
    if workers > 0:
        n = max(batches, 4 * workers)
        loader = make_loader(sampler, 0, n + 2 * workers, workers)
        it = iter(loader)
        for _ in range(2 * workers):  # worker start-up and projector builds
            next(it)
        t = time.perf_counter()
        for _ in range(n):
            next(it)
        dt = (time.perf_counter() - t) / n
        rows.append({"what": f"data, {workers} workers", "batch": batch, "patch": patch, "crops_per_slice": crops,
                     "batches": n, "s_per_it": dt, "it_per_s": 1.0 / dt})
        del it, loader
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default="amir-s,amir")
    ap.add_argument("--patches", default="64,128")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per case (amir at patch 128 on CPU: capped at 3)")
    ap.add_argument("--devices", default="auto", help="comma-separated; auto: cpu, plus cuda when available")
    ap.add_argument("--amp", action="store_true", help="also bf16 autocast on CUDA")
    ap.add_argument("--experts", default="auto", choices=["auto", "dense", "sparse"], help="expert computation (auto: dense off the CPU)")
    ap.add_argument("--reference", action="store_true", help="also the published computation, in the same run")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--data", default=None, help="a training data folder: also time the data pipeline")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--crops-per-slice", type=int, default=1)
    ap.add_argument("--data-batches", type=int, default=5)
    ap.add_argument("--json", default=None, help="write the rows to this JSON file")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) if a.devices == "auto" else a.devices.split(",")
    rows = []
    for device in devices:
        for config in [c for c in a.configs.split(",") if c]:
            for patch in (int(p) for p in a.patches.split(",")):
                steps = min(a.steps, 3) if (device == "cpu" and config == "amir" and patch >= 128) else a.steps
                computations = [{"experts": a.experts}] + ([{"reference": True}] if a.reference else [])
                for amp in ([False, True] if (a.amp and device.startswith("cuda")) else [False]):
                    for computation in computations:
                        r = step_time(config, a.batch, patch, steps, device, amp, computation)
                        rows.append(r)
                        print(f"  {r['what']} {config} {device} patch {patch} amp={amp}: {r['s_per_it']:.3f} s/it", file=sys.stderr, flush=True)
    if a.data:
        for patch in (int(p) for p in a.patches.split(",")):
            rows += data_time(a.data, a.batch, patch, a.data_batches, a.workers, a.crops_per_slice)
    dev_name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} CPU threads{', ' + dev_name if dev_name else ''}\n")
    print("| what | config | device | amp | batch | patch | s/it | it/s | peak GiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        peak = f"{r['peak_gib']:.1f}" if r.get("peak_gib") else ""
        print(f"| {r['what']} | {r.get('config', '')} | {r.get('device', 'cpu')} | {'bf16' if r.get('amp_bf16') else ''} | "
              f"{r['batch']} | {r['patch']} | {r['s_per_it']:.3f} | {r['it_per_s']:.2f} | {peak} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
