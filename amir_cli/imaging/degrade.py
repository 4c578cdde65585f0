"""Physically motivated degradations that turn high-quality slices into low-quality inputs (docs/protocol.md).

All slice functions take a 2-D float array in physical units (MR: arbitrary, CT: HU, PET: SUV) and
return a float32 array on the same grid.  The noisy ones take a ``numpy.random.Generator`` so that a
result is reproducible; :func:`degrade_volume` derives one generator per slice from ``seed`` and the
slice index, so results do not depend on how slices are batched.

CT and PET: the *additional* noise model
-----------------------------------------
The high-quality image already holds the noise of its own (full-dose) acquisition.  A low-dose
version therefore gets only the *extra* noise of dose fraction ``d`` relative to full dose.  It is
simulated exactly as "the low-dose scan is a random subset of the full-dose photons":

* expected full-dose data ``lam`` are computed from the image (parallel-beam projection),
* full-dose counts ``N ~ Poisson(lam)``, low-dose counts ``N_d ~ Binomial(N, d)``
  (so ``N_d ~ Poisson(d * lam)`` as it should be),
* the extra sinogram noise is the difference of the two estimates:
  CT  ``-log(max(N_d, 1) / (d I0)) + log(max(N, 1) / I0)``;
  PET ``N_d / d - N``.
  Its mean is ~0 and its variance is ``(1/d - 1) / lam`` (CT, in line-integral units) or
  ``(1/d - 1) * lam`` (PET, in counts), so dose 1 adds exactly nothing and the added noise
  variance scales as ``1/d - 1``,
* only that noise sinogram is reconstructed by ramp-filtered back-projection and added to the input
  image (PET: on a clinical reconstruction grid with a Gaussian post-filter, see :func:`pet_low_count`).

The projector and filtered back-projection are :mod:`amir_cli.imaging.projector`.

Dose is conserved when the number of simulated views changes: ``i0`` is the number of photons per
1 mm detector bin per view of a :data:`CT_REFERENCE_VIEWS`-view rotation, and the PET count total
is shared among however many views are simulated, so ``n_angles`` trades speed against noise
texture at the edge of the field of view, not against noise level.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage, special

from amir_cli.imaging.intensity import ct_padding
from amir_cli.imaging.kspace import band_frequencies, check_factor, kspace_mask
from amir_cli.imaging.projector import check_2d, fbp, hann_apodisation, pad_square, project, view_count
from amir_cli.tasks import CT_DENOISE, DEFAULT_LEVEL, MRI_SR, PET_SYNTHESIS, TASKS

MU_WATER_PER_MM = 0.0192
"""Linear attenuation of water at a typical CT effective energy (~70 keV), 1/mm."""

CT_DEFAULT_I0 = 3e5
CT_REFERENCE_VIEWS = 1000
"""``i0`` is specified per view of a rotation with this many views (a typical clinical count)."""

PET_COUNTS_PER_SUV_CM2 = 3000.0
"""Default full-dose count density: expected true counts per (SUV x cm²) of activity in the slice.

A brain slice (about 130 cm², mean SUV about 5) or a body slice (about 700 cm², mean SUV about 1)
then gets about 2e6 counts, the order of a clinical 2-D-rebinned standard-dose slice.  Attenuation
and scatter are not modelled (the count total is that of the attenuation-corrected data)."""

PET_RECON_MM = 3.0
"""Default pixel of the PET reconstruction grid (clinical grids are 2 to 4 mm)."""
PET_POSTFILTER_FWHM_MM = 5.0
"""Default Gaussian post-filter of the PET reconstruction (clinical: 4 to 6 mm FWHM)."""
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
OSEM_NOISE_EXPONENT = 0.75
"""The :func:`em_noise_weight` exponent of PET simulated as an OSEM reconstruction (`amir degrade --pet-noise osem`)."""

# --------------------------------------------------------------------------------------- helpers
def _check_dose(dose_fraction) -> float:
    try:
        d = float(dose_fraction)
    except (TypeError, ValueError):
        raise ValueError(f"dose fraction must be a number in (0, 1], got {dose_fraction!r}") from None
    if not (0.0 < d <= 1.0) or not math.isfinite(d):
        raise ValueError(f"dose fraction must be in (0, 1], got {dose_fraction!r}")
    return d


def _check_positive(value, name) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {value!r}") from None
    if not (v > 0) or not math.isfinite(v):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return v


def _check_rng(rng) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(
            f"rng must be a numpy.random.Generator (e.g. numpy.random.default_rng(0)), got {type(rng).__name__}"
        )
    return rng


# ------------------------------------------------------------------------------------------- MRI
def fermi_filter(shape, factor: int, width: float) -> np.ndarray:
    """A scanner's radial Fermi filter over the band of ``kspace_mask`` (centred k-space):
    1 / (1 + exp((r - (1 - 2 width)) / width)), r the radius over the band's half-width; 0 outside the band."""
    ky, kx = band_frequencies(shape, check_factor(factor))
    r = np.hypot(ky[:, None], kx[None, :])
    return kspace_mask(shape, factor) * special.expit(((1.0 - 2.0 * width) - r) / width)


