"""Medical images in and out (NIfTI, MetaImage/NRRD, DICOM) and task intensity conventions; no torch."""

from amir_cli.imaging.io import Volume, list_cases, lps_from_ras, ras_from_lps, read_image, write_image

__all__ = ["Volume", "list_cases", "lps_from_ras", "ras_from_lps", "read_image", "write_image"]
