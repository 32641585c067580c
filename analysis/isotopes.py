"""Isotope ratios from SIMS count maps: dead time, ratio maps, significance, regions.

Pure numpy/scipy on arrays (no Bluesky, ophyd or IOC imports). Counts are the
collectors' pulse counts per pixel; NaN marks a pixel that was not acquired (the map
of an aborted run): such pixels are masked, never counted as zero.

Statistics
----------
Counting noise is Poisson. For a ratio ``R = N6 / N7`` the Poisson (delta-method)
standard error is ``sigma_R = R sqrt(1/N6 + 1/N7)`` (instrument.md); after a
dead-time correction the counts' variances are propagated instead of ``N``.

A test of a measured ratio against a reference ``R0`` (natural lithium) is done on
the 6Li fraction ``q = N6 / (N6 + N7)``, conditional on the total counts ``n``:
under the reference hypothesis ``N6 ~ Binomial(n, q0)``, ``q0 = R0 / (1 + R0)``
(two independent Poisson counts conditioned on their sum; exact at any count
level, finite when N6 or N7 is zero). Systematic errors that Poisson statistics
ignore (instrumental mass fractionation, a mis-set dead time, matrix effects,
the unresolved 6LiH+ on 7Li+) are modelled as a relative uncertainty
``systematic_rel`` of the reference ratio, lognormal, combined

* in quadrature for the Gaussian significance
  ``z = (q - q0) / sqrt(q0 (1 - q0) / n + (dq/dR f R0)^2)``, which near ``R0`` is
  ``(R - R0) / sqrt(sigma_Poisson(R0)^2 + (f R0)^2)`` (delta method), and
* by marginalising the exact binomial tail over the systematic distribution
  (Gauss-Hermite quadrature) for the p-values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.polynomial.hermite_e import hermegauss
from scipy import special

#: n(6Li)/n(7Li) of natural lithium: the reference material LSVEC (NIST RM 8545),
#: 0.08215 +- 0.00023 (Flesch, Anderson & Svec 1973, Int. J. Mass Spectrom. Ion
#: Phys. 12, 265), the delta-zero of Li isotope ratios adopted by IUPAC/CIAAW. Not
#: the 4.85 % 6Li midpoint that periodictable/mendeleev ship (IUPAC's interval).
NATURAL_LI6_LI7 = 0.08215
#: Its uncertainty (1 sigma, the certificate's).
NATURAL_LI6_LI7_SIGMA = 0.00023
#: Default relative systematic error of a SIMS 6Li/7Li ratio (fraction of the ratio):
#: instrumental mass fractionation of Li in SIMS and its matrix dependence are a
#: few per cent, plus a dead-time residual at MHz count rates (estimate).
DEFAULT_SYSTEMATIC_REL = 0.03
#: Smallest 6Li/7Li ratio counted as a label by the "natural" test (50 % 6Li): a
#: particle is called natural only if its data exclude this ratio (estimate; the
#: simulator's labels are 95 % 6Li, ratio ~19).
DEFAULT_LABEL_RATIO_MIN = 1.0
#: Gauss-Hermite nodes used to marginalise over the systematic error.
_N_QUADRATURE = 41


# ======================================================================================
# Input checks
# ======================================================================================
def _dead_time_args(dead_time_s: float, dwell_s: float | None) -> tuple[float, float]:
    """Checked ``(dead_time_s, dwell_s)``; the dwell is needed only with a dead time
    (without one, counts stand for themselves and the dwell is 1)."""
    dead_time_s = _positive("dead_time_s", dead_time_s, allow_zero=True)
    if dead_time_s == 0:
        return 0.0, 1.0
    if dwell_s is None:
        raise ValueError("dwell_s is required for the dead-time correction")
    return dead_time_s, _positive("dwell_s", dwell_s)


def _positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} = {value!r} must be finite and {bound}")
    return value


def _counts_array(name: str, counts, ndim: int | None = None) -> np.ndarray:
    """Float array of counts (NaN: not acquired); refuses negative counts."""
    try:
        arr = np.array(counts, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a numeric array of counts: {exc}") from None
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if np.isinf(arr).any():
        raise ValueError(f"{name} contains infinite counts")
    bad = arr < 0
    if bad.any():
        raise ValueError(f"{name} has {int(bad.sum())} negative counts")
    return arr


# ======================================================================================
# Dead time
# ======================================================================================
def _dead_time(counts: np.ndarray, dwell_s: float, tau_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Corrected counts and their variance.

    Counts behind a non-paralyzable dead time are sub-Poissonian: ``Var(M) = M / (1 + N
    tau)^2 = M (1 - M tau)^2`` per interval (a renewal process; Mueller 1973, Knoll ch.
    4), and ``dN/dM = 1 / (1 - M tau)^2``, so ``Var(N) = M / (1 - M tau)^2 = N / (1 -
    M tau)``: the correction inflates the variance by ``1 / (1 - M tau)``, not by its
    fourth power as it would for Poisson counts (decision 0034)."""
    if tau_s == 0.0:
        return counts.copy(), counts.copy()
    loss = counts * (tau_s / dwell_s)  # measured rate x tau
    with np.errstate(invalid="ignore"):
        saturated = loss >= 1.0
    if saturated.any():
        worst = float(np.nanmax(counts)) / dwell_s
        raise ValueError(
            f"{int(saturated.sum())} pixel(s) at or beyond dead-time saturation: measured "
            f"rate up to {worst:.4g} /s >= 1/tau = {1.0 / tau_s:.4g} /s (tau = {tau_s:g} s, "
            f"dwell {dwell_s:g} s); the true rate cannot be recovered")
    factor = 1.0 / (1.0 - loss)
    return counts * factor, counts * factor**2


