"""Writing the derived object of a multi-frame image: one multi-frame object of the source's SOP
class (Enhanced CT/MR/PET, ...), its frames in slice order, each keeping the per-frame functional
group of the source frame it was restored from.

The grid, where the output's differs from the source's, is written to the functional groups:
PixelMeasuresSequence and PlaneOrientationSequence (shared), PlanePositionSequence (per frame).
The source is referenced by a Derivation Image functional group (shared) and every frame type
becomes DERIVED.
"""

from __future__ import annotations

import copy

from amir_cli.imaging.dicom_derive import Derivation, Encoded, derive_header, rescale_image, rescale_value_maps, set_pixels
from amir_cli.imaging.dicom_tags import rescale

_SOURCE_PURPOSE = ("121322", "DCM", "Source image for image processing operation")
_DERIVATION_CODE = ("110001", "DCM", "Image Processing")
# MR Pulse Sequence and Bulk Motion attributes, which a derived Enhanced MR image may not carry
_ORIGINAL_ONLY = (
    "PulseSequenceName", "MRAcquisitionType", "EchoPulseSequence", "MultipleSpinEcho", "MultiPlanarExcitation",
    "PhaseContrast", "VelocityEncodingAcquisitionSequence", "TimeOfFlightContrast", "ArterialSpinLabelingContrast",
    "SteadyStatePulseSequence", "EchoPlanarPulseSequence", "SaturationRecovery", "SpectrallySelectedSuppression",
    "OversamplingPhase", "GeometryOfKSpaceTraversal", "RectilinearPhaseEncodeReordering", "SegmentedKSpaceTraversal",
    "CoverageOfKSpace", "NumberOfKSpaceTrajectories", "BulkMotionCompensationTechnique", "BulkMotionSignalSource",
)


def _code(value: str, scheme: str, meaning: str):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _item(group, keyword: str):
    """The one item of macro ``keyword`` in a functional group, created where missing."""
    from pydicom.dataset import Dataset

    if keyword not in group or not group[keyword].value:
        setattr(group, keyword, [Dataset()])
    return group[keyword].value[0]


def derived_multiframe(src, frames: list, headers: list, encoded: list[Encoded], d: Derivation):
    """The derived multi-frame object: ``frames`` are the source frame (0-based) of each output
    slice, ``headers`` their flattened headers and ``encoded`` their stored values (dicom_write)."""
    from pydicom.dataset import Dataset

    ds = derive_header(src, d, "PRIMARY")  # enhanced IODs: Image Type value 2 is PRIMARY
    for keyword in _ORIGINAL_ONLY:
        if keyword in ds:
            del ds[keyword]
    ds.NumberOfFrames = len(frames)
    if "AcquisitionContextSequence" not in ds:
        ds.AcquisitionContextSequence = []
    source_groups = src.get("PerFrameFunctionalGroupsSequence")
    per_frame = [copy.deepcopy(source_groups[f]) if source_groups else Dataset() for f in frames]
    if "SharedFunctionalGroupsSequence" in src or not d.same_geometry:
        shared = _item(ds, "SharedFunctionalGroupsSequence")
        shared.DerivationImageSequence = [_derivation_item(src, d)]
        ds.SourceImageEvidenceSequence = [_evidence(src)]
    else:  # a source without functional groups: referenced as a single-frame image references its source
        shared = Dataset()
        ds.DerivationDescription = d.description
        ds.SourceImageSequence = [_derivation_item(src, d).SourceImageSequence[0]]
    for group in [shared] + per_frame:
        _derive_frame_type(group)
    for group in per_frame:  # the source's own derivation: this object's is the shared one
        if "DerivationImageSequence" in group:
            del group.DerivationImageSequence
    if not d.same_geometry:
        _write_grid(ds, shared, per_frame, headers, encoded[0].stored.shape, d)
    if encoded[0].slope is not None:  # re-encoded
        if source_groups is None and "SharedFunctionalGroupsSequence" not in src and len({e.slope for e in encoded}) == 1:
            rescale_image(ds, src, encoded[0])  # no functional groups: the rescale is the object's own
        else:
            _write_rescale(shared, per_frame, encoded, src)
            _rescale_value_maps(shared, per_frame, headers, encoded)
    if source_groups is not None or any(len(group) for group in per_frame):
        ds.PerFrameFunctionalGroupsSequence = per_frame
    first = encoded[0]
    set_pixels(ds, [e.stored for e in encoded], first.bits_allocated, first.bits_stored, first.signed, d.transfer_syntax)
    return ds


def _derive_frame_type(group) -> None:
    """Frame Type value 1 becomes DERIVED."""
    for macro in [e for e in group if e.VR == "SQ"]:
        if macro.keyword.endswith("FrameTypeSequence") and macro.value and "FrameType" in macro.value[0]:
            frame_type = list(macro.value[0].FrameType)
            macro.value[0].FrameType = ["DERIVED"] + frame_type[1:]