def mri_truncate_complex(image2d, factor: int, fermi: float = 0.0) -> np.ndarray:
    """Complex image of :func:`mri_truncate` before the magnitude step (complex128)."""
    img = check_2d(image2d)
    factor = check_factor(factor)
    if factor == 1:
        return img.astype(np.complex128)
    k = np.fft.fftshift(np.fft.fft2(img))
    k *= fermi_filter(img.shape, factor, fermi) if fermi > 0 else kspace_mask(img.shape, factor)
    return np.fft.ifft2(np.fft.ifftshift(k))


def mri_truncate(image2d, factor: int, fermi: float = 0.0) -> np.ndarray:
    """Low-resolution MR on the same grid: keep the central 1/factor of k-space per in-plane axis.

    2-D FFT (centred), zero every frequency outside the central ``n // factor`` samples of each axis,
    inverse FFT, magnitude.  ``fermi`` > 0: the band tapered as a scanner's k-space filter tapers it
    (:func:`fermi_filter` of that width).  ``factor`` 1 returns the input unchanged (as float32).
    """
    factor = check_factor(factor)
    img = check_2d(image2d)
    if factor == 1:
        return img.astype(np.float32)
    return np.abs(mri_truncate_complex(img, factor, fermi)).astype(np.float32)


# ------------------------------------------------------------------------------------------- CT
def ct_low_dose(
    hu2d,
    dose_fraction,
    rng,
    *,
    pixel_mm: float = 1.0,
    i0: float = CT_DEFAULT_I0,
    n_angles=None,
    kernel_cutoff: float | None = None,
) -> np.ndarray:
    """Low-dose CT slice (HU, float32): the input plus the extra noise of dose fraction ``d``.

    HU -> mu = 0.0192/mm * (1 + HU/1000), clipped at 0; parallel-beam line integrals ``p`` (mm, via
    ``pixel_mm``); expected full-dose counts ``lam = I0 exp(-p)`` where ``I0 = i0 * pixel_mm *
    CT_REFERENCE_VIEWS / n_views`` photons per detector bin per view (``i0``: photons per 1 mm bin per
    view of a 1000-view rotation, so the dose is the same whatever ``n_angles``); counts
    ``N ~ Poisson(lam)``, ``N_d ~ Binomial(N, d)``; noise sinogram
    ``-log(max(N_d,1)/(d I0)) + log(max(N,1)/I0)`` with variance ``(1/d - 1) exp(p) / I0``; ramp-filtered
    back-projection of the noise only, converted to HU (x 1000 / 0.0192) and added to the input.
    Dose 1 returns the input unchanged.  ``n_angles`` (default ``min(size, 256)``, rounded up to a
    multiple of 4) sets the simulated views.  Non-square slices are padded with air.  Pixel padding
    (below -1500 HU, outside the scanner's field of view: :func:`~amir_cli.imaging.intensity.ct_padding`)
    keeps its value.  ``kernel_cutoff``: the noise reconstructed with a smoother kernel, the ramp apodised
    by a Hann window that ends at that fraction of the Nyquist frequency (a scanner's soft kernel; None: the ramp).
    """
    hu = check_2d(hu2d, "hu2d")
    d = _check_dose(dose_fraction)
    rng = _check_rng(rng)
    pixel_mm = _check_positive(pixel_mm, "pixel_mm")
    i0 = _check_positive(i0, "i0")
    if d == 1.0:
        return hu.astype(np.float32)
    mu = np.clip(MU_WATER_PER_MM * (1.0 + hu / 1000.0), 0.0, None)
    mu_sq, crop = pad_square(mu, 0.0)
    n = mu_sq.shape[0]
    m = view_count(n_angles, n)
    p = project(mu_sq, pixel_mm, m)
    i0_bin = i0 * pixel_mm * CT_REFERENCE_VIEWS / m
    lam = i0_bin * np.exp(-p)
    n_full = rng.poisson(lam)
    n_low = rng.binomial(n_full, d)
    noise = np.log(np.maximum(n_full, 1) / i0_bin) - np.log(np.maximum(n_low, 1) / (d * i0_bin))
    noise_mu = fbp(noise, n, pixel_mm, kernel_cutoff)[crop]
    return np.where(ct_padding(hu), hu, hu + noise_mu * (1000.0 / MU_WATER_PER_MM)).astype(np.float32)


