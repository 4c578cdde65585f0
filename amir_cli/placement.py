"""Where `amir restore` (and `amir degrade`) may read and write: input kinds, default output and
report paths, the checks that keep every input safe, and placing the output and its report together.

No model and no torch here; the restore job itself is :mod:`amir_cli.restore`.
"""

from __future__ import annotations

import glob
import json
import os
import re
from pathlib import Path

from .errors import BadInputError
from .files import Staging, public_path, write_json
from .imaging import dicom
from .imaging.io import Volume, data_files, image_suffix, list_cases, stem, write_image



def is_dicom_input(path: Path) -> bool:
    return path.is_dir() or (not image_suffix(path) and (path.suffix.lower() in dicom.DICOM_SUFFIXES or dicom.is_dicom_file(path)))


def is_batch_input(path: Path) -> bool:
    """A folder is a batch of cases unless it holds the DICOM files of one series and no other
    image file or DICOM folder."""
    if not path.is_dir():
        return False
    try:
        if list_cases(path) != [path]:
            return True
    except BadInputError:
        return True  # no image at all: the batch says so
    try:
        return len(dicom.folder_series(path)) > 1
    except BadInputError:
        return False  # reading the folder as one case says what is wrong with it


def default_output(input_path: Path, suffix_tag: str = "_amir") -> Path:
    """``<stem>_amir.<same format>`` beside the input; a series folder gives ``<folder>_amir``."""
    p = Path(input_path)
    if p.is_dir():
        if p.name in ("", ".", ".."):  # "." or "sub/..": the folder's own name
            p = Path(os.path.abspath(p))
        return p.parent / f"{p.name}{suffix_tag}"
    suffix = image_suffix(p) or p.suffix
    return p.parent / f"{stem(p) if image_suffix(p) else p.stem}{suffix_tag}{suffix}"


def report_path_for(output: Path) -> Path:
    """``<output>.json`` (a series folder ``x_amir`` gets ``x_amir.json`` beside it)."""
    return output.parent / (output.name.rstrip("/") + ".json")


def same_or_inside(a: Path, b: Path) -> bool:
    """True when ``a`` is ``b`` (also through links or hard links) or lies inside folder ``b``."""
    ra, rb = os.path.realpath(a), os.path.realpath(b)
    if ra == rb or ra.startswith(rb.rstrip(os.sep) + os.sep):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def written_files(output: Path) -> list[Path]:
    """The files an output comprises: a MetaImage header ``.mhd`` and its data file ``.zraw``."""
    output = Path(output)
    if image_suffix(output) == ".mhd":
        return [output, output.parent / f"{stem(output)}.zraw"]
    return [output]


