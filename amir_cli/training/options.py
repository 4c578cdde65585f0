"""The options of `amir train` (:class:`TrainOptions`, the one place for their defaults), their
checks, and which of them a resumed run takes from the command line.

Imports neither torch nor the network, so the CLI reads the defaults without starting them.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Collection
from dataclasses import dataclass
from enum import Enum

from amir_cli.device import check_device_spec
from amir_cli.errors import BadInputError
from amir_cli.network.config import CONFIGS
from amir_cli.tasks import MIN_DOSE, TASKS

from .levels import Levels


class TaskWeighting(str, Enum):
    """How the per-sample losses of the tasks are weighed (``--task-weighting``)."""

    UNIFORM = "uniform"  # the paper's L1
    UNCERTAINTY = "uncertainty"  # learned homoscedastic uncertainty per task
    RELATIVE = "relative"  # each sample's L1 divided by its input's
    PSNR = "psnr"  # each sample's PSNR deficit to its input


# Defaults that depend on the device or on --init, fixed when a run starts (see started_options)
PAPER_PATCH_SIZE, CPU_PATCH_SIZE = 128, 64  # --patch-size on CUDA and elsewhere
PAPER_CONFIG, CPU_CONFIG = "amir", "amir-s"  # --config on CUDA and elsewhere
PAPER_LR, FINE_TUNE_LR = 2e-4, 5e-5  # --lr of a new network and of one started from --init
LOSSES = ("l1", "rmse")  # --mr-loss, --ct-loss
MAX_SLAB_MM = 10.0  # --mr-slab: about the thickest slices of a 2-D clinical series
# Options that may change when a run is resumed (everything else is fixed by run.json).
RESUMABLE = ("iterations", "workers", "threads", "device", "val_every", "checkpoint_every", "checkpoint_minutes", "log_every",
             "quiet", "export")


@dataclass
class TrainOptions:
    """Every option of `amir train`; defaults are the paper's recipe where it has one."""

    data: str | None = None
    out: str | None = None
    config: str | None = None  # None: PAPER_CONFIG on CUDA, CPU_CONFIG elsewhere
    tasks: tuple[str, ...] = TASKS
    iterations: int = 200_000
    batch_size: int = 8  # per process; under torchrun the global batch is K x this
    patch_size: int | None = None  # None: PAPER_PATCH_SIZE on CUDA, CPU_PATCH_SIZE elsewhere (resolved when a run starts)
    lr: float | None = None  # None: PAPER_LR, or FINE_TUNE_LR with init
    betas: tuple[float, float] = (0.9, 0.999)
    eta_min: float = 1e-6
    warmup: int = 0
    load_loss_weight: float = 0.001
    ema: float = 0.0  # 0: off; e.g. 0.999 (decay min(ema, (1 + it) / (10 + it)))
    task_weighting: str = TaskWeighting.UNIFORM.value  # a TaskWeighting value
    amp: bool = False  # bf16 autocast on CUDA
    clip_grad: float = 0.0  # max gradient norm; 0: off
    seed: int = 0
    val_every: int = 5000
    checkpoint_every: int = 1000
    checkpoint_minutes: float = 5.0  # last.pt also after this much wall time (0: only by iterations)
    log_every: int = 50
    val_slices: int = 8  # per task
    val_size: int = 256  # centre crop of the validation slices (0: whole slice)
    workers: int | None = None  # default min(8, cpu_count - 1)
    threads: int | None = None  # torch CPU threads of the training process (default: torch's)
    crops_per_slice: int = 4  # one degraded slice gives 4 patches: the degradation costs more than a CPU step
    mr_scale_jitter: float = 0.0
    task_mix: dict | None = None  # task -> integer share of the training slices (None: even)
    task_patch_size: dict | None = None  # task -> its patch size (the others: patch_size)
    volume_weights: dict | None = None  # volume-name pattern (fnmatch) -> relative chance of drawing it within its task
    mr_noise: float = 0.0  # MR noise floor augmentation (fraction of the MR target level)
    mr_consistency_loss: bool = True  # MR loss also on the output made consistent with the measured band (per patch: approximate)
    mr_cascade_loss: bool = False  # MR loss also on restore's cascade cut at mr_cascade_passes
    mr_cascade_passes: int = 2  # the passes that loss runs (each a forward and backward of the network)
    mr_loss: str = "l1"  # the MR samples' error: "l1" or "rmse" (PSNR's; relative to the input's under --task-weighting relative)
    ct_loss: str = "l1"  # the CT samples' error, as mr_loss
    zoom_jitter: float = 1.0  # pixel-size augmentation: in-plane resampling by a factor in [1/z, z]
    zoom_tasks: tuple[str, ...] | None = None  # tasks the pixel-size augmentation applies to (None: all)
    mr_zoom_max: float | None = None  # MR: the finest grid of that augmentation, f in [1/z, this] (None: z)
    mr_slab: float = 0.0  # MR references: the mean of the neighbouring slices within a slab up to this thick (mm; 0: off)
    pet_standard_dose: bool = False  # PET references: the (noise-free, simulated) activity plus the noise of its full-dose counts
    ct_dose: tuple[float, float] = Levels.ct_dose
    ct_i0: tuple[float, float] = Levels.ct_i0
    ct_soft_kernels: float = Levels.ct_soft_kernels  # the share of CT pairs (reference and noise) from a softer kernel
    mr_factors: tuple[int, ...] = Levels.mr_factors
    mr_fermi: float = Levels.mr_fermi  # the share of MR pairs whose band a scanner's Fermi filter tapers
    pet_dose: tuple[float, float] = Levels.pet_dose
    pet_em_noise: float = Levels.pet_em_noise  # the share of PET pairs whose noise an iterative reconstruction shapes
    pet_em_ref: float = Levels.pet_em_ref  # the share with such a reference only, its low dose SPEC §3's
    init: str | None = None
    device: str = "auto"
    export: str | None = None
    quiet: bool = False

    def levels(self) -> Levels:
        return Levels(ct_dose=tuple(self.ct_dose), ct_i0=tuple(self.ct_i0), ct_soft_kernels=self.ct_soft_kernels,
                      mr_factors=tuple(int(f) for f in self.mr_factors), mr_fermi=self.mr_fermi, pet_dose=tuple(self.pet_dose),
                      pet_em_noise=self.pet_em_noise, pet_em_ref=self.pet_em_ref)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainOptions":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names})

    def check(self) -> None:
        bad = [t for t in self.tasks if t not in TASKS]
        if bad or not self.tasks:
            raise BadInputError(f"unknown task(s) {', '.join(bad) or '(none)'}: choose from {', '.join(TASKS)}")
        if self.config is not None and self.config not in CONFIGS:
            raise BadInputError(f"unknown --config {self.config!r}; known: {', '.join(CONFIGS)}")
        self._check_numbers()
        check_device_spec(str(self.device), mps=False)
        if not 0 <= self.ema < 1:
            raise BadInputError(f"--ema must be in [0, 1), got {self.ema}")
        try:
            TaskWeighting(self.task_weighting)
        except ValueError:
            raise BadInputError(f"--task-weighting must be one of {', '.join(w.value for w in TaskWeighting)}") from None
        if self.export is not None:
            from amir_cli.weights import check_name

            check_name(self.export)
        self._check_levels()
        self._check_augmentation()

    def _check_numbers(self) -> None:
        least = {name: 1 for name in ("iterations", "batch_size", "val_every", "checkpoint_every", "log_every", "val_slices",
                                      "crops_per_slice", "threads")}
        least["mr_cascade_passes"] = 2
        least.update(dict.fromkeys(("seed", "warmup", "val_size", "workers"), 0))
        for name, low in least.items():
            value = getattr(self, name)
            if value is not None and int(value) < low:
                raise BadInputError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
        if 0 < self.val_size < 11:
            raise BadInputError(f"--val-size must be 0 (whole slices) or at least 11 (SSIM's window), got {self.val_size}")
        task_sizes = (("--task-patch-size", p) for p in (self.task_patch_size or {}).values())
        for name, size in (("--patch-size", self.patch_size), *task_sizes):
            if size is not None and (size < 16 or size % 8):
                raise BadInputError(f"{name} must be a multiple of 8 and at least 16, got {size}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise BadInputError(f"--lr must be positive, got {self.lr}")
        for name in ("eta_min", "clip_grad", "mr_scale_jitter", "checkpoint_minutes"):
            value = float(getattr(self, name))
            if not (value >= 0 and math.isfinite(value)):
                raise BadInputError(f"--{name.replace('_', '-')} must be 0 or more, got {value}")

    def _check_levels(self) -> None:
        for name, (lo, hi) in (("ct-dose", self.ct_dose), ("pet-dose", self.pet_dose)):
            if not MIN_DOSE <= lo <= hi <= 1:
                raise BadInputError(f"--{name} range must satisfy {MIN_DOSE:g} <= low <= high <= 1, got {lo:g}-{hi:g}")
        if not 0 < self.ct_i0[0] <= self.ct_i0[1]:
            raise BadInputError("--ct-i0 range must be positive and ordered")
        for name, share in (("ct-soft-kernels", self.ct_soft_kernels), ("mr-fermi", self.mr_fermi), ("pet-em-noise", self.pet_em_noise), ("pet-em-ref", self.pet_em_ref)):
            if not 0 <= share <= 1:
                raise BadInputError(f"--{name} must be in [0, 1], got {share}")
        if self.pet_em_noise + self.pet_em_ref > 1:
            raise BadInputError(f"--pet-em-noise and --pet-em-ref are shares of the PET pairs: together at most 1, got {self.pet_em_noise + self.pet_em_ref:g}")
        if not self.mr_factors or any(int(f) < 2 for f in self.mr_factors):
            raise BadInputError("--mr-factors must be integers >= 2")

    def _check_augmentation(self) -> None:
        if self.task_mix is not None:
            unknown = set(self.task_mix) - set(self.tasks)
            if unknown:
                raise BadInputError(f"--task-mix names tasks that are not trained: {', '.join(sorted(unknown))}")
            task_cycle(self.tasks, self.task_mix)  # raises on negative or all-zero shares
        if self.task_patch_size:
            unknown = set(self.task_patch_size) - set(self.tasks)
            if unknown:
                raise BadInputError(f"--task-patch-size names tasks that are not trained: {', '.join(sorted(unknown))}")
            if self.crops_per_slice < self.batch_size:  # a batch of several slices stacks patches of one size
                raise BadInputError("--task-patch-size needs one slice per batch: --crops-per-slice at least --batch-size")
        for pattern, weight in (self.volume_weights or {}).items():
            if not (weight > 0 and math.isfinite(weight)):
                raise BadInputError(f"--volume-weight {pattern}: the weight must be positive, got {weight:g}")
        for option, loss in (("--mr-loss", self.mr_loss), ("--ct-loss", self.ct_loss)):
            if loss not in LOSSES:
                raise BadInputError(f"{option} must be one of {', '.join(LOSSES)}, got {loss!r}")
        if not 0 <= self.mr_noise < 1:
            raise BadInputError(f"--mr-noise must be in [0, 1), got {self.mr_noise}")
        if not 1 <= self.zoom_jitter <= 4:
            raise BadInputError(f"--zoom-jitter must be in [1, 4], got {self.zoom_jitter}")
        if self.mr_zoom_max is not None and not 1 <= self.mr_zoom_max <= self.zoom_jitter:
            raise BadInputError(f"--mr-zoom-max must be in [1, --zoom-jitter = {self.zoom_jitter:g}], got {self.mr_zoom_max:g}")
        if not (0 <= self.mr_slab <= MAX_SLAB_MM):
            raise BadInputError(f"--mr-slab must be in [0, {MAX_SLAB_MM:g}] mm, got {self.mr_slab:g}")
        if self.zoom_tasks is not None and (not self.zoom_tasks or set(self.zoom_tasks) - set(self.tasks)):
            raise BadInputError(f"--zoom-tasks must name trained tasks, got {','.join(self.zoom_tasks) or '(none)'}")


def started_options(o: TrainOptions, device_type: str) -> TrainOptions:
    """The options a new run records in run.json, its defaults that depend on the device (network
    configuration, patch size) and on ``init`` (learning rate) made explicit, so a resumed run keeps them."""
    cuda = device_type == "cuda"
    return dataclasses.replace(
        o,
        config=o.config or (PAPER_CONFIG if cuda else CPU_CONFIG),
        patch_size=o.patch_size or (PAPER_PATCH_SIZE if cuda else CPU_PATCH_SIZE),
        lr=o.lr if o.lr is not None else (FINE_TUNE_LR if o.init else PAPER_LR),
    )


def resumed_options(recorded: dict, given: TrainOptions, changed: Collection[str] | None = None) -> TrainOptions:
    """The options of a resumed run: its recorded ones, with the :data:`RESUMABLE` ones given again.

    ``changed``: the names of the options given again (the CLI passes those on its command line),
    compared with the run's recorded values, so one set back to its default counts too. ``None``
    (library calls): the resumable options of ``given`` that differ from the defaults.
    Any other option in ``changed`` must equal the run's recorded value (a run line repeated with
    ``--resume``); one that differs is refused, as nothing but the resumable options can change.
    """
    o = TrainOptions.from_dict(recorded)
    defaults = TrainOptions()
    for k in RESUMABLE:
        v = getattr(given, k)
        if (k in changed) if changed is not None else v != getattr(defaults, k):
            setattr(o, k, v)
    for k in sorted(set(changed or ()) - set(RESUMABLE)):
        if not _same(k, getattr(given, k), getattr(o, k)):
            raise BadInputError(f"{_flag(k)} differs from the resumed run's ({_shown(getattr(o, k))}): a resumed run keeps "
                                f"its options; only {', '.join(map(_flag, RESUMABLE))} may change")
    return o


def _flag(name: str) -> str:
    return {"data": "DATA", "volume_weights": "--volume-weight"}.get(name, "--" + name.replace("_", "-"))


def _same(name: str, a, b) -> bool:
    """Whether an option given again equals its recorded value (paths by where they lead, task
    lists in any order, tuples and lists alike)."""
    from amir_cli.weights import is_path

    if name in ("data", "out") or (name == "init" and a is not None and b is not None and is_path(a) and is_path(b)):
        return a is None or (b is not None and os.path.realpath(a) == os.path.realpath(b))
    if name in ("tasks", "zoom_tasks") and a is not None and b is not None:
        return set(a) == set(b)
    return _plain(a) == _plain(b)


def _plain(v):
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _shown(v) -> str:
    return "none" if v is None else ",".join(map(str, v)) if isinstance(v, (tuple, list)) else str(v)


def parse_range(text: str, name: str) -> tuple[float, float]:
    """'0.1:0.5', '0.1,0.5', '1/12:1/2' or one value -> (low, high)."""
    parts = [p for p in str(text).replace(",", ":").split(":") if p.strip()]
    try:
        vals = [float(p.split("/")[0]) / float(p.split("/")[1]) if "/" in p else float(p) for p in parts]
    except (ValueError, ZeroDivisionError):
        raise BadInputError(f"--{name} must be LOW:HIGH (numbers or fractions like 1/12), got {text!r}") from None
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or vals[0] > vals[1]:
        raise BadInputError(f"--{name} must be LOW:HIGH with LOW <= HIGH, got {text!r}")
    return vals[0], vals[1]


def range_text(values) -> str:
    """A range as ``parse_range`` reads it back: (0.05, 0.5) -> '0.05:0.5'."""
    return ":".join(f"{float(v):g}" for v in values)


def task_cycle(tasks, mix: dict | None = None) -> list[str]:
    """One period of the task order: task t appears mix[t] times (default 1), spread evenly
    (smooth weighted round robin), e.g. {ct: 2, mr: 1, pet: 1} -> [ct, mr, pet, ct]."""
    weights = {t: int((mix or {}).get(t, 1)) for t in tasks}
    if any(w < 0 for w in weights.values()) or not any(weights.values()):
        raise BadInputError(f"--task-mix shares must be non-negative integers, not all zero: {weights}")
    total, credit, cycle = sum(weights.values()), dict.fromkeys(tasks, 0), []
    for _ in range(total):
        for t in tasks:
            credit[t] += weights[t]
        pick = max(tasks, key=lambda t: credit[t])
        credit[pick] -= total
        cycle.append(pick)
    return cycle
