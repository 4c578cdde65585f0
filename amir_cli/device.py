"""Where and in which precision the network runs: one choice shared by restore, benchmark and train."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from typing import NamedTuple

from .errors import DeviceError, one_line

PRECISIONS = ("fp32", "bf16", "fp16")
ENGINES = ("auto", "native", "fused", "plain")  # amir's kernels or oneDNN's fused operators (CPU fp32), or PyTorch's only
_HEAP_BLOCKS = 256 << 20  # glibc serves blocks below this from its heap: a slice's feature maps
_HEAP_KEPT = 1 << 30  # and keeps up to this much freed heap for the next slice instead of returning it


def keep_freed_memory() -> bool:
    """Have glibc's malloc reuse the memory of freed feature maps instead of mapping fresh pages
    for each new one. By default a block of a few MB is mapped anew when its size differs from the
    last one freed (the experts' buffers follow the routing of each slice), and every fresh page
    costs a fault and a zeroing: tens of thousands of faults a 256x256 slice, a fifth to a third of
    the network's time on 2 CPU cores.
    Process-wide, so for the commands, not the library; their peak memory does not change. False
    where the C library is not glibc."""
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, _HEAP_BLOCKS)) and bool(mallopt(m_trim_threshold, _HEAP_KEPT))


def wait_passively_if_busy(samples: int = 3) -> bool:
    """Have the OpenMP threads of torch's CPU operators sleep while they wait (OMP_WAIT_POLICY=PASSIVE)
    when other programs are running on this machine. By default an idle thread spins for a while at
    each barrier: on an idle machine that is a little faster, but beside busy programs the spinning
    threads take the cores from them and from each other, and every parallel region waits for a time
    slice. Busy means another task in the kernel's count of runnable ones (Linux) at each of
    ``samples`` looks. OpenMP reads the policy when torch is first imported, so this runs before;
    a policy the user set is kept. Process-wide, so for the commands, not the library. True when it
    set the policy."""
    if "OMP_WAIT_POLICY" in os.environ or "torch" in sys.modules:
        return False
    try:
        for i in range(samples):
            if i:
                time.sleep(0.01)
            if _runnable_tasks() <= 1:  # this process alone
                return False
    except (OSError, ValueError, IndexError):
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def _runnable_tasks() -> int:
    """The kernel's count of runnable tasks now (the fourth field of /proc/loadavg: runnable/all)."""
    with open("/proc/loadavg") as f:
        return int(f.read().split()[3].split("/")[0])


class Torchrun(NamedTuple):
    rank: int
    local_rank: int
    world_size: int


def torchrun() -> Torchrun:
    """This process's place in a torchrun launch (RANK, LOCAL_RANK, WORLD_SIZE; 0, 0, 1 outside one)."""
    env = os.environ
    return Torchrun(int(env.get("RANK") or 0), int(env.get("LOCAL_RANK") or 0), int(env.get("WORLD_SIZE") or 1))


def check_device_spec(spec: str | None, *, mps: bool = True) -> str:
    """``spec`` lower-cased if it names a device the way --device does (auto, cpu, cuda, cuda:N, and
    mps unless ``mps=False``); DeviceError otherwise. Whether this machine has it is :func:`pick_device`'s."""
    choices = "auto, cpu, cuda, cuda:N or mps" if mps else "auto, cpu, cuda or cuda:N"
    text = (spec or "auto").strip().lower()
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?" + ("|mps" if mps else ""), text):
        raise DeviceError(f"invalid device {text!r}: use {choices}")
    return text


def pick_device(spec: str = "auto", *, mps: bool = True, per_process: bool = False):
    """A torch.device for 'auto' (cuda > mps > cpu; cuda:LOCAL_RANK under torchrun), 'cpu',
    'cuda', 'cuda:N' or 'mps'; DeviceError when this machine cannot provide it.

    ``mps=False`` leaves Apple GPUs out (training); ``per_process=True`` gives each process of a
    multi-process run (WORLD_SIZE > 1) the GPU of its LOCAL_RANK whatever CUDA device was named.
    """
    import torch

    _, local_rank, world = torchrun()
    spread = per_process and world > 1
    spec = check_device_spec(spec, mps=mps)
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if mps and _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not _mps_available():
            raise DeviceError("device mps is not available on this machine (Apple GPU with an MPS-enabled torch needed)")
        return torch.device("mps")
    if not torch.cuda.is_available():  # cuda or cuda:N
        raise DeviceError(f"device {spec} requested but CUDA is not available (torch {torch.__version__}, no GPU found)")
    index = local_rank if spread else int(spec[5:] or 0)
    if index >= torch.cuda.device_count():
        raise DeviceError(f"device {spec} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return torch.device("cuda", index)


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def precision_context(device, precision: str = "fp32"):
    """A context manager running the network in ``precision`` on ``device`` (torch.autocast)."""
    import torch

    if precision not in PRECISIONS:
        raise DeviceError(f"invalid precision {precision!r}: use {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    if device.type == "cpu" and precision == "fp16":
        raise DeviceError("fp16 is not supported on the CPU; use --precision fp32 or bf16")
    if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise DeviceError(f"bf16 is not supported on {torch.cuda.get_device_name(device)}; use fp16 or fp32")
    try:
        return torch.autocast(device_type=device.type, dtype=dtype)
    except (RuntimeError, ValueError) as exc:
        raise DeviceError(f"precision {precision} is not available on {device}: {one_line(exc)}") from None
