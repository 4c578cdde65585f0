"""The few exception types that the command line turns into one-line messages and exit codes."""

from __future__ import annotations

from contextlib import contextmanager

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3  # EXIT_PARTIAL: some cases of a folder failed


class AmirError(Exception):
    """Any failure that the user can act on; its message is printed as one line."""


class BadInputError(AmirError):
    """An image, folder or option value that cannot be used."""


class WeightsError(AmirError):
    """Weights that are missing, tampered with or do not fit the network."""


class DeviceError(AmirError):
    """A requested device or precision that this machine cannot provide."""


@contextmanager
def failures_as_bad_input(prefix: str, describe=None):
    """Any failure inside becomes ``BadInputError(f"{prefix} ({describe(exc)})")`` (default: the
    system's reason for an OSError, the prefix names the file; else :func:`one_line`); our own input
    errors and interrupts pass unchanged."""
    try:
        yield
    except (BadInputError, KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        raise BadInputError(f"{prefix} ({(describe or _reason)(exc)})") from None


def _reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else one_line(exc)


def one_line(exc: BaseException, limit: int | None = 300) -> str:
    """An exception as one short line (no tracebacks, no newlines) for user messages, cut at ``limit``."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        from .files import public_path

        text = f"{public_path(exc.filename2 if exc.filename2 is not None else exc.filename)}: {exc.strerror}"
    else:
        text = str(exc).split("Traceback (most recent call last)")[0]  # third-party messages that embed one
    text = " ".join(text.split()) or type(exc).__name__
    return text if limit is None else text[:limit]
