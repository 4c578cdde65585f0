"""Score candidate weights on the validation subjects at every level: the table that chooses weights.

Reads the ``validation/`` volumes of a training data folder (``scripts/build_training_data.py``
puts the validation subjects of ``benchmarks/splits.py`` there), degrades 16 of their slices per
task and level (CT and PET in 256x256 centre crops, MR whole; fixed seed) and prints each candidate's
PSNR gain over the input (docs/protocol.md), each slice restored as plain `amir restore` restores it
(as `amir train` validates). Never the test split.

    python benchmarks/validation.py DATA amir-s runs/cpu_stage10/best.pt ...
"""

from __future__ import annotations

import argparse
import sys

from amir_cli.tasks import SCORED_LEVELS

LEVELS = {task: tuple(levels.values()) for task, levels in SCORED_LEVELS.items()}


def validation_sets(data) -> dict:
    """(task, level) -> validation slices of the validation subjects."""
    from amir_cli.training.levels import Levels
    from amir_cli.training.validation import validation_set
    from amir_cli.training.volumes import load_volumes

    _, val_volumes, _ = load_volumes(data)
    if not val_volumes:
        raise SystemExit(f"{data}: no validation/ volumes (build the folder with scripts/build_training_data.py)")
    sets = {}
    for task, levels in LEVELS.items():
        for level in levels:
            lv = Levels(mr_factors=(level,)) if task == "mri-sr" else Levels(val_ct_dose=level, val_pet_dose=level)
            sets[(task, level)] = validation_set(val_volumes, (task,), 16, 256, 0, lv)
    return sets


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="training data folder with validation/ volumes")
    ap.add_argument("weights", nargs="+", help="registry names, .safetensors files or run checkpoints (best.pt, last.pt)")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from amir_cli.training.validation import evaluate, input_scores
    from amir_cli.weights import load_weights

    sets = validation_sets(args.data)
    inputs = {k: input_scores(v) for k, v in sets.items()}
    print("| task | level | input PSNR | " + " | ".join(args.weights) + " |")
    print("|---|---|---:|" + "---:|" * len(args.weights))
    gains = {}
    for w in args.weights:
        model = load_weights(w, torch.device("cpu")).model
        for key, vs in sets.items():
            gains[(w, key)] = evaluate(model, vs, torch.device("cpu"))[key[0]]["psnr"] - inputs[key][key[0]]["psnr"]
    for task, level in sets:
        cells = " | ".join(f"{gains[(w, (task, level))]:+.2f}" for w in args.weights)
        print(f"| {task} | {level:g} | {inputs[(task, level)][task]['psnr']:.2f} | {cells} |")
    for w in args.weights:
        per_task = {t: float(np.mean([gains[(w, (t, level))] for level in levels])) for t, levels in LEVELS.items()}
        print(f"{w}: mean gain per task " + ", ".join(f"{t} {g:+.2f}" for t, g in per_task.items())
              + f"; mean {np.mean(list(per_task.values())):+.2f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
