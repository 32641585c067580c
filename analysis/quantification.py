"""EDX-guided SIMS quantification: calibrate the relative sensitivity on a gradient.

Pure numpy on arrays (no bluesky, ophyd, tiled or IOC imports).

Protocol (``shared/reference/instrument.md``, "EDX-guided SIMS quantification"):
an EDX line scan across a diffusion zone gives ``C_EDX(x)`` with uncertainties and a
mask of the points where EDX is above its detection limit
(:func:`temsims.analysis.edx.quantify_line_scan`); a SIMS map of the same zone gives
the analyte and matrix-reference intensities ``I_A``, ``I_M``, brought to the EDX
positions by :func:`map_profile`; :func:`calibrate_rsf` fits the relative sensitivity
factor there; :func:`quantify_map` turns any SIMS map pair into an absolute
concentration map with its uncertainty.

Why the RSF is modelled as a function of the SIMS ratio, not of C
    ``RSF = C I_M / I_A`` depends on the concentration (the matrix changes along the
    couple: Cu ionises better diluted in Ni than in pure Cu). Below the EDX limit the
    concentration is what we want to know, so the model has to be written in what is
    measured there: the ratio ``r = I_A / I_M``. We fit

        ln(rho / r) = a0 + a1 q + ... + ad q^d,   q = s r / (1 + s r),

    with ``rho = C / (1 - C)`` (``binary=True``: the reference is the other element
    of a binary, so ``C_A / C_M = RSF r`` is the Cliff-Lorimer-like form and stays
    finite as C -> 1) or ``rho = C`` (``binary=False``: a dilute analyte in a matrix of
    any composition, ``C = RSF r``). The scale ``s`` is the constant-RSF fit
    (``exp`` of the weighted mean of ``ln(rho / r)``), so that ``q`` is the
    concentration a constant RSF would give (for a binary). ``q`` is bounded (0..1)
    and tends to 0 linearly
    as the analyte becomes dilute, so extrapolating below the EDX limit leaves the
    polynomial's constant term: the RSF tends to its dilute-limit value, which is the
    physics (once dilute, the matrix no longer changes). A polynomial in ``ln r``
    would instead extrapolate a slope in log-log space and diverge by orders of
    magnitude at ppm. The calibration range in ``q`` is kept; ``q`` below it is
    an extrapolation toward the dilute limit, which is short in ``q`` because EDX
    reaches ~0.1-1 at.%. Degree 3 by default: on the simulated Cu-Ni couple degree 2
    leaves a -4 % bias of the dilute-limit RSF (noise-free data), degree 3 +2 %.

Matched resolution (:func:`blur_factor`)
    EDX sees the composition at a point (a few nm of beam spread); a SIMS map sees it
    through the ion probe (a Gaussian core of ~90 nm FWHM at 1 nA, a 3 % halo of 300
    nm) and through bins as wide as the EDX step. On a curved profile (the couple's
    convex erfc tail) the blur raises the counts by ``~ sigma^2 S'' / 2S``, 1 % at 20
    at.% and 4 % at 0.1 at.% on the 1 nA probe: the ratio's blur then varies with C,
    a polynomial in C takes it for a change of RSF it cannot follow toward the dilute
    limit (``ln RSF`` bends by -0.025 per decade of C), and the quantified map reads
    high by 2-4 %. :func:`blur_factor` estimates each bin's blur from a smooth fit of
    the map's own profile along the gradient, so dividing it out compares SIMS and
    EDX at one resolution.

Uncertainties
    Calibration: weighted least squares with ``sigma(ln rho)`` from the EDX
    uncertainty and ``sigma(ln r)`` from Poisson counting of the SIMS profile; the
    coefficient covariance is scaled by the reduced chi^2 when above 1 (model misfit
    or underestimated errors). Quantification: Poisson on both counts per pixel
    (``sqrt(max(N, 1))``: a pixel with no counts is an upper limit, not a zero
    uncertainty) propagated through the calibration curve, plus the fit covariance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

ArrayLike = np.ndarray | Sequence[float] | float


# ======================================================================================
# Map geometry: pixel -> specimen coordinates, and a profile along the gradient
# ======================================================================================
def pixel_transform(pixel_nm: float, *, origin_nm: tuple[float, float] = (0.0, 0.0),
                    pixel_nm_y: float | None = None, rotation_deg: float = 0.0) -> np.ndarray:
    """3x3 affine taking map pixel ``(col, row, 1)`` to specimen ``(x_nm, y_nm, 1)``.

    Parameters
    ----------
    pixel_nm
        Pixel size along the map columns (x), nm.
    origin_nm
        Specimen (x, y) of the centre of pixel (col 0, row 0), nm.
    pixel_nm_y
        Pixel size along the rows (y), nm (default ``pixel_nm``; a SIMS map at 45 deg
        incidence has ``pixel_nm / cos 45``).
    rotation_deg
        Rotation of the map axes on the specimen (counter-clockwise), degrees.
    """
    py = pixel_nm if pixel_nm_y is None else pixel_nm_y
    for name, v in (("pixel_nm", pixel_nm), ("pixel_nm_y", py)):
        if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a positive number, got {v!r}")
    if not all(math.isfinite(float(o)) for o in origin_nm) or len(origin_nm) != 2:
        raise ValueError(f"origin_nm must be two finite numbers, got {origin_nm!r}")
    th = math.radians(rotation_deg)
    c, s = math.cos(th), math.sin(th)
    return np.array([[pixel_nm * c, -py * s, float(origin_nm[0])],
                     [pixel_nm * s, py * c, float(origin_nm[1])],
                     [0.0, 0.0, 1.0]])


def _check_transform(transform) -> np.ndarray:
    t = np.asarray(transform, dtype=float)
    if t.shape != (3, 3) or not np.all(np.isfinite(t)):
        raise ValueError(f"transform must be a finite 3x3 affine matrix, got shape {t.shape}")
    if not np.allclose(t[2], [0.0, 0.0, 1.0]):
        raise ValueError("transform must be affine: last row (0, 0, 1)")
    if abs(np.linalg.det(t[:2, :2])) < 1e-12:
        raise ValueError("transform is singular")
    return t


def _check_positions(positions_nm) -> np.ndarray:
    """Bin centres along a gradient: finite, strictly increasing (a flat array)."""
    pos = np.asarray(positions_nm, dtype=float).ravel()
    if pos.size < 1 or not np.all(np.isfinite(pos)):
        raise ValueError("positions_nm must hold finite positions")
    if pos.size > 1 and np.any(np.diff(pos) <= 0):
        raise ValueError("positions_nm must be strictly increasing")
    return pos


def _check_direction(direction) -> np.ndarray:
    """A gradient direction on the specimen, normalised."""
    d = np.asarray(direction, dtype=float)
    if d.shape != (2,) or not np.all(np.isfinite(d)) or np.hypot(*d) == 0:
        raise ValueError(f"direction must be a non-zero 2-vector, got {direction!r}")
    return d / np.hypot(*d)


def _bin_edges(pos: np.ndarray, bin_width_nm: float | None) -> np.ndarray:
    """The bins around ``pos``: without a width, the ``n + 1`` edges midpoint to
    midpoint (the ends mirrored); with one, ``(n, 2)`` [low, high) of
    ``pos +- bin_width_nm / 2``."""
    if bin_width_nm is None:
        if pos.size < 2:
            raise ValueError("bin_width_nm is needed for a single position")
        mids = 0.5 * (pos[1:] + pos[:-1])
        return np.concatenate([[pos[0] - (mids[0] - pos[0])], mids,
                               [pos[-1] + (pos[-1] - mids[-1])]])
    if not (math.isfinite(bin_width_nm) and bin_width_nm > 0):
        raise ValueError(f"bin_width_nm must be positive, got {bin_width_nm!r}")
    if pos.size > 1 and np.any(np.diff(pos) < bin_width_nm * (1 - 1e-9)):
        raise ValueError("bins of bin_width_nm would overlap: positions closer than it")
    return np.stack([pos - bin_width_nm / 2, pos + bin_width_nm / 2], axis=-1)


@dataclass(frozen=True)
class MapProfile:
    """A map averaged across the gradient, in bins centred on ``positions_nm``.

    ``total`` is the summed counts of the ``npixels`` pixels in each bin, ``mean`` the
    counts per pixel (NaN for an empty bin).
    """

    positions_nm: np.ndarray
    total: np.ndarray
    npixels: np.ndarray

    @property
    def mean(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.npixels > 0, self.total / np.maximum(self.npixels, 1), np.nan)


def map_profile(image: np.ndarray, transform: np.ndarray, positions_nm: ArrayLike, *,
                direction: tuple[float, float] = (1.0, 0.0),
                bin_width_nm: float | None = None,
                line_point_nm: tuple[float, float] | None = None,
                half_width_nm: float | None = None) -> MapProfile:
    """Profile of a SIMS map along the gradient at given specimen positions.

    Each pixel is mapped to the specimen by ``transform`` and projected on the
    gradient ``direction``; pixels in the half-open bin ``[p - w/2, p + w/2)`` around a
    position ``p`` are summed (averaging across the other axis). Matching resolution: with bins as wide as the
    EDX step, the SIMS profile is the SIMS signal averaged over each EDX point's
    share of the line.

    Parameters
    ----------
    image
        2-D map (counts per pixel).
    transform
        3x3 affine, map ``(col, row, 1)`` -> specimen ``(x_nm, y_nm, 1)`` (e.g.
        :func:`pixel_transform`).
    positions_nm
        Bin centres along ``direction`` (specimen nm, projected coordinate
        ``x * dx + y * dy``), strictly increasing: e.g. the EDX points.
    direction
        Gradient direction on the specimen (normalised here).
    bin_width_nm
        Bin width (default: the spacing of ``positions_nm``, midpoint to midpoint).
    line_point_nm, half_width_nm
        If given, only pixels within ``half_width_nm`` of the line through
        ``line_point_nm`` along ``direction`` are used (default: all).

    Returns
    -------
    MapProfile
    """
    img = np.asarray(image, dtype=float)
    if img.ndim != 2 or img.size == 0:
        raise ValueError(f"image must be a non-empty 2-D map, got shape {img.shape}")
    t = _check_transform(transform)
    pos = _check_positions(positions_nm)
    d = _check_direction(direction)
    edges = _bin_edges(pos, bin_width_nm)
    ny, nx = img.shape
    cols = np.arange(nx, dtype=float)[None, :]
    rows = np.arange(ny, dtype=float)[:, None]
    x = t[0, 0] * cols + t[0, 1] * rows + t[0, 2]
    y = t[1, 0] * cols + t[1, 1] * rows + t[1, 2]
    along = (x * d[0] + y * d[1]).ravel()
    values = img.ravel()
    keep = np.isfinite(values)
    if line_point_nm is not None or half_width_nm is not None:
        if line_point_nm is None or half_width_nm is None or not half_width_nm > 0:
            raise ValueError("line_point_nm and a positive half_width_nm go together")
        across = ((x - line_point_nm[0]) * -d[1] + (y - line_point_nm[1]) * d[0]).ravel()
        keep &= np.abs(across) <= half_width_nm
    along, values = along[keep], values[keep]
    if bin_width_nm is None:
        index = np.searchsorted(edges, along, side="right") - 1
        inside = (index >= 0) & (index < pos.size)
    else:
        index = np.searchsorted(pos - bin_width_nm / 2, along, side="right") - 1
        inside = (index >= 0) & (index < pos.size)
        inside[inside] &= along[inside] - pos[index[inside]] < bin_width_nm / 2
    total = np.bincount(index[inside], weights=values[inside], minlength=pos.size)
    npix = np.bincount(index[inside], minlength=pos.size)
    return MapProfile(pos, total[: pos.size], npix[: pos.size])


#: Gaussian FWHM -> sigma.
_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
#: Fixed-point iterations of :func:`blur_factor` (the factor of the blurred profile is
#: right to first order in the blur; each iteration gains one order).
_BLUR_ITERATIONS = 3


def blur_factor(image: np.ndarray, transform: np.ndarray,
                positions_nm: ArrayLike | None = None, *, core_fwhm_nm: float,
                halo: tuple[float, float] | None = None,
                direction: tuple[float, float] = (1.0, 0.0),
                bin_width_nm: float | None = None) -> np.ndarray:
    """How much the probe and the bins raise a map's counts along a gradient.

    The map is the emission ``S(x)`` along ``direction`` seen through the probe,
    ``(1 - f) G(core) + f G(halo)`` (each with the pixel's width), and summed in the
    bins of :func:`map_profile`; the factor is that binned signal over ``S`` at the
    bin's position, so ``MapProfile.total / factor`` is what the bin would hold with
    a point-like probe, at the resolution of an EDX point. ``S`` is a least-squares
    cubic spline (knots two probe widths apart) of the map's own profile along the
    gradient (one bin per pixel, ``ln`` of the counts, Poisson weights), continued
    linearly in ``ln`` beyond the map (its edges' factors, within about a halo width,
    rest on that guess), and deconvolved by a few fixed-point iterations
    (``S <- S_measured S / (K * S)``).

    Parameters
    ----------
    image
        2-D map (counts per pixel, dead-time and dark corrected).
    transform
        3x3 affine, map ``(col, row, 1)`` -> specimen ``(x_nm, y_nm, 1)``.
    positions_nm
        Bin centres along ``direction``, strictly increasing (as :func:`map_profile`);
        None: the factor of each pixel (a map of the image's shape, for
        :func:`quantify_map` pixel by pixel).
    core_fwhm_nm
        FWHM of the probe's Gaussian core along ``direction`` on the specimen (nm).
    halo
        ``(fraction, fwhm_nm)`` of the probe's halo along ``direction`` (decision
        0040), or None.
    direction, bin_width_nm
        As :func:`map_profile`.

    Returns
    -------
    numpy.ndarray
        The factor per position, or per pixel (1 where the profile is straight in
        ``ln``; above 1 on a convex tail). Raises ValueError on bad input, as
        :func:`map_profile`.
    """
    from scipy import interpolate, ndimage

    if not (isinstance(core_fwhm_nm, int | float) and math.isfinite(core_fwhm_nm)
            and core_fwhm_nm >= 0):
        raise ValueError(f"core_fwhm_nm must be >= 0, got {core_fwhm_nm!r}")
    if halo is not None:
        f, h = (float(v) for v in halo)
        if not (0.0 <= f < 1.0 and math.isfinite(h) and h > 0):
            raise ValueError(f"halo must be (fraction in [0, 1), fwhm_nm > 0), got {halo!r}")
    img = np.asarray(image, dtype=float)
    if img.ndim != 2 or img.size == 0:
        raise ValueError(f"image must be a non-empty 2-D map, got shape {img.shape}")
    t = _check_transform(transform)
    d = _check_direction(direction)
    if positions_nm is not None:
        pos = _check_positions(positions_nm)
        edges = _bin_edges(pos, bin_width_nm)
        lo, hi = (edges[:-1], edges[1:]) if edges.ndim == 1 else (edges[:, 0], edges[:, 1])
    # One fine bin per pixel step along the gradient.
    step = max(abs(t[0, 0] * d[0] + t[1, 0] * d[1]), abs(t[0, 1] * d[0] + t[1, 1] * d[1]))
    ny, nx = img.shape
    corners = t @ np.array([[0, nx - 1, 0, nx - 1], [0, 0, ny - 1, ny - 1], [1, 1, 1, 1]])
    along = corners[0] * d[0] + corners[1] * d[1]
    fine = np.arange(along.min(), along.max() + step / 2, step)
    prof = map_profile(img, t, fine, direction=tuple(d), bin_width_nm=step)
    ok = prof.npixels > 0
    x, total, npix = fine[ok], np.maximum(prof.total[ok], 0.0), prof.npixels[ok]
    if x.size < 4:
        raise ValueError("the map spans fewer than 4 pixels along the gradient")
    y = np.log(np.maximum(total, 0.5) / npix)
    # A least-squares cubic spline with knots two probe widths apart: the blur reads the
    # profile's curvature, and a spline free to follow the counting noise (and the
    # source's current noise, common to the rows of a column) put wiggles into it that
    # the factor then amplified (+-10 % in a pair of 40 nm bins).
    spacing = max(2.0 * float(core_fwhm_nm), 8.0 * step)
    n_inner = int((x[-1] - x[0]) // spacing)
    knots = x[0] + (x[-1] - x[0]) * np.arange(1, n_inner + 1) / (n_inner + 1)
    spline = interpolate.LSQUnivariateSpline(x, y, knots, w=np.sqrt(np.maximum(total, 1.0)),
                                             k=3)
    sig_core = math.hypot(core_fwhm_nm * _FWHM_TO_SIGMA, step / math.sqrt(12.0))
    sig_halo = 0.0 if halo is None or halo[0] == 0 else \
        math.hypot(float(halo[1]) * _FWHM_TO_SIGMA, step / math.sqrt(12.0))
    reach = 5.0 * max(sig_core, sig_halo)
    grid = np.arange(x[0] - reach, x[-1] + reach + step / 2, step)
    slope = spline.derivative()
    ln_measured = np.where(grid < x[0], spline(x[0]) + slope(x[0]) * (grid - x[0]),
                           np.where(grid > x[-1], spline(x[-1]) + slope(x[-1]) * (grid - x[-1]),
                                    spline(np.clip(grid, x[0], x[-1]))))
    measured = np.exp(ln_measured - ln_measured.max())

    def through_probe(s):
        out = ndimage.gaussian_filter1d(s, sig_core / step, mode="nearest", truncate=5.0) \
            if sig_core > 0 else s
        if sig_halo > 0:
            f = float(halo[0])
            out = (1 - f) * out + f * ndimage.gaussian_filter1d(s, sig_halo / step,
                                                                mode="nearest", truncate=5.0)
        return out

    emission = measured
    for _ in range(_BLUR_ITERATIONS):
        emission = measured * emission / through_probe(emission)
    seen = through_probe(emission)
    if positions_nm is None:
        cols = np.arange(nx, dtype=float)[None, :]
        rows = np.arange(ny, dtype=float)[:, None]
        along_px = (t[0, 0] * cols + t[0, 1] * rows + t[0, 2]) * d[0] \
            + (t[1, 0] * cols + t[1, 1] * rows + t[1, 2]) * d[1]
        return np.interp(along_px, grid, seen / emission)
    # Each bin's mean of what the probe saw, over the emission at the bin's position.
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (seen[1:] + seen[:-1]) * step)])
    mean = (np.interp(hi, grid, cum) - np.interp(lo, grid, cum)) / (hi - lo)
    return mean / np.interp(pos, grid, emission)


# ======================================================================================
# Calibration
# ======================================================================================
#: Degrees :func:`calibrate_rsf` chooses from with ``degree="auto"``.
AUTO_DEGREES = (0, 1, 2, 3)
#: Largest degree accepted.
MAX_DEGREE = 4
#: ``degree="auto"`` keeps a lower degree unless the minimum's PRESS beats it by more
#: than this many standard errors. Breiman's 1 let degree 2 in on the scatter of the
#: EDX points near their limit in 2 of 16 runs of the quantification case (its
#: extrapolation to 0.1 at.% then read +4-5 %, beyond its stated error); with 2, a
#: curved ln RSF still takes degree >= 2 in 20 of 20 synthetic calibrations
#: (``tests/analysis/test_quantification.py``). Decision 0028, amended.
SE_RULE = 2.0
#: Newton iterations of the implicit solve in :func:`quantify_map` (it converges in
#: 3-5 on calibrations whose r -> C is monotonic, which :func:`calibrate_rsf` checks).
_NEWTON_ITERATIONS = 30
_NEWTON_TOL = 1e-10


def _vander(c: np.ndarray, degree: int) -> np.ndarray:
    return np.stack([c**k for k in range(degree + 1)], axis=-1)


def _rho(c, binary: bool):
    return c / (1.0 - c) if binary else c


def _monotonic(coef: np.ndarray, binary: bool, c_max: float, n: int = 401) -> bool:
    """``ln rho - P(C)`` increases with C, i.e. r -> C is one-to-one: on [0, 1) for a
    binary, on [0, min(1, 2 c_max)] for a dilute analyte (``rho = C`` is a model of
    the dilute side; its ``d ln rho / dC = 1 / C`` falls toward C = 1).

    ``d ln r / dC = d ln rho / dC - P'(C)``; ``d ln rho / dC = 1 / (C (1 - C))``
    (binary) or ``1 / C``.
    """
    hi = 1.0 - 1e-6 if binary else min(1.0, 2.0 * c_max)
    c = np.linspace(1e-6, hi, n)
    dp = np.polynomial.polynomial.polyval(c, np.polynomial.polynomial.polyder(coef)) \
        if coef.size > 1 else np.zeros_like(c)
    dlnrho = 1.0 / (c * (1.0 - c)) if binary else 1.0 / c
    return bool(np.all(dlnrho - dp > 0))


@dataclass(frozen=True)
class RSFCalibration:
    """``ln(rho / r) = sum_k coefficients[k] C^k``, ``r = I_A / I_M``.

    Attributes
    ----------
    coefficients, covariance
        Polynomial coefficients in the analyte fraction C (lowest order first) and
        their covariance.
    binary
        ``rho = C / (1 - C)`` (True) or ``rho = C`` (False).
    c_range
        Range of ``C_EDX`` covered by the calibration points.
    r_range
        Range of the SIMS ratio ``r`` at the calibration points: a pixel outside it
        is an extrapolation.
    reduced_chi2
        Of the weighted fit (the covariance is scaled by it when above 1).
    points
        The calibration points: ``c``, ``c_sigma``, ``r``, ``r_sigma``, ``rsf``
        (``rho / r``, i.e. ``C I_M / I_A`` for a dilute analyte), ``rsf_sigma``.
    degree_selection
        How the degree was chosen: ``"given"`` or ``"loo-cv-2se"`` (:data:`SE_RULE`),
        and for the latter ``press`` (weighted leave-one-out residual sum of squares)
        per candidate degree (``None``: not monotonic or too few points).
    """

    coefficients: np.ndarray
    covariance: np.ndarray
    binary: bool
    c_range: tuple[float, float]
    r_range: tuple[float, float]
    reduced_chi2: float
    points: dict[str, np.ndarray]
    degree_selection: dict = field(default_factory=dict)

    @property
    def degree(self) -> int:
        return len(self.coefficients) - 1

    @property
    def dilute_rsf(self) -> float:
        """RSF in the dilute limit (``C -> 0``): ``exp(a0)``."""
        return float(math.exp(self.coefficients[0]))

    def ln_rsf(self, c: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """``ln RSF`` at analyte fractions ``c`` and its 1-sigma from the fit covariance."""
        v = _vander(np.asarray(c, dtype=float), self.degree)
        value = v @ self.coefficients
        var = np.einsum("...i,ij,...j->...", v, self.covariance, v)
        return value, np.sqrt(np.maximum(var, 0.0))

    def rsf(self, c: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """RSF (``rho / r``) at analyte fractions ``c`` and its 1-sigma (fit only)."""
        value, sigma = self.ln_rsf(c)
        rsf = np.exp(value)
        return rsf, rsf * sigma


def _weighted_fit(x: np.ndarray, y: np.ndarray, w: np.ndarray, degree: int):
    """Weighted least squares ``y ~ P(x)``: coefficients, unscaled covariance, chi^2,
    and the weighted leave-one-out residual sum of squares (PRESS, from the hat
    matrix: residual / (1 - h_ii), exact for linear least squares)."""
    a = _vander(x, degree) * w[:, None]
    b = y * w
    coef, *_ = np.linalg.lstsq(a, b, rcond=None)
    cov = np.linalg.pinv(a.T @ a)
    res = b - a @ coef
    h = np.einsum("ij,jk,ik->i", a, cov, a)
    loo = (res / np.maximum(1.0 - h, 1e-9)) ** 2
    return coef, cov, float(np.sum(res**2)), loo


def calibrate_rsf(c_edx: ArrayLike, c_edx_sigma: ArrayLike, i_analyte: ArrayLike,
                  i_matrix: ArrayLike, *, mask: ArrayLike | None = None,
                  degree: int | str = "auto", binary: bool = True,
                  i_analyte_sigma: ArrayLike | None = None,
                  i_matrix_sigma: ArrayLike | None = None) -> RSFCalibration:
    """Fit the SIMS relative sensitivity where EDX is quantitative.

    Parameters
    ----------
    c_edx, c_edx_sigma
        EDX atomic fraction of the analyte and its 1-sigma, per position.
    i_analyte, i_matrix
        SIMS counts of the analyte and of the matrix reference at the same positions
        (e.g. :attr:`MapProfile.total` of each map).
    mask
        Positions to use (e.g. EDX above its detection limit for the analyte and, for a
        binary, for the matrix element too). Positions with ``C <= 0``, ``C >= 1``
        (binary), or no counts are dropped in any case.
    degree
        Degree of the polynomial in C, 0..4, or ``"auto"`` (default): the degree of
        :data:`AUTO_DEGREES` chosen by weighted leave-one-out cross-validation
        (PRESS) among the fits whose ``r -> C`` is monotonic: the lowest whose PRESS
        is within :data:`SE_RULE` standard errors of the smallest.
    binary
        ``rho = C / (1 - C)`` (the reference is the other element of a binary) or
        ``rho = C``.
    i_analyte_sigma, i_matrix_sigma
        1-sigma of the intensities (default Poisson, ``sqrt(N)``).

    Returns
    -------
    RSFCalibration

    Raises
    ------
    ValueError
        Shapes differ, bad degree, non-finite values, fewer usable points than
        ``degree + 2``, or a given degree whose fit makes ``r -> C`` non-monotonic.
    """
    auto = isinstance(degree, str)
    if auto and degree != "auto":
        raise ValueError(f"degree must be an integer 0..{MAX_DEGREE} or 'auto', got {degree!r}")
    if not auto and not (isinstance(degree, int) and not isinstance(degree, bool)
                         and 0 <= degree <= MAX_DEGREE):
        raise ValueError(f"degree must be an integer 0..{MAX_DEGREE} or 'auto', got {degree!r}")
    arrays = [np.asarray(a, dtype=float).ravel() for a in (c_edx, c_edx_sigma, i_analyte, i_matrix)]
    n = arrays[0].size
    if any(a.size != n for a in arrays) or n == 0:
        raise ValueError("c_edx, c_edx_sigma, i_analyte and i_matrix must have one length, "
                         f"got {[a.size for a in arrays]}")
    c, cs, ia, im = arrays
    sa = np.sqrt(np.maximum(ia, 1.0)) if i_analyte_sigma is None else \
        np.asarray(i_analyte_sigma, dtype=float).ravel()
    sm = np.sqrt(np.maximum(im, 1.0)) if i_matrix_sigma is None else \
        np.asarray(i_matrix_sigma, dtype=float).ravel()
    if sa.size != n or sm.size != n:
        raise ValueError("intensity sigmas must have the length of the intensities")
    m = np.ones(n, bool) if mask is None else np.asarray(mask, dtype=bool).ravel()
    if m.size != n:
        raise ValueError(f"mask must have {n} entries, got {m.size}")
    finite = np.isfinite(c) & np.isfinite(cs) & np.isfinite(ia) & np.isfinite(im) \
        & np.isfinite(sa) & np.isfinite(sm)
    if np.any(m & ~finite):
        raise ValueError("non-finite values at masked-in calibration points")
    if np.any(cs[m & finite] < 0):
        raise ValueError("c_edx_sigma must be >= 0")
    use = m & finite & (c > 0) & (ia > 0) & (im > 0)
    if binary:
        use &= c < 1
    need = (min(AUTO_DEGREES) if auto else degree) + 2
    if use.sum() < need:
        raise ValueError(f"{int(use.sum())} usable calibration points, need at least "
                         f"{need} for degree {min(AUTO_DEGREES) if auto else degree}")
    c, cs, ia, im, sa, sm = (a[use] for a in (c, cs, ia, im, sa, sm))
    r = ia / im
    rel_r = np.sqrt((sa / ia) ** 2 + (sm / im) ** 2)
    rho = _rho(c, binary)
    rel_rho = cs / (c * (1.0 - c)) if binary else cs / c
    y = np.log(rho / r)
    # The abscissa C is the EDX value: its error enters through y (ln rho), where it
    # matters; through P(C) it is multiplied by the RSF's slope (~1 per unit C on the
    # Cu-Ni couple), i.e. 1e-3 relative at the EDX noise of 1e-3 in C.
    sy = np.maximum(np.sqrt(rel_rho**2 + rel_r**2), 1e-12)
    w = 1.0 / sy
    selection: dict = {"method": "given"}
    if auto:
        fits = {}
        for d in AUTO_DEGREES:
            if len(y) < d + 2:
                continue
            fit = _weighted_fit(c, y, w, d)
            if _monotonic(fit[0], binary, float(c.max())):
                fits[d] = fit
        if not fits:
            raise ValueError("no candidate degree gives a monotonic r -> C calibration")
        press = {d: float(np.sum(f[3])) for d, f in fits.items()}
        best = min(press, key=press.get)
        # Standard-error rule (Breiman et al. 1984): the lowest degree whose PRESS
        # exceeds the minimum by less than SE_RULE standard errors of that difference
        # (from the per-point leave-one-out errors). The minimum itself follows the
        # noise: on the couple it took degree 3 where degree 1 extrapolated better.
        deg = best
        for d in sorted(fits):
            diff = fits[d][3] - fits[best][3]
            if d >= best or float(np.sum(diff)) <= SE_RULE * math.sqrt(diff.size) \
                    * float(np.std(diff)):
                deg = d
                break
        coef, cov, chi2_sum, _ = fits[deg]
        selection = {"method": f"loo-cv-{SE_RULE:g}se",
                     "press": {d: press.get(d) for d in AUTO_DEGREES}}
    else:
        deg = degree
        coef, cov, chi2_sum, _ = _weighted_fit(c, y, w, deg)
        if not _monotonic(coef, binary, float(c.max())):
            raise ValueError(f"the degree-{deg} fit makes r -> C non-monotonic (one ratio, "
                             "several concentrations): use a lower degree or 'auto'")
    dof = max(len(y) - (deg + 1), 1)
    chi2 = chi2_sum / dof
    cov = cov * max(chi2, 1.0)
    rsf = rho / r
    points = {"c": c, "c_sigma": cs, "r": r, "r_sigma": r * rel_r, "rsf": rsf,
              "rsf_sigma": rsf * sy}
    return RSFCalibration(coef, cov, bool(binary), (float(c.min()), float(c.max())),
                          (float(r.min()), float(r.max())), chi2, points, selection)


# ======================================================================================
# Quantification
# ======================================================================================
@dataclass(frozen=True)
class QuantifiedMap:
    """Concentration (atomic fraction) and its 1-sigma per pixel, and the ratio used.

    ``extrapolated`` marks pixels whose ratio lies outside the calibration range
    (below it: below the EDX limit, the purpose of the method; above: beyond the
    richest calibration point).
    """

    concentration: np.ndarray
    sigma: np.ndarray
    ratio: np.ndarray
    extrapolated: np.ndarray


def _check_counts(name: str, a) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if np.any(arr < 0):
        raise ValueError(f"{name} has negative counts")
    return arr


def _polynomial_at(u: np.ndarray, coef: np.ndarray, binary: bool):
    """``C(u)``, ``P(C)``, ``P'(C)`` (Horner) and ``dC/du`` at ``u = ln rho``."""
    if binary:
        cc = 0.5 * (1.0 + np.tanh(0.5 * u))  # logistic, without overflow
        dc_du = cc * (1.0 - cc)
    else:
        cc = np.exp(np.minimum(u, 0.0))  # C <= 1 for a dilute analyte
        dc_du = cc
    deg = coef.size - 1
    p = np.full_like(cc, coef[deg])
    dp = np.zeros_like(cc)
    for k in range(deg - 1, -1, -1):
        dp = dp * cc + p
        p = p * cc + coef[k]
    return cc, p, dp, dc_du