def is_amir_output(folder: Path) -> bool:
    """A folder holding DICOM files written by amir (our DerivationDescription), and else only amir's
    JSON reports of the series in its subfolders."""
    files = [p for p in folder.rglob("*") if not p.is_dir()]
    images = [p for p in files if dicom.is_dicom_file(p)]
    if not images or not all(p in images or _is_amir_report(p) for p in files):
        return False
    pydicom = dicom._pydicom()
    try:
        ds = pydicom.dcmread(str(images[0]), stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - unreadable: not ours
        return False
    text = str(ds.get("DerivationDescription", "") or "")
    return "amir" in text.lower()


def amir_json(path: Path) -> dict | None:
    """The contents of a JSON file that amir wrote (a report or a summary: its ``tool`` names amir),
    else None."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and str(data.get("tool", "")).startswith("amir") else None


def _is_amir_report(path: Path) -> bool:
    return path.suffix == ".json" and amir_json(path) is not None


def is_batch_output(folder: Path) -> bool:
    """A folder that an earlier `amir restore` of a batch wrote: its summary ``<folder>.json`` (or a
    torchrun rank's) lies beside it."""
    for summary in sorted(folder.parent.glob(f"{glob.escape(folder.name)}*.json")):
        if re.fullmatch(rf"{re.escape(folder.name)}(\.rank\d+)?\.json", summary.name):
            data = amir_json(summary)
            if data is not None and data["tool"] == "amir" and "cases_total" in data:
                return True
    return False


def check_output(
    input_path: Path, output: Path, overwrite: bool, what: str = "output", inputs=(), option: str = "-o"
) -> None:
    """Refuse to write onto (or around) any input (``input_path`` and ``inputs``: the reference,
    the weights file, their data files; through links too), into a missing folder, or onto an
    existing file without --overwrite; an existing folder is only replaced when amir wrote it.
    ``option`` is the command-line option the messages ask to change."""
    sources = [f for i in (input_path, *inputs) if i is not None for f in data_files(Path(i))]
    for target in written_files(output):
        for src in sources:
            if same_or_inside(target, src) or same_or_inside(src, target):
                raise BadInputError(f"{target}: {what} would overwrite the input {src}; choose another {option}")
    parent = output.parent
    if not parent.is_dir():
        raise BadInputError(f"{output}: {what} folder {parent} does not exist")
    for target in written_files(output):
        if not (target.exists() or target.is_symlink()):
            continue
        if target.is_dir() and not target.is_symlink() and is_batch_output(target):
            raise BadInputError(f"{target}: holds the outputs of an earlier batch, which one case does not replace; "
                                f"choose another {option}")
        if not overwrite:
            raise BadInputError(f"{target}: {what} exists; pass --overwrite to replace it")
        if target.is_dir() and not target.is_symlink() and not is_amir_output(target):
            raise BadInputError(f"{target}: refusing to replace a folder that amir did not write (originals are never replaced)")


def check_input_format(input_path: Path) -> None:
    """An input file must be an image format we read (blamed on the input, not on the output)."""
    if input_path.is_file() and not image_suffix(input_path) and not is_dicom_input(input_path):
        raise BadInputError(
            f"{input_path}: unknown input format (expected .nii, .nii.gz, .mha, .mhd, .nrrd, a DICOM file or a DICOM series folder)"
        )


def publish(image: Volume, output: Path, *, reference: Volume, description: str, overwrite: bool,
            report: Path | None = None, result: dict | None = None) -> Path:
    """Write the image (and the JSON report ``result``) under temp names, then place them all
    together, exclusively unless ``overwrite``: both land or neither does."""
    try:
        with Staging(overwrite) as staging:
            write_image(image, staging.path(output), reference=reference, description=description)
            if report is not None:
                write_json(staging.path(report), result)
            staging.publish()
    except FileExistsError as exc:  # os.link(temp, output) names our temp first: the user's output is the second name
        where = public_path(exc.filename2 or exc.filename or output)
        raise BadInputError(f"{where}: appeared while this command ran (another amir?); pass --overwrite to replace it") from None
    except OSError as exc:  # the image's writer names its own failures; this is the report's or the placing's
        where = public_path(exc.filename2 or exc.filename or report or output)
        raise BadInputError(f"{where}: cannot write ({exc.strerror or exc})") from None
    return output


FILE_EXTENSION = re.compile(r"\.[a-z][a-z0-9]{0,4}")  # .png, .jpg, .txt: a file, not a series folder


def check_output_format(input_path: Path, output: Path) -> None:
    """An output path must name a format we write: an image file, or for a DICOM input a .dcm file
    or a series folder (a name without a file extension: ``scan.png`` is refused, ``1.2.840.5`` is not)."""
    if image_suffix(output):
        return
    suffix = output.suffix.lower()
    if is_dicom_input(input_path):
        if suffix in dicom.DICOM_SUFFIXES or not FILE_EXTENSION.fullmatch(suffix):
            return
        raise BadInputError(f"{output}: unknown output format; use .nii, .nii.gz, .mha, .mhd, .nrrd, .dcm "
                            "or a folder name without an extension for a DICOM series")
    if suffix in dicom.DICOM_SUFFIXES:
        raise BadInputError(f"{output}: DICOM output needs a DICOM input; use .nii, .nii.gz, .mha, .mhd or .nrrd")
    raise BadInputError(f"{output}: unknown output format; use .nii, .nii.gz, .mha, .mhd or .nrrd")
