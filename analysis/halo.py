"""The ion probe's halo, measured on a sharp edge (decision 0040).

A focused-ion-beam probe is a Gaussian core plus a faint, broad halo (the aberration
and column-scattering tails of a liquid-metal ion source: a few per cent of the
current beyond ~100 nm). A lab measures it on an edge: a map across a flat pad whose
edge is sharp (here the natural-Li Li2CO3 pad beside the particle field,
:data:`temsims.constants.REFERENCE_REGIONS`), summed along the edge, is the pad's
profile blurred by core and halo; its far tail is the halo.

:func:`measure_probe_halo` fits that profile; :func:`halo_sigma_px` turns the probe's
halo into the ``(fraction, sigma_px)`` that :func:`temsims.analysis.particles.find_particles`
subtracts from a map of another pixel size, :func:`halo_along_normal` into the
``(fraction, sigma_nm)`` along an interface normal that the profile fits of
:mod:`temsims.analysis.interfaces` put in their models.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import optimize, special

from temsims.analysis.isotopes import _counts_array, _dead_time, _dead_time_args, _positive

FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


@dataclass(frozen=True)
class HaloFit:
    """A probe halo measured on an edge.

    Attributes
    ----------
    fraction, fraction_sigma : float
        Fraction of the current in the halo, and its 1-sigma error.
    fwhm_nm, fwhm_sigma_nm : float
        The halo's FWHM (probe, beam-normal plane: the pixel's own width taken out),
        and its error.
    core_fwhm_nm : float
        The core's FWHM (with the interaction spread; the pixel's width taken out).
    edge_nm : float
        The edge's position from the first column's centre (nm).
    chi2_dof : float
        Reduced chi-square of the fit (Poisson weights).
    """

    fraction: float
    fraction_sigma: float
    fwhm_nm: float
    fwhm_sigma_nm: float
    core_fwhm_nm: float
    edge_nm: float
    chi2_dof: float

    def to_dict(self) -> dict:
        return asdict(self)

    def halo(self, pitch_nm: float) -> tuple[float, float]:
        """``(fraction, sigma_px)`` for a map of pixel pitch ``pitch_nm``
        (:func:`halo_sigma_px`)."""
        return self.fraction, halo_sigma_px(self.fwhm_nm, pitch_nm)


def halo_sigma_px(fwhm_nm: float, pitch_nm: float) -> float:
    """The halo's footprint sigma in a map's pixels: the probe halo's Gaussian and the
    pixel's own width (variance ``p^2 / 12``)."""
    fwhm_nm = _positive("fwhm_nm", fwhm_nm)
    pitch_nm = _positive("pitch_nm", pitch_nm)
    return math.sqrt((fwhm_nm * FWHM_TO_SIGMA) ** 2 + pitch_nm**2 / 12.0) / pitch_nm


def halo_along_normal(fraction: float, fwhm_nm: float, *, stretch: float = 1.0,
                      normal: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float]:
    """``(fraction, sigma_nm)`` of the probe's halo along a direction on the specimen,
    for the profile fits of :mod:`temsims.analysis.interfaces` (``halo=``).

    The halo is a Gaussian of FWHM ``fwhm_nm`` in the beam-normal plane, stretched on
    the specimen by ``stretch`` (1 / cos(incidence), the map geometry's ``stretch``)
    along the specimen's y; ``normal`` is the profile's unit direction (x, y) on the
    specimen. The pixel and the interaction spread are left out: they blur core and
    halo alike and are in the fitted core blur, to which the fits add this sigma.
    """
    fraction = float(fraction)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    sigma = _positive("fwhm_nm", fwhm_nm) * FWHM_TO_SIGMA
    stretch = _positive("stretch", stretch)
    nx, ny = (float(v) for v in normal)
    norm = math.hypot(nx, ny)
    if not norm > 0.0:
        raise ValueError(f"normal must be a nonzero (x, y), got {normal!r}")
    nx, ny = nx / norm, ny / norm
    return fraction, sigma * math.sqrt(nx**2 + (ny * stretch) ** 2)


def _box(x, a, b, s):
    """A box [a, b] blurred by a Gaussian of sigma s, at x."""
    r = 1.0 / (math.sqrt(2.0) * s)
    return 0.5 * (special.erf((x - a) * r) - special.erf((x - b) * r))


def edge_profile(x_nm, amplitude, background, edge_nm, width_nm, fraction, core_sigma_nm,
                 halo_sigma_nm):
    """The profile of a pad ``[edge - width, edge]`` seen through core and halo."""
    x = np.asarray(x_nm, float)
    a = edge_nm - width_nm
    return background + amplitude * ((1.0 - fraction) * _box(x, a, edge_nm, core_sigma_nm)
                                     + fraction * _box(x, a, edge_nm, halo_sigma_nm))


