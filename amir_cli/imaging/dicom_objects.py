"""What a DICOM object is, by its SOP Class UID: an image to restore, or another object (a
segmentation, a report, a presentation state, raw data, a secondary capture without geometry),
and whether an image is a localizer (scout) of its series."""

from __future__ import annotations

_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
# SOP Class UIDs of objects that hold no image to restore (each with its sub-classes)
_NOT_IMAGES = (
    "1.2.840.10008.5.1.4.1.1.66",  # raw data, and (66.x) registrations, fiducials, segmentations
    "1.2.840.10008.5.1.4.1.1.88",  # structured reports, key object selections
    "1.2.840.10008.5.1.4.1.1.11",  # presentation states
    "1.2.840.10008.5.1.4.1.1.481",  # radiotherapy objects
    "1.2.840.10008.5.1.4.1.1.104",  # encapsulated documents
    "1.2.840.10008.5.1.4.1.1.9",  # waveforms
    "1.2.840.10008.5.1.4.1.1.4.2",  # MR spectroscopy
    "1.2.840.10008.5.1.4.1.1.30",  # parametric maps
)


def _in_class(uid: str, cls: str) -> bool:
    return uid == cls or uid.startswith(cls + ".")


def _described(uid: str) -> str:
    """"a <class name> object (SOP Class <uid>)", or what stands for an unknown or missing class."""
    from pydicom.uid import UID

    if not uid:
        return "a DICOM object without a SOP Class UID"
    name = UID(uid).name
    return f"a {name if name != uid else 'DICOM'} object (SOP Class {uid})"


def not_an_image(ds) -> str | None:
    """One phrase naming what ``ds`` is when it is not an image to restore, else None."""
    uid = str(ds.get("SOPClassUID", "") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
    if any(_in_class(uid, c) for c in _NOT_IMAGES):
        return f"{_described(uid)}, not an image to restore"
    if _in_class(uid, _SECONDARY_CAPTURE) and not _has_geometry(ds):
        return (
            f"{_described(uid)} without patient geometry "
            "(no ImagePositionPatient/ImageOrientationPatient), not an image to restore"
        )
    if "Rows" not in ds or "Columns" not in ds:
        return f"{_described(uid)} that holds no image"
    return None


def _has_geometry(ds) -> bool:
    if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds:
        return True
    shared = ds.get("SharedFunctionalGroupsSequence")
    return bool(shared) and "PlaneOrientationSequence" in shared[0]


def is_localizer(ds) -> bool:
    """An image that ImageType marks as a localizer (scout) of the series, not a slice of it."""
    return "LOCALIZER" in [str(v).strip().upper() for v in (ds.get("ImageType") or [])]
