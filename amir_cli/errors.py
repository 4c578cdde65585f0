"""The few exception types that the command line turns into one-line messages and exit codes."""

from __future__ import annotations

from contextlib import contextmanager


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
    """Any failure inside becomes ``BadInputError(f"{prefix} ({describe(exc)})")`` (default
    :func:`one_line`); our own input errors and interrupts pass unchanged."""
    try:
        yield
    except (BadInputError, KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        raise BadInputError(f"{prefix} ({(describe or one_line)(exc)})") from None


def one_line(exc: BaseException, limit: int | None = 300) -> str:
    """An exception as one short line (no tracebacks, no newlines) for user messages, cut at ``limit``."""
    text = str(exc).split("Traceback (most recent call last)")[0]  # third-party messages that embed one
    text = " ".join(text.split()) or type(exc).__name__
    return text if limit is None else text[:limit]