def ct_soft_kernel(hu2d, kernel_cutoff: float) -> np.ndarray:
    """A CT slice (HU, float32) as a softer reconstruction kernel shows it: its 2-D spectrum times the
    radial Hann window that :func:`ct_low_dose` gives the noise with the same ``kernel_cutoff``
    (the central-slice theorem carries the ramp's window to the image), so that a reference and its
    low-dose input share one kernel."""
    hu = check_2d(hu2d, "hu2d")
    h, w = hu.shape
    window = hann_apodisation(np.hypot(np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]) / 0.5, kernel_cutoff)
    return np.real(np.fft.ifft2(np.fft.fft2(hu) * window)).astype(np.float32)


# ------------------------------------------------------------------------------------------ PET
def pet_low_count(
    suv2d,
    dose_fraction,
    rng,
    *,
    pixel_mm: float = 2.0,
    total_counts=None,
    recon_mm: float = PET_RECON_MM,
    fwhm_mm: float = PET_POSTFILTER_FWHM_MM,
    n_angles=None,
    em_exponent: float | None = None,
) -> np.ndarray:
    """Low-count PET slice (SUV, float32, >= 0): the input plus the extra noise of dose fraction ``d``.

    As a scanner makes it: the activity (negative values treated as 0) is taken to the
    reconstruction grid of ``recon_mm`` pixels (the input's own grid if that is coarser) and
    projected; the full-dose expected counts are scaled to ``total_counts`` true coincidences for
    the slice (default: :data:`PET_COUNTS_PER_SUV_CM2` x the slice's activity in SUV cm², about 2e6
    for a brain or body slice); counts ``N ~ Poisson(lam)``, ``N_d ~ Binomial(N, d)`` (Poisson
    thinning); the noise ``N_d/d - N`` (variance ``(1/d - 1) lam``) is reconstructed by ramp-filtered
    back-projection on that grid, smoothed by the scanner's Gaussian post-filter of ``fwhm_mm``,
    interpolated back onto the input grid, added to the input and the result clipped at 0. The
    noise is therefore correlated over several millimetres, as in a clinical image. Dose 1 returns
    the input (clipped at 0). Attenuation, scatter and randoms are not modelled.
    ``em_exponent``: the noise shaped as an iterative (OSEM) reconstruction shapes it, see
    :func:`em_noise_weight` (None: as filtered back-projection spreads it, evenly).
    """
    d = _check_dose(dose_fraction)
    rng = _check_rng(rng)

    def thinned(lam):  # N ~ Poisson(lam), N_d ~ Binomial(N, d): the extra noise N_d/d - N
        n_full = rng.poisson(lam)
        return rng.binomial(n_full, d) / d - n_full

    return _pet_noisy(suv2d, None if d == 1.0 else thinned, pixel_mm=pixel_mm, total_counts=total_counts,
                      recon_mm=recon_mm, fwhm_mm=fwhm_mm, n_angles=n_angles, em_exponent=em_exponent)


def pet_standard_dose(activity2d, rng, **scanner) -> np.ndarray:
    """The standard-dose PET image (SUV, float32, >= 0) of a noise-free activity map: the activity
    plus the noise of its own full-dose counts ``N ~ Poisson(lam)`` (``N - lam``, variance ``lam``),
    reconstructed as :func:`pet_low_count` reconstructs its noise.

    A real standard-dose scan holds that noise and a low-dose scan of the same patient holds it too
    (the low-dose counts are a subset), so a simulated pair that should behave like a real one takes
    this image as its reference and :func:`pet_low_count` of it as its input. ``scanner``: the
    keywords of :func:`pet_low_count` (pixel, counts, grid, post-filter, views)."""
    rng = _check_rng(rng)
    return _pet_noisy(activity2d, lambda lam: rng.poisson(lam) - lam, **scanner)