def measure_probe_halo(maps, *, pitch_nm: float, pad_width_nm: float,
                       pad_side: str = "left", dwell_s: float | None = None,
                       dead_time_s: float = 0.0) -> HaloFit:
    """Fraction and width of the probe's halo from a map across a pad's edge.

    Parameters
    ----------
    maps : array_like or sequence of array_like
        One or more 2-D count maps (e.g. 6Li and 7Li) of one raster whose columns
        cross the pad's edge (rows along it). Each is dead-time corrected, then they
        are summed and the rows summed: with the rows covering the pad and its halo
        along the edge, the column profile is the pad's width through core and halo.
    pitch_nm : float
        Column pitch on the specimen (nm), > 0.
    pad_width_nm : float
        The pad's width across the edge (nm), > 0 (its other edge may be outside the
        map).
    pad_side : str
        ``"left"``: the pad is on the first columns' side, ``"right"``: on the last.
    dwell_s, dead_time_s
        As for :func:`temsims.analysis.particles.find_particles`.

    Returns
    -------
    HaloFit
    """
    pitch_nm = _positive("pitch_nm", pitch_nm)
    pad_width_nm = _positive("pad_width_nm", pad_width_nm)
    if pad_side not in ("left", "right"):
        raise ValueError(f"pad_side must be 'left' or 'right', got {pad_side!r}")
    dead_time_s, dwell = _dead_time_args(dead_time_s, dwell_s)
    if isinstance(maps, np.ndarray) and maps.ndim == 2:
        maps = [maps]
    profile = var = None
    for i, m in enumerate(maps):
        c, v = _dead_time(_counts_array(f"maps[{i}]", m, ndim=2), dwell, dead_time_s)
        if not (np.isfinite(c).all() and np.isfinite(v).all()):
            raise ValueError("the maps must be fully acquired and below saturation")
        if profile is None:
            profile, var = c.sum(axis=0), v.sum(axis=0)
        elif c.shape[1] != profile.size:
            raise ValueError("the maps differ in shape")
        else:
            profile, var = profile + c.sum(axis=0), var + v.sum(axis=0)
    if profile is None or profile.size < 12:
        raise ValueError("need at least 12 columns across the edge")
    if pad_side == "right":
        profile, var = profile[::-1], var[::-1]
    x = np.arange(profile.size) * pitch_nm
    n = profile.size
    tail = max(3, n // 10)
    bkg0 = float(np.median(profile[-tail:]))
    amp0 = float(profile[: max(2, n // 20)].mean()) - bkg0
    if amp0 <= 0:
        raise ValueError("no pad on the pad_side of the map (the profile does not fall)")
    edge0 = x[int(np.argmax(profile < bkg0 + 0.5 * amp0))]
    w = 1.0 / np.sqrt(np.maximum(var, 1.0))

    def model(p):
        amp, bkg, edge, lf, lc, lh = p
        return edge_profile(x, amp, bkg, edge, pad_width_nm, special.expit(lf),
                            math.exp(lc), math.exp(lh))

    p0 = [amp0, bkg0, edge0, special.logit(0.02), math.log(max(pitch_nm, 10.0)),
          math.log(max(150.0, 3 * pitch_nm))]
    fit = optimize.least_squares(lambda p: (model(p) - profile) * w, p0, method="lm",
                                 x_scale="jac", max_nfev=4000)
    dof = max(n - len(p0), 1)
    chi2 = float(np.sum(fit.fun**2)) / dof
    jac = fit.jac
    try:
        cov = np.linalg.inv(jac.T @ jac) * max(chi2, 1.0)
    except np.linalg.LinAlgError:
        cov = np.full((len(p0), len(p0)), np.nan)
    amp, bkg, edge, lf, lc, lh = fit.x
    frac = float(special.expit(lf))
    s_h, s_c = math.exp(lh), math.exp(lc)
    if s_c > s_h:  # the two Gaussians are labelled by width
        s_c, s_h, frac = s_h, s_c, 1.0 - frac
    box = pitch_nm**2 / 12.0
    fwhm = math.sqrt(max(s_h**2 - box, 0.0)) / FWHM_TO_SIGMA
    core = math.sqrt(max(s_c**2 - box, 0.0)) / FWHM_TO_SIGMA
    frac_sigma = frac * (1.0 - frac) * math.sqrt(max(cov[3, 3], 0.0))
    fwhm_sigma = fwhm * math.sqrt(max(cov[5, 5], 0.0)) * s_h**2 / max(s_h**2 - box, 1e-12)
    return HaloFit(fraction=frac, fraction_sigma=float(frac_sigma), fwhm_nm=float(fwhm),
                   fwhm_sigma_nm=float(fwhm_sigma), core_fwhm_nm=float(core),
                   edge_nm=float(edge), chi2_dof=chi2)


__all__ = ["HaloFit", "edge_profile", "halo_along_normal", "halo_sigma_px", "measure_probe_halo"]
