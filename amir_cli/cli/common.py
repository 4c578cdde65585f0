"""What every command shares: the Typer app, the shared options, output helpers and exit codes."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Annotated, Optional

import typer
from typer.core import TyperCommand

from .._version import __version__
from ..device import PRECISIONS
from ..errors import AmirError
from ..tasks import TASKS

app = typer.Typer(
    name="amir",
    help="Restore medical images (MRI super-resolution, low-dose CT denoising, low-dose PET "
    "synthesis) with the all-in-one AMIR network.",
    pretty_exceptions_show_locals=False,  # patient data must not spill into tracebacks
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # plain help: reads at 80 columns, square brackets kept
    epilog="Example: amir restore ct_lowdose.nii.gz (writes ct_lowdose_amir.nii.gz and a JSON report)",
)


class Command(TyperCommand):
    """A command whose usage line names its arguments plainly (INPUT, not {INPUT})."""

    def collect_usage_pieces(self, ctx):
        return [p[1:-1] if p.startswith("{") and p.endswith("}") else p for p in super().collect_usage_pieces(ctx)]


def examples(*lines: str, note: str = "") -> str:
    """A command's epilog: example lines kept as written (click's \\b stops the rewrapping)."""
    return "Examples:\n\n\b\n" + "\n".join(f"  {line}" for line in lines) + (f"\n\n{note}" if note else "")


# ---------------------------------------------------------------------------------------------
# Shared options (defined once, used by every command)
# ---------------------------------------------------------------------------------------------

QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no summary on the terminal.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON summary on stdout.")]
WeightsOpt = Annotated[
    Optional[str],
    typer.Option("--weights", "-w", metavar="NAME|PATH", help="Registry name or a .safetensors/.pth file [default: the shipped default]."),
]
DeviceOpt = Annotated[
    str, typer.Option("--device", metavar="auto|cpu|cuda[:N]|mps", help="Where the network runs; auto picks cuda > mps > cpu.")
]


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"amir {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Restore medical images with the all-in-one AMIR network."""


# ---------------------------------------------------------------------------------------------
# Output helpers
# ---------------------------------------------------------------------------------------------


def print_json(data) -> None:
    """The machine-readable summary of a command on stdout (one JSON document)."""
    from ..files import jsonable

    sys.stdout.write(json.dumps(jsonable(data), indent=2, default=str, allow_nan=False) + "\n")
    sys.stdout.flush()


def info(message: str, quiet: bool = False) -> None:
    """A human-readable line on stderr, so that stdout stays clean for --json."""
    if not quiet:
        typer.echo(message, err=True)


def progress_bar(quiet: bool):
    """A rich progress bar on stderr (disabled by --quiet or when stderr is not a terminal)."""
    from rich.console import Console

    from .. import tables

    console = Console(stderr=True)
    # no bar (nor stray newlines) in logs and pipes
    return tables.progress_bar(console, "{task.description}", disable=quiet or not console.is_terminal)




TASK_CHOICES = ("auto", *TASKS)


def _choice(value: str, choices: tuple[str, ...], option: str) -> str:
    if value not in choices:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}", param_hint=option)
    return value


@contextmanager
def usage_errors(param_hint: str | None = None):
    """Run the library's checks of option values: the error they raise is a usage error (exit 2)
    with the library's text, before any work."""
    try:
        yield
    except AmirError as exc:
        raise typer.BadParameter(str(exc), param_hint=param_hint) from None


def check_weights_name(name: str) -> None:
    """A registry name given to be written (import, add, train --export): a usage error when invalid."""
    from ..weights import check_name

    with usage_errors("--name"):
        check_name(name)