#: Elementary charge (C): primary ions per second of a beam of I amperes are I / e.
_ELEMENTARY_CHARGE_C = 1.602176634e-19


def primary_ions(current_pa: float, time_s: float) -> float:
    """Primary ions of a beam of ``current_pa`` (pA) in ``time_s`` (s)."""
    return _positive("current_pa", current_pa) * 1e-12 * _positive("time_s", time_s) \
        / _ELEMENTARY_CHARGE_C


def _primary_ions_arg(primary_current_pa, dwell_s) -> float | None:
    """Primary ions per counting interval for the QSA correction (None: no correction)."""
    if primary_current_pa is None:
        return None
    if dwell_s is None:
        raise ValueError("dwell_s is required for the QSA correction (primary_current_pa)")
    return primary_ions(primary_current_pa, dwell_s)


def _qsa(counts: np.ndarray, variance: np.ndarray, ions: float | None
         ) -> tuple[np.ndarray, np.ndarray]:
    """Arrived ions from (dead-time corrected) pulses, and their variance.

    One primary ion gives a pulse with probability ``1 - exp(-K)`` (quasi-simultaneous
    arrival, decision 0043), so ``K = -ln(1 - P / I)`` with ``P`` the pulses and ``I``
    the primary ions of the interval: ``N = -I ln(1 - P / I)``, ``P (1 + P / 2I)`` to
    first order (Slodzian et al. 2004), and ``dN/dP = 1 / (1 - P / I)``."""
    if ions is None:
        return counts, variance
    p = counts / ions
    with np.errstate(invalid="ignore"):
        if (p >= 1.0).any():
            raise ValueError(
                f"more pulses than primary ions ({float(np.nanmax(counts)):.4g} for "
                f"{ions:.4g}): the primary current or the dwell is wrong")
    n = -ions * np.log1p(-p)
    return n, variance / np.square(1.0 - p)


def qsa_correct(counts, dwell_s: float, current_pa: float) -> np.ndarray:
    """Ions arrived from (dead-time corrected) pulse counts under quasi-simultaneous
    arrival: the ions of one primary impact on one collector give one pulse.

    ``K = -ln(1 - P / I)`` ions per primary ion from the pulses ``P`` per ``I``
    primary ions (``current_pa`` for ``dwell_s``); returns ``K I``, ``P (1 + K/2)`` to
    first order (Slodzian, Hillion, Stadermann and Zinner, Appl. Surf. Sci. 231-232,
    874 (2004)). Apply it after the dead-time correction and before any ratio: the
    major isotope loses more (``K/2``), so a ratio is biased by the difference of the
    isotopes' K, which standard bracketing removes only if the unknown's K equal the
    reference's (not for a labelled particle against a natural pad).

    Parameters
    ----------
    counts : array_like
        Pulse counts per interval, dead-time corrected, >= 0; NaN where not acquired.
    dwell_s : float
        Counting time of each value (s), > 0.
    current_pa : float
        Primary beam current (pA), > 0: the column's (aperture's) current.

    Returns
    -------
    numpy.ndarray
        Ions arrived (float), same shape.
    """
    ions = _primary_ions_arg(current_pa, _positive("dwell_s", dwell_s))
    c = _counts_array("counts", counts)
    return _qsa(c, c, ions)[0]


