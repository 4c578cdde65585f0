"""A finished (or running) training run -> a weights registry entry with its record (recipe, data,
command, scores)."""

from __future__ import annotations

from pathlib import Path

from . import checkpoint as ckpt


def export_run(run_dir, name: str, which: str = "best"):
    """Register the run's weights as user entry ``name``; returns the weights.Entry.

    ``which="best"`` takes ``best.pt`` (the EMA weights when the run used ``--ema``) and falls back to
    ``last.pt`` when no validation has run yet; ``which="last"`` takes the latest weights (EMA if any),
    with the scores of the validation at that iteration when there was one (from ``metrics.jsonl``).
    The manifest record holds the configuration name, tasks, training data, recipe (all options),
    the exact command, seed, iterations, parameter count and validation scores.
    """
    from amir_cli import weights
    from amir_cli.network import AmirConfig

    run_dir = Path(run_dir)
    info = ckpt.read_json(run_dir / ckpt.RUN_JSON)
    best_path, last_path = run_dir / ckpt.BEST, run_dir / ckpt.LAST
    if which == "best" and best_path.exists():
        saved = ckpt.load_torch(best_path)
        state, iteration, scores, ema = saved["model"], int(saved["iteration"]), saved.get("scores"), bool(saved.get("ema"))
        source = "best.pt (best validation mean PSNR gain)"
    elif last_path.exists():
        saved = ckpt.load_torch(last_path)
        ema = saved.get("ema") is not None
        state, iteration = (saved["ema"] if ema else saved["model"]), int(saved["iteration"])
        scores = _validation_at(run_dir, iteration, info)
        source = "last.pt"
    else:
        raise ckpt.RunFolderError(f"{run_dir}: no best.pt or last.pt to export")
    opts = info.get("options", {})
    record = {
        "source": f"trained with amir train ({source}{', EMA weights' if ema else ''})",
        "config_name": info.get("config_name"),
        "tasks": list(opts.get("tasks", [])),
        "training_data": info.get("data"),
        "recipe": opts,
        "command": info.get("command"),
        "invocations": info.get("invocations"),
        "seed": info.get("seed"),
        "iterations": iteration,
        "iterations_planned": opts.get("iterations"),
        "world_size": info.get("world_size"),
        "parameters": info.get("parameters"),
        "init": info.get("init"),
        "scores": scores,
        "validation": {k: v for k, v in (info.get("validation") or {}).items() if k != "slices"},
        "tool": info.get("tool"),
    }
    config = AmirConfig.from_dict(info["config"]) if info.get("config") else None  # the trained one, top_k included
    return weights.save_entry(name, state, record, config)


def _validation_at(run_dir: Path, iteration: int, info: dict) -> dict | None:
    """The validation scores logged at ``iteration``, shaped like ``best.pt``'s but without RMSE, which
    the log does not keep (None if that iteration was not validated)."""
    for rec in ckpt.MetricsLog.read(run_dir / ckpt.METRICS):
        if rec.get("kind") == "val" and rec.get("iteration") == iteration:
            model = {t: {"psnr": rec["psnr"][t], "ssim": rec["ssim"][t]} for t in rec["psnr"]}
            inputs = (info.get("validation") or {}).get("input_scores")
            return {"iteration": iteration, "model": model, "input": inputs, "mean_gain_db": rec["mean_gain"]}
    return None


def exported_entry(run_dir, name: str):
    """The registry entry ``name`` when it holds weights of this run (an earlier export), else None."""
    from amir_cli import weights
    from amir_cli.errors import WeightsError

    try:
        entry = weights.find(name)
    except WeightsError:
        return None
    first = (ckpt.read_json(Path(run_dir) / ckpt.RUN_JSON).get("invocations") or [])[:1]
    return entry if first and (entry.info.get("invocations") or [])[:1] == first else None
