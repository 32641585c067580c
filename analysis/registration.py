"""Registration of a SIMS map onto a TEM image: geometry first, then image similarity.

Model (instrument.md, "Image correlation and fusion")
    1. Initial affine from the recorded geometry (:mod:`temsims.analysis.geometry`):
       SIMS ``(col, row)`` -> specimen um -> TEM ``(col, row)``. It carries the
       foreshortening by cos(incidence) along y, the scan rotation and both fields
       of view; what it misses is mostly a translation (stage readback and beam-shift
       errors, drift).
    2. Refinement: the TEM image is brought onto the SIMS pixel grid through the
       initial affine (block mean to about two samples per SIMS pixel, a Gaussian of
       the SIMS pixel footprint, bilinear sampling: no aliasing), both images are
       lightly smoothed, standardised over the pixels both cover and compared by
       cross-correlation with sub-pixel upsampling
       (:func:`skimage.registration.phase_cross_correlation`). The translation
       found, in SIMS pixels, is composed with the initial affine.
    3. Linear refinement (decision 0029, superseding 0011's translation only): each
       feature of the map (a local maximum) is located on the TEM image by template
       matching of a window around it, within a few px of where the transform so far
       puts it; a model of what a raster calibration changes (field, scan rotation,
       stretch along y: ``model="raster"``) or a general affine is fitted to these
       positions, robustly, and the passes repeat until the fit stops moving. A
       position is insensitive to the shape differences of the two contrasts, which
       biased every intensity-based affine tried (decision 0011's table). The fit is
       kept only if it is constrained (>= 4 features, the 95 % bound of its
       predicted corner error <= 0.5 px) and moves the corners by more than its
       noise.
    4. Where the features cannot constrain it (too few, or their bound too large:
       ~15 % of the maps under calibration errors), the same model is fitted to the
       intensities instead (least squares of the smoothed map against the TEM image
       resampled through the model, the map a quadratic of the TEM signal, fitted in
       closed form; decision 0029's 2026-12-05 amendments). From the translation's
       result its bias is ~0.1-0.4 px, not decision 0011's 1.2 px of a 6-parameter
       affine from afar: the quadratic absorbs the contrasts' shape mismatch (bright
       field dome-shaped over a particle, its Li signal flat-topped) that a linear
       gain left to the scale and stretch. Kept if it moves the corners by more than the
       noise and correlates better; otherwise the translation stays and
       ``quality["affine"]["why"]`` says why.
       ``linear_error_sims_px`` reports how far the recorded linear geometry was off;
       ``residual_sims_px`` flags what neither refinement absorbed.

Contrast
    Bright-field TEM is dark where there is mass, HAADF bright; a SIMS map of a
    species present in the particles is bright on them. The cross-correlation peak
    is located by its magnitude, so the shift does not depend on the sign; the sign
    (``tem_inverted``) is then read from the normalised cross-correlation at the
    refined position (``invert_tem="auto"``) or imposed (True / False).

Masks
    Pixels a SIMS map did not acquire (NaN, an aborted run) and the SIMS pixels
    outside the TEM field are left out of every comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import ndimage, special
from skimage.feature import peak_local_max
from skimage.registration import phase_cross_correlation
from skimage.transform import AffineTransform, warp

from temsims.analysis.geometry import SimsMapGeometry, TemImageGeometry, pixel_transform_matrix


@dataclass(frozen=True)
class RegistrationResult:
    """Outcome of :func:`register_sims_to_tem`.

    Attributes
    ----------
    transform : skimage.transform.AffineTransform
        Refined map from SIMS ``(col, row)`` to TEM ``(col, row)`` (pixels).
    initial_transform : skimage.transform.AffineTransform
        The same from the recorded geometry alone.
    shift_px : tuple of float
        Translation ``(d_row, d_col)`` found by the refinement, in SIMS pixels: SIMS
        pixel ``(r, c)`` lies where the initial model puts ``(r + d_row, c + d_col)``.
    quality : dict
        ``ncc`` (normalised cross-correlation of the smoothed SIMS map and the TEM
        image resampled on its grid, over their overlap, at the refined transform,
        with the chosen TEM sign; 1 is perfect), ``ncc_initial`` (the same at the
        initial transform), ``phase_error`` (translation-invariant error of
        :func:`~skimage.registration.phase_cross_correlation`, 0..1), ``overlap_fraction``
        (SIMS pixels compared / all), ``tem_inverted`` (bool), ``quadrant_shifts_px``
        (residual (d_row, d_col) of each map quadrant holding a feature, i.e. whose
        peak correlation is >= 0.5, after refinement), ``model`` (what was applied:
        "translation", "raster" or "affine") and ``affine`` (the linear fit:
        ``applied``, ``method`` "features" or "intensity" when applied, ``why`` when
        refused, ``intensity`` the figures of an intensity fit when one was made).
    residual_sims_px : float
        Estimated residual misregistration (SIMS px): root of the median squared
        shift of the map quadrants holding a feature, which picks up rotation or
        scale errors the refinement did not absorb; NaN if no quadrant holds one.
    refined : bool
        False if no refinement was asked for or its shift was rejected (larger than
        ``max_shift_px``; ``transform`` is then the initial one).
    linear_error_sims_px : float
        How far the refined rotation, scale and shear move the map corners and centre
        from where the recorded ones put them, the translation taken out (RMS, SIMS
        px): 0 for a translation-only result; above ~0.5 px the recorded raster
        calibration (field, scan rotation, incidence) is off and should be measured.
    """

    transform: AffineTransform
    initial_transform: AffineTransform
    shift_px: tuple[float, float]
    quality: dict[str, Any] = field(default_factory=dict)
    residual_sims_px: float = float("nan")
    refined: bool = False
    linear_error_sims_px: float = 0.0

    def sims_to_tem_px(self, rows: Any, cols: Any) -> tuple[np.ndarray, np.ndarray]:
        """TEM ``(rows, cols)`` of SIMS pixel coordinates (refined transform)."""
        rows, cols = np.broadcast_arrays(np.asarray(rows, float), np.asarray(cols, float))
        xy = self.transform(np.column_stack([cols.ravel(), rows.ravel()]))
        return xy[:, 1].reshape(rows.shape), xy[:, 0].reshape(rows.shape)


# ============================================================================ helpers
def _translation(d_col: float, d_row: float) -> np.ndarray:
    m = np.eye(3)
    m[0, 2], m[1, 2] = d_col, d_row
    return m


def _as_image(name: str, image: Any) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D image, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    return arr.astype(np.float32, copy=False)


def _masked_gaussian(image: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing that ignores masked-out pixels (normalised convolution)."""
    if sigma <= 0:
        return np.where(mask, image, 0.0).astype(np.float32)
    weight = ndimage.gaussian_filter(mask.astype(np.float32), sigma, mode="constant")
    value = ndimage.gaussian_filter(np.where(mask, image, 0.0).astype(np.float32), sigma,
                                    mode="constant")
    return np.divide(value, weight, out=np.zeros_like(value), where=weight > 1e-3)