def dead_time_correct(counts, dwell_s: float, tau_s: float) -> np.ndarray:
    """True counts from counts measured by a non-paralyzable detector.

    On rates: ``N = M / (1 - M tau)`` with ``M = counts / dwell_s`` (instrument.md,
    "Ion counting detectors"); returned as counts over ``dwell_s``.

    Parameters
    ----------
    counts : array_like
        Measured counts per pixel (or per counting interval), >= 0; NaN where not
        acquired.
    dwell_s : float
        Counting time of each value (s), > 0.
    tau_s : float
        Dead time (s), >= 0 (10-50 ns for the electron multipliers; the simulated
        spectrometer's DEAD_TIME PV, its calibrated value: nominal 30 ns until
        ``calibrate_dead_time`` measures it).

    Returns
    -------
    numpy.ndarray
        Corrected counts (float), same shape.

    Raises
    ------
    ValueError
        If a rate is at or beyond saturation (``M tau >= 1``), or on negative counts,
        a non-positive dwell or a negative dead time.
    """
    dwell_s = _positive("dwell_s", dwell_s)
    tau_s = _positive("tau_s", tau_s, allow_zero=True)
    return _dead_time(_counts_array("counts", counts), dwell_s, tau_s)[0]


# ======================================================================================
# Ratio test (shared by maps, regions and particles)
# ======================================================================================
def _fraction_params(n6, n7, var6, var7):
    """Effective binomial trials and successes: counts deflated by the variance
    inflation of the dead-time correction (1 for raw Poisson counts)."""
    n = n6 + n7
    var = var6 + var7
    with np.errstate(invalid="ignore", divide="ignore"):
        k = np.where(var > 0, n / np.where(var > 0, var, 1.0), 1.0)
    return n * k, n6 * k


def _quadrature(systematic_rel: float) -> tuple[np.ndarray, np.ndarray]:
    if systematic_rel == 0.0:
        return np.zeros(1), np.ones(1)
    t, w = hermegauss(_N_QUADRATURE)
    return t, w / w.sum()


def _tail_upper(n_eff, a_eff, q):
    """P(X >= a) for X ~ Binomial(n, q), continuous in n and a: I_q(a, n - a + 1)."""
    a = np.asarray(a_eff, dtype=float)
    n = np.asarray(n_eff, dtype=float)
    with np.errstate(invalid="ignore"):
        out = special.betainc(np.where(a > 0, a, 1.0), np.maximum(n - a + 1.0, 1e-12), q)
    return np.where(a > 0, out, 1.0)


def _tail_lower(n_eff, a_eff, q):
    """P(X <= a) for X ~ Binomial(n, q), continuous: I_{1-q}(n - a, a + 1)."""
    a = np.asarray(a_eff, dtype=float)
    n = np.asarray(n_eff, dtype=float)
    b = n - a
    with np.errstate(invalid="ignore"):
        out = special.betainc(np.where(b > 0, b, 1.0), a + 1.0, 1.0 - q)
    return np.where(b > 0, out, 1.0)


def _marginal_tail(tail, n_eff, a_eff, ratio: float, systematic_rel: float):
    """Binomial tail averaged over a lognormal systematic on ``ratio``."""
    t, w = _quadrature(systematic_rel)
    total = np.zeros(np.shape(n_eff))
    for ti, wi in zip(t, w, strict=True):
        r = ratio * math.exp(systematic_rel * ti)
        total = total + wi * tail(n_eff, a_eff, r / (1.0 + r))
    return np.clip(total, 0.0, 1.0)


def _z_fraction(n_eff, a_eff, ratio: float, systematic_rel: float):
    """Gaussian significance of the 6Li fraction above that of ``ratio``."""
    q0 = ratio / (1.0 + ratio)
    dq = systematic_rel * ratio / (1.0 + ratio) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        q = a_eff / n_eff
        var = q0 * (1.0 - q0) / n_eff + dq * dq
        return (q - q0) / np.sqrt(var)


def _number_pair(value, name: str, symbols: str) -> tuple[float, float]:
    """``value`` as two floats, or a TypeError naming ``name`` and its ``symbols``."""
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a pair ({symbols}) of numbers, got "
                        f"{value!r}") from exc
    return a, b


