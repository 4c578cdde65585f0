"""The CPU engines that could run the network, measured against the one `amir restore` runs.

eager: ours as `amir restore` runs it (its heap, `--engine auto`, the sparse experts).
compile: ours through `torch.compile` (inductor's C++ backend; the dense experts, whose shapes do not
follow the routing, and static slice shapes).
onnxruntime: ours exported with `torch.onnx.export` (the dense experts) and run by ONNX Runtime's CPU
provider; skipped when `onnxruntime` and `onnxscript` are not installed (they are not dependencies).
A training step too (amir-s, batch 4, patch 64, forward + backward + Adam) eager and compiled.

Each engine runs in a fresh process of its own (the OpenMP threads of compiled kernels keep spinning
and would slow the next engine): its set-up (compiling, exporting and loading) is timed once, then
--repeats calls after two warm-up calls, a new random slice each, give the median; each output is
compared with eager's on the same slice. Rows are appended as JSON
lines to benchmarks/results/engines.jsonl (--out). Several minutes on 2 cores (compiling is most of it).

    python benchmarks/engines.py [--size 256] [--repeats 7] [--threads 2] [--no-train]
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from amir_cli.device import keep_freed_memory
from amir_cli.network import AMIR, get_config
from amir_cli.training.trainer import adam
from network_speed import build_model

RESULTS = Path(__file__).resolve().parent / "results"


def first(y):
    return y[0] if isinstance(y, tuple) else y


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def onnxruntime_forward(dense: AMIR, example: torch.Tensor, threads: int):
    """``dense`` exported with torch.onnx and loaded into an ONNX Runtime CPU session: a forward."""
    import onnxruntime as ort

    class Restored(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return first(self.net(x))

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    with tempfile.TemporaryDirectory() as folder, torch.no_grad():  # the session holds the model once loaded
        path = Path(folder) / "amir.onnx"
        torch.onnx.export(Restored(dense), (example,), path, dynamo=True, input_names=["x"], output_names=["y"])
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"x": x.numpy()})[0])


def forward_row(engine: str, config: str, size: int, repeats: int, threads: int) -> dict:
    """Set-up seconds, median seconds per slice and the largest difference from eager's output."""
    model, _ = build_model(config, torch.device("cpu"))
    slices = [torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(i)) for i in range(repeats + 2)]
    with torch.inference_mode():
        expected = [first(model(x)) for x in slices]
    dense = AMIR(model.config).eval().set_computation(experts="dense", engine="plain")
    dense.load_state_dict(model.state_dict())
    if engine == "eager":
        run, setup = (lambda x: first(model(x))), 0.0
    elif engine == "compile":
        compiled = torch.compile(dense, dynamic=False)
        run = lambda x: first(compiled(x))  # noqa: E731
        with torch.inference_mode():
            setup = timed(lambda: run(slices[0]))[1]
    else:
        run, setup = timed(lambda: onnxruntime_forward(dense, slices[0], threads))
    times, diff = [], 0.0
    with torch.inference_mode():
        for i, x in enumerate(slices):
            y, seconds = timed(lambda: run(x))
            diff = max(diff, (y - expected[i]).abs().max().item())
            if i >= 2:
                times.append(seconds)
    return {"what": f"{config} {size}x{size} forward", "setup_s": round(setup, 2),
            "s_per_call": round(statistics.median(times), 4), "max_abs_diff": diff}


def training_row(engine: str, config: str, repeats: int) -> dict:
    """Median seconds of a training step (batch 4, patch 64, forward + backward + Adam)."""
    x, y = torch.rand(4, 1, 64, 64), torch.rand(4, 1, 64, 64)
    torch.manual_seed(0)
    model = AMIR(get_config(config)).train().set_computation(experts="sparse" if engine == "eager" else "dense")
    net = model if engine == "eager" else torch.compile(model, dynamic=False)
    optimizer = adam(model.parameters(), lr=1e-4, betas=(0.9, 0.999))

    def step():
        pred, load = net(x)
        loss = (pred - y).abs().mean() + 0.001 * load
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    setup = timed(step)[1]
    step()
    times = [timed(step)[1] for _ in range(repeats)]
    return {"what": f"{config} training step, batch 4, patch 64", "setup_s": round(setup, 2),
            "s_per_call": round(statistics.median(times), 4), "max_abs_diff": None}


def child(a) -> None:
    torch.set_num_threads(a.threads)
    keep_freed_memory()
    kind, engine = a.child.split(":")
    row = forward_row(engine, a.config, a.size, a.repeats, a.threads) if kind == "forward" else training_row(engine, a.config, a.repeats)
    print(json.dumps({**row, "engine": engine}))


def run_child(a, job: str) -> dict | None:
    """One measurement in a fresh process (compiled kernels' OpenMP threads would slow the others)."""
    args = [sys.executable, __file__, "--child", job, "--config", a.config, "--size", str(a.size),
            "--repeats", str(a.repeats), "--threads", str(a.threads)]
    out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode != 0:
        print(f"{job}: failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="amir-s")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-train", action="store_true", help="skip the training step")
    ap.add_argument("--out", default=str(RESULTS / "engines.jsonl"), help="JSON lines appended here ('' for none)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a)
    jobs = ["forward:eager", "forward:compile"]
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnxscript"):
        jobs.append("forward:onnxruntime")
    if not a.no_train:
        jobs += ["train:eager", "train:compile"]
    rows = [row for row in (run_child(a, job) for job in jobs) if row]
    eager = {r["what"]: r["s_per_call"] for r in rows if r["engine"] == "eager"}
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    print(f"CPU, {a.threads} threads, fp32, torch {torch.__version__}; medians of {a.repeats}, a fresh process each")
    print("| what | engine | set-up s | s per call | vs eager | max abs diff |\n|---|---|---:|---:|---:|---:|")
    for r in rows:
        r["vs_eager"] = round(eager[r["what"]] / r["s_per_call"], 2) if r["what"] in eager else None
        diff = "" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}"
        print(f"| {r['what']} | {r['engine']} | {r['setup_s']} | {r['s_per_call']:.3f} | {r['vs_eager']}x | {diff} |")
    if a.out:
        with open(a.out, "a") as f:
            f.writelines(json.dumps({**r, "threads": a.threads, "torch": torch.__version__, "date": date}) + "\n" for r in rows)


if __name__ == "__main__":
    main()
