"""`amir weights`: list, verify, path, import, add and remove."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import AmirError, one_line
from ..tasks import TASKS
from .common import Command, JsonOpt, QuietOpt, app, check_weights_name, examples, print_json


weights_app = typer.Typer(
    rich_markup_mode=None,
    help="The weights registry: list, add, import, verify, remove, path.",
    no_args_is_help=True,
    epilog=examples("amir weights list", "amir weights import AMIR_official.pth --name amir-paper", "amir weights remove amir-paper"),
)
app.add_typer(weights_app, name="weights")


@weights_app.command(cls=Command, name="list", short_help="List the shipped and user weights.", epilog=examples("amir weights list --json"))
def weights_list(quiet: QuietOpt = False, json_out: JsonOpt = False) -> None:
    """List the shipped and user weights (name, configuration, tasks, sha256, file)."""
    from .. import weights as W

    default = W.default_name()
    rows = [
        {
            "name": e.name,
            "default": e.name == default,
            "shipped": e.shipped,
            "config": e.info.get("config_name") or e.info.get("config"),
            "tasks": e.info.get("tasks"),
            "sha256": e.sha256,
            "path": str(e.path),
        }
        for e in W.entries()
    ]
    if json_out:
        print_json({"default": default, "user_dir": str(W.user_dir()), "entries": rows})
        return
    if quiet:
        for r in rows:
            typer.echo(r["name"])
        return
    if not rows:
        typer.echo(f"no weights installed (user folder {W.user_dir()}); import some with `amir weights import`")
        return
    from rich.console import Console

    from ..tables import fitted_table

    table_rows = []
    for r in rows:
        tasks = r["tasks"] if isinstance(r["tasks"], list) else [str(r["tasks"] or "")]
        table_rows.append((r["name"] + (" (default)" if r["default"] else ""), "shipped" if r["shipped"] else "user",
                           "all" if set(tasks) == set(TASKS) else ",".join(tasks), r["sha256"][:12], Path(r["path"]).name))
    console = Console()
    table, _ = fitted_table(("name", "source", "tasks", "sha256", "file"), table_rows, width=console.width, drop=("sha256", "file", "tasks"))
    console.print(table)
    for label, shipped in (("shipped", True), ("user", False)):  # whole paths, on lines of their own
        folders = sorted({str(Path(r["path"]).parent) for r in rows if r["shipped"] == shipped})
        for folder in folders:
            typer.echo(f"{label} files in {folder}")


@weights_app.command(cls=Command, name="verify", short_help="Check every weights file against its sha256.", epilog=examples("amir weights verify", "amir weights verify my-ct-model"))
def weights_verify(
    names: Annotated[Optional[list[str]], typer.Argument(metavar="NAME", help="Entries to check [default: all].", show_default=False)] = None,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Check every weights file against the sha256 recorded in its manifest."""
    from .. import weights as W

    chosen = [W.find(n) for n in names] if names else W.entries()
    results = []
    for e in chosen:
        try:
            W.verify(e)
            results.append({"name": e.name, "ok": True, "sha256": e.sha256})
        except AmirError as exc:
            results.append({"name": e.name, "ok": False, "error": one_line(exc, limit=None)})
    if json_out:
        print_json({"entries": results})
    elif not quiet:
        for r in results:
            typer.echo(f"{r['name']}: " + ("ok" if r["ok"] else f"FAILED ({r['error']})"))
    bad = [r["name"] for r in results if not r["ok"]]
    if bad:
        raise AmirError(f"{len(bad)} of {len(results)} weights failed verification: {', '.join(bad)}")


@weights_app.command(cls=Command, name="path", short_help="Print the file of a weights entry.", epilog=examples("amir weights path amir-s"))
def weights_path(
    name: Annotated[Optional[str], typer.Argument(metavar="NAME", help="Entry name [default: the default weights].", show_default=False)] = None,
    json_out: JsonOpt = False,
) -> None:
    """Print the file of a weights entry."""
    from .. import weights as W

    name = name or W.default_name()
    if name is None:
        raise AmirError("no default weights are installed; give a NAME")
    entry = W.find(name)
    if not entry.path.is_file():
        raise AmirError(f"weights file for {entry.name!r} is missing: {entry.path}")
    if json_out:
        print_json({"name": entry.name, "path": str(entry.path), "sha256": entry.sha256, "shipped": entry.shipped})
    else:
        typer.echo(str(entry.path))


@weights_app.command(cls=Command, name="import", short_help="Add a published checkpoint to the user registry.", epilog=examples("amir weights import AMIR_official.pth --name amir-paper"))
def weights_import(
    path: Annotated[Path, typer.Argument(metavar="OFFICIAL.pth", help="A published AMIR state_dict (.pth) or a .safetensors file.", show_default=False)],
    name: Annotated[str, typer.Option("--name", help="Registry name for the imported weights.", show_default=False)],
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Check that a published checkpoint loads into AMIR and add it to the user registry."""
    from .. import weights as W

    check_weights_name(name)
    if not path.is_file():
        raise AmirError(f"{path}: {'a folder, not a weights file' if path.is_dir() else 'not a regular file' if path.exists() else 'no such file'}")
    entry = W.import_official(path, name)
    if json_out:
        print_json({"name": entry.name, "path": str(entry.path), "sha256": entry.sha256})
    elif not quiet:
        typer.echo(f"imported {path} as {entry.name} -> {entry.path} (sha256 {entry.sha256[:12]})")



@weights_app.command(cls=Command, name="add", short_help="Add a training run's weights to the user registry.", epilog=examples("amir weights add runs/s1 --name my-amir-s"))
def weights_add(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="An `amir train` run folder.", show_default=False)],
    name: Annotated[str, typer.Option("--name", help="Registry name for the run's weights.", show_default=False)],
    last: Annotated[bool, typer.Option("--last", help="Take the latest weights instead of the best validated ones.")] = False,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Add a training run's best weights (EMA if used) to the user registry, with its recipe and scores."""
    from ..training import export_run

    check_weights_name(name)
    entry = export_run(run_dir, name, which="last" if last else "best")
    if not last and "last.pt" in entry.info.get("source", ""):
        typer.echo(f"amir: note: {run_dir} has no best.pt (no validation has run): its latest weights were added", err=True)
    if json_out:
        print_json({"name": entry.name, "path": str(entry.path), "sha256": entry.sha256})
    elif not quiet:
        typer.echo(f"added {run_dir} as {entry.name} -> {entry.path} (sha256 {entry.sha256[:12]})")


@weights_app.command(cls=Command, name="remove", short_help="Remove a user entry from the registry.", epilog=examples("amir weights remove my-amir-s"))
def weights_remove(
    name: Annotated[str, typer.Argument(metavar="NAME", help="A user entry (shipped weights are never removed).", show_default=False)],
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Remove a user entry (trained or imported) and its file from the registry."""
    from .. import weights as W

    entry = W.remove_entry(name)
    if json_out:
        print_json({"name": entry.name, "path": str(entry.path), "sha256": entry.sha256, "removed": True})
    elif not quiet:
        typer.echo(f"removed {entry.name} ({entry.path})")