def check_correction(correction) -> tuple[float, float] | None:
    """A checked ``(K, sigma_K)`` mass-bias correction of a ratio, or None."""
    if correction is None:
        return None
    k, sk = _number_pair(correction, "correction", "K, sigma_K")
    if not (math.isfinite(k) and k > 0 and math.isfinite(sk) and sk >= 0):
        raise ValueError(f"correction = ({k:g}, {sk:g}): K must be finite and > 0, "
                         f"sigma_K finite and >= 0")
    return k, sk


def corrected_systematic(systematic_rel: float, correction) -> float:
    """The relative systematic of a corrected ratio: ``systematic_rel`` and the
    correction's own ``sigma_K / K`` in quadrature."""
    return systematic_rel if correction is None else math.hypot(
        systematic_rel, correction[1] / correction[0])


# ======================================================================================
# The numerator's hydride on the denominator (6LiH+ on 7Li+, decision 0039)
# ======================================================================================
def check_hydride(hydride) -> tuple[float, float] | None:
    """A checked ``(h, sigma_h)`` hydride ratio MH+/M+ of the numerator, or None."""
    if hydride is None:
        return None
    h, sh = _number_pair(hydride, "hydride", "h, sigma_h")
    if not (math.isfinite(h) and 0.0 <= h < 0.1 and math.isfinite(sh) and sh >= 0):
        raise ValueError(f"hydride = ({h:g}, {sh:g}): h = MH+/M+ must be finite and in "
                         f"[0, 0.1), sigma_h finite and >= 0")
    return h, sh


def hydride_ratio(n_hydride, n_parent, *, dwell_s: float | None = None,
                  dead_time_s: float = 0.0, primary_current_pa: float | None = None
                  ) -> tuple[float, float]:
    """MH+/M+ measured as a lab does: counts at M + 1 where nothing else lands (mass
    8: 7LiH+ alone, no stable isotope) over counts at M (7Li+), e.g. on the natural
    pad, where 6LiH+ on 7Li is 1e-4 of it.

    Parameters
    ----------
    n_hydride, n_parent : array_like
        Counts (scalars, or maps summed over their finite pixels) at M + 1 and M.
    dwell_s : float, optional
        Counting time of each value (s); required with ``dead_time_s > 0``.
    dead_time_s : float
        Detector dead time (s), >= 0: both counts are corrected.
    primary_current_pa : float, optional
        The primary current (pA): both counts are corrected for quasi-simultaneous
        arrival after the dead time (:func:`qsa_correct`; needs ``dwell_s``).

    Returns
    -------
    (float, float)
        ``h`` and its Poisson error (the hydride's counts dominate it; at least one
        count's worth, so that zero counts still carry an error).
    """
    dead_time_s, dwell = _dead_time_args(dead_time_s, dwell_s)
    nh = _counts_array("n_hydride", np.atleast_1d(np.asarray(n_hydride, dtype=float)))
    n0 = _counts_array("n_parent", np.atleast_1d(np.asarray(n_parent, dtype=float)))
    ions = _primary_ions_arg(primary_current_pa, dwell_s)
    ch, vh = _qsa(*_dead_time(nh, dwell, dead_time_s), ions)
    c0, v0 = _qsa(*_dead_time(n0, dwell, dead_time_s), ions)
    sh, s0 = float(np.nansum(ch)), float(np.nansum(c0))
    wh, w0 = float(np.nansum(vh)), float(np.nansum(v0))
    if not s0 > 0:
        raise ValueError("no counts at the parent's mass: the hydride ratio is undefined")
    h = sh / s0
    return h, math.sqrt(max(wh, 1.0) + h * h * w0) / s0


def subtract_hydride(c6, v6, c7, v7, hydride):
    """``N7 - h N6`` and its variance ``V7 + h^2 V6`` per value (floored at 0 counts;
    ``sigma_h`` is common to every value and is added on sums, see
    :func:`hydride_sum_variance`). ``hydride``: checked ``(h, sigma_h)`` or None."""
    if hydride is None:
        return c7, v7
    h = hydride[0]
    return np.maximum(c7 - h * c6, 0.0), v7 + h * h * v6


def hydride_sum_variance(n6_sum: float, hydride) -> float:
    """Variance a summed ``N7`` gains from ``sigma_h``: ``(N6 sigma_h)^2`` (one ratio
    subtracted from every pixel: correlated, so it adds on the sum, not per pixel)."""
    return 0.0 if hydride is None else (n6_sum * hydride[1]) ** 2


