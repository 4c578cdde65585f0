"""Finding DICOM files and grouping a folder into series.

A folder as archives and scanners deliver it may hold more than one series: files are grouped by
SeriesInstanceUID; objects that are no image to restore (segmentations, reports, ...) and the
localizer (scout) images of a series are left out with a note, and so are the few images of a
series that lie in another orientation than most of its images.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from amir_cli.errors import BadInputError, one_line
from amir_cli.imaging.dicom_objects import is_localizer, not_an_image
from amir_cli.imaging.dicom_tags import _pydicom

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"

Items = list  # [(path, header)] of one series


def is_dicom_file(path: str | Path) -> bool:
    """True for a DICOM Part-10 file (128-byte preamble followed by 'DICM')."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def folder_dicom_files(folder: str | Path) -> list[Path]:
    """The DICOM files directly inside ``folder`` (by magic bytes or a .dcm/.dicom/.ima name)."""
    files = []
    for f in sorted(Path(folder).iterdir()):
        if f.name.startswith(".") or f.name.upper() == "DICOMDIR" or not f.is_file():
            continue
        if f.suffix.lower() in DICOM_SUFFIXES or is_dicom_file(f):
            files.append(f)
    return files


def read_header(path: Path):
    """Header only (no pixel data); BadInputError for anything that is not DICOM."""
    pydicom = _pydicom()
    if not os.access(path, os.R_OK):
        raise BadInputError(f"{path}: file is not readable (permission denied)")
    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as exc:
        reason = one_line(exc).replace(" Use force=True to force reading.", "")  # pydicom's advice to programmers
        raise BadInputError(f"{path}: not a readable DICOM file ({reason})") from None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def scan_folder(folder: str | Path) -> tuple[dict[str, Items], list[str]]:
    """({SeriesInstanceUID: [(path, header)]} of the images to restore, notes on what was left out)."""
    folder = Path(folder)
    if not any(True for f in folder.iterdir() if not f.name.startswith(".")):
        raise BadInputError(f"{folder}: folder is empty")
    files = folder_dicom_files(folder)
    if not files:
        raise BadInputError(
            f"{folder}: no DICOM files in this folder (a folder of image files or series folders is a batch)"
        )
    series: dict[str, Items] = {}
    localizers: dict[str, Items] = {}
    others: dict[str, int] = {}
    unreadable: list[Path] = []
    for f in files:
        try:
            ds = read_header(f)
        except BadInputError:
            unreadable.append(f)  # a stray text file named .dcm, or a file cut short
            continue
        if str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "")) == _DICOMDIR_CLASS:
            continue
        kind = not_an_image(ds)
        if kind:
            others[kind] = others.get(kind, 0) + 1
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if not uid:
            raise BadInputError(f"{f}: missing required tag SeriesInstanceUID (0020,000E)")
        (localizers if is_localizer(ds) else series).setdefault(uid, []).append((f, ds))
    notes = [f"left out {_plural(n, 'file')}: {kind}" for kind, n in others.items()]
    if unreadable:
        notes.append(f"left out {_plural(len(unreadable), 'unreadable file')} ({unreadable[0].name}"
                     f"{', ...' if len(unreadable) > 1 else ''}): not DICOM, or cut short")
    if not series:
        if not localizers:
            raise BadInputError(f"{folder}: no image to restore in this folder ({'; '.join(notes)})")
        series, localizers = localizers, {}  # a folder of localizers only: restore them as asked
    for uid, items in localizers.items():
        notes.append(f"left out {_plural(len(items), 'localizer image')} (ImageType LOCALIZER) of series {_number(items)}")
    for uid, items in series.items():
        series[uid], note = _main_orientation(items)
        notes += note
    return series, notes


def _number(items: Items) -> str:
    return str(items[0][1].get("SeriesNumber", "") or "?")


def _main_orientation(items: Items) -> tuple[Items, list[str]]:
    """The images of a series in the orientation of most of them, and a note on the others (a
    localizer kept in the series); unchanged when no orientation has a majority."""
    groups: dict[tuple, Items] = {}
    for item in items:
        try:
            key = tuple(np.round([float(v) for v in item[1].ImageOrientationPatient], 3))
        except (AttributeError, TypeError, ValueError):
            return items, []
        groups.setdefault(key, []).append(item)
    main = max(groups.values(), key=len)
    rest = len(items) - len(main)
    if rest == 0 or len(main) <= rest:
        return items, []
    return main, [
        f"left out {_plural(rest, 'image')} of series {_number(items)} in another orientation than its other "
        f"{len(main)} (a localizer?)"
    ]


def series_label(items: Items) -> str:
    """A folder name for a series: its number and modality (never its description)."""
    ds = items[0][1]
    text = f"series_{ds.get('SeriesNumber', '') or ''}_{ds.get('Modality', '') or ''}".strip("_")
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def folder_series(folder: str | Path) -> list[tuple[str, str]]:
    """[(SeriesInstanceUID, a unique folder name)] of the image series in ``folder``, largest first."""
    series, _notes = scan_folder(folder)
    ordered = sorted(series.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    labels = [series_label(items) for _uid, items in ordered]
    return [
        (uid, label if labels.count(label) == 1 else f"{label}_{uid}")
        for (uid, _items), label in zip(ordered, labels, strict=True)
    ]


def describe_series(series: dict[str, Items]) -> str:
    """The series of a folder in one line: UID, number, modality and file count (no descriptions:
    they may carry patient names)."""
    return "; ".join(
        f"{uid} (series number {items[0][1].get('SeriesNumber', '?')}, {items[0][1].get('Modality', '?')}, "
        f"{_plural(len(items), 'file')})"
        for uid, items in sorted(series.items(), key=lambda kv: -len(kv[1]))
    )
