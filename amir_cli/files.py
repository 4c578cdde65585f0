"""Writing files so that a reader (or a crash) sees the old file or the new one, never half of one;
and the two ways our records become JSON."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np


TMP_TAG = ".amir-tmp-"  # temp names: .<name>.amir-tmp-<pid>-<random>, removed by a later run once <pid> is dead


def umask() -> int:
    """The process umask (read without changing it for longer than two system calls)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    return 0o666 & ~umask()


def dir_mode() -> int:
    return 0o777 & ~umask()


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(dest: str | Path) -> list[Path]:
    """Remove the temp files and folders that a dead process left for ``dest``; returns them."""
    dest = Path(dest)
    prefix = f".{dest.name}{TMP_TAG}"
    removed = []
    try:
        names = os.listdir(dest.parent if str(dest.parent) else ".")
    except OSError:
        return removed
    for name in names:
        if not name.startswith(prefix):
            continue
        pid_text = name[len(prefix):].split("-", 1)[0]
        if not pid_text.isdigit() or _pid_alive(int(pid_text)):
            continue
        stale = dest.parent / name
        remove_path(stale)
        removed.append(stale)
    return removed


def remove_path(path: Path) -> None:
    """Remove a file, link or folder tree (missing is fine)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def temp_prefix(dest: Path) -> str:
    return f".{dest.name}{TMP_TAG}{os.getpid()}-"


def public_path(path) -> str:
    """The path a user asked for: a temp name of ours (:func:`temp_prefix`) reads as its destination."""
    parts = list(Path(os.fsdecode(path)).parts)
    for i, q in enumerate(parts):
        if q.startswith(".") and TMP_TAG in q:
            name = q[1:].split(TMP_TAG)[0]
            # a Staging folder holds its file under the final name: drop the folder
            parts[i] = "" if i + 1 < len(parts) and parts[i + 1] == name else name
    return str(Path(*filter(None, parts)))


def temp_dir(dest: str | Path) -> Path:
    """A new private folder beside ``dest`` named as this process's temp for it."""
    dest = Path(dest)
    remove_stale(dest)
    return Path(tempfile.mkdtemp(prefix=temp_prefix(dest), dir=dest.parent))


def place(src: Path, dest: Path, *, overwrite: bool) -> None:
    """Move ``src`` (a file or folder) onto ``dest``: exclusively (``FileExistsError`` when ``dest``
    exists, also when another process placed it a moment ago) unless ``overwrite``."""
    if src.is_dir():
        if overwrite:
            replace_dir(src, dest)
        elif os.path.lexists(dest):
            raise FileExistsError(errno.EEXIST, "exists; pass --overwrite to replace it", str(dest))
        else:
            os.rename(src, dest)  # onto a non-empty folder fails as well
    elif overwrite:
        os.replace(src, dest)
    else:
        os.link(src, dest)  # atomic and exclusive
        os.unlink(src)


def atomic_write(
    dest: str | Path, write, *, suffix: str = ".tmp", mode: int | None = None, fsync: bool = False, overwrite: bool = True
) -> Path:
    """Run ``write(tmp_path)`` on a temp file beside ``dest``, then move it onto ``dest``.

    ``mode``: permissions of the new file (default: 0666 less the umask); ``fsync``: flush it to
    disk before the move; ``overwrite=False``: the move is exclusive (``FileExistsError``). On any
    failure the temp file is removed and the error propagates.
    """
    dest = Path(dest)
    remove_stale(dest)
    fd, name = tempfile.mkstemp(prefix=temp_prefix(dest), suffix=suffix, dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, file_mode() if mode is None else mode)  # after: some writers make the file anew (0600)
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        place(tmp, dest, overwrite=overwrite)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