def _poisson_sigma(n6, n7, var6, var7):
    """sigma_R = sqrt(var6 + R^2 var7) / N7 (= R sqrt(1/N6 + 1/N7) for raw counts);
    var6 floored at one count so that N6 = 0 still has an error."""
    with np.errstate(invalid="ignore", divide="ignore"):
        r = n6 / n7
        return r, np.sqrt(np.maximum(var6, 1.0) + r * r * var7) / n7


# ======================================================================================
# Maps
# ======================================================================================
@dataclass(frozen=True)
class RatioMap:
    """A per-pixel isotope ratio map with its Poisson errors.

    Attributes
    ----------
    numerator, denominator : numpy.ndarray
        Counts per (binned) pixel after the dead-time correction (NaN where
        unacquired).
    numerator_var, denominator_var : numpy.ndarray
        Their variances (counts^2): the counts themselves without dead time.
    ratio : numpy.ndarray
        ``numerator / denominator``; NaN where not :attr:`valid`.
    sigma : numpy.ndarray
        Poisson standard error of the ratio, ``R sqrt(1/N6 + 1/N7)`` (variances
        propagated through the dead-time correction; N6 = 0 counts as one count);
        NaN where not valid.
    valid : numpy.ndarray of bool
        Acquired, at least ``min_counts`` in total, and a non-zero denominator.
    acquired : numpy.ndarray of bool
        Every contributing pixel acquired.
    binning : int
        Pixels summed per side.
    min_counts : float
        Threshold on numerator + denominator used for :attr:`valid`.
    """

    numerator: np.ndarray
    denominator: np.ndarray
    numerator_var: np.ndarray
    denominator_var: np.ndarray
    ratio: np.ndarray
    sigma: np.ndarray
    valid: np.ndarray
    acquired: np.ndarray
    binning: int
    min_counts: float

    @property
    def relative_sigma(self) -> np.ndarray:
        """``sigma / ratio`` (NaN where invalid or the ratio is zero)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.ratio > 0, self.sigma / self.ratio, np.nan)


def _bin(arr: np.ndarray, b: int) -> np.ndarray:
    if b == 1:
        return arr
    ny, nx = (arr.shape[0] // b) * b, (arr.shape[1] // b) * b
    return arr[:ny, :nx].reshape(ny // b, b, nx // b, b).sum(axis=(1, 3))


def ratio_map(numerator_counts, denominator_counts, *, binning: int = 1,
              min_counts: float = 10.0, dwell_s: float | None = None,
              dead_time_s: float = 0.0, correction=None,
              primary_current_pa: float | None = None) -> RatioMap:
    """Per-pixel ratio ``N_num / N_den`` (e.g. 6Li/7Li) with its Poisson error.

    Counts are first dead-time corrected per pixel (when ``dead_time_s > 0``),
    then summed over ``binning x binning`` blocks (a partial block at the right or
    bottom edge is dropped; a block with an unacquired pixel is unacquired).

    Parameters
    ----------
    numerator_counts, denominator_counts : array_like
        2-D count maps of the same shape (e.g. 6Li and 7Li), NaN = not acquired.
    binning : int
        Pixels summed per side, >= 1.
    min_counts : float
        Binned pixels with fewer counts (numerator + denominator) are invalid, >= 0.
    dwell_s : float, optional
        Dwell per pixel (s); required when ``dead_time_s > 0``.
    dead_time_s : float
        Detector dead time (s), >= 0; 0 skips the correction.
    correction : (float, float), optional
        ``(K, sigma_K)``: the ratio's mass-bias correction factor and its error
        (standard bracketing, :func:`temsims.analysis.bracketing.bracketing_correction`).
        The numerator counts (and variances) are scaled by K, and ``sigma`` holds
        ``R sigma_K / K`` in quadrature with the Poisson error.
    primary_current_pa : float, optional
        The primary current (pA): each pixel's counts are corrected for
        quasi-simultaneous arrival after the dead time (:func:`qsa_correct`; needs
        ``dwell_s``). Without it the major isotope reads low by ``K/2``.

    Returns
    -------
    RatioMap

    Raises
    ------
    ValueError, TypeError
        On maps of different shapes, not 2-D, negative counts, bad parameters or
        saturated pixels (see :func:`dead_time_correct`).
    """
    num = _counts_array("numerator_counts", numerator_counts, ndim=2)
    den = _counts_array("denominator_counts", denominator_counts, ndim=2)
    if num.shape != den.shape:
        raise ValueError(f"maps differ in shape: {num.shape} vs {den.shape}")
    if isinstance(binning, bool) or not isinstance(binning, (int, np.integer)):
        raise TypeError(f"binning must be an int, got {type(binning).__name__}")
    if not 1 <= binning <= min(num.shape):
        raise ValueError(f"binning = {binning} must be within 1..{min(num.shape)} "
                         f"(map shape {num.shape})")
    min_counts = _positive("min_counts", min_counts, allow_zero=True)
    ions = _primary_ions_arg(primary_current_pa, dwell_s)
    dead_time_s, dwell_s = _dead_time_args(dead_time_s, dwell_s)
    correction = check_correction(correction)
    n6, v6 = _qsa(*_dead_time(num, dwell_s, dead_time_s), ions)
    n7, v7 = _qsa(*_dead_time(den, dwell_s, dead_time_s), ions)
    n6, v6, n7, v7 = (_bin(a, int(binning)) for a in (n6, v6, n7, v7))
    acquired = np.isfinite(n6) & np.isfinite(n7)
    valid = acquired & (n6 + n7 >= min_counts) & (n7 > 0)
    if correction is not None:
        n6, v6 = n6 * correction[0], v6 * correction[0] ** 2
    r, s = _poisson_sigma(n6, n7, v6, v7)
    if correction is not None:
        s = np.hypot(s, r * correction[1] / correction[0])
    return RatioMap(numerator=n6, denominator=n7, numerator_var=v6, denominator_var=v7,
                    ratio=np.where(valid, r, np.nan), sigma=np.where(valid, s, np.nan),
                    valid=valid, acquired=acquired, binning=int(binning),
                    min_counts=min_counts)


def significance_map(result: RatioMap, reference_ratio: float = NATURAL_LI6_LI7,
                     systematic_rel: float = DEFAULT_SYSTEMATIC_REL) -> np.ndarray:
    """Per-pixel significance (sigma) of the ratio above ``reference_ratio``.

    ``z = (q - q0) / sqrt(q0 (1 - q0) / n + (f R0 / (1 + R0)^2)^2)`` on the
    numerator fraction ``q = N6 / n`` (``n = N6 + N7``, deflated by the dead-time
    variance inflation), i.e. near the reference
    ``(R - R0) / sqrt(sigma_Poisson(R0)^2 + (f R0)^2)``: Poisson and the relative
    systematic ``f`` in quadrature. With ``f > 0`` no count level can make a ratio
    within ``f`` of the reference significant.

    Parameters
    ----------
    result : RatioMap
        From :func:`ratio_map`.
    reference_ratio : float
        Ratio of the null hypothesis, > 0 (natural Li, LSVEC: 0.08215).
    systematic_rel : float
        Relative systematic error of the ratio, >= 0 (default 3 %).

    Returns
    -------
    numpy.ndarray
        z per pixel; NaN where ``result.valid`` is False. Positive: enriched in the
        numerator isotope.
    """
    if not isinstance(result, RatioMap):
        raise TypeError(f"result must be a RatioMap (from ratio_map), got "
                        f"{type(result).__name__}")
    r0 = _positive("reference_ratio", reference_ratio)
    f = _positive("systematic_rel", systematic_rel, allow_zero=True)
    n_eff, a_eff = _fraction_params(result.numerator, result.denominator,
                                    result.numerator_var, result.denominator_var)
    z = _z_fraction(n_eff, a_eff, r0, f)
    return np.where(result.valid, z, np.nan)


# ======================================================================================
# Regions
# ======================================================================================
@dataclass(frozen=True)
class RegionRatio:
    """Isotope ratio of a region (counts summed, then divided).

    Attributes
    ----------
    n6, n7 : float
        Summed (dead-time corrected) counts of numerator and denominator.
    var6, var7 : float
        Their variances (counts^2).
    n_pixels : int
        Acquired pixels summed.
    ratio : float
        ``n6 / n7`` (inf if n7 = 0 < n6, NaN if both are 0).
    sigma : float
        Poisson standard error of the ratio (the counting bound).
    sigma_total : float
        ``sqrt(sigma^2 + (systematic_rel ratio)^2)``: the error to quote.
    z : float
        Gaussian significance above the reference (see :func:`significance_map`).
    p_natural : float
        One-sided p-value of a ratio at least this high if the region had the
        reference ratio: exact binomial tail of N6 given N6 + N7, averaged over the
        systematic error.
    p_label : float
        p-value of a ratio at most this high if the region had ``label_ratio_min``.
    reference_ratio, systematic_rel, label_ratio_min : float
        The hypotheses tested.
    correction : tuple of float or None
        ``(K, sigma_K)`` applied (mass bias and collector yields, from standard
        bracketing: :mod:`temsims.analysis.bracketing`): ``n6``, ``var6`` and ``ratio``
        are corrected, ``sigma`` holds ``R sigma_K / K`` in quadrature and the tests
        ``sigma_K / K`` in the systematic term. None: the ratio as measured.
    """

    n6: float
    n7: float
    var6: float
    var7: float
    n_pixels: int
    ratio: float
    sigma: float
    sigma_total: float
    z: float
    p_natural: float
    p_label: float
    reference_ratio: float
    systematic_rel: float
    label_ratio_min: float
    correction: tuple[float, float] | None = None

    @property
    def counts(self) -> float:
        """Total counts ``n6 + n7``."""
        return self.n6 + self.n7


def ratio_test(n6, n7, var6=None, var7=None, *, reference_ratio: float = NATURAL_LI6_LI7,
               systematic_rel: float = DEFAULT_SYSTEMATIC_REL,
               label_ratio_min: float = DEFAULT_LABEL_RATIO_MIN
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Significance and p-values of summed counts against natural and a label.

    Parameters
    ----------
    n6, n7 : array_like
        Summed counts (>= 0) of the numerator and denominator isotope.
    var6, var7 : array_like, optional
        Their variances (default: the counts, i.e. Poisson without dead time).
    reference_ratio : float
        Null-hypothesis ratio (natural, LSVEC 0.08215), > 0.
    systematic_rel : float
        Relative systematic error of a ratio, >= 0.
    label_ratio_min : float
        Smallest labelled ratio, > ``reference_ratio``.

    Returns
    -------
    z, p_natural, p_label : numpy.ndarray
        Gaussian significance above the reference (sigma); p-value of at least the
        observed N6 under the reference ratio; p-value of at most the observed N6
        under ``label_ratio_min``. NaN where there are no counts.
    """
    r0 = _positive("reference_ratio", reference_ratio)
    f = _positive("systematic_rel", systematic_rel, allow_zero=True)
    r_lab = _positive("label_ratio_min", label_ratio_min)
    if r_lab <= r0:
        raise ValueError(f"label_ratio_min = {r_lab:g} must exceed reference_ratio = {r0:g}")
    n6 = np.asarray(n6, dtype=float)
    n7 = np.asarray(n7, dtype=float)
    var6 = n6 if var6 is None else np.asarray(var6, dtype=float)
    var7 = n7 if var7 is None else np.asarray(var7, dtype=float)
    if (n6 < 0).any() or (n7 < 0).any():
        raise ValueError("counts must be >= 0")
    n_eff, a_eff = _fraction_params(n6, n7, var6, var7)
    has = n_eff > 0
    z = np.where(has, _z_fraction(n_eff, a_eff, r0, f), np.nan)
    p_nat = np.where(has, _marginal_tail(_tail_upper, n_eff, a_eff, r0, f), np.nan)
    p_lab = np.where(has, _marginal_tail(_tail_lower, n_eff, a_eff, r_lab, f), np.nan)
    return z, p_nat, p_lab


