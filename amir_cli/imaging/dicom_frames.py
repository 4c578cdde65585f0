"""Multi-frame DICOM images (enhanced CT/MR/PET, legacy-converted enhanced, classic multi-frame):
each frame gets a header of its own, as a single-frame image of the series would carry it.

Enhanced objects describe their frames by functional groups: the shared group applies to every
frame and the frame's own (per-frame) group adds to it. Each group holds macros, one-item sequences
such as PlanePositionSequence (ImagePositionPatient), PlaneOrientationSequence
(ImageOrientationPatient), PixelMeasuresSequence (PixelSpacing, SliceThickness) and
PixelValueTransformationSequence (RescaleSlope, RescaleIntercept). A frame's header is the object's
own attributes with the attributes of those macro items laid over them, shared first.

A multi-frame object without functional groups is a stack of frames along the slice normal, one
SpacingBetweenSlices (else SliceThickness) apart from its ImagePositionPatient; without any plane
position or orientation the frames are stacked in file order (as dcm2niix does) and a note says so.
"""

from __future__ import annotations

import numpy as np

from amir_cli.errors import BadInputError

_GROUPS = ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")
_SLICE_POINTERS = {0x00540080, 0x00201041}  # SliceVector, SliceLocation: frames are slices


def frame_count(ds) -> int:
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1


def is_multiframe(ds) -> bool:
    return frame_count(ds) > 1 or "PerFrameFunctionalGroupsSequence" in ds


def frame_headers(ds, what: str) -> tuple[list, list[str]]:
    """(one header per frame, in file order; notes for the user) of a multi-frame header."""
    from pydicom.dataset import Dataset

    n = frame_count(ds)
    base = Dataset()
    for elem in ds:
        if elem.keyword not in _GROUPS and elem.keyword != "PixelData":
            base.add(elem)
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if per_frame and len(per_frame) != n:
        raise BadInputError(f"{what}: {len(per_frame)} per-frame functional groups for {n} frames")
    headers = []
    for k in range(n):
        header = Dataset()
        header.update(base)
        for group in list(shared[:1]) + ([per_frame[k]] if per_frame else []):
            _lay_over(header, group)
        if "FrameAcquisitionDateTime" in header:  # this frame's own time (PET decay)
            _set(header, "AcquisitionDateTime", header.FrameAcquisitionDateTime)
        headers.append(header)
    if per_frame and all("PlanePositionSequence" in group for group in per_frame):
        return headers, []
    return _stack(headers, what)


def _set(header, keyword: str, value) -> None:
    """Give ``header`` an element of its own (the frames share the source's elements)."""
    if keyword in header:
        del header[keyword]
    setattr(header, keyword, value)


def _lay_over(header, group) -> None:
    """Lay the attributes of each macro item of a functional group over ``header``."""
    for macro in group:
        if macro.VR == "SQ" and macro.value:
            for elem in macro.value[0]:
                if elem.VR != "SQ":
                    header[elem.tag] = elem


def _stack(headers: list, what: str) -> tuple[list, list[str]]:
    """Frames without a position of their own: a stack along the normal of the first frame's plane."""
    first = headers[0]
    pointer = first.get("FrameIncrementPointer")  # the attribute(s) that vary from frame to frame
    pointers = {int(t) for t in ([pointer] if isinstance(pointer, int) else list(pointer or []))}
    if pointers and not pointers & _SLICE_POINTERS:
        raise BadInputError(
            f"{what}: a multi-frame image whose {len(headers)} frames are not slices of a volume "
            "(a cine or a series of times, energies or views); amir restores volumes"
        )
    step = float(first.get("SpacingBetweenSlices", 0) or 0) or float(first.get("SliceThickness", 0) or 0)
    notes = []
    if "ImageOrientationPatient" in first and "ImagePositionPatient" in first:
        if not step:
            raise BadInputError(f"{what}: multi-frame image without SpacingBetweenSlices or SliceThickness")
        iop = np.array([float(v) for v in first.ImageOrientationPatient])
        origin = np.array([float(v) for v in first.ImagePositionPatient])
    else:
        step = step or 1.0
        iop, origin = np.array([1.0, 0, 0, 0, 1.0, 0]), np.zeros(3)
        pixel = [float(v) for v in first.get("PixelSpacing") or [1.0, 1.0]]
        for header in headers:
            _set(header, "PixelSpacing", [f"{v:g}" for v in pixel])
        notes.append(
            f"no plane position or orientation in the file: its {len(headers)} frames are stacked in file order, "
            f"{pixel[1]:g} x {pixel[0]:g} mm pixels, {abs(step):g} mm apart"
        )
    normal = np.cross(iop[:3], iop[3:])
    for k, header in enumerate(headers):
        _set(header, "ImageOrientationPatient", [f"{v:.8g}" for v in iop])
        _set(header, "ImagePositionPatient", [f"{v:.8g}" for v in origin + k * abs(step) * normal])
    return headers, notes
