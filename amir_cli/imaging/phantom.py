"""Simulated FDG-like PET ground truth built from anatomy (no registry ships a real PET volume).

Activity in SUV: grey matter ``gm_suv`` (8) and white matter ``wm_suv`` (2) weighted by their
tissue probabilities (so GM is about 4x WM, CSF near 0), low uptake in a scalp shell outside the
brain, a few small hot spherical lesions inside the brain, then a Gaussian blur to the scanner
resolution (``fwhm_mm``, 4.5 mm).  Everything made from it must be labelled :data:`SIMULATED_NOTE`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy import ndimage

from amir_cli.imaging.degrade import FWHM_PER_SIGMA

SIMULATED_NOTE = "PET figures come from simulated FDG-like activity built from MR and CT anatomy (tissue maps, HU classes), not from PET scans"

ICBM_GM = "icbm152_2009a_gm.nii.gz"
ICBM_WM = "icbm152_2009a_wm.nii.gz"


def _prob_map(a, name) -> np.ndarray:
    arr = np.asarray(a)
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    mx = arr.max() if arr.size else 0.0
    if arr.min(initial=0.0) < 0:
        raise ValueError(f"{name} must be a probability map (>= 0), got minimum {arr.min()}")
    if mx > 1.0:  # uint8-style 0..255 maps (or 0..100 %): scale to 0..1
        arr = arr / (255.0 if mx <= 255 else mx)
    return arr


def fdg_activity_from_tissue(
    gm,
    wm,
    spacing_mm,
    rng,
    *,
    gm_suv: float = 8.0,
    wm_suv: float = 2.0,
    scalp_suv: float = 0.6,
    n_lesions: int = 3,
    lesion_suv: tuple[float, float] = (10.0, 15.0),
    lesion_radius_mm: tuple[float, float] = (4.0, 7.0),
    fwhm_mm: float = 4.5,
    return_lesions: bool = False,
):
    """FDG-like activity (SUV, float32, same shape as ``gm``) from grey/white matter probability maps.

    ``gm``/``wm``: probabilities in 0..1 (maps with values above 1, such as the uint8 ICBM152 maps,
    are divided by 255).  Activity = ``gm_suv * gm + wm_suv * wm`` (CSF and other tissue 0), plus
    ``scalp_suv`` in a shell 6-12 mm outside the brain, plus ``n_lesions`` uniform spheres (SUV drawn
    from ``lesion_suv``, radius from ``lesion_radius_mm``) centred in voxels that are mostly brain;
    then a Gaussian blur of ``fwhm_mm`` (0 for none; sigma per axis from ``spacing_mm``).
    With ``return_lesions=True`` returns ``(suv, lesions)``, each lesion a dict with ``center``
    (voxel indices), ``radius_mm`` and ``suv``.
    """
    g = _prob_map(gm, "gm")
    w = _prob_map(wm, "wm")
    if g.shape != w.shape:
        raise ValueError(f"gm and wm shapes differ: {g.shape} vs {w.shape}")
    if g.ndim not in (2, 3):
        raise ValueError(f"tissue maps must be 2-D or 3-D, got shape {g.shape}")
    spacing = np.atleast_1d(np.asarray(spacing_mm, dtype=np.float64))
    if spacing.size == 1:
        spacing = np.repeat(spacing, g.ndim)
    if spacing.size != g.ndim or np.any(~np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(f"spacing_mm must hold {g.ndim} positive values, got {spacing_mm!r}")
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    for name, v in (("gm_suv", gm_suv), ("wm_suv", wm_suv), ("scalp_suv", scalp_suv), ("fwhm_mm", fwhm_mm)):
        if not math.isfinite(float(v)) or float(v) < 0:
            raise ValueError(f"{name} must be a non-negative number, got {v!r}")
    if isinstance(n_lesions, bool) or int(n_lesions) != n_lesions or n_lesions < 0:
        raise ValueError(f"n_lesions must be a non-negative integer, got {n_lesions!r}")
    lo_s, hi_s = (float(v) for v in lesion_suv)
    lo_r, hi_r = (float(v) for v in lesion_radius_mm)
    if not (0 <= lo_s <= hi_s) or not (0 < lo_r <= hi_r):
        raise ValueError(f"bad lesion ranges: suv {lesion_suv!r}, radius_mm {lesion_radius_mm!r}")

    act = gm_suv * g + wm_suv * w
    brain = ndimage.binary_fill_holes((g + w) > 0.5)
    if scalp_suv > 0 and brain.any():
        dist = ndimage.distance_transform_edt(~brain, sampling=spacing)
        act = act + scalp_suv * ((dist > 6.0) & (dist <= 12.0))

    lesions = []
    candidates = np.argwhere((g + w) > 0.9)
    if n_lesions and candidates.size == 0:
        raise ValueError("no brain voxels (gm + wm > 0.9) to place lesions in")
    grids = None
    for _ in range(int(n_lesions)):
        center = candidates[rng.integers(len(candidates))]
        radius = float(rng.uniform(lo_r, hi_r))
        suv = float(rng.uniform(lo_s, hi_s))
        if grids is None:
            grids = np.ogrid[tuple(slice(0, n) for n in g.shape)]
        d2 = sum(((gr - c) * s) ** 2 for gr, c, s in zip(grids, center, spacing))
        act = np.where(d2 <= radius**2, suv, act)
        lesions.append({"center": tuple(int(c) for c in center), "radius_mm": radius, "suv": suv})

    if fwhm_mm > 0:
        sigma = float(fwhm_mm) / FWHM_PER_SIGMA / spacing
        act = ndimage.gaussian_filter(act, sigma=sigma, mode="constant")
    act = np.clip(act, 0.0, None).astype(np.float32)
    return (act, lesions) if return_lesions else act


def load_icbm_pet(data_dir, rng, **kw):
    """Simulated FDG PET (SUV, float32) on the ICBM152 2009a grid, and its affine.

    ``data_dir`` is the shared data folder (holding ``mr/``) or the ``mr`` folder itself; reads
    ``icbm152_2009a_gm.nii.gz`` and ``icbm152_2009a_wm.nii.gz``.  Extra keywords go to
    :func:`fdg_activity_from_tissue`.
    """
    import nibabel as nib

    base = Path(data_dir)
    for folder in (base / "mr", base):
        if (folder / ICBM_GM).is_file() and (folder / ICBM_WM).is_file():
            break
    else:
        raise ValueError(f"{ICBM_GM} and {ICBM_WM} not found in {base} or {base / 'mr'}")
    gm_img = nib.load(str(folder / ICBM_GM))
    wm_img = nib.load(str(folder / ICBM_WM))
    spacing = tuple(float(z) for z in gm_img.header.get_zooms()[:3])
    suv = fdg_activity_from_tissue(np.asanyarray(gm_img.dataobj), np.asanyarray(wm_img.dataobj), spacing, rng, **kw)
    return suv, gm_img.affine.copy()


def tissue_from_t1(t1, spacing_mm, *, slice_axis: int = 2, strip_mm: float = 12.0):
    """(grey, white) matter probability maps of a T1-weighted head image, for PET simulation.

    The brain is the head (intensity above 10 % of the 99th percentile, holes filled) less an
    in-plane margin of ``strip_mm`` (scalp and skull; 0 for a skull-stripped image). Inside it,
    three intensity classes (CSF < grey < white matter, k-means on the darker 90 %) and linear memberships between
    their centres. Crude, but it puts FDG-like uptake on another subject's anatomy.
    """
    a = np.moveaxis(np.asarray(t1, np.float64), slice_axis, 0)
    sp = [s for i, s in enumerate(spacing_mm) if i != slice_axis]
    head = a > 0.1 * np.percentile(a, 99)
    brain = np.zeros_like(head)
    for k in range(a.shape[0]):
        filled = ndimage.binary_fill_holes(head[k])
        labels, n = ndimage.label(filled)
        if n == 0:
            continue
        largest = labels == 1 + int(np.argmax(ndimage.sum(filled, labels, range(1, n + 1))))
        brain[k] = ndimage.distance_transform_edt(largest, sampling=sp) > strip_mm if strip_mm > 0 else largest
    values = a[brain]
    if values.size < 100:
        raise ValueError("no brain found in the T1 image")
    values = values[values <= np.percentile(values, 90)]  # vessels, enhancement and fat are not tissue classes
    centres = np.percentile(values, [10, 50, 90])
    for _ in range(20):  # 1-D k-means, 3 classes
        labels = np.argmin(np.abs(values[:, None] - centres[None]), axis=1)
        centres = np.array([values[labels == c].mean() if np.any(labels == c) else centres[c] for c in range(3)])
    csf, grey, white = np.sort(centres)
    wm = np.clip((a - grey) / (white - grey), 0.0, 1.0)
    gm = np.where(a < grey, np.clip((a - csf) / (grey - csf), 0.0, 1.0), 1.0 - wm)
    gm, wm = gm * brain, wm * brain
    return np.moveaxis(gm, 0, slice_axis), np.moveaxis(wm, 0, slice_axis)


def average_blocks(array, affine, zooms, blocks):
    """(array, affine, zooms) with voxels averaged in blocks of ``blocks`` voxels per axis; each block's
    centre keeps its world position. Trailing voxels that fill no whole block are dropped."""
    if max(blocks) == 1:
        return array, affine, list(zooms)
    array = array[tuple(slice(0, n - n % b) for n, b in zip(array.shape, blocks))]
    array = array.reshape([x for n, b in zip(array.shape, blocks) for x in (n // b, b)]).mean(axis=(1, 3, 5))
    affine = affine.copy()
    affine[:3, :3] = affine[:3, :3] * np.asarray(blocks)
    affine[:3, 3] += affine[:3, :3] @ ((np.asarray(blocks) - 1) / (2 * np.asarray(blocks)))
    return array, affine, [z * b for z, b in zip(zooms, blocks)]


def load_t1_pet(path, rng, *, skull_stripped: bool = False, min_voxel_mm: float = 1.0, **kw):
    """Simulated FDG PET (SUV, float32) on the anatomy of a T1-weighted image file, and its affine.

    Voxels finer than ``min_voxel_mm`` are averaged in blocks first (PET has no use for them);
    extra keywords go to :func:`fdg_activity_from_tissue`.
    """
    import nibabel as nib

    img = nib.load(str(path))
    t1 = np.asarray(img.dataobj, np.float32)
    affine = img.affine.copy()
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    t1, affine, zooms = average_blocks(t1, affine, zooms, [max(1, int(min_voxel_mm // z)) for z in zooms])
    slice_axis = int(np.argmax(zooms))
    gm, wm = tissue_from_t1(t1, zooms, slice_axis=slice_axis, strip_mm=0.0 if skull_stripped else 12.0)
    return fdg_activity_from_tissue(gm, wm, zooms, rng, **kw), affine


# Body PET on CT anatomy: FDG-like uptake (SUV) per tissue class of the Hounsfield scale.
BODY_SUV = {"lung": (0.3, 0.7), "fat": (0.2, 0.5), "soft": (0.8, 2.4), "bone": (0.4, 0.9), "brain": (5.0, 9.0)}


def fdg_activity_from_ct(hu, spacing_mm, rng, *, slice_axis: int = 2, n_lesions: int = 4,
                         lesion_suv: tuple[float, float] = (3.0, 15.0), lesion_radius_mm: tuple[float, float] = (3.0, 12.0),
                         fwhm_mm: float = 4.5):
    """FDG-like activity (SUV, float32, the shape of ``hu``) on the anatomy of a CT volume in HU.

    Tissue classes by HU inside the body (the largest connected region above -500 HU per slice,
    holes filled): lung (below -400), fat (-200 to -30), soft tissue (-30 to 200), bone (above 200);
    soft tissue enclosed by bone in a slice (a skull) is brain. Each class takes an SUV drawn from
    :data:`BODY_SUV`; soft tissue varies smoothly (organs differ: liver, muscle, blood pool) by a
    low-pass random field. ``n_lesions`` hot spheres sit in soft tissue or lung; then a Gaussian
    blur of ``fwhm_mm``.
    """
    a = np.moveaxis(np.asarray(hu, np.float64), slice_axis, 0)
    sp = np.asarray([s for i, s in enumerate(spacing_mm) if i != slice_axis], np.float64)
    body = np.zeros(a.shape, bool)
    brain = np.zeros(a.shape, bool)
    for k in range(a.shape[0]):
        labels, n = ndimage.label(a[k] > -500)
        if n:
            largest = labels == 1 + int(np.argmax(ndimage.sum(np.ones_like(labels), labels, range(1, n + 1))))
            body[k] = ndimage.binary_fill_holes(largest)
        bone = ndimage.binary_closing(a[k] > 200, iterations=2)
        inside = ndimage.binary_fill_holes(bone) & ~bone
        brain[k] = inside & (a[k] > -30) & (a[k] < 200) if inside.sum() * np.prod(sp) > 2000 else False
    classes = {"lung": body & (a < -400), "fat": body & (a >= -200) & (a < -30),
               "soft": body & (a >= -30) & (a <= 200) & ~brain, "bone": body & (a > 200), "brain": brain}
    act = np.zeros(a.shape, np.float64)
    for name, mask in classes.items():
        act[mask] = rng.uniform(*BODY_SUV[name])
    field = ndimage.gaussian_filter(rng.standard_normal(a.shape), sigma=[3.0, *(40.0 / sp)])
    field = np.exp(0.5 * field / max(float(field.std()), 1e-12))  # organs: factor 0.6-1.6 around the draw
    act = np.where(classes["soft"], act * field, act)
    spacing = np.asarray([spacing_mm[slice_axis], *sp])
    candidates = np.argwhere(classes["soft"] | classes["lung"])
    grids = np.ogrid[tuple(slice(0, n) for n in a.shape)]
    for _ in range(int(n_lesions) if candidates.size else 0):
        centre = candidates[rng.integers(len(candidates))]
        radius = float(rng.uniform(*lesion_radius_mm))
        d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, spacing))
        act = np.where(d2 <= radius**2, float(rng.uniform(*lesion_suv)), act)
    if fwhm_mm > 0:
        act = ndimage.gaussian_filter(act, sigma=float(fwhm_mm) / FWHM_PER_SIGMA / spacing, mode="constant")
    return np.moveaxis(np.clip(act, 0.0, None), 0, slice_axis).astype(np.float32)


def load_ct_pet(path, rng, *, min_voxel_mm: float = 2.0, **kw):
    """Simulated FDG PET (SUV, float32) on the anatomy of a CT image file (HU), and its affine.

    In-plane voxels finer than ``min_voxel_mm`` are averaged in blocks first (PET pixels are 2 to 4 mm);
    extra keywords go to :func:`fdg_activity_from_ct`."""
    from amir_cli.imaging.io import read_image

    vol = read_image(path)
    hu, affine, zooms = vol.array, vol.affine.copy(), list(vol.spacing_mm)
    axis = vol.slice_axis
    blocks = [1 if i == axis else max(1, int(min_voxel_mm // z)) for i, z in enumerate(zooms)]
    hu, affine, zooms = average_blocks(hu, affine, zooms, blocks)
    return fdg_activity_from_ct(hu, zooms, rng, slice_axis=axis, **kw), affine
