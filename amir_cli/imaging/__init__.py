"""Medical images in and out (NIfTI, MetaImage/NRRD, DICOM) and task intensity conventions; no torch."""

from amir_cli.imaging.io import list_cases, read_image, write_image
from amir_cli.imaging.volume import Volume, lps_from_ras, ras_from_lps

__all__ = ["Volume", "list_cases", "lps_from_ras", "ras_from_lps", "read_image", "write_image"]
