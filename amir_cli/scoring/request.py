"""What an `amir benchmark` run is asked to do: one object, built once by the command (or a script)
and passed down whole to the run, the case scoring and the summary."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from amir_cli.device import check_device_spec
from amir_cli.errors import BadInputError
from amir_cli.tasks import MR_FACTORS, check_choice


@dataclass(frozen=True)
class BenchmarkRequest:
    data: Path  # the benchmark folder (docs/protocol.md)
    out_dir: Path  # cases.csv, summary.json, summary.md, figures/
    weights: str | None = None  # registry name or file; with an already loaded model, only its name
    simulate: tuple = ()  # Simulation or TASK[:LEVEL] texts
    with_baselines: bool = True
    device: str = "auto"
    precision: str = "fp32"
    batch_size: int | None = None  # None: batch_size_for the device
    max_slices: int | None = None  # None: every slice
    seed: int = 0  # of the simulated degradations
    tta: bool = False  # also the method amir-tta
    data_consistency: bool = True
    kspace_factor: int | None = None  # of the same-grid MR cases in the paired LQ folder (no level)
    notes: tuple = ()  # more lines for the summaries
    figures: bool = True
    data_label: str | None = None  # shown for the data path in the summaries
    overwrite: bool = False  # replace the results of an earlier run in out_dir

    def check(self) -> None:
        """The option values that need no data (a device by its name, not whether this machine has it):
        BadInputError or DeviceError, which the command shows as usage errors."""
        if self.max_slices is not None and int(self.max_slices) < 1:
            raise BadInputError(f"--max-slices must be at least 1, got {self.max_slices}")
        if self.batch_size is not None and self.batch_size < 1:
            raise BadInputError(f"--batch-size must be at least 1, got {self.batch_size}")
        check_choice("--kspace-factor", self.kspace_factor, MR_FACTORS)
        check_device_spec(self.device)
