"""Standard bracketing of isotope ratios: a reference before and after the unknowns.

Pure numpy (no Bluesky, ophyd or IOC imports). A SIMS isotope ratio is biased by the
instrumental mass fractionation (IMF: the light isotope is favoured, by tens of per
mil for Li, and by how much depends on the matrix) and by the yields of the two
collectors that count the isotopes (a few per cent apart, drifting slowly). Both
multiply the ratio, so one factor corrects them, measured on a reference of known
ratio in the same matrix (decision 0035)::

    K = R_certified / R_measured(reference)

measured before (``K_b`` at ``t_b``) and after (``K_a`` at ``t_a``) the unknowns and
interpolated linearly in time in between (the collectors' yields drift):
``K(t) = K_b + w (K_a - K_b)``, ``w = (t - t_b) / (t_a - t_b)`` clipped to [0, 1].
Its error, in quadrature:

* counting: ``(1 - w)^2 s_b^2 + w^2 s_a^2`` (the references' Poisson errors
  propagated to K, dead-time variance included);
* drift: ``w (1 - w) |K_a - K_b|``, nothing at the references and a quarter of
  the change midway: a drift that is not linear departs from the interpolation by
  about that much;
* the certificate: ``K sigma_cert / R_cert`` (LSVEC: 0.28 %), common to every ratio
  corrected with it.

A corrected ratio is ``K R`` with error ``sqrt((K sigma_R)^2 + (R sigma_K)^2)``
(:func:`temsims.analysis.isotopes.ratio_map`, ``ratio_of_region`` and
:func:`temsims.analysis.particles.find_particles` take ``correction=(K, sigma_K)``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from temsims.analysis.isotopes import (
    NATURAL_LI6_LI7,
    NATURAL_LI6_LI7_SIGMA,
    _positive,
    ratio_of_region,
)


@dataclass(frozen=True)
class ReferenceMeasurement:
    """One measurement of the reference (summed, dead-time corrected counts).

    Attributes
    ----------
    time_s : float
        When it was measured (s, any clock shared with the unknowns; its middle).
    n6, n7, var6, var7 : float
        Summed counts of the numerator and denominator isotope and their variances.
    ratio, sigma : float
        ``n6 / n7`` and its Poisson error.
    n_pixels : int
        Pixels summed (1 for a spot count).
    """

    time_s: float
    n6: float
    n7: float
    var6: float
    var7: float
    ratio: float
    sigma: float
    n_pixels: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def reference_measurement(n6, n7, *, time_s: float, mask=None, dwell_s: float | None = None,
                          dead_time_s: float = 0.0, min_counts: float = 100.0,
                          primary_current_pa: float | None = None) -> ReferenceMeasurement:
    """Sum a reference's counts (a map, with an optional mask, or spot counts).

    Parameters
    ----------
    n6, n7 : array_like
        Counts of the numerator and denominator isotope: scalars (a spot count over
        ``dwell_s``) or 2-D maps (NaN = not acquired).
    time_s : float
        Time of the measurement (the middle of it), finite.
    mask : array_like of bool, optional
        The reference's pixels in a map (default: every pixel).
    dwell_s : float, optional
        Counting time per value (s); required with ``dead_time_s > 0``.
    dead_time_s : float
        Detector dead time (s), >= 0.
    min_counts : float
        Fewest numerator counts accepted (a reference must be measured well), >= 0.
    primary_current_pa : float, optional
        The primary current (pA): quasi-simultaneous arrival corrected per value after
        the dead time (:func:`temsims.analysis.isotopes.qsa_correct`; needs
        ``dwell_s``). The pad's 7Li loses ``K/2`` more than its 6Li; a bracket corrects
        that only for unknowns of the same K, so correct the unknowns too.

    Returns
    -------
    ReferenceMeasurement

    Raises
    ------
    ValueError, TypeError
        On bad counts or parameters, or a reference with too few counts.
    """
    if isinstance(time_s, bool) or not isinstance(time_s, (int, float, np.floating)) or \
            not math.isfinite(time_s):
        raise TypeError(f"time_s must be a finite number, got {time_s!r}")
    min_counts = _positive("min_counts", min_counts, allow_zero=True)
    a6, a7 = np.asarray(n6, dtype=float), np.asarray(n7, dtype=float)
    if a6.ndim == 0:
        a6, a7 = a6.reshape(1, 1), a7.reshape(1, 1)
    m = np.ones(a6.shape, bool) if mask is None else np.asarray(mask)
    reg = ratio_of_region(a6, a7, m, dwell_s=dwell_s, dead_time_s=dead_time_s,
                          systematic_rel=0.0, primary_current_pa=primary_current_pa)
    if not reg.n6 >= max(min_counts, 1.0) or not reg.n7 > 0:
        raise ValueError(f"the reference has {reg.n6:.0f} numerator and {reg.n7:.0f} "
                         f"denominator counts (at least {max(min_counts, 1.0):g} and 1 "
                         f"needed): is the beam on the reference?")
    return ReferenceMeasurement(time_s=float(time_s), n6=reg.n6, n7=reg.n7, var6=reg.var6,
                                var7=reg.var7, ratio=reg.ratio, sigma=reg.sigma,
                                n_pixels=reg.n_pixels)


@dataclass(frozen=True)
class BracketCorrection:
    """The correction factor of a ratio from a reference measured before and after.

    Attributes
    ----------
    before, after : ReferenceMeasurement
        The two reference measurements (``before.time_s <= after.time_s``).
    certified_ratio, certified_sigma : float
        The reference's known ratio and its uncertainty.
    k_before, k_after : float
        ``certified_ratio / ratio`` of each.
    sigma_before, sigma_after : float
        Their counting errors.
    """

    before: ReferenceMeasurement
    after: ReferenceMeasurement
    certified_ratio: float
    certified_sigma: float
    k_before: float
    k_after: float
    sigma_before: float
    sigma_after: float

    @property
    def drift(self) -> float:
        """Relative change of K from before to after (``K_a / K_b - 1``)."""
        return self.k_after / self.k_before - 1.0

    def weight(self, time_s: float) -> float:
        """Interpolation weight of the after-measurement at ``time_s`` (clipped)."""
        span = self.after.time_s - self.before.time_s
        if span <= 0:
            return 0.5
        return float(np.clip((time_s - self.before.time_s) / span, 0.0, 1.0))

    def factor(self, time_s: float, *, certificate: bool = True) -> tuple[float, float]:
        """``(K, sigma_K)`` at ``time_s`` (see the module's docstring); without
        ``certificate`` the reference value's own uncertainty is left out. A
        correction from one measurement (``before`` and ``after`` the same object)
        has that measurement's counting error."""
        w = self.weight(float(time_s))
        k = self.k_before + w * (self.k_after - self.k_before)
        if self.after is self.before:
            # One reference (bracketing_correction(m, m): the first pad alone, before
            # the second is measured): its counting error once, not averaged with itself.
            var = self.sigma_before**2
        else:
            var = ((1 - w) * self.sigma_before) ** 2 + (w * self.sigma_after) ** 2
        var += (w * (1 - w) * (self.k_after - self.k_before)) ** 2
        if certificate:
            var += (k * self.certified_sigma / self.certified_ratio) ** 2
        return float(k), float(math.sqrt(var))

    def correct(self, ratio, sigma, time_s: float) -> tuple[np.ndarray, np.ndarray]:
        """Corrected ratios and errors: ``K R`` and ``sqrt((K s)^2 + (R s_K)^2)``."""
        k, sk = self.factor(time_s)
        r = np.asarray(ratio, dtype=float)
        s = np.asarray(sigma, dtype=float)
        return k * r, np.hypot(k * s, r * sk)

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers for run metadata."""
        return {"certified_ratio": self.certified_ratio,
                "certified_sigma": self.certified_sigma,
                "k_before": self.k_before, "k_after": self.k_after,
                "sigma_before": self.sigma_before, "sigma_after": self.sigma_after,
                "t_before_s": self.before.time_s, "t_after_s": self.after.time_s,
                "ratio_before": self.before.ratio, "ratio_after": self.after.ratio,
                "drift": self.drift}


def bracketing_correction(before: ReferenceMeasurement, after: ReferenceMeasurement, *,
                          certified_ratio: float = NATURAL_LI6_LI7,
                          certified_sigma: float = NATURAL_LI6_LI7_SIGMA
                          ) -> BracketCorrection:
    """The correction factor K from a reference measured before and after the unknowns.

    Parameters
    ----------
    before, after : ReferenceMeasurement
        From :func:`reference_measurement`; ``after`` not earlier than ``before``.
    certified_ratio : float
        The reference's known ratio, > 0 (natural Li, LSVEC 6Li/7Li 0.08215).
    certified_sigma : float
        Its uncertainty, >= 0 (0.00023).

    Returns
    -------
    BracketCorrection

    Raises
    ------
    TypeError, ValueError
        On measurements of the wrong type, in the wrong order, or with a zero ratio.
    """
    for name, m in (("before", before), ("after", after)):
        if not isinstance(m, ReferenceMeasurement):
            raise TypeError(f"{name} must be a ReferenceMeasurement "
                            f"(reference_measurement), got {type(m).__name__}")
        if not (m.ratio > 0 and math.isfinite(m.ratio)):
            raise ValueError(f"{name}: the reference's ratio is {m.ratio!r}, not > 0")
    if after.time_s < before.time_s:
        raise ValueError(f"after (t = {after.time_s:g} s) precedes before "
                         f"(t = {before.time_s:g} s)")
    r0 = _positive("certified_ratio", certified_ratio)
    s0 = _positive("certified_sigma", certified_sigma, allow_zero=True)
    kb, ka = r0 / before.ratio, r0 / after.ratio
    return BracketCorrection(before=before, after=after, certified_ratio=r0,
                             certified_sigma=s0, k_before=kb, k_after=ka,
                             sigma_before=kb * before.sigma / before.ratio,
                             sigma_after=ka * after.sigma / after.ratio)


__all__ = [
    "BracketCorrection",
    "ReferenceMeasurement",
    "bracketing_correction",
    "reference_measurement",
]