def ratio_of_region(n6, n7, mask, *, dwell_s: float | None = None, dead_time_s: float = 0.0,
                    reference_ratio: float = NATURAL_LI6_LI7,
                    systematic_rel: float = DEFAULT_SYSTEMATIC_REL,
                    label_ratio_min: float = DEFAULT_LABEL_RATIO_MIN,
                    correction=None, primary_current_pa: float | None = None
                    ) -> RegionRatio:
    """Isotope ratio of a region: sum the counts, then divide.

    Summing before dividing is the right estimator: the mean of per-pixel ratios
    is biased (``E[1/N7] > 1/E[N7]``) and undefined where N7 = 0, while
    ``sum N6 / sum N7`` reaches the Poisson bound
    ``R sqrt(1/sum N6 + 1/sum N7)``. Pixels not acquired (NaN) are left out.

    Parameters
    ----------
    n6, n7 : array_like
        2-D count maps (numerator, denominator), NaN = not acquired.
    mask : array_like of bool
        The region (same shape).
    dwell_s : float, optional
        Dwell per pixel (s), required when ``dead_time_s > 0``.
    dead_time_s : float
        Dead time (s), >= 0: counts are corrected per pixel before summing.
    reference_ratio, systematic_rel, label_ratio_min
        As in :func:`ratio_test`.
    correction : (float, float), optional
        ``(K, sigma_K)`` of standard bracketing (see :class:`RegionRatio`).
    primary_current_pa : float, optional
        The primary current (pA): quasi-simultaneous arrival corrected per pixel
        (:func:`ratio_map`).

    Returns
    -------
    RegionRatio

    Raises
    ------
    ValueError, TypeError
        On mismatched shapes, a non-boolean mask, or bad counts/parameters.
    """
    correction = check_correction(correction)
    m = ratio_map(n6, n7, dwell_s=dwell_s, dead_time_s=dead_time_s, min_counts=0.0,
                  primary_current_pa=primary_current_pa)
    mask = np.asarray(mask)
    if mask.dtype != bool:
        raise TypeError(f"mask must be a boolean array, got dtype {mask.dtype}")
    if mask.shape != m.numerator.shape:
        raise ValueError(f"mask shape {mask.shape} differs from the maps' {m.numerator.shape}")
    sel = mask & m.acquired
    s6, s7 = float(m.numerator[sel].sum()), float(m.denominator[sel].sum())
    v6, v7 = float(m.numerator_var[sel].sum()), float(m.denominator_var[sel].sum())
    return region_from_sums(s6, s7, v6, v7, n_pixels=int(sel.sum()),
                            reference_ratio=reference_ratio, systematic_rel=systematic_rel,
                            label_ratio_min=label_ratio_min, correction=correction)


