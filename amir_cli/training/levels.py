"""The ranges of the on-the-fly degradation levels (around docs/protocol.md) and how one level is drawn."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from amir_cli.tasks import CT_DENOISE, MR_FACTORS, MRI_SR, PET_SYNTHESIS


@dataclass(frozen=True)
class Levels:
    """Ranges of the on-the-fly degradation levels; the defaults are `amir train`'s."""

    ct_dose: tuple[float, float] = (0.05, 0.5)  # dose fraction, log-uniform
    ct_i0: tuple[float, float] = (1e5, 1e6)  # photons per 1 mm bin per view, log-uniform
    ct_soft_kernels: float = 0.0  # the share of CT pairs (reference and noise) from a softer kernel
    ct_kernel_cutoff: tuple[float, float] = (0.5, 1.0)  # that kernel's Hann cutoff (x Nyquist), uniform
    mr_factors: tuple[int, ...] = MR_FACTORS  # k-space truncation factor, uniform choice
    mr_fermi: float = 0.0  # the share of MR pairs whose band a scanner's Fermi filter tapers
    mr_fermi_width: tuple[float, float] = (0.02, 0.1)  # that filter's width (x the band's half-width), uniform
    pet_dose: tuple[float, float] = (1 / 20, 1 / 2)  # dose fraction, log-uniform
    pet_counts: tuple[float, float] = (1e6, 1e7)  # full-dose true coincidences per slice, log-uniform
    pet_recon_mm: tuple[float, float] = (2.0, 4.0)  # reconstruction pixel, uniform
    pet_fwhm_mm: tuple[float, float] = (4.0, 6.0)  # post-filter, uniform
    pet_em_noise: float = 0.0  # the share of PET pairs whose noise an iterative reconstruction shapes
    pet_em_ref: float = 0.0  # the share of PET pairs with such a reference and SPEC §3's low dose (evenly spread)
    pet_em_exponent: tuple[float, float] = (0.5, 1.0)  # its noise ~ activity to this power, uniform
    # validation levels (fixed): CT quarter dose at the default I0, MR x2 and x4 alternating, PET 1/4
    val_ct_dose: float = 0.25
    val_pet_dose: float = 0.25
    val_ct_kernel: float | None = None  # the validation CT pairs' softer kernel cutoff (None: the ramp)
    val_pet_em: float | None = None  # the validation PET pairs' EM noise exponent (None: evenly spread noise)
    val_pet_spec_low_dose: bool = False  # their input's added noise evenly spread even so (SPEC §3)
    val_mr_fermi: float = 0.0  # the validation MR pairs' Fermi filter width (0: the sharp band)

    def draw(self, task: str, rng: np.random.Generator) -> tuple[object, dict]:
        """(level, extra keywords for degrade_slice)."""
        if task == MRI_SR:
            factor = int(self.mr_factors[rng.integers(len(self.mr_factors))])
            if self.mr_fermi > 0 and rng.random() < self.mr_fermi:  # no draw when off: runs replay
                return factor, {"fermi": float(rng.uniform(*self.mr_fermi_width))}
            return factor, {}
        if task == CT_DENOISE:
            dose, kw = _log_uniform(rng, *self.ct_dose), {"i0": _log_uniform(rng, *self.ct_i0)}
            if self.ct_soft_kernels > 0 and rng.random() < self.ct_soft_kernels:  # no draw when off: runs replay
                kw["kernel_cutoff"] = float(rng.uniform(*self.ct_kernel_cutoff))
            return dose, kw
        dose, kw = _log_uniform(rng, *self.pet_dose), {
            "total_counts": _log_uniform(rng, *self.pet_counts),
            "recon_mm": float(rng.uniform(*self.pet_recon_mm)),
            "fwhm_mm": float(rng.uniform(*self.pet_fwhm_mm)),
        }
        if self.pet_em_noise > 0 or self.pet_em_ref > 0:  # no draw when off: runs replay
            u = rng.random()
            if u < self.pet_em_noise + self.pet_em_ref:
                kw["em_exponent"] = float(rng.uniform(*self.pet_em_exponent))
                if u >= self.pet_em_noise:
                    kw["spec_low_dose"] = True
        return dose, kw

    def validation(self, task: str, k: int) -> tuple[object, dict]:
        if task == MRI_SR:
            return int(self.mr_factors[k % len(self.mr_factors)]), {"fermi": self.val_mr_fermi} if self.val_mr_fermi else {}
        if task == CT_DENOISE:
            return self.val_ct_dose, {} if self.val_ct_kernel is None else {"kernel_cutoff": self.val_ct_kernel}
        kw = {} if self.val_pet_em is None else {"em_exponent": self.val_pet_em}
        return self.val_pet_dose, kw | ({"spec_low_dose": True} if self.val_pet_spec_low_dose else {})

    def describe(self) -> dict:
        return {
            CT_DENOISE: {"dose_fraction": list(self.ct_dose), "i0": list(self.ct_i0), "distribution": "log-uniform",
                         "soft_kernels": self.ct_soft_kernels, "kernel_cutoff": list(self.ct_kernel_cutoff)},
            MRI_SR: {"factor": list(self.mr_factors), "fermi": self.mr_fermi, "fermi_width": list(self.mr_fermi_width)},
            PET_SYNTHESIS: {
                "dose_fraction": list(self.pet_dose), "distribution": "log-uniform", "total_counts": list(self.pet_counts),
                "recon_mm": list(self.pet_recon_mm), "postfilter_fwhm_mm": list(self.pet_fwhm_mm),
                "em_noise": self.pet_em_noise, "em_ref": self.pet_em_ref, "em_exponent": list(self.pet_em_exponent),
            },
            "validation": {CT_DENOISE: self.val_ct_dose, MRI_SR: list(self.mr_factors), "mri-sr_fermi": self.val_mr_fermi,
                           PET_SYNTHESIS: self.val_pet_dose},
        }


def _log_uniform(rng, lo, hi) -> float:
    lo, hi = float(lo), float(hi)
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi)))) if hi > lo else lo