def _evidence(src):
    """The source as a Hierarchical SOP Instance Reference (study, series, instance)."""
    from pydicom.dataset import Dataset

    instance, series, study = Dataset(), Dataset(), Dataset()
    instance.ReferencedSOPClassUID = src.SOPClassUID
    instance.ReferencedSOPInstanceUID = src.SOPInstanceUID
    series.SeriesInstanceUID = src.SeriesInstanceUID
    series.ReferencedSOPSequence = [instance]
    study.StudyInstanceUID = src.StudyInstanceUID
    study.ReferencedSeriesSequence = [series]
    return study


def _derivation_item(src, d: Derivation):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.DerivationDescription = d.description
    item.DerivationCodeSequence = [_code(*_DERIVATION_CODE)]
    source = Dataset()
    source.ReferencedSOPClassUID = src.SOPClassUID
    source.ReferencedSOPInstanceUID = src.SOPInstanceUID
    source.PurposeOfReferenceCodeSequence = [_code(*_SOURCE_PURPOSE)]
    item.SourceImageSequence = [source]
    return item


def _write_grid(ds, shared, per_frame: list, headers: list, shape: tuple, d: Derivation) -> None:
    """The output grid: size, pixel spacing (shared, where the source had one), orientation (shared)
    and each frame's position, the latter two only where the source had a plane orientation."""
    ds.Rows, ds.Columns = shape
    spaced = "PixelSpacing" in ds or any("PixelSpacing" in item for group in [shared] + per_frame
                                         for item in group.get("PixelMeasuresSequence") or [])
    for group in per_frame:  # the grid of every frame is now the shared one
        for keyword in ("PixelMeasuresSequence", "PlaneOrientationSequence"):
            if keyword in group:
                del group[keyword]
    measures = _item(shared, "PixelMeasuresSequence")
    if spaced:  # a pixel spacing the source did not state is not invented
        measures.PixelSpacing = d.pixel_spacing
    if "SliceThickness" in headers[0] and "SliceThickness" not in measures:
        measures.SliceThickness = headers[0].SliceThickness
    if "PlaneOrientationSequence" not in shared and not any("PlanePositionSequence" in g for g in per_frame):
        return  # the source places its frames nowhere: neither does its derived object
    _item(shared, "PlaneOrientationSequence").ImageOrientationPatient = d.orientation
    for k, group in enumerate(per_frame):
        _item(group, "PlanePositionSequence").ImagePositionPatient = d.position(k)


def _write_rescale(shared, per_frame: list, encoded: list[Encoded], src) -> None:
    """The rescale chosen by the encoder: per frame where it differs between frames, else shared."""
    if encoded[0].unit_slope and "RescaleSlope" not in _flat_rescale(shared, per_frame):
        return
    slopes = [e.slope for e in encoded]
    groups = per_frame if len(set(slopes)) > 1 else [shared]
    for group in [shared] + per_frame:
        if "PixelValueTransformationSequence" in group and group not in groups:
            del group.PixelValueTransformationSequence
    for group, slope in zip(groups, slopes, strict=False):
        item = _item(group, "PixelValueTransformationSequence")
        item.RescaleSlope, item.RescaleIntercept = slope, "0"
        if "RescaleType" not in item:
            item.RescaleType = "HU" if str(src.get("Modality", "")).upper() == "CT" else "US"


def _rescale_value_maps(shared, per_frame: list, headers: list, encoded: list[Encoded]) -> None:
    """The Real World Value Mapping functional groups kept true of the re-encoded frames
    (:func:`~amir_cli.imaging.dicom_derive.rescale_value_maps`); a shared map moves into every
    frame's group where the frames' old or new rescales differ (one map no longer serves them all)."""
    changes = [(rescale(h), (float(e.slope), 0.0)) for h, e in zip(headers, encoded, strict=True)]
    if "RealWorldValueMappingSequence" in shared and len(set(changes)) > 1:
        for group in per_frame:
            group.RealWorldValueMappingSequence = copy.deepcopy(shared.RealWorldValueMappingSequence)
        del shared.RealWorldValueMappingSequence
    for group, (old, new) in [(shared, changes[0]), *zip(per_frame, changes)]:
        rescale_value_maps(group, old, new, encoded[0].signed)


def _flat_rescale(shared, per_frame: list) -> set:
    """The rescale attributes the source's functional groups carry."""
    found = set()
    for group in [shared] + per_frame:
        if "PixelValueTransformationSequence" in group and group.PixelValueTransformationSequence:
            found |= {e.keyword for e in group.PixelValueTransformationSequence[0]}
    return found
