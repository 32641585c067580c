"""The ion probe's focus from a through-focus series of maps across a straight edge.

A probe out of focus is wider by its defocused cone (decision 0044): the edge a map
shows is the specimen's step blurred by the probe, the pixel and the ion-solid
interaction. :func:`edge_width` fits one map's edge (rows summed: the edge runs along
the map's columns) with an error-function step on a sloping background (the probe's
halo, decision 0040, is a slope over a short window); :func:`fit_focus_curve` fits the
widths against the focus setting with the hyperbola of a defocused cone,

``w(f)^2 = w0^2 + K^2 (f - f0)^2``,

whose minimum ``f0`` is the best focus and ``w0`` the width there. Pure numpy/scipy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special

#: Gaussian sigma -> FWHM.
SIGMA_TO_FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0))


@dataclass(frozen=True)
class EdgeFit:
    """One edge: its position and width along the profile (nm from its first pixel)."""

    position_nm: float
    sigma_nm: float
    sigma_err_nm: float
    contrast: float
    chi2_dof: float
    ok: bool

    @property
    def fwhm_nm(self) -> float:
        return SIGMA_TO_FWHM * self.sigma_nm

    @property
    def fwhm_err_nm(self) -> float:
        return SIGMA_TO_FWHM * self.sigma_err_nm


def _step(x, low, high, x0, sigma, slope):
    return low + (high - low) * 0.5 * special.erfc((x0 - x) / (math.sqrt(2.0) * sigma)) \
        + slope * (x - x0)


def edge_width(counts: np.ndarray, pitch_nm: float) -> EdgeFit:
    """Fit the edge across a map's columns (rows summed) with a blurred step.

    Parameters
    ----------
    counts : array (ny, nx) or (nx,)
        Counts (dead-time corrected if that matters); the edge runs along the rows'
        perpendicular, i.e. the profile along a row crosses it once, either way up.
    pitch_nm : float
        Pixel pitch along the rows (nm, on the specimen).

    Returns
    -------
    EdgeFit
        ``sigma_nm`` the Gaussian width of the step (probe, pixel, interaction and the
        edge's own sharpness together), its error from the fit's covariance (Poisson
        weights, scaled by max(chi^2/dof, 1)), ``ok`` False if the fit failed or the
        profile shows no edge (contrast below 5 standard errors).
    """
    counts = np.asarray(counts, float)
    profile = counts.sum(axis=0) if counts.ndim == 2 else counts
    if profile.ndim != 1 or profile.size < 8 or not np.all(np.isfinite(profile)):
        raise ValueError("edge_width needs a finite profile of at least 8 pixels")
    if not (math.isfinite(pitch_nm) and pitch_nm > 0):
        raise ValueError(f"pitch_nm must be > 0, got {pitch_nm!r}")
    n = profile.size
    x = pitch_nm * np.arange(n)
    q = max(2, n // 8)
    low, high = float(profile[:q].mean()), float(profile[-q:].mean())
    # Start at the half-way crossing of the smoothed profile.
    smooth = np.convolve(profile, np.ones(3) / 3.0, mode="same")
    mid = 0.5 * (low + high)
    inside = smooth[1:-1] - mid
    cross = np.flatnonzero(np.sign(inside[:-1]) != np.sign(inside[1:]))
    x0 = float(x[1 + cross[len(cross) // 2]]) if cross.size else float(x[n // 2])
    sigma_w = np.sqrt(np.maximum(profile, 1.0))
    p0 = (low, high, x0, 3.0 * pitch_nm, 0.0)
    bounds = ([-np.inf, -np.inf, x[0], 0.05 * pitch_nm, -np.inf],
              [np.inf, np.inf, x[-1], 0.5 * x[-1], np.inf])
    nan = float("nan")
    try:
        popt, pcov = optimize.curve_fit(_step, x, profile, p0=p0, sigma=sigma_w,
                                        absolute_sigma=True, bounds=bounds, maxfev=5000)
    except (RuntimeError, ValueError):
        return EdgeFit(nan, nan, nan, nan, nan, False)
    resid = (profile - _step(x, *popt)) / sigma_w
    dof = max(n - 5, 1)
    chi2 = float(resid @ resid) / dof
    err = np.sqrt(np.clip(np.diag(pcov), 0, None)) * math.sqrt(max(chi2, 1.0))
    contrast = float(popt[1] - popt[0])
    ok = bool(np.all(np.isfinite(err)) and abs(contrast) > 5.0 * math.hypot(err[0], err[1])
              and err[3] < popt[3])
    return EdgeFit(float(popt[2]), float(popt[3]), float(err[3]), contrast, chi2, ok)


@dataclass(frozen=True)
class FocusFit:
    """The through-focus curve ``w(f)^2 = w0^2 + K^2 (f - f0)^2`` fitted."""

    best_focus_um: float
    best_focus_err_um: float
    width_at_best_nm: float
    width_at_best_err_nm: float
    slope_nm_per_um: float
    chi2_dof: float
    inside: bool

    def width_nm(self, focus_um) -> np.ndarray:
        """The fitted width (same units as the widths fitted) at ``focus_um``."""
        f = np.asarray(focus_um, float)
        return np.hypot(self.width_at_best_nm, self.slope_nm_per_um * (f - self.best_focus_um))


def _hyperbola(f, f0, w0, k):
    return np.sqrt(w0 * w0 + (k * (f - f0)) ** 2)


def fit_focus_curve(focus_um, width_nm, width_err_nm=None) -> FocusFit:
    """Fit edge widths against the focus setting with a defocused cone's hyperbola.

    Parameters
    ----------
    focus_um, width_nm : array-like
        The focus setting of each map and the width measured there (at least 4).
    width_err_nm : array-like, optional
        The widths' standard errors (weights); equal weights without.

    Returns
    -------
    FocusFit
        ``best_focus_um`` the minimum ``f0`` and its error (the fit's covariance scaled
        by max(chi^2/dof, 1)), ``width_at_best_nm`` ``w0``, ``slope_nm_per_um`` ``K``
        (the width's growth per um far from focus: ~1.18 alpha for a cone of
        semi-angle alpha mrad), ``inside`` whether ``f0`` lies within the settings
        measured (outside it is an extrapolation: widen the series).

    Raises
    ------
    ValueError
        Fewer than 4 finite points, or too few distinct focus settings.
    """
    f = np.asarray(focus_um, float)
    w = np.asarray(width_nm, float)
    e = np.ones_like(w) if width_err_nm is None else np.asarray(width_err_nm, float)
    good = np.isfinite(f) & np.isfinite(w) & np.isfinite(e) & (e > 0) & (w > 0)
    f, w, e = f[good], w[good], e[good]
    if f.size < 4 or np.unique(f).size < 3:
        raise ValueError(f"fit_focus_curve needs >= 4 finite widths at >= 3 focus "
                         f"settings, got {f.size}")
    # Start from the parabola in w^2 (linear least squares), weighted like the widths.
    a = np.vstack([np.ones_like(f), f, f * f]).T
    sw = 1.0 / (2.0 * w * e)
    c0, c1, c2 = np.linalg.lstsq(a * sw[:, None], w * w * sw, rcond=None)[0]
    if c2 > 0:
        f0 = float(np.clip(-c1 / (2 * c2), f.min(), f.max()))
        k = math.sqrt(c2)
        w0 = math.sqrt(max(c0 - c2 * f0 * f0, (0.5 * w.min()) ** 2))
    else:
        f0, w0 = float(f[np.argmin(w)]), float(w.min())
        k = float((w.max() - w.min()) / max(np.ptp(f), 1e-9))
    span = float(np.ptp(f))
    try:
        popt, pcov = optimize.curve_fit(
            _hyperbola, f, w, p0=(f0, w0, max(k, 1e-6)), sigma=e,
            absolute_sigma=width_err_nm is not None,
            bounds=([f.min() - span, 0.0, 0.0], [f.max() + span, np.inf, np.inf]),
            maxfev=5000)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"the through-focus fit did not converge: {exc}") from None
    resid = (w - _hyperbola(f, *popt)) / e
    dof = max(f.size - 3, 1)
    chi2 = float(resid @ resid) / dof
    err = np.sqrt(np.clip(np.diag(pcov), 0, None)) * math.sqrt(max(chi2, 1.0))
    return FocusFit(float(popt[0]), float(err[0]), float(popt[1]), float(err[1]),
                    float(popt[2]), chi2, bool(f.min() <= popt[0] <= f.max()))


__all__ = ["EdgeFit", "FocusFit", "SIGMA_TO_FWHM", "edge_width", "fit_focus_curve"]
