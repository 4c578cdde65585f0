"""Writing files so that a reader (or a crash) sees the old file or the new one, never half of one;
and the two ways our records become JSON."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np


def atomic_write(dest: str | Path, write, *, suffix: str = ".tmp", mode: int | None = None, fsync: bool = False) -> Path:
    """Run ``write(tmp_path)`` on a temp file beside ``dest``, then rename it onto ``dest``.

    ``mode``: permissions of the new file (mkstemp makes 0600 files); ``fsync``: flush it to disk
    before the rename. On any failure the temp file is removed and the error propagates.
    """
    dest = Path(dest)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix, dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        if mode is not None:
            os.chmod(tmp, mode)
        write(tmp)
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def replace_dir(tmp_dir: Path, dest: Path) -> None:
    """Move a fully written temp folder onto ``dest`` (replacing an existing one last-moment)."""
    if dest.exists() or dest.is_symlink():
        backup = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
        backup.rmdir()
        os.replace(dest, backup)
        try:
            os.replace(tmp_dir, dest)
        except BaseException:
            os.replace(backup, dest)
            raise
        if backup.is_dir() and not backup.is_symlink():
            shutil.rmtree(backup, ignore_errors=True)
        else:
            backup.unlink(missing_ok=True)
    else:
        os.replace(tmp_dir, dest)


def jsonable(x):
    """``x`` with numpy scalars as Python numbers, paths as strings and inf/nan as 'inf'/'nan' (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else str(x)  # inf/nan as strings: strict JSON parsers accept them
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, Path):
        return str(x)
    return x


def json_default(o):
    """``default=`` of ``json.dump`` for records that keep NaN as NaN: numpy scalars as numbers, else text."""
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


def write_json(path: str | Path, data) -> Path:
    """``data`` as strict JSON (:func:`jsonable`), indented, written atomically."""

    def write(tmp: Path) -> None:
        with open(tmp, "w") as f:
            json.dump(jsonable(data), f, indent=2, allow_nan=False)
            f.write("\n")

    return atomic_write(path, write)