def em_noise_weight(activity2d, exponent: float, fwhm_px: float) -> np.ndarray:
    """The factor that turns evenly spread reconstruction noise into the noise of an iterative (EM,
    OSEM) reconstruction, whose variance follows the local activity: the activity seen through the
    post-filter (``fwhm_px`` pixels), to the power ``exponent`` (0.5: variance proportional to the
    activity; 1: a constant coefficient of variation), scaled so that the mean squared factor over
    the activity's support (above 1% of its peak) is 1. Air then holds almost no noise, as in a
    clinical PET image, while filtered back-projection spreads it over the whole field."""
    exponent = float(exponent)
    if not 0 < exponent <= 2:
        raise ValueError(f"em_exponent must be in (0, 2], got {exponent!r}")
    seen = np.clip(ndimage.gaussian_filter(np.clip(activity2d, 0.0, None), fwhm_px / FWHM_PER_SIGMA, mode="nearest"), 0.0, None)
    weight = seen**exponent
    support = seen > 0.01 * seen.max()
    if not support.any():  # no activity: no noise
        return np.zeros_like(seen)
    return weight / math.sqrt(float(np.mean(weight[support] ** 2)))


def _pet_noisy(suv2d, count_noise, *, pixel_mm=2.0, total_counts=None, recon_mm=PET_RECON_MM, fwhm_mm=PET_POSTFILTER_FWHM_MM, n_angles=None, em_exponent=None) -> np.ndarray:
    """``suv2d`` plus the reconstructed noise sinogram ``count_noise(lam)`` (counts) of its expected
    counts ``lam``, clipped at 0 (see :func:`pet_low_count` for the grid, counts and post-filter);
    ``count_noise`` None: no noise."""
    suv = check_2d(suv2d, "suv2d")
    pixel_mm = _check_positive(pixel_mm, "pixel_mm")
    recon_mm = max(_check_positive(recon_mm, "recon_mm"), pixel_mm)
    fwhm_mm = float(fwhm_mm)
    if not math.isfinite(fwhm_mm) or fwhm_mm < 0:
        raise ValueError(f"fwhm_mm must be a non-negative number, got {fwhm_mm!r}")
    act = np.clip(suv, 0.0, None)
    if total_counts is None:
        total = PET_COUNTS_PER_SUV_CM2 * act.sum() * pixel_mm**2 / 100.0
    else:
        total = _check_positive(total_counts, "total_counts")
    if count_noise is None or total <= 0 or act.sum() <= 0:
        return act.astype(np.float32)
    coarse = _resample(act, pixel_mm / recon_mm)
    act_sq, crop = pad_square(coarse, 0.0)
    n = act_sq.shape[0]
    m = view_count(n_angles, n)
    p = np.clip(project(act_sq, recon_mm, m), 0.0, None)  # SUV x mm
    scale = (total / m) / p.sum(axis=1).mean()  # counts per (SUV x mm); every view holds the total
    noise = fbp(count_noise(p * scale) / scale, n, recon_mm)[crop]
    if fwhm_mm > 0:
        noise = ndimage.gaussian_filter(noise, fwhm_mm / FWHM_PER_SIGMA / recon_mm, mode="nearest")
    noise = _resample(noise, shape=suv.shape)
    if em_exponent is not None:
        noise = noise * em_noise_weight(act, em_exponent, fwhm_mm / pixel_mm)
    return np.clip(suv + noise, 0.0, None).astype(np.float32)


def _resample(image: np.ndarray, factor: float = 1.0, shape=None) -> np.ndarray:
    """``image`` on a grid ``factor`` times as fine (or of ``shape``), pixel centres aligned.

    Shrinking averages over the coarse pixel first (a Gaussian of the pixel's width), so that the
    counts of the finer grid are not aliased."""
    if shape is None:
        if factor >= 1.0:
            return image
        shape = tuple(max(4, round(s * factor)) for s in image.shape)
        image = ndimage.gaussian_filter(image, [0.5 * s / t for s, t in zip(image.shape, shape)], mode="nearest")
    if tuple(shape) == image.shape:
        return image
    coords = [(np.arange(t) + 0.5) * (s / t) - 0.5 for s, t in zip(image.shape, shape)]
    grid = np.meshgrid(*coords, indexing="ij")
    return ndimage.map_coordinates(image, grid, order=1, mode="nearest")


# --------------------------------------------------------------------------------------- volumes
def slice_rng(seed: int, index: int) -> np.random.Generator:
    """The generator :func:`degrade_volume` uses for slice ``index`` (independent streams per slice)."""
    if isinstance(seed, bool) or int(seed) != seed or int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(index),)))


