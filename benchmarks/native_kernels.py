"""amir's native CPU kernels (`amir_cli.network.native`) against the PyTorch operators they replace,
one map shape at a time: each half of a transformer block (LayerNorm, attention or feed-forward,
residual; against PyTorch's fast path of them), each half's forward and backward pass in training
(batch 4 of 64x64 patches, against autograd through the operators) and spatial
routing's mixture of experts (the shipped amir-s weights where the registry has them). The
inference shapes are those of a 256x256 slice's levels in amir-s. Medians of --repeats calls, the two alternating; the table also goes to
benchmarks/results/native_kernels_cpu.txt (--out).

    python benchmarks/native_kernels.py            # about a minute on 2 cores
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from amir_cli.network import native, restormer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from network_speed import build_model, paired_median_seconds  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def cases():
    """(kernel, shape, PyTorch's way, the kernel's way) for each row."""
    for size, channels, heads in [(256, 8, 1), (256, 16, 1), (128, 16, 2), (64, 32, 4), (32, 64, 8)]:
        block = restormer.TransformerBlock(channels, heads, 2.66, False, "WithBias").eval()
        for m in block.modules():
            if isinstance(m, restormer.Computation):
                m.engine = "plain"
        x = torch.randn(1, channels, size, size).contiguous(memory_format=torch.channels_last)
        shape = f"{size * size} x {channels}"
        yield ("attention_block", shape, lambda b=block, x=x: b.attn(b.norm1(x), residual=x),
               lambda b=block, x=x: native.attention_block(x, b.norm1, b.attn))
        yield ("ffn_block", shape, lambda b=block, x=x: b.ffn(b.norm2(x), residual=x),
               lambda b=block, x=x: native.ffn_block(x, b.norm2, b.ffn))
    for size, channels, heads in [(64, 8, 1), (64, 16, 1), (32, 16, 2), (16, 32, 4), (8, 64, 8)]:  # training: batch 4, patch 64
        block = restormer.TransformerBlock(channels, heads, 2.66, False, "WithBias")
        for m in block.modules():
            if isinstance(m, restormer.Computation):
                m.engine = "plain"
        x = torch.randn(4, channels, size, size).contiguous(memory_format=torch.channels_last)

        def step(half, norm, body, x=x):
            with torch.enable_grad():
                y = x.clone().requires_grad_()
                half(y, norm, body).sum().backward()

        operators = lambda y, n, b: b(n(y), residual=y)  # noqa: E731
        shape = f"4 x {size * size} x {channels}"
        for name, norm, body in (("attention_block", block.norm1, block.attn), ("ffn_block", block.norm2, block.ffn)):
            yield (f"{name}, training", shape, lambda n=norm, b=body: step(operators, n, b),
                   lambda k=getattr(native, name), n=norm, b=body: step(k, n, b))
    model, _ = build_model("amir-s", torch.device("cpu"))
    instruction = model.instruction(torch.rand(1, 1, 256, 256))
    for level, size in [(1, 256), (2, 128), (3, 64)]:
        routing = getattr(model, f"spatial_routing_encoder_level{level}")
        x = torch.randn(1, routing.moe.experts[0].fc1.in_features, size, size).contiguous(memory_format=torch.channels_last)
        cue = routing.fc(instruction)

        def run(engine, moe=routing.moe, x=x, cue=cue):
            moe.engine = engine
            return moe(x, cue)

        yield ("experts", f"{size * size} x {x.shape[1]}", lambda run=run: run("plain"), lambda run=run: run("native"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default=str(RESULTS / "native_kernels_cpu.txt"), help="table written here ('' for none)")
    args = ap.parse_args()
    if not native.available():
        sys.exit(f"no native kernels here: {native.reason()}")
    torch.set_num_threads(args.threads)
    lines = [f"CPU, {args.threads} threads, torch {torch.__version__}, fp32; medians of {args.repeats}",
             "", "| kernel | pixels x channels | PyTorch ms | native ms | speed-up |", "|---|---|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    with torch.no_grad():  # (the training rows turn autograd on for themselves)
        for kernel, shape, plain, ours in cases():
            times = paired_median_seconds({"plain": plain, "native": ours}, args.repeats)
            a, b = 1e3 * times["plain"], 1e3 * times["native"]
            lines.append(f"| {kernel} | {shape} | {a:.3f} | {b:.3f} | {a / b:.2f}x |")
            print(lines[-1], flush=True)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
        print(f"\ntable written to {args.out}")


if __name__ == "__main__":
    main()