def region_from_sums(n6: float, n7: float, var6: float | None = None,
                     var7: float | None = None, *, n_pixels: int = 0,
                     reference_ratio: float = NATURAL_LI6_LI7,
                     systematic_rel: float = DEFAULT_SYSTEMATIC_REL,
                     label_ratio_min: float = DEFAULT_LABEL_RATIO_MIN,
                     correction=None, corrected: bool = False) -> RegionRatio:
    """A :class:`RegionRatio` from summed counts (and variances; default Poisson).

    ``correction`` ``(K, sigma_K)`` scales ``n6`` and ``var6`` by K (unless
    ``corrected``: they already are) and adds its error (see :class:`RegionRatio`)."""
    correction = check_correction(correction)
    var6 = n6 if var6 is None else var6
    var7 = n7 if var7 is None else var7
    if correction is not None and not corrected:
        n6, var6 = n6 * correction[0], var6 * correction[0] ** 2
    f = corrected_systematic(systematic_rel, correction)
    z, p_nat, p_lab = ratio_test(n6, n7, var6, var7, reference_ratio=reference_ratio,
                                 systematic_rel=f, label_ratio_min=label_ratio_min)
    if n7 > 0:
        r, s = (float(v) for v in _poisson_sigma(n6, n7, var6, var7))
        if correction is not None:
            s = math.hypot(s, r * correction[1] / correction[0])
    else:
        r, s = (math.inf if n6 > 0 else math.nan), math.nan
    return RegionRatio(n6=float(n6), n7=float(n7), var6=float(var6), var7=float(var7),
                       n_pixels=int(n_pixels), ratio=r, sigma=s,
                       sigma_total=math.hypot(s, systematic_rel * r) if n7 > 0 else math.nan,
                       z=float(z), p_natural=float(p_nat), p_label=float(p_lab),
                       reference_ratio=float(reference_ratio),
                       systematic_rel=float(systematic_rel),
                       label_ratio_min=float(label_ratio_min), correction=correction)


def p_to_sigma(p) -> np.ndarray:
    """One-sided p-value -> equivalent Gaussian significance (``norm.isf``)."""
    # The normal's inverse survival function (scipy.stats.norm.isf's own formula,
    # without importing scipy.stats: ~1 s at a session's start).
    return -special.ndtri(np.asarray(p, dtype=float))


__all__ = [
    "DEFAULT_LABEL_RATIO_MIN",
    "DEFAULT_SYSTEMATIC_REL",
    "NATURAL_LI6_LI7",
    "NATURAL_LI6_LI7_SIGMA",
    "RatioMap",
    "RegionRatio",
    "check_correction",
    "check_hydride",
    "corrected_systematic",
    "dead_time_correct",
    "hydride_ratio",
    "hydride_sum_variance",
    "p_to_sigma",
    "primary_ions",
    "qsa_correct",
    "ratio_map",
    "ratio_of_region",
    "ratio_test",
    "region_from_sums",
    "significance_map",
    "subtract_hydride",
]
