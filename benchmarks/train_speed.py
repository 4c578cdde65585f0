#!/usr/bin/env python
"""Training speed of `amir train`: iterations/s of the optimisation step, and of the data pipeline.

    python benchmarks/train_speed.py                         # amir-s and amir, batch 8, patch 64 and 128, CPU (+ CUDA)
    python benchmarks/train_speed.py --data TRAIN_DATA --workers 8   # also batches/s of the data loader
    python benchmarks/train_speed.py --configs amir-s --patches 64 --batch 4 --reference --steps 20 --threads 2
                                      # ours against the published computation, steps in turns (about 1 minute)

The step (forward in train mode, L1 + 0.001 x load loss, backward, Adam: ours fused as `amir train` runs
it, the published computation with the per-tensor Adam of the published code) runs on random tensors, so
data loading is excluded; its time is the median over --steps steps after one warm-up step. With
--reference the published computation's step, from the same weights, is timed in turns with ours
(one step of each, then again), so that a busy machine's load falls on both alike, and the ratio is
printed. Rows are appended as JSON lines to benchmarks/results/train_speed.jsonl (--out).
With --data, the on-the-fly degradation pipeline is timed separately: one process making batches
(median seconds per batch) and, with --workers N, the DataLoader's batches/s. The training rate is
about min(step rate, loader rate). Prints a Markdown table; --json writes the rows.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch


def step_times(config: str, batch: int, patch: int, steps: int, device: str, amp: bool,
               computations: list[dict]) -> list[dict]:
    """A row per computation: the median step time of a model set to it, all from the same
    weights, their steps timed in turns."""
    from amir_cli.network import AMIR, get_config
    from amir_cli.training.trainer import adam

    torch.manual_seed(0)
    first = AMIR(get_config(config)).to(device).train()
    models = []
    for computation in computations:
        model = AMIR(first.config).to(device).train().set_computation(**computation)
        model.load_state_dict(first.state_dict())
        # ours steps with amir train's optimiser, the published computation with the published code's
        optimizer = torch.optim.Adam if computation.get("reference") else adam
        models.append((model, optimizer(model.parameters(), lr=2e-4, betas=(0.9, 0.999))))
    x = torch.rand(batch, 1, patch, patch, device=device)
    y = torch.rand(batch, 1, patch, patch, device=device)
    times = [[] for _ in models]
    for i in range(steps + 1):
        for (model, opt), t_list in zip(models, times):
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
                t_list.append(time.perf_counter() - t)
    mem = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    rows = []
    for computation, t_list in zip(computations, times):
        med = statistics.median(t_list)
        what = "step, published computation" if computation.get("reference") else "step"
        rows.append({"what": what, "config": config, "batch": batch, "patch": patch, "device": device, "amp_bf16": amp,
                     "steps": steps, "s_per_it": med, "it_per_s": 1.0 / med, "peak_gib": mem,
                     "threads": torch.get_num_threads()})
    if len(rows) > 1:  # ours first, the published computation last
        rows[0]["speedup_vs_published"] = round(rows[-1]["s_per_it"] / rows[0]["s_per_it"], 3)
    return rows


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
    ap.add_argument("--heap", default="kept", choices=["kept", "default"],
                    help="kept: glibc keeps freed memory, as amir train has it (both computations alike)")
    ap.add_argument("--data", default=None, help="a training data folder: also time the data pipeline")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--crops-per-slice", type=int, default=1)
    ap.add_argument("--data-batches", type=int, default=5)
    ap.add_argument("--json", default=None, help="write the rows to this JSON file")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "train_speed.jsonl"),
                    help="JSON lines appended here ('' for none)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.heap == "kept":
        from amir_cli.device import keep_freed_memory

        keep_freed_memory()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) if a.devices == "auto" else a.devices.split(",")
    rows = []
    for device in devices:
        for config in [c for c in a.configs.split(",") if c]:
            for patch in (int(p) for p in a.patches.split(",")):
                steps = min(a.steps, 3) if (device == "cpu" and config == "amir" and patch >= 128) else a.steps
                computations = [{"experts": a.experts}] + ([{"reference": True}] if a.reference else [])
                for amp in ([False, True] if (a.amp and device.startswith("cuda")) else [False]):
                    for r in step_times(config, a.batch, patch, steps, device, amp, computations):
                        rows.append(r)
                        print(f"  {r['what']} {config} {device} patch {patch} amp={amp}: {r['s_per_it']:.3f} s/it", file=sys.stderr, flush=True)
    if a.data:
        for patch in (int(p) for p in a.patches.split(",")):
            rows += data_time(a.data, a.batch, patch, a.data_batches, a.workers, a.crops_per_slice)
    dev_name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} CPU threads{', ' + dev_name if dev_name else ''}\n")
    print("| what | config | device | amp | batch | patch | s/it | it/s | peak GiB | vs published |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        peak = f"{r['peak_gib']:.1f}" if r.get("peak_gib") else ""
        print(f"| {r['what']} | {r.get('config', '')} | {r.get('device', 'cpu')} | {'bf16' if r.get('amp_bf16') else ''} | "
              f"{r['batch']} | {r['patch']} | {r['s_per_it']:.3f} | {r['it_per_s']:.2f} | {peak} | "
              f"{r.get('speedup_vs_published', '')} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)
    if a.out:
        stamp = {"torch": torch.__version__, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        with open(a.out, "a") as f:
            f.writelines(json.dumps({**stamp, **r}) + "\n" for r in rows)
        print(f"rows appended to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