def _solve_concentration(ln_r: np.ndarray, coef: np.ndarray, binary: bool):
    """C with ``ln rho(C) - P(C) = ln r``, and ``P'`` and ``dC/du`` there.

    Newton in ``u = ln rho`` (``C = 1 / (1 + e^-u)`` for a binary, ``e^u`` otherwise),
    started at the dilute limit ``u = ln r + a0``; the calibration is monotonic, so
    ``g(u) = u - P(C(u)) - ln r`` is increasing and behaves like ``u`` far out.
    """
    u = ln_r + coef[0]
    for _ in range(_NEWTON_ITERATIONS):
        _, p, dp, dc_du = _polynomial_at(u, coef, binary)
        g = u - p - ln_r
        gp = 1.0 - dp * dc_du
        step = g / np.maximum(gp, 1e-6)
        u = u - step
        if not np.any(np.abs(step) > _NEWTON_TOL):  # NaN pixels do not hold the loop
            break
    cc, _, dp, dc_du = _polynomial_at(u, coef, binary)
    return cc, dp, dc_du


def quantify_map(i_analyte: np.ndarray, i_matrix: np.ndarray, calibration: RSFCalibration, *,
                 dwell_s: float | None = None, dead_time_s: float = 0.0,
                 dark_counts: float = 0.0) -> QuantifiedMap:
    """Absolute concentration map from SIMS counts of analyte and matrix reference.

    Solves ``ln rho(C) - P(C) = ln r`` for C at each pixel (Newton; ``P`` is the
    calibration's ``ln RSF`` polynomial in C).

    Parameters
    ----------
    i_analyte, i_matrix
        Counts per pixel (any shape, the same for both: a map, or a profile of summed
        counts from :func:`map_profile`).
    calibration
        From :func:`calibrate_rsf`.
    dwell_s, dead_time_s
        If ``dead_time_s > 0``: non-paralyzable dead-time correction of the counts,
        ``N = M / (1 - M tau / dwell)`` (``dwell_s`` required).
    dark_counts
        Expected dark counts per pixel subtracted from both (>= 0).

    Returns
    -------
    QuantifiedMap
        NaN where the matrix reference has no counts (ratio undefined); 0 where the
        analyte has none (its sigma then from one count).

    Raises
    ------
    ValueError
        Shape mismatch, negative counts, bad dead-time parameters.
    """
    if not isinstance(calibration, RSFCalibration):
        raise ValueError("calibration must be an RSFCalibration (from calibrate_rsf)")
    a = _check_counts("i_analyte", i_analyte)
    m = _check_counts("i_matrix", i_matrix)
    if a.shape != m.shape:
        raise ValueError(f"i_analyte {a.shape} and i_matrix {m.shape} differ in shape")
    if not (math.isfinite(dark_counts) and dark_counts >= 0):
        raise ValueError(f"dark_counts must be >= 0, got {dark_counts!r}")
    if dead_time_s:
        if not (math.isfinite(dead_time_s) and dead_time_s > 0):
            raise ValueError(f"dead_time_s must be >= 0, got {dead_time_s!r}")
        if dwell_s is None or not (math.isfinite(dwell_s) and dwell_s > 0):
            raise ValueError("dead-time correction needs a positive dwell_s")
        f = dead_time_s / dwell_s
        if np.any(a * f >= 1) or np.any(m * f >= 1):
            raise ValueError("counts at or beyond dead-time saturation")
        a = a / (1.0 - a * f)
        m = m / (1.0 - m * f)
    if dark_counts:
        a = np.maximum(a - dark_counts, 0.0)
        m = np.maximum(m - dark_counts, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_m = np.where(m > 0, 1.0 / m, np.nan)
        r = a * inv_m
        # Poisson: var(r) = (var_A + r^2 var_M) / M^2, with var(N) = max(N, 1).
        var_r = (np.maximum(a, 1.0) + r * r * np.maximum(m, 1.0)) * inv_m * inv_m
        ln_r = np.log(r)  # -inf where a = 0: C = 0 there
    coef = calibration.coefficients
    binary = calibration.binary
    finite = np.isfinite(ln_r)
    conc = np.where(np.isnan(r), np.nan, 0.0)
    sigma = np.full(r.shape, np.nan)
    if np.any(finite):
        lr = ln_r[finite]
        cc, dp, dc_du = _solve_concentration(lr, coef, binary)
        # du = (d ln r + dP_fit) / g'(u): counting and fit errors through the implicit
        # equation; dC = dC/du du.
        gp = np.maximum(1.0 - dp * dc_du, 1e-6)
        v = _vander(cc, calibration.degree)
        var_fit = np.einsum("...i,ij,...j->...", v, calibration.covariance, v)
        var_lnr = var_r[finite] / np.square(r[finite])
        var_u = (var_lnr + np.maximum(var_fit, 0.0)) / np.square(gp)
        conc[finite] = cc
        sigma[finite] = dc_du * np.sqrt(var_u)
    zero = (r == 0)
    if np.any(zero):
        # No analyte counts: C = 0, 1-sigma of one count at the dilute-limit RSF.
        rho1 = np.sqrt(var_r[zero]) * math.exp(coef[0])
        sigma[zero] = rho1 / (1.0 + rho1) if binary else rho1
    r_lo, r_hi = calibration.r_range
    with np.errstate(invalid="ignore"):
        extrapolated = (r < r_lo) | (r > r_hi)
    return QuantifiedMap(conc, sigma, r, extrapolated)


__all__ = [
    "AUTO_DEGREES",
    "MAX_DEGREE",
    "MapProfile",
    "QuantifiedMap",
    "RSFCalibration",
    "SE_RULE",
    "blur_factor",
    "calibrate_rsf",
    "map_profile",
    "pixel_transform",
    "quantify_map",
]
