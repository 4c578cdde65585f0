"""The `amir` command line: thin Typer commands that parse options and call the library, one module
per command group (restore and degrade, weights, train, benchmark) around `common`.

Errors become exit codes at this edge only (README, Commands): 0 ok, 1 error (one line on stderr, no
traceback unless AMIR_DEBUG=1), 2 usage error (one line too), 3 a batch where some cases failed.
torch and the heavy modules are imported inside command bodies so that `amir --help` starts fast.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import warnings
from contextlib import contextmanager, nullcontext

import typer

from ..errors import EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, AmirError, one_line
from . import restore, train, benchmark, weights  # noqa: F401, I001  (each registers its commands on `app`, in the order of --help)
from .common import app, info, print_json, progress_bar

# click's exceptions, from the copy of click that recent typer versions carry or from click itself
_click = sys.modules[typer.BadParameter.__module__]

__all__ = ["app", "main", "info", "print_json", "progress_bar", "EXIT_OK", "EXIT_ERROR", "EXIT_USAGE", "EXIT_PARTIAL"]

@contextmanager
def _plain_library_messages():
    """Library warnings (pydicom on an odd but readable file) as one line each, without the source
    path of the library's line; nibabel's notes on header fields it mends itself are not shown."""
    def show(message, category, filename, lineno, file=None, line=None):
        typer.echo(f"amir: warning: {one_line(message, limit=None)}", err=True)

    nibabel_log = logging.getLogger("nibabel")
    level = nibabel_log.level
    with warnings.catch_warnings():
        warnings.showwarning = show
        nibabel_log.setLevel(logging.ERROR)
        try:
            yield
        finally:
            nibabel_log.setLevel(level)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (`amir = amir_cli.cli:main`).

    A usage error becomes one line `amir: error: <message> (see 'amir CMD --help')` on stderr and exit
    code 2; everything else that escapes a command becomes one line `amir: error: <message>` and exit 1.
    """
    debug = os.environ.get("AMIR_DEBUG", "") not in ("", "0")
    try:
        with nullcontext() if debug else _plain_library_messages():
            # not standalone: click's errors come here; an Exit's code (help, --version, a partial batch) is returned
            code = app(args=argv, prog_name="amir", standalone_mode=False)
        sys.exit(code if isinstance(code, int) else EXIT_OK)
    except SystemExit:
        raise
    except _click.UsageError as exc:
        if isinstance(exc, getattr(_click, "NoArgsIsHelpError", ())):  # `amir`, `amir weights`: the help in full
            exc.show()
        else:
            command = exc.ctx.command_path if exc.ctx else "amir"
            message = " ".join(exc.format_message().split()).rstrip(".")
            typer.echo(f"amir: error: {message} (see '{command} --help')", err=True)
        sys.exit(exc.exit_code)
    except _click.ClickException as exc:
        typer.echo(f"amir: error: {' '.join(exc.format_message().split())}", err=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("amir: error: aborted", err=True)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        typer.echo("amir: error: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the one place where errors become exit codes
        if debug:
            raise
        if isinstance(exc, (AmirError, OSError, ValueError, MemoryError)):
            typer.echo(f"amir: error: {one_line(exc, limit=None)}", err=True)
        else:
            typer.echo(f"amir: error: unexpected {type(exc).__name__}: {one_line(exc, limit=None)} (AMIR_DEBUG=1 shows details)", err=True)
        sys.exit(EXIT_ERROR)
    finally:
        if argv is None:  # this process is the command: its exit need not walk torch's objects
            gc.freeze()  # with the cyclic collector (about a second after the network ran)
