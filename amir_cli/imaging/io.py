"""Medical images in and out: NIfTI, MetaImage/NRRD and DICOM as one ``Volume``.

Arrays are float32 in physical units, indexed (I, J, K) in NIfTI voxel order, with a 4x4 RAS+
voxel-to-world affine. The reader keeps in ``meta`` what the writer needs to rebuild the header,
so geometry makes a round trip by construction (nnU-Net style). No torch here.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path

import numpy as np

from amir_cli.errors import BadInputError, failures_as_bad_input, one_line
from amir_cli.files import Staging, public_path
from amir_cli.imaging.volume import (
    Volume,
    check_affine,
    check_dimensions,
    check_memory,
    check_pixels,
    choose_slice_axis,
    output_dtype,
    ras_from_lps,
    to_dtype,
)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd")
IMAGE_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES
CASE_DEPTH = 5  # how many folders deep below an input folder cases are looked for


def _nibabel():
    """nibabel, imported without pydicom unless that is already loaded: nibabel imports it only to
    decode DICOM header extensions, which amir carries through as raw bytes, and the import costs
    a NIfTI restore a sixth of a second of start-up."""
    if "nibabel" not in sys.modules and "pydicom" not in sys.modules:
        sys.modules["pydicom"] = None  # `import pydicom` raises ImportError while nibabel loads
        try:
            import nibabel
        finally:
            del sys.modules["pydicom"]
    import nibabel

    return nibabel



# --------------------------------------------------------------------------------------------
# file names


def image_suffix(path: str | Path) -> str:
    """'.nii.gz', '.nii', '.mha', '.mhd', '.nrrd' or '' (case-insensitive)."""
    name = Path(path).name.lower()
    for s in IMAGE_SUFFIXES:
        if name.endswith(s):
            return s
    return ""


def stem(path: str | Path) -> str:
    """File name without its image suffix (``ct.nii.gz`` -> ``ct``)."""
    p = Path(path)
    s = image_suffix(p)
    return p.name[: len(p.name) - len(s)] if s else p.name


# --------------------------------------------------------------------------------------------
# reading


def read_image(path: str | Path, series_uid: str | None = None) -> Volume:
    """Read NIfTI, MetaImage/NRRD, one DICOM file, or a folder holding one DICOM series (or the
    series ``series_uid`` of a folder holding several)."""
    from amir_cli.imaging import dicom

    p = Path(path)
    if not p.exists():
        raise BadInputError(f"{p}: no such file or folder")
    if p.is_dir():  # whatever its name says (scan.nii/)
        return dicom.read_series_folder(p, series_uid)
    if not os.access(p, os.R_OK):
        raise BadInputError(f"{p}: file is not readable (permission denied)")
    suffix = image_suffix(p)
    if suffix in NIFTI_SUFFIXES:
        return _read_nifti(p)
    if suffix in ITK_SUFFIXES:
        return _read_itk(p)
    if dicom.is_dicom_file(p) or p.suffix.lower() in dicom.DICOM_SUFFIXES:
        return dicom.read_dicom_file(p)
    raise BadInputError(
        f"{p}: unknown image format (expected .nii, .nii.gz, .mha, .mhd, .nrrd, a DICOM file or a DICOM series folder)"
    )


def _squeeze_trailing(shape: tuple[int, ...], what: str) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 3:
        raise BadInputError(
            f"{what}: {len(shape)}-D image of shape {'x'.join(map(str, shape))}; only 2-D and 3-D images are supported"
        )
    if len(shape) < 2:
        raise BadInputError(f"{what}: {len(shape)}-D image; only 2-D and 3-D images are supported")
    return shape + (1,) * (3 - len(shape))


def _read_nifti(p: Path) -> Volume:
    nib = _nibabel()

    what = str(p)
    try:
        img = nib.load(str(p))
    except Exception as exc:
        raise BadInputError(f"{what}: not a readable NIfTI file ({_nifti_reason(exc, p)})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise BadInputError(f"{what}: not a NIfTI image")
    hdr = img.header
    dtype = img.get_data_dtype()
    if dtype.names is not None or dtype.kind not in "iuf":
        raise BadInputError(f"{what}: unsupported voxel type {dtype} (RGB/complex images are not supported)")
    shape3 = _squeeze_trailing(img.shape, what)
    affine = np.asarray(img.affine, dtype=np.float64)
    check_affine(affine, what)
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    slice_hint = hdr.get_dim_info()[2] if hasattr(hdr, "get_dim_info") else None
    slice_axis = choose_slice_axis(shape3, spacing, slice_hint)
    check_dimensions(shape3, slice_axis, what)
    _check_nifti_size(p, img, shape3, dtype)
    check_memory(shape3, what)
    try:
        data = img.get_fdata(dtype=np.float32)
    except Exception as exc:
        raise BadInputError(f"{what}: cannot read pixel data, file truncated or corrupt ({_nifti_reason(exc, p)})") from None
    data = np.asarray(data, dtype=np.float32).reshape(shape3)
    check_pixels(data, what)

    slope, inter = img.dataobj.slope, img.dataobj.inter
    scaled = not (slope in (1.0,) and inter in (0.0,))
    descrip = hdr["descrip"].tobytes().split(b"\x00")[0].decode("latin-1", "replace").strip()
    meta = {
        "source_path": str(p),
        "nifti_header": hdr.copy(),
        "nifti_scaled": bool(scaled and dtype.kind in "iu"),
        "qform_code": int(hdr["qform_code"]),
        "sform_code": int(hdr["sform_code"]),
        # the qform as a world transform of the affine (a scanner's may differ from its sform)
        "qform_from_affine": hdr.get_qform() @ np.linalg.inv(affine) if int(hdr["qform_code"]) > 0 else None,
        "nifti_ndim": len(img.shape),  # written back with as many axes (2-D, trailing axes of length 1)
        "description": descrip,
        "intent_name": hdr["intent_name"].tobytes().split(b"\x00")[0].decode("latin-1", "replace"),
        "aux_file": hdr["aux_file"].tobytes().split(b"\x00")[0].decode("latin-1", "replace"),
    }
    if dtype.kind in "iu" and not meta["nifti_scaled"]:
        meta["output_dtype"] = np.dtype(dtype)
    elif dtype.kind == "f":
        meta["output_dtype"] = np.dtype(np.float32)
    return Volume(
        array=data,
        affine=affine,
        modality=None,
        unit="arbitrary",
        source_format="nifti",
        source_dtype=np.dtype(dtype),
        slice_axis=slice_axis,
        meta=meta,
    )


def _nifti_reason(exc: BaseException, p: Path) -> str:
    """nibabel's reason in words, without the file's name (the message names it once)."""
    text = one_line(exc, limit=None)
    if "Cannot work out file type" in text:
        return "no NIfTI header"
    for name in (str(p), p.name):
        text = text.replace(f'"{name}"', "").replace(f"'{name}'", "").replace(name, "")
    return " ".join(text.split()).strip(" :") or type(exc).__name__


def _check_nifti_size(p: Path, img, shape3, dtype) -> None:
    """An uncompressed file must hold the voxels its header declares (checked before reading them;
    a compressed file is read no further than the header's size)."""
    if image_suffix(p) != ".nii":
        return
    declared = int(np.prod(shape3, dtype=np.int64)) * np.dtype(dtype).itemsize + int(img.header["vox_offset"])
    actual = p.stat().st_size
    if actual < declared:
        raise BadInputError(
            f"{p}: header declares {'x'.join(map(str, shape3))} voxels of {np.dtype(dtype)} ({declared} bytes) "
            f"but the file holds {actual} bytes (truncated or a wrong header)"
        )


@contextlib.contextmanager
def _quiet_itk():
    """For the block only: ITK's warnings off, and C++ libraries (ITK's MetaIO, GDCM) kept from
    printing on our stderr; the error reaches the user as our one line instead."""
    import SimpleITK as sitk

    shown = sitk.ProcessObject_GetGlobalWarningDisplay()
    try:
        with _stderr_to_devnull():
            yield
    finally:
        sitk.ProcessObject_SetGlobalWarningDisplay(shown)


@contextlib.contextmanager
def _stderr_to_devnull():
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _itk_message(exc: BaseException, fallback: str = "SimpleITK gives no reason") -> str:
    """SimpleITK's reason in words: NRRD's innermost one, else ITK's text without its source file,
    line and object address; ``fallback`` where ITK only says that it could not read the file (MetaIO
    prints its reason elsewhere) or says nothing."""
    nrrd = re.findall(r"\[nrrd\] (?:\w+: )?(.+)", str(exc))
    if nrrd:
        return nrrd[-1].strip()
    text = re.split(r"(?i)\bitk(?:::| )error:", " ".join(str(exc).split()))[-1]
    text = re.sub(r"^\s*\w+\(0x[0-9a-fA-F]+\):\s*", "", text).strip()
    reason = re.search(r"\bReason: (.+)$", text)  # "File cannot be written: <our temp path> Reason: ..."
    if reason and text.startswith("File cannot be written"):
        return reason.group(1).strip()
    return fallback if not text or text.startswith(("File cannot be read", "Exception thrown")) else text


def _itk_affine(spacing, origin, direction, dim: int) -> np.ndarray:
    """RAS affine from ITK's LPS spacing/origin/direction (2-D images get a unit third axis)."""
    d = np.eye(3)
    s = np.ones(3)
    o = np.zeros(3)
    d[:dim, :dim] = np.asarray(direction, dtype=np.float64).reshape(dim, dim)
    s[:dim] = spacing
    o[:dim] = origin
    lps = np.eye(4)
    lps[:3, :3] = d * s[None, :]
    lps[:3, 3] = o
    return ras_from_lps(lps)


def data_files(path: Path) -> list[Path]:
    """An image file and the data file its header names (MetaImage ``ElementDataFile``, detached NRRD)."""
    p = Path(path)
    files = [p]
    suffix = image_suffix(p)
    if suffix not in (".mhd", ".nrrd") or not p.is_file():
        return files
    try:
        with open(p, "rb") as f:
            head = f.read(1 << 16).decode("latin-1")
    except OSError:
        return files
    for line in head.splitlines():
        if suffix == ".nrrd" and not line.strip():
            break  # end of the NRRD header
        key, sep, value = line.partition("=" if suffix == ".mhd" else ":")
        key, value = key.strip().lower(), value.strip()
        if sep and key in ("elementdatafile", "data file", "datafile") and value and value.upper() not in ("LOCAL", "LIST"):
            files.append(p.parent / value.split()[0])
    return files


def _read_itk(p: Path) -> Volume:
    import SimpleITK as sitk

    what = str(p)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        with _quiet_itk():
            reader.ReadImageInformation()
    except Exception as exc:
        raise BadInputError(f"{what}: not a readable MetaImage/NRRD file ({_itk_message(exc, 'its header cannot be parsed')})") from None
    dim = reader.GetDimension()
    size = tuple(int(s) for s in reader.GetSize())
    if reader.GetNumberOfComponents() != 1:
        raise BadInputError(
            f"{what}: {reader.GetNumberOfComponents()} components per voxel; only scalar images are supported"
        )
    if dim > 3:
        _squeeze_trailing(size, what)  # raises for a real 4-D image
        raise BadInputError(f"{what}: {dim}-D image; only 2-D and 3-D images are supported")
    if dim < 2:
        raise BadInputError(f"{what}: {dim}-D image; only 2-D and 3-D images are supported")
    shape3 = size + (1,) * (3 - dim)
    affine = _itk_affine(reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection(), dim)
    check_affine(affine, what)
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    slice_axis = choose_slice_axis(shape3, spacing)
    check_dimensions(shape3, slice_axis, what)
    check_memory(shape3, what)
    missing = [f for f in data_files(p)[1:] if not f.is_file()]
    if missing:
        raise BadInputError(f"{what}: its data file {missing[0].name} is missing")
    try:
        with _quiet_itk():
            img = reader.Execute()
        raw = sitk.GetArrayFromImage(img)  # (z, y, x)
    except Exception as exc:
        raise BadInputError(f"{what}: cannot read pixel data, file truncated or corrupt ({_itk_message(exc, 'no reason given')})") from None
    dtype = raw.dtype
    if dtype.kind not in "iuf":
        raise BadInputError(f"{what}: unsupported voxel type {dtype}")
    data = np.ascontiguousarray(raw.T, dtype=np.float32).reshape(shape3)
    check_pixels(data, what)
    itk_meta = {k: img.GetMetaData(k) for k in img.GetMetaDataKeys()}
    modality = None
    mod_text = itk_meta.get("Modality", "").upper()
    for key, mod in (("CT", "CT"), ("MR", "MR"), ("PET", "PT"), ("PT", "PT")):
        if key in mod_text:
            modality = mod
            break
    return Volume(
        array=data,
        affine=affine,
        modality=modality,
        unit="HU" if modality == "CT" else "arbitrary",
        source_format="itk",
        source_dtype=np.dtype(dtype),
        slice_axis=slice_axis,
        meta={
            "source_path": str(p),
            "itk_metadata": itk_meta,
            "itk_dimension": dim,
            "output_dtype": np.dtype(dtype) if dtype.kind in "iu" else np.dtype(np.float32),
            "description": itk_meta.get("descrip", ""),
        },
    )


# --------------------------------------------------------------------------------------------
# batch discovery


def list_cases(folder: str | Path, skip: tuple[str, ...] = (), required: bool = True,
               unsearched: list[Path] | None = None) -> list[Path]:
    """Cases in an input folder, sorted: every folder (itself included) that directly holds DICOM
    files, and every image file (.nii, .nii.gz, .mha, .mhd, .nrrd), five folders deep at most (a DICOM
    folder may hold several series: :func:`amir_cli.imaging.dicom.folder_series`). ``skip``: names of
    the folder's subfolders not searched; ``required``: no case is an error; ``unsearched``, a list,
    gets the folders below that depth, which are not searched (:func:`unsearched_warnings`)."""
    root = Path(folder)
    if not root.is_dir():
        raise BadInputError(f"{root}: not a folder")
    unsearched = [] if unsearched is None else unsearched
    cases = _cases_in(root, CASE_DEPTH, skip, unsearched)
    if not cases and required:
        raise BadInputError(
            f"{root}: no images found (expected .nii, .nii.gz, .mha, .mhd, .nrrd files or DICOM series folders)"
            + "".join(f"; {line}" for line in unsearched_warnings(unsearched))
        )
    return cases


def named_cases(folder: str | Path, skip: tuple[str, ...] = (), unsearched: list[Path] | None = None) -> dict[str, Path]:
    """{name: path} of :func:`list_cases`, each named by its path below ``folder`` without the image
    suffix (the folder itself, holding DICOM files, by its own name); two cases of one name are refused."""
    root = Path(folder)
    named: dict[str, Path] = {}
    for p in list_cases(root, skip, unsearched=unsearched):
        name = root.name if p == root else str(p.relative_to(root).parent / (p.name if p.is_dir() else stem(p)))
        if name in named:
            raise BadInputError(f"{named[name]} and {p}: two images of one case {name!r}")
        named[name] = p
    return named


def paired_names(folder: str | Path, unsearched: list[Path] | None = None) -> dict[str, Path]:
    """:func:`named_cases` of a paired HQ/ or LQ folder, whose names pair its cases with the other's
    (DICOM files directly in it would be one case named after the folder, which pairs with nothing)."""
    named = named_cases(folder, unsearched=unsearched)
    if named.get(Path(folder).name) == Path(folder):
        raise BadInputError(f"{folder}: holds DICOM files itself; put each DICOM case in a subfolder named "
                            "alike in HQ/ and LQ/")
    return named


def unsearched_warnings(folders: list[Path]) -> list[str]:
    """The warning line on the folders :func:`list_cases` did not search, if there are any."""
    if not folders:
        return []
    n = len(folders)
    return [f"{n} folder{'s' if n > 1 else ''} holding files more than {CASE_DEPTH} folders deep {'were' if n > 1 else 'was'} "
            f"not searched for images: {folders[0]}{', ...' if n > 1 else ''}"]


def _cases_in(folder: Path, depth: int, skip: tuple[str, ...], unsearched: list[Path]) -> list[Path]:
    from amir_cli.imaging import dicom

    cases = [folder] if dicom.folder_dicom_files(folder) else []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry.name in skip or (entry.is_dir() and entry.is_symlink()):
            continue  # hidden, skipped, or a link to a folder (a loop, or the output folder itself)
        if entry.is_file() and image_suffix(entry):
            cases.append(entry)
        elif entry.is_dir() and depth > 0:
            cases.extend(_cases_in(entry, depth - 1, (), unsearched))
        elif entry.is_dir() and any(f.is_file() for f in entry.rglob("*")):  # not for an empty tree
            unsearched.append(entry)
    return cases


# --------------------------------------------------------------------------------------------
# writing


def _check_destination(path: Path, volume: Volume, reference: Volume | None) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise BadInputError(f"{path}: output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise BadInputError(f"{path}: output folder {parent} is not writable")
    for v in (volume, reference):
        src = v.meta.get("source_path") if v is not None else None
        if src and os.path.realpath(src) == os.path.realpath(path):
            raise BadInputError(f"{path}: refusing to overwrite the input image")
    check_pixels(volume.array, str(path))


def write_image(volume: Volume, path: str | Path, *, reference: Volume | None = None, description: str = "") -> Path:
    """Write ``volume`` atomically; the format follows the path (.nii/.nii.gz, .mha/.mhd/.nrrd, or a
    folder name for a DICOM derived series when the source is DICOM). Header fields, data type
    family and DICOM tags come from ``reference`` (default: the volume itself). Returns the path."""
    from amir_cli.imaging import dicom, dicom_write

    p = Path(path)
    ref = reference if reference is not None else volume
    _check_destination(p, volume, reference)
    suffix = image_suffix(p)
    if suffix in NIFTI_SUFFIXES:
        return _staged(p, lambda target: _write_nifti(volume, ref, target, description))
    if suffix in ITK_SUFFIXES:
        img = _itk_image(volume, ref)
        return _staged(p, lambda target: _write_itk(img, target), _itk_message)
    if ref.source_format == "dicom" and "dicom_datasets" in ref.meta:
        if p.suffix.lower() in dicom.DICOM_SUFFIXES:
            return dicom_write.write_dicom_file(volume, ref, p, description)
        return dicom_write.write_dicom_series(volume, ref, p, description)
    raise BadInputError(
        f"{p}: cannot tell the output format; use .nii, .nii.gz, .mha, .mhd or .nrrd "
        "(a DICOM series folder needs a DICOM input)"
    )


def _staged(dest: Path, write, describe=None) -> Path:
    """Run ``write(path)`` on ``dest``'s path in a :class:`Staging`, then put what it wrote in place
    (an .mhd's data file before its header), replacing an existing file: readers see the old file
    or the new one, never part of one; a failure leaves nothing."""
    with failures_as_bad_input(f"{public_path(dest)}: cannot write", describe), Staging(overwrite=True) as staging:
        write(staging.path(dest))
        staging.publish()
    return dest


def _write_nifti(volume: Volume, ref: Volume, tmp: Path, description: str) -> None:
    nib = _nibabel()

    src_hdr = ref.meta.get("nifti_header")
    hdr = src_hdr.copy() if src_hdr is not None and ref.source_format == "nifti" else nib.Nifti1Header()
    if not isinstance(hdr, nib.Nifti1Header):
        hdr = nib.Nifti1Header.from_header(hdr)
    if ref.source_format != "nifti":
        hdr.set_xyzt_units("mm", "sec")
    affine = volume.affine
    qform = affine if ref.meta.get("qform_from_affine") is None else ref.meta["qform_from_affine"] @ affine
    qcode = int(ref.meta.get("qform_code", 0) or 0) or 1
    scode = int(ref.meta.get("sform_code", 0) or 0) or 1
    ndim = int(ref.meta.get("nifti_ndim", 3))
    shape = volume.array.shape[:2] if ndim == 2 else volume.array.shape + (1,) * (ndim - 3)
    if ref.meta.get("nifti_scaled"):
        # integer storage with a scale factor: let nibabel choose slope/intercept for that type
        data = np.asarray(volume.array, dtype=np.float32).reshape(shape)
        hdr.set_data_dtype(ref.source_dtype)
        img = nib.Nifti1Image(data, affine, header=hdr)
    else:
        data = to_dtype(volume.array, output_dtype(ref)).reshape(shape)
        hdr.set_data_dtype(data.dtype)
        img = nib.Nifti1Image(data, affine, header=hdr)
        img.header.set_slope_inter(1.0, 0.0)
    img.set_qform(qform, code=qcode)
    img.set_sform(affine, code=scode)
    if description:
        img.header["descrip"] = description.encode("latin-1", "replace")[:79]
    # temp file keeps the final suffix, so nibabel compresses exactly when the destination is .gz
    nib.save(img, str(tmp))


def _itk_image(volume: Volume, ref: Volume):
    """``volume`` as a SimpleITK image (LPS geometry) of the reference's data type family; 2-D when
    the reference was a 2-D MetaImage/NRRD."""
    import SimpleITK as sitk

    data = to_dtype(volume.array, output_dtype(ref))
    n = 2 if ref.meta.get("itk_dimension") == 2 and data.shape[2] == 1 else 3
    img = sitk.GetImageFromArray(np.ascontiguousarray(data[..., 0].T if n == 2 else data.T))  # (I,J[,K]) -> ITK ([z,]y,x) buffer
    lps = ras_from_lps(volume.affine)
    spacing = np.linalg.norm(lps[:n, :n], axis=0)
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in lps[:n, 3]])
    img.SetDirection([float(d) for d in (lps[:n, :n] / spacing[None, :]).ravel()])
    return img


def _write_itk(img, target: Path) -> None:
    """.mha/.nrrd are one file; .mhd writes its data file beside the header."""
    import SimpleITK as sitk

    with _quiet_itk():
        sitk.WriteImage(img, str(target), useCompression=image_suffix(target) != ".mha")
    if not target.is_file():
        raise OSError("SimpleITK wrote no file")
