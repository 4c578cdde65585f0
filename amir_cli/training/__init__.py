"""`amir train`: datasets of on-the-fly degraded patches, the training loop, checkpoints, DDP, export.

    from amir_cli.training import TrainOptions, train, export_run
    train(TrainOptions(data="DATA", out="runs/r1", config="amir-s", iterations=20000))
    train(TrainOptions(), resume="runs/r1")      # after a crash or kill -9
    export_run("runs/r1", "my-amir-s")           # a weights registry entry (with its recipe and scores)

Modules: ``options`` (TrainOptions, the defaults), ``levels`` (degradation level ranges),
``volumes`` (data layouts, held-out slices), ``sampling`` (deterministic batches), ``validation``
(validation set and scores), ``trainer`` (step, validate, checkpoint), ``checkpoint`` (run-folder
files), ``loop`` (the entry point, torchrun), ``export`` (registry entries).
"""

from importlib import import_module

# name -> module: imported on first use, so that reading TrainOptions (the CLI's defaults) starts no torch
_EXPORTS = {
    "RunFolderError": "checkpoint",
    "export_run": "export",
    "Levels": "levels",
    "train": "loop",
    "TaskWeighting": "options",
    "TrainOptions": "options",
    "PatchSampler": "sampling",
    "SamplerOptions": "sampling",
    "Hooks": "trainer",
    "TrainingDivergedError": "trainer",
    "evaluate": "validation",
    "validation_set": "validation",
    "TrainingDataError": "volumes",
    "load_volumes": "volumes",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