class Staging:
    """Outputs written under temp names beside their destinations, then placed all together.

    ``path(dest)`` gives where to write ``dest`` (inside a private temp folder beside it, with the
    final name, so that a MetaImage header and its data file are written side by side);
    ``publish()`` places every file of those folders exclusively (or replacing them with
    ``overwrite``), with the umask's permissions; on failure it removes what it placed and puts back
    what it replaced. Leaving the
    ``with`` block removes the temp folders.
    """

    def __init__(self, overwrite: bool = False):
        self.overwrite = overwrite
        self.folders: list[tuple[Path, Path]] = []  # (temp folder, destination folder)
        self.placed: list[Path] = []

    def path(self, dest: str | Path) -> Path:
        dest = Path(dest)
        folder = temp_dir(dest)
        self.folders.append((folder, dest.parent))
        return folder / dest.name

    def publish(self) -> list[Path]:
        entries = []
        for folder, target in self.folders:
            names = sorted(os.listdir(folder), key=lambda n: n.lower().endswith((".mhd", ".json")))  # headers last
            entries += [(folder / n, target / n) for n in names]
        aside: list[tuple[Path, Path]] = []  # (an output being replaced, moved out of the way; its place)
        try:
            for src, dest in entries:
                _chmod_tree(src)
                if self.overwrite and os.path.lexists(dest):
                    aside.append((_set_aside(dest, keep=src.is_file() and _is_file(dest)), dest))
                place(src, dest, overwrite=self.overwrite)
                self.placed.append(dest)
        except BaseException:
            for dest in reversed(self.placed):
                remove_path(dest)
            for old, dest in reversed(aside):  # the replaced outputs come back
                os.replace(old, dest)
                remove_path(old)  # left when kept at dest too: a rename onto its own link does nothing
            self.placed = []
            raise
        for old, _ in aside:
            remove_path(old)
        return [dest for _, dest in entries]

    def discard(self) -> None:
        for folder, _ in self.folders:
            remove_path(folder)
        self.folders = []

    def __enter__(self) -> "Staging":
        return self

    def __exit__(self, *exc) -> None:
        self.discard()


def _chmod_tree(path: Path) -> None:
    if path.is_dir():
        os.chmod(path, dir_mode())
        for child in path.iterdir():
            _chmod_tree(child)
    else:
        os.chmod(path, file_mode())


def _set_aside(dest: Path, keep: bool = False) -> Path:
    """Move ``dest`` (a file or folder) to a new temp name beside it; returns that name. ``keep``: a
    file stays at ``dest`` too (a second hard link) so that readers find it until its replacement is
    renamed over it, where the file system has hard links."""
    backup = Path(tempfile.mkdtemp(prefix=temp_prefix(dest), suffix="-old", dir=dest.parent))
    backup.rmdir()
    if keep:
        with contextlib.suppress(OSError):
            os.link(dest, backup)
            return backup
    os.replace(dest, backup)
    return backup


def _is_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def replace_dir(tmp_dir: Path, dest: Path) -> None:
    """Move a fully written temp folder onto ``dest`` (replacing an existing one last-moment)."""
    if dest.exists() or dest.is_symlink():
        backup = _set_aside(dest)
        try:
            os.replace(tmp_dir, dest)
        except BaseException:
            os.replace(backup, dest)
            raise
        remove_path(backup)
    else:
        os.replace(tmp_dir, dest)


def jsonable(x):
    """``x`` with numpy scalars as Python numbers, paths as strings and inf/nan as None (strict JSON: null)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else None
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


def json_writer(data, *, keep_nan: bool = False):
    """A ``write(tmp_path)`` for :func:`atomic_write` that writes ``data`` as indented JSON: strict
    (:func:`jsonable`), or with ``keep_nan`` NaN kept as Python writes it (:func:`json_default`)."""
    if keep_nan:
        text = json.dumps(data, indent=2, default=json_default)
    else:
        text = json.dumps(jsonable(data), indent=2, allow_nan=False)
    return lambda tmp: Path(tmp).write_text(text + "\n")


def write_json(path: str | Path, data, *, overwrite: bool = True, keep_nan: bool = False) -> Path:
    """``data`` as indented JSON (:func:`json_writer`), written atomically (exclusively unless ``overwrite``)."""
    return atomic_write(path, json_writer(data, keep_nan=keep_nan), overwrite=overwrite)
