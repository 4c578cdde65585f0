"""`amir train`: datasets of on-the-fly degraded patches, the training loop, checkpoints, DDP, export.

    from amir_cli.training import TrainOptions, train, export_run
    train(TrainOptions(data="DATA", out="runs/r1", config="amir-s", iterations=20000))
    train(TrainOptions(), resume="runs/r1")      # after a crash or kill -9
    export_run("runs/r1", "my-amir-s")           # a weights registry entry (with its recipe and scores)
"""

from .checkpoint import RunFolderError
from .data import Levels, PatchSampler, SamplerOptions, TrainingDataError, load_volumes, validation_set
from .export import export_run
from .loop import Hooks, TrainingDivergedError, TrainOptions, evaluate, state_hash, train

__all__ = [
    "Hooks",
    "Levels",
    "PatchSampler",
    "RunFolderError",
    "SamplerOptions",
    "TrainOptions",
    "TrainingDataError",
    "TrainingDivergedError",
    "evaluate",
    "export_run",
    "load_volumes",
    "state_hash",
    "train",
    "validation_set",
]