def _standardise(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(image - median) / std over ``mask``; 0 outside it.

    The median (the background of a sparse scene: support film, vacuum) rather than
    the mean is subtracted so that the background is ~0 on both sides of the mask
    edge and the edge itself does not correlate (which would pull the shift to 0).
    """
    values = image[mask]
    if values.size < 2:
        return np.zeros_like(image, dtype=np.float32)
    std = float(values.std()) or 1.0
    return np.where(mask, (image - float(np.median(values))) / std, 0.0).astype(np.float32)


def normalised_cross_correlation(a: np.ndarray, b: np.ndarray,
                                 mask: np.ndarray | None = None) -> float:
    """Pearson correlation of two images over ``mask`` (finite pixels of both if None)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    valid = np.isfinite(a) & np.isfinite(b)
    if mask is not None:
        valid &= np.asarray(mask, bool)
    if valid.sum() < 2:
        return float("nan")
    x, y = a[valid] - a[valid].mean(), b[valid] - b[valid].mean()
    den = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum() / den) if den > 0 else float("nan")


def tem_on_sims_grid(tem_image: np.ndarray, sims_to_tem: np.ndarray,
                     sims_shape: tuple[int, int], *, footprint_sigma_sims_px: float = 0.5,
                     cval: float = np.nan, cache: dict | None = None) -> np.ndarray:
    """Resample a TEM image on a SIMS map's pixel grid without aliasing.

    Parameters
    ----------
    tem_image : (H, W) array
        The TEM image.
    sims_to_tem : (3, 3) array
        Matrix mapping SIMS ``(col, row, 1)`` to TEM ``(col, row, 1)``.
    sims_shape : (ny, nx)
        Shape of the SIMS grid.
    footprint_sigma_sims_px : float
        Gaussian sigma (SIMS px, isotropic in the SIMS grid, i.e. in the beam-normal
        plane) of what one SIMS pixel sees; mapped through the affine onto the TEM
        grid (its axis-aligned part) before sampling.
    cval : float
        Value of SIMS pixels outside the TEM image.
    cache : dict, optional
        Keeps the block-averaged, smoothed TEM image between calls on the same
        ``tem_image`` whose affine differs only by a translation or slightly (the
        smoothing rounded to 0.02 TEM px): the refinement's iterations reuse it.
        Pass a new dict per TEM image.

    Returns
    -------
    (ny, nx) float32 array
        The TEM signal at the SIMS pixel centres.

    Notes
    -----
    The TEM image is first averaged over ``f x f`` blocks with ``f`` half the
    smallest SIMS-pixel size in TEM pixels (two samples per SIMS pixel remain),
    which makes a 4096^2 image cheap; the block centres are composed into the
    affine (block ``b`` is centred on TEM pixel ``b f + (f - 1) / 2``).
    """
    tem = np.asarray(tem_image, np.float32)
    matrix = np.asarray(sims_to_tem, float)
    linear = matrix[:2, :2]
    smallest = float(np.linalg.svd(linear, compute_uv=False).min())
    f = max(1, int(smallest // 2))
    f = min(f, min(tem.shape))
    if f > 1:
        to_reduced = np.array([[1.0 / f, 0, -(f - 1) / (2.0 * f)],
                               [0, 1.0 / f, -(f - 1) / (2.0 * f)], [0, 0, 1]])
        matrix = to_reduced @ matrix
        linear = matrix[:2, :2]
    cov = (footprint_sigma_sims_px ** 2) * (linear @ linear.T)
    box_var = 1.0 / 12.0 if f > 1 else 0.0  # the block mean already averaged one pixel
    sigma_cols = math.sqrt(max(cov[0, 0] - box_var, 0.0))
    sigma_rows = math.sqrt(max(cov[1, 1] - box_var, 0.0))
    key = (f, round(sigma_rows / 0.02), round(sigma_cols / 0.02))
    if cache is not None and key in cache:
        tem = cache[key]
    else:
        if f > 1:
            h, w = (tem.shape[0] // f) * f, (tem.shape[1] // f) * f
            tem = tem[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3),
                                                                  dtype=np.float32)
        if sigma_cols > 0.05 or sigma_rows > 0.05:
            tem = ndimage.gaussian_filter(tem, (sigma_rows, sigma_cols), mode="nearest")
        if cache is not None:
            cache.clear()  # one entry: the refinement moves on, it does not come back
            cache[key] = tem
    return warp(tem, AffineTransform(matrix=matrix), output_shape=tuple(sims_shape), order=1,
                mode="constant", cval=cval, preserve_range=True).astype(np.float32)


def _prepared_pair(sims: np.ndarray, tem_on_sims: np.ndarray, smooth_px: float):
    mask = np.isfinite(sims) & (sims >= 0) & np.isfinite(tem_on_sims)
    sims_s = _masked_gaussian(np.nan_to_num(sims), mask, smooth_px)
    tem_s = _masked_gaussian(np.nan_to_num(tem_on_sims), mask, smooth_px)
    return _standardise(sims_s, mask), _standardise(tem_s, mask), mask


#: A quadrant whose cross-correlation peak error (1 - peak correlation squared) is
#: larger holds no feature: its shift is left out of ``residual_sims_px``.
MAX_QUADRANT_PHASE_ERROR = 0.75


def _quadrant_shifts(sims_z: np.ndarray, tem_z: np.ndarray, mask: np.ndarray,
                     upsample_factor: int, normalization) -> list[tuple[float, float]]:
    ny, nx = sims_z.shape
    out = []
    for rs in (slice(0, ny // 2), slice(ny // 2, ny)):
        for cs in (slice(0, nx // 2), slice(nx // 2, nx)):
            m = mask[rs, cs]
            if m.mean() < 0.5 or min(m.shape) < 8:
                continue
            a, b = tem_z[rs, cs], sims_z[rs, cs]
            if float(np.abs(a).max()) == 0 or float(np.abs(b).max()) == 0:
                continue
            shift, error, _ = phase_cross_correlation(a, b, upsample_factor=upsample_factor,
                                                      normalization=normalization)
            # A quadrant without a feature correlates with noise only (peak
            # correlation ~0.1, error ~0.99) and its shift is anywhere: two such
            # quadrants made the median 19 px on a map registered to 0.04 px (entropy
            # 311812389061408148076152598608656942010, seed 26779: its particles all in
            # the top half). Left out below a peak correlation of 0.5 (features: the
            # same floor, ``min_ncc``).
            if normalization is None and not float(error) <= MAX_QUADRANT_PHASE_ERROR:
                continue
            out.append((float(shift[0]), float(shift[1])))
    return out


def _corner_rms_px(matrix: np.ndarray, shape: tuple[int, int]) -> float:
    """RMS displacement (px) of a map's four corners and centre under ``matrix``."""
    ny, nx = shape
    pts = np.array([[0, 0, 1], [nx - 1, 0, 1], [nx - 1, ny - 1, 1], [0, ny - 1, 1],
                    [(nx - 1) / 2, (ny - 1) / 2, 1]], float)
    d = (pts @ np.asarray(matrix, float).T)[:, :2] - pts[:, :2]
    return math.sqrt(float((d ** 2).sum(axis=1).mean()))


def _peak_subpixel(cc: np.ndarray, r0: int, c0: int) -> tuple[float, float]:
    """Sub-pixel peak of a correlation surface: a parabola through 3 samples per axis."""
    def vertex(m1: float, z: float, p1: float) -> float:
        den = m1 - 2.0 * z + p1
        return 0.0 if den >= 0 else float(np.clip(0.5 * (m1 - p1) / den, -0.5, 0.5))
    dr = vertex(cc[r0 - 1, c0], cc[r0, c0], cc[r0 + 1, c0]) if 0 < r0 < cc.shape[0] - 1 else 0.0
    dc = vertex(cc[r0, c0 - 1], cc[r0, c0], cc[r0, c0 + 1]) if 0 < c0 < cc.shape[1] - 1 else 0.0
    return r0 + dr, c0 + dc


def feature_shifts(sims_z: np.ndarray, tem_z: np.ndarray, mask: np.ndarray, *,
                   half_window_px: int = 12, search_px: int = 8, min_ncc: float = 0.5,
                   max_features: int = 80) -> np.ndarray:
    """Local shifts of the SIMS map's features against the TEM image on its grid.

    Parameters
    ----------
    sims_z, tem_z : (ny, nx) arrays
        Standardised SIMS map and TEM image on the SIMS grid (:func:`tem_on_sims_grid`),
        with the TEM sign already chosen so that features are bright in both.
    mask : (ny, nx) bool array
        Pixels both images cover.
    half_window_px : int
        Half side of the window around each feature (SIMS px).
    search_px : int
        Largest shift searched (SIMS px): the window is matched against the TEM image
        only within this distance, so it cannot lock onto a neighbour further away.
    min_ncc : float
        Features whose best normalised cross-correlation is lower are left out.
    max_features : int
        At most this many features, the brightest.

    Returns
    -------
    (n, 5) array
        ``col, row`` of each feature, its shift ``d_col, d_row`` (the TEM image shows
        it at ``(col + d_col, row + d_row)``) and the peak correlation.

    Notes
    -----
    Features are local maxima of the lightly smoothed SIMS map at least one window
    half-side inside the mask; each window is located by template matching
    (:func:`skimage.feature.match_template`, normalised, so the two contrasts need
    only be alike, not equal) with a parabolic sub-pixel peak. A shift is a position,
    insensitive to the blob's shape: a particle that looks wider on the map than on
    the image (probe halo, surface vs mass thickness) moves nothing.
    """
    # Here, not at the top: skimage's template matching imports scipy.signal and with
    # it scipy.stats (~1.6 s), which every process importing the plan library paid.
    from skimage.feature import match_template

    half, search = int(half_window_px), int(search_px)
    inner = ndimage.binary_erosion(mask, iterations=half, border_value=0)
    if not inner.any():
        return np.zeros((0, 5))
    smooth = ndimage.gaussian_filter(sims_z, 1.5)
    peaks = peak_local_max(np.where(inner, smooth, -np.inf), min_distance=4, threshold_abs=1.0,
                           exclude_border=False, num_peaks=max_features)
    padded = np.pad(np.where(mask, tem_z, 0.0), half + search)
    out = []
    for r, c in peaks:
        template = sims_z[r - half:r + half + 1, c - half:c + half + 1]
        if float(template.std()) == 0.0:
            continue
        region = padded[r:r + 2 * (half + search) + 1, c:c + 2 * (half + search) + 1]
        cc = match_template(region, template)
        r0, c0 = np.unravel_index(int(np.argmax(cc)), cc.shape)
        if cc[r0, c0] < min_ncc:
            continue
        pr, pc = _peak_subpixel(cc, int(r0), int(c0))
        out.append((float(c), float(r), pc - search, pr - search, float(cc[r0, c0])))
    return np.array(out, float).reshape(-1, 5)


def _design(points: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Design matrix (2n, 6) of an affine displacement about ``centre`` at ``points``
    (n, 2): rows x then y of each point; columns the linear part's entries
    (row-major) and the two translations."""
    d = points - centre
    n = len(points)
    zero = np.zeros(n)
    columns = [np.column_stack([d[:, 0], zero]), np.column_stack([d[:, 1], zero]),
               np.column_stack([zero, d[:, 0]]), np.column_stack([zero, d[:, 1]])]
    out = [c.reshape(-1) for c in columns]
    out.append(np.tile([1.0, 0.0], n))
    out.append(np.tile([0.0, 1.0], n))
    return np.column_stack(out)


def _raster_linear(x: np.ndarray, theta: float) -> np.ndarray:
    """Linear part of the raster model: ``R(-theta) diag(1, k) R(theta) s R(delta)`` with
    ``x = (ln s, delta rad, ln k)``, in beam-plane pixels (see :func:`_fit_model`)."""
    c, s_ = math.cos(theta), math.sin(theta)
    rot = np.array([[c, -s_], [s_, c]])
    cd, sd = math.cos(x[1]), math.sin(x[1])
    stretch = rot.T @ np.diag([1.0, math.exp(x[2])]) @ rot
    return stretch @ (math.exp(x[0]) * np.array([[cd, -sd], [sd, cd]]))


def _fit_model(p: np.ndarray, q: np.ndarray, centre: np.ndarray, theta: float | None,
               corners: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares map ``p -> q`` (points (n, 2)) about ``centre``: an affine
    (``theta`` None), or the raster model (``theta`` the recorded scan rotation, rad):
    a field scale ``s``, a rotation ``delta`` and a stretch ``k`` along the specimen's
    y (the incidence), as they enter
    :class:`~temsims.analysis.geometry.SimsMapGeometry`, and a translation: 5
    parameters instead of 6, so that 4-5 features constrain it better.

    Returns the 3x3 matrix and the Jacobians of the displacements with respect to
    the parameters at ``p`` (2n, k) and at ``corners`` (2m, k), for the prediction
    variance."""
    if theta is None:
        design = _design(p, centre)
        coef, *_ = np.linalg.lstsq(design, (q - p).reshape(-1), rcond=None)
        matrix = np.eye(3)
        matrix[:2, :2] = np.eye(2) + coef[:4].reshape(2, 2)
        matrix[:2, 2] = centre + coef[4:] - matrix[:2, :2] @ centre
        return matrix, design, _design(corners, centre)

    def displaced(x: np.ndarray, pts: np.ndarray) -> np.ndarray:
        return centre + (pts - centre) @ _raster_linear(x, theta).T + x[3:]

    def jacobian(x: np.ndarray, pts: np.ndarray) -> np.ndarray:
        out = np.empty((2 * len(pts), 5))
        for j in range(5):
            h = np.zeros(5)
            h[j] = 1e-6
            out[:, j] = ((displaced(x + h, pts) - displaced(x - h, pts)) / 2e-6).reshape(-1)
        return out

    x = np.zeros(5)
    for _ in range(20):  # Gauss-Newton: smooth, and it starts near its optimum
        jac = jacobian(x, p)
        step, *_ = np.linalg.lstsq(jac, (q - displaced(x, p)).reshape(-1), rcond=None)
        x = x + step
        if float(np.abs(step).max()) < 1e-9:
            break
    matrix = np.eye(3)
    matrix[:2, :2] = _raster_linear(x, theta)
    matrix[:2, 2] = centre + x[3:] - matrix[:2, :2] @ centre
    return matrix, jacobian(x, p), jacobian(x, corners)


def _refine_linear(sims: np.ndarray, tem: np.ndarray, start: np.ndarray, sign: float, *,
                   smooth_px: float, footprint_sigma_sims_px: float, half_window_px: int,
                   search_px: int, min_features: int, max_iterations: int,
                   tolerance_px: float, max_predicted_error_px: float,
                   theta: float | None = None, sigma_floor_px: float = 0.1,
                   cache: dict | None = None) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Correction ``D`` (SIMS px -> SIMS px; an affine, or the raster model if
    ``theta`` is given, see :func:`_fit_model`) such that ``start @ D`` maps the map's
    features onto the TEM image's; None (and why) if it is not constrained.

    Each pass measures the features' shifts against the TEM image resampled through
    the correction so far and refits the whole correction to where they are in the
    starting frame; the passes stop when the correction moves the corners by less
    than ``tolerance_px``. A fit is refitted without the features further than 3
    robust sigmas (1.4826 MAD, at least 0.15 px) from it."""
    info: dict[str, Any] = {"features": 0, "feature_rms_px": float("nan"), "iterations": 0}
    ny, nx = sims.shape
    corners = np.array([[0, 0], [nx - 1, 0], [nx - 1, ny - 1], [0, ny - 1],
                        [(nx - 1) / 2, (ny - 1) / 2]], float)
    centre = corners[-1]
    total = np.eye(3)
    predicted = predicted_95 = float("inf")
    # Fewer than ``min_features`` are still fitted down to 4 (a raster model's 5
    # parameters, 3 degrees of freedom): refused, the fit checks an intensity fit.
    fit_min = min(min_features, 4)
    for step in range(1, max_iterations + 1):
        on_grid = tem_on_sims_grid(tem, start @ total, sims.shape,
                                   footprint_sigma_sims_px=footprint_sigma_sims_px, cache=cache)
        sims_z, tem_z, mask = _prepared_pair(sims, on_grid, smooth_px)
        # The first pass searches widely (the linear error of the recorded geometry
        # moves the corners by several px); later ones only around the fit, which
        # keeps a window off its neighbours once the fit is close.
        found = feature_shifts(sims_z, sign * tem_z, mask, half_window_px=half_window_px,
                               search_px=search_px if step == 1 else min(search_px, 3))
        info.update(features=len(found), iterations=step)
        if len(found) < fit_min:
            return None, dict(info, why=f"{len(found)} features (< {min_features})")
        p = found[:, :2]
        q = (np.column_stack([p + found[:, 2:4], np.ones(len(p))]) @ total.T)[:, :2]
        keep = np.ones(len(p), bool)
        for _ in range(6):
            fitted, jac, at_corners = _fit_model(p[keep], q[keep], centre, theta, corners)
            moved = (np.column_stack([p, np.ones(len(p))]) @ fitted.T)[:, :2]
            residual = np.hypot(*(moved - q).T)
            scale = max(1.4826 * float(np.median(residual[keep])), 0.15)
            new = residual < 3.0 * scale
            if new.sum() < fit_min or (new == keep).all():
                break
            keep = new
        n = int(keep.sum())
        rms = float(np.sqrt(np.mean(residual[keep] ** 2)))
        # Standard error of the fit at the corners and centre (least-squares
        # prediction variance) for the features' scatter per coordinate, at least
        # sigma_floor_px: features few or bunched in a line extrapolate badly.
        dof = max(2 * n - jac.shape[1], 1)
        sigma = max(rms * math.sqrt(n / dof), sigma_floor_px)
        # The scatter of 4-6 features says little about sigma (3-7 degrees of freedom):
        # the fit is judged on its one-sided 95 % upper bound, sigma sqrt(dof /
        # chi2_0.05(dof)) (x2.9 at 4 features, x2.1 at 5, x1.4 at 10), floored alike.
        # Judged on the estimate, fits of 4-5 features predicted 0.32-0.47 px came out
        # 0.9-1.3 px off (2 specimens in 60).
        sigma_95 = max(rms * math.sqrt(n / float(special.chdtri(dof, 0.95))), sigma_floor_px)
        try:
            cov = np.linalg.inv(jac.T @ jac)
            variance = np.einsum("ij,jk,ik->i", at_corners, cov, at_corners)
            spread = math.sqrt(2.0 * float(variance.mean()))
            predicted, predicted_95 = sigma * spread, sigma_95 * spread
        except np.linalg.LinAlgError:
            predicted = predicted_95 = float("inf")
        info.update(features=n, feature_rms_px=rms, predicted_error_px=predicted,
                    predicted_error_95_px=predicted_95)
        if n < fit_min or not math.isfinite(predicted):
            return None, dict(info, why=f"{n} consistent features (< {min_features}, or in "
                                        "a line)")
        change = _corner_rms_px(np.linalg.inv(total) @ fitted, sims.shape)
        total = fitted
        if change <= tolerance_px:
            break
    # Judged once converged: the first passes measure shifts of several px, less
    # precisely than the last one measures what is left.
    if info["features"] < min_features:
        return None, dict(info, correction=total,
                          why=f"{info['features']} consistent features (< {min_features})")
    if not predicted_95 <= max_predicted_error_px:
        return None, dict(info, correction=total, why=f"{info['features']} consistent features: predicted "
                                    f"corner error {predicted:.2f} px, its 95 % bound "
                                    f"{predicted_95:.2f} px > {max_predicted_error_px} px")
    return total, info


def linear_decomposition(correction: np.ndarray) -> dict[str, float]:
    """Rotation (deg), scales (along the two principal axes) and shear of the linear
    part of an affine correction in SIMS pixels (polar decomposition ``R S``)."""
    linear = np.asarray(correction, float)[:2, :2]
    u, s, vt = np.linalg.svd(linear)
    rotation = u @ vt
    stretch = vt.T @ np.diag(s) @ vt
    return {"rotation_deg": math.degrees(math.atan2(rotation[1, 0], rotation[0, 0])),
            "scale_max": float(s[0]), "scale_min": float(s[1]),
            "shear": float(stretch[0, 1] / math.sqrt(stretch[0, 0] * stretch[1, 1]))}


def raster_model_parameters(correction: np.ndarray, rotation_deg: float) -> dict[str, float]:
    """The raster model's parameters of a correction (SIMS px -> SIMS px, the linear
    part ``R(-theta) diag(1, k) R(theta) s R(delta)``, :func:`_raster_linear`) about the
    recorded scan rotation ``theta`` = ``rotation_deg``: ``scale`` (the true field over
    the recorded one), ``rotation_deg`` (``delta``, the true scan rotation minus the
    recorded one) and ``stretch`` (``k``, the true stretch along the specimen's y over
    the recorded one: the incidence).

    ``R(theta) L = diag(1, k) s R(theta + delta)``: its first row gives ``s`` and the
    angle, its second ``k s`` and the angle again (the two are averaged).
    """
    theta = math.radians(rotation_deg)
    c, s_ = math.cos(theta), math.sin(theta)
    n = np.array([[c, -s_], [s_, c]]) @ np.asarray(correction, float)[:2, :2]
    scale = math.hypot(n[0, 0], n[0, 1])
    # Mean of the two rows' angles on the circle, theta taken out.
    angle = math.atan2(-n[0, 1], n[0, 0])
    other = math.atan2(n[1, 0], n[1, 1])
    mean = angle + 0.5 * math.atan2(math.sin(other - angle), math.cos(other - angle))
    return {"scale": float(scale), "rotation_deg": math.degrees(mean - theta),
            "stretch": float(math.hypot(n[1, 0], n[1, 1]) / scale)}


def _refine_raster_by_intensity(sims: np.ndarray, tem: np.ndarray, start: np.ndarray,
                                sign: float, theta: float | None, *, smooth_px: float,
                                footprint_sigma_sims_px: float,
                                coarse_smooth_px: float = 2.5, blur: bool = False,
                                quadratic: bool = True, max_evaluations: int = 400
                                ) -> tuple[np.ndarray, dict[str, Any]]:
    """Correction ``D`` (SIMS px -> SIMS px) of the raster model (:func:`_raster_linear`;
    an affine if ``theta`` is None) such that the TEM image resampled through
    ``start @ D`` correlates best with the map, fitted by intensity.

    Least squares of the standardised, smoothed map against the TEM image resampled on
    its grid (cubic spline of the block-averaged, footprint-smoothed TEM, computed once)
    through a contrast relation fitted in closed form: with ``quadratic`` (the default)
    the map is a quadratic of the TEM signal (bright field is the exponential of the
    mass thickness, a particle's Li signal flat-topped), otherwise a gain (the minimum
    is then the maximum of their normalised cross-correlation); where the TEM correlates
    with the map against the sign ``sign`` nothing is explained. A coarse pass
    (``coarse_smooth_px``) widens the capture range before the fine one
    (``smooth_px``). With ``blur`` a Gaussian of the TEM side is fitted too: a Li map's
    particles look wider than on the bright-field image (probe halo), a difference a
    scale would otherwise absorb (decision 0011's table).

    Returns the correction and ``{"ncc", "evaluations", "blur_px",
    "predicted_error_px"}`` (``ncc`` the plain normalised cross-correlation at the fit).
    """
    from scipy import optimize

    ny, nx = sims.shape
    linear = start[:2, :2]
    smallest = float(np.linalg.svd(linear, compute_uv=False).min())
    f = max(1, min(int(smallest // 2), min(tem.shape)))
    to_reduced = np.eye(3)
    reduced = np.asarray(tem, np.float32)
    if f > 1:
        to_reduced = np.array([[1.0 / f, 0, -(f - 1) / (2.0 * f)],
                               [0, 1.0 / f, -(f - 1) / (2.0 * f)], [0, 0, 1]])
        h, w = (reduced.shape[0] // f) * f, (reduced.shape[1] // f) * f
        reduced = reduced[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3),
                                                                      dtype=np.float32)
    lin = (to_reduced @ start)[:2, :2]
    cov = footprint_sigma_sims_px ** 2 * (lin @ lin.T)
    box_var = 1.0 / 12.0 if f > 1 else 0.0
    sigma = (math.sqrt(max(cov[1, 1] - box_var, 0.0)), math.sqrt(max(cov[0, 0] - box_var, 0.0)))
    reduced = ndimage.gaussian_filter(reduced, sigma, mode="nearest")
    coeffs = ndimage.spline_filter(reduced.astype(np.float64), order=3)
    mask = np.isfinite(sims) & (sims >= 0)
    rows, cols = np.mgrid[0:ny, 0:nx]
    points = np.stack([cols.ravel(), rows.ravel(), np.ones(rows.size)])
    centre = np.array([(nx - 1) / 2.0, (ny - 1) / 2.0])
    # Parameters in px of corner displacement: a unit of ln s, rotation or ln k moves
    # the corners by about one px, so that the steps of every parameter compare.
    half_diagonal = 0.5 * math.hypot(nx, ny)
    n_linear = 3 if theta is not None else 4

    def correction_of(x: np.ndarray) -> np.ndarray:
        d = np.eye(3)
        if theta is not None:
            d[:2, :2] = _raster_linear(x[:3] / half_diagonal, theta)
        else:
            d[:2, :2] = np.eye(2) + x[:4].reshape(2, 2) / half_diagonal
        d[:2, 2] = centre + x[n_linear:n_linear + 2] - d[:2, :2] @ centre
        return d

    def prepared(smooth: float) -> np.ndarray:
        return _standardise(_masked_gaussian(np.nan_to_num(sims), mask, smooth), mask)[mask]

    def tem_at(x: np.ndarray, smooth: float) -> np.ndarray:
        xy = (to_reduced @ start @ correction_of(x)) @ points
        values = ndimage.map_coordinates(coeffs, [xy[1], xy[0]], order=3, prefilter=False,
                                         mode="nearest").reshape(ny, nx)
        if blur:
            smooth = math.hypot(smooth, x[-1])
        # float64 throughout: the finite-difference steps change values by ~1e-4.
        t = ndimage.gaussian_filter(np.where(mask, values, 0.0), smooth, mode="constant")
        t = (t / weight_of(smooth))[mask]
        t -= t.mean()
        return t

    weights: dict[float, np.ndarray] = {}

    def weight_of(smooth: float) -> np.ndarray:
        key = round(smooth, 3)
        if key not in weights:
            weights[key] = np.maximum(ndimage.gaussian_filter(mask.astype(float), smooth,
                                                              mode="constant"), 1e-3)
        return weights[key]

    evaluations = 0

    def dot(a: np.ndarray, b: np.ndarray) -> float:
        # Not BLAS: its threads, on a machine whose cores are all busy, made each
        # 12k-sample product ~40 ms (the registration 5 s instead of 1 s).
        return float(np.einsum("i,i->", a, b))

    def residuals(x: np.ndarray, s: np.ndarray, smooth: float) -> np.ndarray:
        nonlocal evaluations
        evaluations += 1
        t = tem_at(x, smooth)
        if not sign * dot(s, t) > 0:
            return s  # anticorrelated (the wrong sign): nothing explained
        if not quadratic:
            return s - dot(s, t) / dot(t, t) * t
        # The map as a quadratic of the TEM signal, both coefficients in closed form
        # (2 x 2 normal equations). Bright field is exp(-mass thickness): dome-shaped
        # over a particle whose Li signal is flat-topped, a mismatch that a linear gain
        # leaves and that the scale and stretch absorbed on maps of 3-8 particles
        # (1.0-2.0 px off, up to 3x their predicted error: CI entropy
        # 173026354654654560835066377031215771290, seed 19274; decision 0029).
        q = t * t
        q -= q.mean()
        a11, a12, a22 = dot(t, t), dot(t, q), dot(q, q)
        b1, b2 = dot(s, t), dot(s, q)
        det = a11 * a22 - a12 * a12
        if not det > 1e-9 * a11 * a22:
            return s - b1 / a11 * t
        return s - ((a22 * b1 - a12 * b2) * t + (a11 * b2 - a12 * b1) * q) / det

    x = np.zeros(n_linear + 2 + (1 if blur else 0))
    if blur:
        x[-1] = 0.5
    for smooth in (coarse_smooth_px, smooth_px):
        s = prepared(smooth).astype(float)
        s -= s.mean()
        fit = optimize.least_squares(residuals, x, args=(s, smooth), method="trf",
                                     diff_step=2e-2, x_scale=1.0, xtol=1e-3,
                                     max_nfev=max_evaluations)
        x = fit.x
    t = tem_at(x, smooth_px)
    ncc = sign * dot(s, t) / math.sqrt(dot(s, s) * dot(t, t))
    # Predicted error at the corners and centre: the fit's formal standard error (its
    # Jacobian; the residuals correlated over a smoothing area, 4 pi sigma^2 px, so
    # n_eff independent ones) times sqrt(N / n_eff) (~3.5): the residuals are the two
    # contrasts' shape mismatch more than noise, and the formal error alone read
    # 0.07-0.27 px where the fits came out 0.08-0.94 px off (decision 0029,
    # 2026-12-05 amendment): an index calibrated on those maps, not a statistic.
    predicted = float("inf")
    try:
        jac = fit.jac[:, :n_linear + 2]
        n_eff = max(len(s) / (4.0 * math.pi * max(smooth_px, 0.5) ** 2) - jac.shape[1], 1.0)
        cov = np.linalg.inv(jac.T @ jac) * dot(fit.fun, fit.fun) / n_eff * (
            len(s) / n_eff)
        corners = np.array([[0, 0], [nx - 1, 0], [nx - 1, ny - 1], [0, ny - 1],
                            [(nx - 1) / 2, (ny - 1) / 2]], float)
        hom = np.column_stack([corners, np.ones(len(corners))])
        corner_jac = np.empty((2 * len(corners), n_linear + 2))
        for j in range(n_linear + 2):
            h = np.zeros_like(x)
            h[j] = 1e-4
            corner_jac[:, j] = ((hom @ correction_of(x + h).T - hom @ correction_of(x - h).T)
                                [:, :2] / 2e-4).reshape(-1)
        variance = np.einsum("ij,jk,ik->i", corner_jac, cov, corner_jac)
        predicted = math.sqrt(2.0 * float(variance.mean()))
    except np.linalg.LinAlgError:
        pass
    return correction_of(x), {"ncc": ncc, "evaluations": evaluations,
                              "blur_px": float(abs(x[-1])) if blur else 0.0,
                              "predicted_error_px": predicted}


# ============================================================================ API
#: An intensity fit whose predicted corner error (its Jacobian, one independent
#: residual per smoothing area) is larger is refused. With the map a quadratic of the
#: TEM signal the prediction read 0.15-0.58 px on 127 fresh fits (47 where the features
#: were refused, 80 forced), which came out 0.02-0.58 px off, at most 1.5x their
#: prediction (14 % over it): at 0.6 px an accepted fit stays under ~0.9 px. (With the
#: linear gain and 0.8 px, fits predicted 0.5-0.6 px came out 0.75-1.03 px off;
#: decision 0029, 2026-12-05 amendments.)
MAX_INTENSITY_PREDICTED_ERROR_PX = 0.6

#: Tukey taper of the second translation estimate, made when the first is refused.
RETRY_TAPER_FRACTION = 0.25


def _refine_translation(sims: np.ndarray, tem: np.ndarray, m0: np.ndarray,
                        at_m0: tuple[np.ndarray, np.ndarray, np.ndarray],
                        taper_fraction: float, *, cache: dict, smooth_px: float,
                        upsample_factor: int, normalization, max_shift_px: float,
                        max_iterations: int, tolerance_px: float,
                        footprint_sigma_sims_px: float):
    """The iterated translation from ``m0``, whose prepared pair is ``at_m0`` (sims_z,
    tem_z, mask): (accepted, total shift (row, col), phase error, iterations, (matrix,
    sims_z, tem_z, mask) at the refined position, or at ``m0`` if refused)."""
    from skimage.filters import window  # imports scipy.signal: see feature_shifts

    sims_z, tem_z, mask = at_m0
    taper = window(("tukey", taper_fraction), sims.shape).astype(np.float32)
    total = np.zeros(2)
    matrix = m0
    phase_error = float("nan")
    iterations = 0
    # Iterate: content cut by the map's edge biases one estimate toward zero shift by
    # a fraction of the remaining offset; re-sampling the TEM at the refined position
    # and estimating again removes it (fixed point: the truth).
    for step in range(1, max_iterations + 1):
        iterations = step
        found, phase_error, _ = phase_cross_correlation(
            tem_z * taper, sims_z * taper, upsample_factor=upsample_factor,
            normalization=normalization)
        total = total + found
        if math.hypot(*total) > max_shift_px:
            return False, total, float(phase_error), iterations, (m0, *at_m0)
        matrix = m0 @ _translation(total[1], total[0])
        on_grid = tem_on_sims_grid(tem, matrix, sims.shape,
                                   footprint_sigma_sims_px=footprint_sigma_sims_px,
                                   cache=cache)
        sims_z, tem_z, mask = _prepared_pair(sims, on_grid, smooth_px)
        if math.hypot(*found) <= tolerance_px:
            break
    return True, total, float(phase_error), iterations, (matrix, sims_z, tem_z, mask)


def register_sims_to_tem(sims_image: np.ndarray, tem_image: np.ndarray,
                         sims_geometry: SimsMapGeometry, tem_geometry: TemImageGeometry, *,
                         refine: bool = True, invert_tem: bool | Literal["auto"] = "auto",
                         upsample_factor: int = 20, smooth_sims_px: float = 1.0,
                         footprint_sigma_sims_px: float = 0.5,
                         max_shift_px: float | None = None, taper_fraction: float = 0.0,
                         max_iterations: int = 5, tolerance_px: float = 0.05,
                         normalization: Literal["phase"] | None = None,
                         model: Literal["raster", "affine", "translation"] = "raster",
                         half_window_px: int | None = None, search_px: int = 8,
                         min_features: int = 4, affine_min_change_px: float = 0.3,
                         max_predicted_error_px: float = 0.5,
                         max_rotation_change_deg: float = 6.0,
                         max_scale_change: float = 0.2,
                         intensity_fallback: bool = True) -> RegistrationResult:
    """Register a SIMS map onto a TEM image of the same specimen area.

    Parameters
    ----------
    sims_image : (ny, nx) array
        One SIMS map (counts; negative = not acquired), e.g. 7Li or the sum of the
        collectors.
    tem_image : (N, N) array
        TEM image (bright field or HAADF).
    sims_geometry, tem_geometry
        Their recorded geometry (``from_metadata`` of the start documents).
    refine : bool
        Refine the geometric affine by image similarity (a translation).
    invert_tem : bool or "auto"
        True if TEM contrast is opposite to SIMS contrast (bright field vs a species
        of the particles), False if alike (HAADF); "auto" picks the sign that
        correlates positively.
    upsample_factor : int
        Sub-pixel precision of the cross-correlation: 1 / upsample_factor SIMS px.
    smooth_sims_px : float
        Gaussian sigma (SIMS px) applied to both images before comparing them
        (counting noise of the map).
    footprint_sigma_sims_px : float
        Gaussian sigma (SIMS px) of what one SIMS pixel sees, used to smooth the TEM
        image to the map's resolution (:func:`tem_on_sims_grid`).
    max_shift_px : float, optional
        Largest refinement shift accepted (SIMS px); a larger one is rejected
        (``refined=False``, the initial transform kept). Default: a quarter of the
        map's smaller side.
    taper_fraction : float
        Tukey window (fraction of the map tapered) applied to both images before the
        cross-correlation (:func:`skimage.filters.window`), 0 for none. A translation
        beyond ``max_shift_px`` is estimated again with 0.25 (``RETRY_TAPER_FRACTION``)
        before it is refused; ``quality["taper_fraction"]`` says which was kept.
    max_iterations, tolerance_px : int, float
        The translation is re-estimated after re-sampling the TEM image at the
        refined position until a step is below ``tolerance_px`` (SIMS px).
    normalization : "phase" or None
        Passed to :func:`~skimage.registration.phase_cross_correlation`: None (plain
        cross-correlation, robust to counting noise) or "phase" (whitened).
    model : "raster", "affine" or "translation"
        What the refinement may change after the translation, fitted to the local
        shifts of the map's features (:func:`feature_shifts`, decision 0029):
        "raster" the field (a scale), the scan rotation and the stretch along the
        specimen's y (the incidence: a bias-bent beam), exactly as they enter
        :class:`~temsims.analysis.geometry.SimsMapGeometry`; "affine" any linear
        change (scale, rotation and shear along any axes); "translation" keeps the
        recorded linear geometry (decision 0011).
    half_window_px : int, optional
        Half side (SIMS px) of the window around each feature; default
        ``min(12, min(ny, nx) // 6)``.
    search_px : int
        Largest local shift searched in the first affine pass (SIMS px).
    min_features : int
        Fewest consistent features (not in a line) for an affine; with fewer the
        translation is kept and ``quality["affine"]["why"]`` says so.
    max_predicted_error_px : float
        The affine is refused (the translation kept) if its standard error at the map
        corners and centre, predicted from the features' positions and scatter, is
        larger (SIMS px); below it, the affine is kept only if it moves the corners
        by more than twice that error.
    affine_min_change_px : float
        The affine is kept only if it moves the map corners and centre by more than
        this (RMS, SIMS px) from the translation's result: below it, the difference is
        the features' measurement noise (0.1-0.2 px) and the translation is the more
        precise (decision 0029).
    max_rotation_change_deg, max_scale_change : float
        An affine correction rotating by more than this, or scaling an axis by more
        than this fraction, is refused (the translation kept): it would be a mismatch,
        not a calibration error.
    intensity_fallback : bool
        Where the features cannot constrain the model (too few, or their fit's 95 %
        bound too large), fit it to the images' intensities instead
        (:func:`_refine_raster_by_intensity`; ``quality["affine"]["method"]`` is then
        "intensity"), kept under the same rotation/scale limits if it moves the
        corners by more than ``affine_min_change_px``, its predicted corner error is
        at most ``MAX_INTENSITY_PREDICTED_ERROR_PX``, it lies within that plus the 95 %
        bound of the refused feature fit (if one was made) from it, and it correlates
        better than the translation (decision 0029, 2026-12-05 amendments).

    Returns
    -------
    RegistrationResult

    Raises
    ------
    ValueError
        If an image is not 2-D or its shape does not match its geometry.
    """
    sims = _as_image("sims_image", sims_image)
    tem = _as_image("tem_image", tem_image)
    if sims.shape != sims_geometry.shape:
        raise ValueError(f"sims_image shape {sims.shape} does not match the geometry "
                         f"(ny, nx) = {sims_geometry.shape}")
    if tem.shape != tem_geometry.shape:
        raise ValueError(f"tem_image shape {tem.shape} does not match the geometry "
                         f"{tem_geometry.shape}")
    if invert_tem not in (True, False, "auto"):
        raise ValueError(f"invert_tem must be True, False or 'auto', got {invert_tem!r}")
    if model not in ("raster", "affine", "translation"):
        raise ValueError(f"model must be 'raster', 'affine' or 'translation', got {model!r}")
    if half_window_px is None:
        half_window_px = max(3, min(12, min(sims.shape) // 6))
    if max_shift_px is None:
        max_shift_px = 0.25 * min(sims.shape)

    m0 = pixel_transform_matrix(sims_geometry, tem_geometry)
    initial = AffineTransform(matrix=m0)
    cache: dict = {}

    def pair_at(matrix_: np.ndarray):
        """The SIMS map and the TEM image resampled on its grid through ``matrix_``,
        normalised, and their overlap."""
        on_grid = tem_on_sims_grid(tem, matrix_, sims.shape,
                                   footprint_sigma_sims_px=footprint_sigma_sims_px,
                                   cache=cache)
        return _prepared_pair(sims, on_grid, smooth_sims_px)

    def beyond_allowed_change(parts: dict) -> bool:
        return (abs(parts["rotation_deg"]) > max_rotation_change_deg
                or max(parts["scale_max"] - 1, 1 - parts["scale_min"]) > max_scale_change)

    sims_z, tem_z, mask = pair_at(m0)
    if mask.sum() < 16:
        raise ValueError("the SIMS map and the TEM image do not overlap (according to the "
                         "recorded geometry): nothing to register")
    ncc_initial = normalised_cross_correlation(sims_z, tem_z, mask)

    shift = (0.0, 0.0)
    phase_error = float("nan")
    refined = False
    matrix = m0
    iterations = 0
    taper_used = None
    if refine:
        # With no taper, a map whose few features sit on its edges can lock the
        # circular cross-correlation onto the wrapped-around copy of another (a shift
        # of tens of px: a CI scene of seed 93521, three particles all on edges); such a
        # translation is refused, and estimated again with the edges tapered.
        tapers = [taper_fraction] + ([RETRY_TAPER_FRACTION]
                                     if taper_fraction < RETRY_TAPER_FRACTION else [])
        at_m0 = (sims_z, tem_z, mask)
        for taper_used in tapers:
            refined, total, phase_error, iterations, (matrix, sims_z, tem_z, mask) = \
                _refine_translation(sims, tem, m0, at_m0, taper_used, cache=cache,
                                    smooth_px=smooth_sims_px, upsample_factor=upsample_factor,
                                    normalization=normalization, max_shift_px=max_shift_px,
                                    max_iterations=max_iterations, tolerance_px=tolerance_px,
                                    footprint_sigma_sims_px=footprint_sigma_sims_px)
            if refined:
                shift = (float(total[0]), float(total[1]))
                break
    ncc = normalised_cross_correlation(sims_z, tem_z, mask)
    inverted = bool(ncc < 0) if invert_tem == "auto" else bool(invert_tem)
    sign = -1.0 if inverted else 1.0
    affine: dict[str, Any] = {"applied": False}
    if model != "translation" and not refined:
        affine["why"] = ("no refinement asked for" if not refine else
                         f"the translation was refused (beyond max_shift_px = {max_shift_px})")
    if refined and model in ("affine", "raster"):
        # The raster model: what a raster calibration and the bias-bent beam change
        # (field, scan rotation, stretch along the specimen's y), about the recorded
        # scan rotation; "affine": any linear change.
        theta = math.radians(sims_geometry.rotation_deg) if model == "raster" else None
        options = dict(smooth_px=smooth_sims_px, theta=theta, footprint_sigma_sims_px=footprint_sigma_sims_px,
                       search_px=search_px, min_features=min_features,
                       max_iterations=max_iterations + 1, tolerance_px=2 * tolerance_px,
                       max_predicted_error_px=max_predicted_error_px, cache=cache)
        correction, info = _refine_linear(sims, tem, matrix, sign,
                                          half_window_px=half_window_px, **options)
        if correction is None and info["features"] < min_features and half_window_px > 6:
            # Features must lie a window half-side inside the map: on a sparse map,
            # halving the window admits those nearer the edges (less precise each).
            correction, info = _refine_linear(sims, tem, matrix, sign,
                                              half_window_px=max(6, half_window_px // 2),
                                              **options)
        refused_correction = info.pop("correction", None)
        affine.update(info)
        if correction is not None:
            if model == "raster":
                # Kept even where the fit is refused as within the noise: a raster
                # calibration wants the model's best estimate either way.
                affine["raster_model"] = raster_model_parameters(
                    correction, sims_geometry.rotation_deg)
            parts = linear_decomposition(correction)
            change = _corner_rms_px(correction, sims.shape)
            affine.update(parts, change_px=change)
            if beyond_allowed_change(parts):
                affine["why"] = "correction beyond the allowed rotation/scale change"
            elif change <= max(affine_min_change_px, 2.0 * info["predicted_error_px"]):
                # The translation's error is about ``change`` and the affine's about its
                # predicted error: keep the one expected to be closer.
                affine["why"] = (f"moves the corners by {change:.2f} px, within the "
                                 f"noise (<= {affine_min_change_px} px or twice the "
                                 f"predicted {info['predicted_error_px']:.2f} px): "
                                 "translation kept")
            else:
                affine.update(applied=True, method="features")
                matrix = matrix @ correction
                sims_z, tem_z, mask = pair_at(matrix)
                ncc = normalised_cross_correlation(sims_z, tem_z, mask)
        elif intensity_fallback:
            # Too few features, or too few for the 95 % bound (~18 % of the maps under
            # calibration errors): the raster model is fitted to the images' intensities
            # instead (decision 0029, 2026-12-05 amendments), as precise as the features
            # on those maps (median 0.09 px, max 0.58 px over 35 fresh ones whose
            # recorded geometry was 4.5-7.5 px off).
            correction, fit = _refine_raster_by_intensity(
                sims, tem, matrix, sign, theta, smooth_px=smooth_sims_px,
                footprint_sigma_sims_px=footprint_sigma_sims_px)
            parts = linear_decomposition(correction)
            change = _corner_rms_px(correction, sims.shape)
            intensity = dict(fit, **parts, change_px=change)
            if model == "raster":
                intensity["raster_model"] = raster_model_parameters(
                    correction, sims_geometry.rotation_deg)
            if refused_correction is not None:
                # How far the refused feature fit lies from it: the two disagree by
                # 0.1-0.8 px (RMS at the corners) where both are within 0.5 px.
                intensity["features_disagree_px"] = _corner_rms_px(
                    np.linalg.inv(refused_correction) @ correction, sims.shape)
            affine["intensity"] = intensity
            if beyond_allowed_change(parts):
                affine["why"] += "; intensity fit beyond the allowed rotation/scale change"
            elif change <= affine_min_change_px:
                affine["why"] += (f"; the intensity fit moves the corners by {change:.2f} px "
                                  f"(<= {affine_min_change_px} px): translation kept")
            elif not fit["predicted_error_px"] <= MAX_INTENSITY_PREDICTED_ERROR_PX:
                affine["why"] += (f"; the intensity fit's predicted corner error "
                                  f"{fit['predicted_error_px']:.2f} px > "
                                  f"{MAX_INTENSITY_PREDICTED_ERROR_PX} px: translation kept")
            elif intensity.get("features_disagree_px", 0.0) > (
                    affine.get("predicted_error_95_px", math.inf)
                    + MAX_INTENSITY_PREDICTED_ERROR_PX):
                # Both estimate one correction: beyond the sum of their bounds they
                # contradict each other, and the intensities have paired the map's few
                # particles with others of the TEM image (entropy
                # 326772527469787470230151267987615526837, seed 84188: 4 bunched
                # features, their fit's bound 7.6 px; the intensity fit 15.4 px from it
                # and 10.5 px off, predicting 0.46 px, the objective lower there than at
                # the truth).
                affine["why"] += (f"; the intensity fit is {intensity['features_disagree_px']:.1f}"
                                  f" px from the features' fit, beyond their bounds "
                                  f"({affine['predicted_error_95_px']:.2f} + "
                                  f"{MAX_INTENSITY_PREDICTED_ERROR_PX} px): translation kept")
            elif not fit["ncc"] > sign * ncc:
                affine["why"] += "; the intensity fit correlates no better: translation kept"
            else:
                affine.update(applied=True, method="intensity", **parts, change_px=change)
                if model == "raster":
                    affine["raster_model"] = intensity["raster_model"]
                matrix = matrix @ correction
                sims_z, tem_z, mask = pair_at(matrix)
                ncc = normalised_cross_correlation(sims_z, tem_z, mask)
    # How far the refined rotation/scale/shear put the corners from the recorded ones
    # (the translation taken out): a recorded calibration that is off shows here even
    # when the affine has absorbed it.
    relative = np.linalg.inv(m0) @ matrix
    ny, nx = sims.shape
    centre = np.array([(nx - 1) / 2.0, (ny - 1) / 2.0])
    relative[:2, 2] = centre - relative[:2, :2] @ centre
    linear_error = _corner_rms_px(relative, sims.shape)
    quadrants = _quadrant_shifts(sims_z, tem_z, mask, upsample_factor, normalization)
    # The median over the quadrants, not the mean: a quadrant whose feature is weak
    # can lock its cross-correlation onto noise tens of px away (1 map in 20 on the
    # particle specimen), while a wrong rotation or field moves every quadrant.
    residual = (math.sqrt(float(np.median([r * r + c * c for r, c in quadrants])))
                if quadrants else float("nan"))
    quality = {"ncc": sign * ncc, "ncc_initial": sign * ncc_initial,
               "phase_error": float(phase_error), "overlap_fraction": float(mask.mean()),
               "tem_inverted": inverted, "quadrant_shifts_px": quadrants,
               "iterations": iterations, "taper_fraction": taper_used,
               "model": model if affine["applied"] else "translation", "affine": affine}
    return RegistrationResult(transform=AffineTransform(matrix=matrix),
                              initial_transform=initial, shift_px=shift, quality=quality,
                              residual_sims_px=residual, refined=refined,
                              linear_error_sims_px=linear_error)


def _transform_of(result: RegistrationResult | AffineTransform | np.ndarray) -> AffineTransform:
    if isinstance(result, RegistrationResult):
        return result.transform
    if isinstance(result, AffineTransform):
        return result
    matrix = np.asarray(result, float)
    if matrix.shape != (3, 3):
        raise ValueError(f"expected a RegistrationResult, AffineTransform or 3x3 matrix, "
                         f"got shape {matrix.shape}")
    return AffineTransform(matrix=matrix)


def warp_sims_to_tem(sims_channels: np.ndarray,
                     result: RegistrationResult | AffineTransform | np.ndarray,
                     tem_shape: tuple[int, int], *, order: int = 1,
                     cval: float = np.nan) -> np.ndarray:
    """SIMS channels resampled on the TEM pixel grid.

    Parameters
    ----------
    sims_channels : (ny, nx) or (k, ny, nx) array
        Maps on the SIMS grid (negative values = not acquired, treated as missing).
    result
        The registration (or the SIMS -> TEM affine / its 3x3 matrix).
    tem_shape : (H, W)
        Shape of the TEM image.
    order : int
        Interpolation order (0 nearest, 1 bilinear, 3 cubic).
    cval : float
        Value outside the map and next to missing pixels (NaN; or 0).

    Returns
    -------
    (H, W) or (k, H, W) float32 array
    """
    transform = _transform_of(result)
    arr = np.asarray(sims_channels, np.float32)
    if arr.ndim not in (2, 3):
        raise ValueError(f"sims_channels must be (ny, nx) or (k, ny, nx), got shape {arr.shape}")
    if len(tem_shape) != 2:
        raise ValueError(f"tem_shape must be (H, W), got {tem_shape!r}")
    stack = arr[None] if arr.ndim == 2 else arr
    out = np.empty((stack.shape[0], *tem_shape), np.float32)
    inverse = AffineTransform(matrix=np.linalg.inv(transform.params))
    for k, channel in enumerate(stack):
        acquired = np.isfinite(channel)
        if not acquired.all():
            channel = np.where(acquired, channel, np.float32(cval))
        out[k] = warp(channel, inverse, output_shape=tuple(tem_shape), order=order,
                      mode="constant", cval=cval, preserve_range=True)
    return out[0] if arr.ndim == 2 else out


def warp_tem_to_sims(tem_image: np.ndarray,
                     result: RegistrationResult | AffineTransform | np.ndarray,
                     sims_shape: tuple[int, int], *, footprint_sigma_sims_px: float = 0.5,
                     cval: float = np.nan) -> np.ndarray:
    """A TEM image resampled on the SIMS grid at the map's resolution
    (:func:`tem_on_sims_grid` with the registration's transform); (ny, nx) float32."""
    transform = _transform_of(result)
    return tem_on_sims_grid(_as_image("tem_image", tem_image), transform.params,
                            tuple(sims_shape), footprint_sigma_sims_px=footprint_sigma_sims_px,
                            cval=cval)


__all__ = [
    "RegistrationResult",
    "feature_shifts",
    "linear_decomposition",
    "raster_model_parameters",
    "normalised_cross_correlation",
    "register_sims_to_tem",
    "tem_on_sims_grid",
    "warp_sims_to_tem",
    "warp_tem_to_sims",
]