def degrade_slice(image2d, task: str, level, rng, *, pixel_mm: float = 1.0, **kw) -> np.ndarray:
    """Apply the degradation of ``task`` to one 2-D slice (``level``: factor or dose fraction)."""
    if task == MRI_SR:
        if set(kw) - {"fermi"}:
            raise ValueError(f"mri-sr takes only a fermi width, got {sorted(kw)}")
        return mri_truncate(image2d, level, **kw)
    if task == CT_DENOISE:
        return ct_low_dose(image2d, level, rng, pixel_mm=pixel_mm, **kw)
    if task == PET_SYNTHESIS:
        return pet_low_count(image2d, level, rng, pixel_mm=pixel_mm, **kw)
    raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")


def degrade_pair(reference, task: str, level, rng, *, pixel_mm: float = 1.0, standard_dose: bool = False, spec_low_dose: bool = False, **kw):
    """(high-quality, low-quality) slices of a simulated scanner pair made from ``reference``: the
    reference as the scan shows it (PET with ``standard_dose``: :func:`pet_standard_dose`; CT with a
    ``kernel_cutoff``: :func:`ct_soft_kernel`), then :func:`degrade_slice` of that.
    ``spec_low_dose``: PET noise added as SPEC §3 spreads it even where the reference's follows
    ``em_exponent`` (the protocol's low dose of a clinical OSEM scan, as `amir degrade` makes it)."""
    hq = reference
    if task == PET_SYNTHESIS and standard_dose:
        hq = pet_standard_dose(hq, rng, pixel_mm=pixel_mm, **kw)
    if "kernel_cutoff" in kw:
        hq = ct_soft_kernel(hq, kw["kernel_cutoff"])
    if spec_low_dose:
        kw.pop("em_exponent", None)
    return hq, degrade_slice(hq, task, level, rng, pixel_mm=pixel_mm, **kw)


def degrade_volume(array, task: str, level=None, *, slice_axis: int = 2, spacing_mm=(1.0, 1.0, 1.0), seed: int = 0, progress=None, **kw) -> np.ndarray:
    """Degrade a 2-D or 3-D image slice by slice along ``slice_axis`` (float32, same shape).

    ``level`` is the k-space factor for ``mri-sr`` and the dose fraction otherwise (default
    :data:`DEFAULT_LEVEL`).  Slice ``i`` uses ``slice_rng(seed, i)``, so a slice's result does not
    depend on which other slices are degraded with it.  The pixel size is the mean of the two
    in-plane spacings.  ``progress()``, if given, is called after each slice of a 3-D image.  Extra
    keywords go to the slice function (``i0``, ``n_angles``; PET: ``total_counts``, ``recon_mm``,
    ``fwhm_mm``).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if level is None:
        level = DEFAULT_LEVEL[task]
    if task == MRI_SR:
        check_factor(level)
    else:
        _check_dose(level)
    arr = np.asarray(array)
    if arr.ndim not in (2, 3):
        raise ValueError(f"array must be 2-D or 3-D, got shape {arr.shape}")
    spacing = tuple(float(s) for s in np.atleast_1d(spacing_mm))
    if arr.ndim == 2:
        if len(spacing) < 2:
            raise ValueError(f"spacing_mm needs at least 2 values for a 2-D image, got {spacing_mm!r}")
        pix = float(np.mean(spacing[:2]))
        _check_positive(pix, "spacing_mm")
        return degrade_slice(arr, task, level, slice_rng(seed, 0), pixel_mm=pix, **kw)
    if len(spacing) != 3:
        raise ValueError(f"spacing_mm needs 3 values for a 3-D image, got {spacing_mm!r}")
    if isinstance(slice_axis, bool) or int(slice_axis) != slice_axis or not -3 <= int(slice_axis) < 3:
        raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis!r}")
    ax = int(slice_axis) % 3
    inplane = [spacing[i] for i in range(3) if i != ax]
    if min(inplane) <= 0:
        raise ValueError(f"spacing_mm must be positive, got {spacing_mm!r}")
    pix = float(np.mean(inplane))
    moved = np.moveaxis(arr, ax, 0)
    out = np.empty(moved.shape, dtype=np.float32)
    for i in range(moved.shape[0]):
        out[i] = degrade_slice(moved[i], task, level, slice_rng(seed, i), pixel_mm=pix, **kw)
        if progress is not None:
            progress()
    return np.moveaxis(out, 0, ax)
