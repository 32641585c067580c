"""Planar interfaces of a cross-section: found on a TEM image, profiled in SIMS maps.

Arrays only (numpy/scipy): the cathode case of ``temsims demo`` (the ``livo-cathode``
Al / LiV3O8 / LiPON / Pt-C cross-section) uses it on data read back from the catalog,
and it runs on data from anywhere.

1. :func:`find_tem_interfaces`: a bright-field image of a layer stack that grows along
   +y. ``-log(counts)`` is proportional to the mass thickness ``rho t``; each column is
   divided by its mean so that a lamella wedge (``t`` varying along x) cancels. The
   strongest edges of the column-averaged profile are the interfaces; each is then
   located in blocks of columns (an error-function step fitted per block) and a
   straight line fitted through the blocks gives its position and its normal.
   :func:`trace_interface` then follows one of them column by column (a rough
   interface's height along it, to ~1 nm on the twin's 9.4 nm pixels).
2. :func:`normal_profile`: SIMS pixels (their registered specimen coordinates)
   binned by their signed distance along an interface normal (from its line, or with
   ``local`` from its trace), mean counts per pixel with their Poisson errors.
3. Fits, all least squares weighted by Poisson errors taken from the model (not the
   data: low bins would otherwise pull the fit down), covariances scaled by the reduced
   chi^2 when it exceeds 1 (the model's misfit becomes part of the error):

   - :func:`fit_edge`: a step blurred by a Gaussian (``lo + (hi - lo) Phi((d - b)/s)``):
     interface position ``b`` and width ``s`` (beam, pixel and roughness together).
   - :func:`fit_box`: a layer of finite thickness between two steps (Li+ across
     LiV3O8 / LiPON / Pt-C).
   - :func:`fit_dissolution`: a plateau (the source layer, level ``B``) that ends at
     ``b``, and beyond it an exponential tail ``A exp(-(d - b) / lambda)`` that stops
     at a far interface ``c`` (the LiPON / Pt-C cap), both blurred by the same
     Gaussian ``s``, the far end optionally by ``hypot(s, far)`` (a varying
     thickness). In closed form the tail is
     ``A exp(-(d-b)/lambda + s^2/(2 lambda^2)) [Phi((d-b)/s - s/lambda) - Phi((d-c-s^2/lambda)/hypot(s, far))]``,
     evaluated through ``log_ndtr`` so it never overflows.

Uncertainties are returned as standard deviations; the cathode report states 95 %
intervals (2 sigma).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy import ndimage, optimize, special

#: Coverage factor of the intervals the reports state (about 95 %).
COVERAGE_K = 2.0


@dataclass(frozen=True)
class Interface:
    """A straight interface found on a TEM image (specimen um).

    Attributes
    ----------
    x_um, y_um : float
        A point of the interface: the line at the image's centre column.
    normal : (float, float)
        Unit normal (x, y), pointing to +y (growth direction).
    slope : float
        dy/dx of the line.
    width_um : float
        Mean Gaussian width of the step in the blocks (TEM resolution + roughness).
    sign : int
        +1 if the mass thickness grows across it along the normal, else -1.
    points : list of (float, float)
        The per-block positions the line was fitted through.
    scatter_um : float
        RMS distance of the blocks' points from the line (the roughness seen by TEM).
    """

    x_um: float
    y_um: float
    normal: tuple[float, float]
    slope: float
    width_um: float
    sign: int
    points: list = field(default_factory=list)
    scatter_um: float = 0.0
    trace: tuple | None = None

    def distance_um(self, x_um, y_um) -> np.ndarray:
        """Signed distance (um) of points from the line along its normal."""
        nx, ny = self.normal
        return (np.asarray(x_um) - self.x_um) * nx + (np.asarray(y_um) - self.y_um) * ny

    def along_um(self, x_um, y_um) -> np.ndarray:
        """Coordinate (um) of points along the line (its tangent ``(ny, -nx)``)."""
        nx, ny = self.normal
        return (np.asarray(x_um) - self.x_um) * ny - (np.asarray(y_um) - self.y_um) * nx

    def offset_nm(self, x_um, y_um) -> np.ndarray:
        """The traced interface's offset (nm, along the normal) from the line where
        points project on it (:func:`trace_interface`; 0 without a trace; held at the
        trace's ends beyond them)."""
        if self.trace is None:
            return np.zeros(np.broadcast(np.asarray(x_um), np.asarray(y_um)).shape)
        u, off = (np.asarray(a, float) for a in self.trace)
        return np.interp(self.along_um(x_um, y_um), u, off)

    def local_distance_um(self, x_um, y_um) -> np.ndarray:
        """Signed distance (um) of points from the traced interface (the line moved by
        its :meth:`offset_nm` where they project on it), along the normal."""
        return self.distance_um(x_um, y_um) - 1e-3 * self.offset_nm(x_um, y_um)

    def reversed(self) -> Interface:
        """The same interface with its normal (and its trace's sign) reversed."""
        trace = None
        if self.trace is not None:
            u, off = (np.asarray(a, float) for a in self.trace)
            trace = (tuple(-u[::-1]), tuple(-off[::-1]))
        return replace(self, normal=(-self.normal[0], -self.normal[1]), sign=-self.sign,
                       trace=trace)

    def as_dict(self) -> dict[str, Any]:
        out = {"x_um": self.x_um, "y_um": self.y_um, "normal": list(self.normal),
               "slope": self.slope, "width_um": self.width_um, "sign": self.sign,
               "scatter_um": self.scatter_um,
               "points": [[float(a), float(b)] for a, b in self.points]}
        if self.trace is not None:
            out["trace"] = {"along_um": [float(v) for v in self.trace[0]],
                            "offset_nm": [float(v) for v in self.trace[1]]}
        return out


@dataclass(frozen=True)
class FitResult:
    """Parameters, standard errors and covariance of one profile fit.

    Attributes
    ----------
    params, errors : dict of str -> float
        Best values and standard deviations (same units as the profile: nm, counts).
    cov : numpy.ndarray
        Covariance in the order of ``names``.
    names : tuple of str
    chi2_red : float
        Reduced chi^2 with the Poisson weights (the covariance is scaled by it when > 1).
    model : callable
        ``model(d_nm)`` with the best parameters.
    """

    params: dict
    errors: dict
    cov: np.ndarray
    names: tuple
    chi2_red: float
    model: Any

    def covariance(self, a: str, b: str) -> float:
        return float(self.cov[self.names.index(a), self.names.index(b)])


# ============================================================================ TEM
def _edge_fit_1d(y: np.ndarray, p: np.ndarray, y0: float, half_window: float):
    """Error-function step fitted to profile ``p(y)`` within ``y0 +- half_window``:
    (position, width) or None."""
    sel = np.abs(y - y0) <= half_window
    if sel.sum() < 5:
        return None
    ys, ps = y[sel], p[sel]
    lo, hi = float(ps[: max(1, len(ps) // 4)].mean()), float(ps[-max(1, len(ps) // 4):].mean())
    step = np.diff(ys).mean() if len(ys) > 1 else 1.0

    def model(yy, b, s, a0, a1):
        return a0 + (a1 - a0) * special.ndtr((yy - b) / s)

    try:
        popt, _ = optimize.curve_fit(model, ys, ps, p0=(y0, step, lo, hi), maxfev=4000,
                                     bounds=([y0 - half_window, step / 10, -np.inf, -np.inf],
                                             [y0 + half_window, half_window, np.inf, np.inf]))
    except (RuntimeError, ValueError):
        return None
    return float(popt[0]), float(abs(popt[1]))


def find_tem_interfaces(image, x_um, y_um, n: int = 3, *, blocks: int = 8,
                        smooth_px: float = 1.0, min_separation_um: float = 0.04,
                        half_window_um: float | None = None) -> list[Interface]:
    """The ``n`` strongest planar interfaces of a bright-field image of a stack along y.

    Parameters
    ----------
    image : array (ny, nx)
        Bright-field counts (dark = mass), row 0 at the lowest y.
    x_um, y_um : array (nx,), (ny,)
        Specimen coordinates (um) of the columns and rows.
    n : int
        How many interfaces (the strongest mass-thickness steps).
    blocks : int
        Column blocks in which each interface is located before the line fit.
    smooth_px : float
        Gaussian smoothing (rows) of the profile before its gradient is taken.
    min_separation_um : float
        Two interfaces are at least this far apart.
    half_window_um : float, optional
        Half width of the window each step is fitted in; default half the smallest
        separation of the interfaces found, within 3..8 TEM pixels.

    Returns
    -------
    list of Interface
        Sorted by increasing y.
    """
    img = np.asarray(image, float)
    x = np.asarray(x_um, float)
    y = np.asarray(y_um, float)
    if img.ndim != 2 or img.shape != (y.size, x.size):
        raise ValueError(f"image {img.shape} does not match y ({y.size}) x x ({x.size})")
    # -log(counts) ~ rho t; normalising each column cancels a wedge's t(x).
    mt = -np.log(np.clip(img, 1.0, None))
    mt = mt - mt.min()
    mt = mt / np.clip(mt.mean(axis=0, keepdims=True), 1e-12, None)
    profile = ndimage.gaussian_filter1d(mt.mean(axis=1), smooth_px)
    grad = np.gradient(profile, y)
    mag = np.abs(grad)
    pitch = abs(float(np.diff(y).mean()))
    sep = max(1, int(round(min_separation_um / pitch)))
    # An edge stands out of the profile's noise (the median gradient): a flat image
    # has none.
    floor = max(1e-12, 5.0 * float(np.median(mag)))
    peaks = [i for i in range(1, len(mag) - 1)
             if mag[i] >= mag[i - 1] and mag[i] >= mag[i + 1] and mag[i] > floor]
    peaks.sort(key=lambda i: -mag[i])
    chosen: list[int] = []
    for i in peaks:
        if all(abs(i - j) >= sep for j in chosen):
            chosen.append(i)
        if len(chosen) == n:
            break
    if len(chosen) < n:
        raise ValueError(f"found {len(chosen)} interfaces on the TEM image, expected {n}")
    chosen.sort()
    gaps = np.diff([y[i] for i in chosen])
    if half_window_um is None:
        half_window_um = max(3 * pitch, 0.5 * float(gaps.min())) if gaps.size else 6 * pitch
        half_window_um = min(half_window_um, 8 * pitch)
    edges = np.linspace(0, x.size, blocks + 1).astype(int)
    out = []
    for i in chosen:
        y0 = float(y[i])
        points, widths = [], []
        for c0, c1 in zip(edges[:-1], edges[1:], strict=True):
            p = ndimage.gaussian_filter1d(mt[:, c0:c1].mean(axis=1), 0.5)
            fit = _edge_fit_1d(y, p, y0, half_window_um)
            if fit is not None:
                points.append((float(x[c0:c1].mean()), fit[0]))
                widths.append(fit[1])
        if len(points) < 2:
            raise ValueError(f"interface near y = {y0:.3f} um could not be located in "
                             "enough column blocks")
        px, py = np.array(points).T
        # Robust line: fit, drop blocks > 3 MAD off, fit again.
        slope, icpt = np.polyfit(px, py, 1)
        res = py - (slope * px + icpt)
        mad = 1.4826 * np.median(np.abs(res - np.median(res))) or pitch
        keep = np.abs(res) <= max(3 * mad, pitch)
        if keep.sum() >= 2:
            slope, icpt = np.polyfit(px[keep], py[keep], 1)
            res = py - (slope * px + icpt)
        xc = float(x.mean())
        norm = math.hypot(slope, 1.0)
        out.append(Interface(x_um=xc, y_um=float(slope * xc + icpt),
                             normal=(float(-slope / norm), float(1.0 / norm)),
                             slope=float(slope), width_um=float(np.median(widths)),
                             sign=1 if grad[i] > 0 else -1, points=points,
                             scatter_um=float(np.sqrt(np.mean(res[keep] ** 2)))))
    return out


def _column_steps(y, img, y0, half_window: float, pitch: float) -> np.ndarray:
    """Per column c of ``img`` (rows along ``y``, ascending), the position of an
    error-function step ``a0 + a1 Phi((y - y0[c] - o) / s)`` within ``half_window``
    of ``y0[c]``: the offsets ``o`` (NaN where the best lies on the window's edge).

    Least squares with the levels ``a0, a1`` solved in closed form for each trial
    offset (steps of pitch / 40, refined by a parabola) and one width ``s`` for all
    columns (the best of a few fractions of the pixel: the camera's optics are the
    same everywhere); vectorised over the columns (curve_fit per column took 3-10 s
    for an overview's 256)."""
    ny, nc = img.shape
    k = int(math.ceil(half_window / pitch)) + 1
    centre = np.clip(np.rint((y0 - y[0]) / (y[1] - y[0])).astype(int), k, ny - 1 - k)
    rows = centre[None, :] + np.arange(-k, k + 1)[:, None]            # (K, nc)
    cols = np.broadcast_to(np.arange(nc), rows.shape)
    yy = y[rows] - y0[None, :]                                         # (K, nc)
    pp = np.asarray(img, float)[rows, cols]
    w = (np.abs(yy) <= half_window).astype(float)
    trial = np.arange(-half_window, half_window + pitch / 80, pitch / 40)  # (nb,)
    sw, sp, spp = w.sum(0), (w * pp).sum(0), (w * pp * pp).sum(0)
    best_total, best = np.inf, None
    for width in pitch * np.array([0.15, 0.25, 0.35, 0.5, 0.7, 1.0]):
        phi = special.ndtr((yy[None] - trial[:, None, None]) / width)  # (nb, K, nc)
        sf = (w * phi).sum(1)
        sff = (w * phi * phi).sum(1)
        spf = (w * pp * phi).sum(1)
        det = sw * sff - sf * sf
        with np.errstate(invalid="ignore", divide="ignore"):
            # Residual sum of squares with the two levels solved for.
            rss = spp - (sff * sp * sp - 2 * sf * sp * spf + sw * spf * spf) / det
        rss = np.where(det > 1e-12 * np.maximum(sw * sff, 1e-300), rss, np.inf)
        least = np.min(rss, axis=0)
        total = float(np.sum(least[np.isfinite(least)]))
        if total < best_total:
            best_total, best = total, rss
    if best is None:
        return np.full(nc, np.nan)
    i = np.argmin(best, axis=0)
    inner = (i > 0) & (i < trial.size - 1)
    ic = np.clip(i, 1, trial.size - 2)
    r0, r1, r2 = (best[ic + j, np.arange(nc)] for j in (-1, 0, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        shift = np.where(np.isfinite(r0 + r1 + r2) & (r0 - 2 * r1 + r2 > 0),
                         0.5 * (r0 - r2) / (r0 - 2 * r1 + r2), 0.0)
    off = trial[ic] + np.clip(shift, -1.0, 1.0) * (trial[1] - trial[0])
    return np.where(inner & np.isfinite(r1), off, np.nan)


def trace_interface(image, x_um, y_um, line: Interface, *, half_window_um: float,
                    smooth_cols: int = 3) -> Interface:
    """``line`` with the interface traced column by column on the bright-field image.

    A rough interface is a line only on average: its height varies along it (the
    ``livo-cathode`` recipe's 8 nm rms over ~100 nm). A SIMS profile binned by the
    distance from the line sees the interface heights of its columns as one more blur,
    and that blur is their distribution over the map, which over a few tens of
    correlation lengths is not Gaussian (skewed by +-0.7 from seed to seed): a
    Gaussian-blurred model then takes the plateau's skewed edge for part of a faint
    tail beyond it (decision 0027, 2026-12-05 last amendment). TEM resolves the
    heights (9.4 nm pixels, each column's step located to ~1 nm): binned by the
    distance from the traced interface (:meth:`Interface.local_distance_um`,
    :func:`normal_profile` ``local``), the profile's blur is the probe's alone.

    Per image column an error-function step is fitted to the counts (not their
    logarithm: the camera's pixel and the blur average the transmission, and across a
    strong step, LiPON to the dark Pt-C, the logarithm's step sat 2 nm into the dark
    layer) within ``half_window_um`` of the line (along y); columns whose fit fails or
    lands > 5 MAD
    (at least 3 pixels) from the others' median are filled from their neighbours; the
    offsets are smoothed over ``smooth_cols`` columns.

    Returns
    -------
    Interface
        ``line`` with ``trace = (along_um, offset_nm)``: the traced interface's offset
        from the line along its normal, at positions along it.
    """
    img = np.asarray(image, float)
    x = np.asarray(x_um, float)
    y = np.asarray(y_um, float)
    if img.ndim != 2 or img.shape != (y.size, x.size):
        raise ValueError(f"image {img.shape} does not match y ({y.size}) x x ({x.size})")
    pitch = abs(float(np.diff(y).mean()))
    y_line = line.y_um + line.slope * (x - line.x_um)
    off = _column_steps(y, img, y_line, half_window_um, pitch)
    ok = np.isfinite(off)
    if ok.sum() < max(3, x.size // 4):
        raise ValueError(f"interface near y = {line.y_um:.3f} um traced in only "
                         f"{int(ok.sum())} of {x.size} columns")
    med = float(np.median(off[ok]))
    mad = 1.4826 * float(np.median(np.abs(off[ok] - med)))
    ok &= np.abs(off - med) <= max(5.0 * mad, 3.0 * pitch)
    idx = np.arange(x.size)
    off = np.interp(idx, idx[ok], off[ok])
    if smooth_cols > 1:
        off = ndimage.uniform_filter1d(off, int(smooth_cols), mode="nearest")
    # Offsets along the normal, at the traced points' positions along the line.
    ny = line.normal[1]
    along = line.along_um(x, y_line + off)
    order = np.argsort(along)
    return replace(line, trace=(tuple(float(v) for v in along[order]),
                                tuple(float(v) for v in 1e3 * (off * ny)[order])))


# ============================================================================ profiles
@dataclass(frozen=True)
class Profile:
    """SIMS counts binned by distance along an interface normal.

    Attributes
    ----------
    d_nm : numpy.ndarray
        Mean distance of the pixels in each bin (nm from the interface line, + along
        its normal; the bin centre where a bin is empty). The fits evaluate their
        models there, not at the bin centres: a map's pixel rows sit at a few
        distances from a nearly parallel line, and on an edge that falls by 6 counts
        per nm the bin centre (up to half a bin away) biased the blur, the tail's
        amplitude and its decay length (decay 28-76 nm from noiseless twin data of 40).
    mean, sem : numpy.ndarray
        Mean counts per pixel and its Poisson standard error ``sqrt(sum) / n``.
    n, total : numpy.ndarray
        Pixels and counts per bin.
    """

    d_nm: np.ndarray
    mean: np.ndarray
    sem: np.ndarray
    n: np.ndarray
    total: np.ndarray

    def valid(self) -> np.ndarray:
        return self.n > 0


def normal_profile(values, x_um, y_um, interface: Interface, *, half_length_nm: float,
                   bin_nm: float, before_nm: float | None = None,
                   by_line: bool = False, local: bool = False) -> Profile:
    """Counts of every SIMS pixel binned by its signed distance from ``interface``.

    Parameters
    ----------
    values : array
        Counts per pixel (NaN: not acquired, left out).
    x_um, y_um : array, same shape
        The pixels' specimen coordinates (registered onto the TEM image).
    interface : Interface
        Line and normal (from :func:`find_tem_interfaces`).
    half_length_nm : float
        The profile reaches ``+half_length_nm`` along the normal ...
    bin_nm : float
        Bin width (nm); finer than the pixel is fine: pixels fall at many distances
        from a slightly tilted, and in any case not pixel-aligned, line.
    before_nm : float, optional
        ... and ``-before_nm`` against it (default ``half_length_nm``).
    by_line : bool
        One bin per scan line (``values``, ``x_um``, ``y_um`` 2-D, the rows the
        lines), at its pixels' mean distance, for an interface nearly parallel to the
        lines (:func:`line_spread_nm` below ``bin_nm``). Fixed bins then cut a line
        whose pixels span a bin edge in two, and the interface's roughness (the two
        parts' own interface heights, 8 nm rms) showed as misfit (chi^2/dof up to 12)
        that the blur takes in when the line stays whole.
    local : bool
        Distances from the interface traced on TEM (:func:`trace_interface`,
        :meth:`Interface.local_distance_um`), not from its line: the interface's
        roughness leaves the profile's blur.
    """
    if by_line:
        return _line_profile(values, x_um, y_um, interface, half_length_nm,
                             half_length_nm if before_nm is None else before_nm, local)
    v = np.asarray(values, float).ravel()
    dist = interface.local_distance_um if local else interface.distance_um
    d = 1e3 * dist(np.asarray(x_um, float).ravel(), np.asarray(y_um, float).ravel())
    before = half_length_nm if before_nm is None else before_nm
    edges = np.arange(-before, half_length_nm + bin_nm / 2, bin_nm)
    ok = np.isfinite(v) & np.isfinite(d)
    idx = np.digitize(d[ok], edges) - 1
    inside = (idx >= 0) & (idx < len(edges) - 1)
    nb = len(edges) - 1
    n = np.bincount(idx[inside], minlength=nb).astype(float)
    total = np.bincount(idx[inside], weights=v[ok][inside], minlength=nb)
    d_sum = np.bincount(idx[inside], weights=d[ok][inside], minlength=nb)
    centres = 0.5 * (edges[:-1] + edges[1:])
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, total / np.maximum(n, 1), np.nan)
        sem = np.where(n > 0, np.sqrt(np.maximum(total, 1.0)) / np.maximum(n, 1), np.nan)
        d_mean = np.where(n > 0, d_sum / np.maximum(n, 1), centres)
    return Profile(d_nm=d_mean, mean=mean, sem=sem, n=n, total=total)


def _line_distances(values, x_um, y_um, interface: Interface, local: bool = False):
    v = np.asarray(values, float)
    x, y = np.asarray(x_um, float), np.asarray(y_um, float)
    if v.ndim != 2 or x.shape != v.shape or y.shape != v.shape:
        raise ValueError("by line: values, x_um and y_um must be 2-D arrays of one shape")
    d = 1e3 * (interface.local_distance_um(x, y) if local else interface.distance_um(x, y))
    return v, np.where(np.isfinite(v), d, np.nan)


def line_spread_nm(values, x_um, y_um, interface: Interface, local: bool = False) -> float:
    """The largest spread (max - min, nm) of a scan line's distances from ``interface``
    (its trace with ``local``) over the acquired pixels of a 2-D map (rows the lines):
    below a profile's bin, a line may be one bin (:func:`normal_profile` ``by_line``)."""
    _, d = _line_distances(values, x_um, y_um, interface, local)
    ok = np.isfinite(d).any(axis=1)
    if not ok.any():
        return math.inf
    return float(np.max(np.nanmax(d[ok], axis=1) - np.nanmin(d[ok], axis=1)))


def _line_profile(values, x_um, y_um, interface, half_length_nm, before_nm,
                  local=False) -> Profile:
    v, d = _line_distances(values, x_um, y_um, interface, local)
    n = np.isfinite(d).sum(axis=1).astype(float)
    keep = n > 0
    with np.errstate(invalid="ignore"):
        dm = np.nanmean(np.where(keep[:, None], d, 0.0), axis=1)
    keep &= (dm >= -before_nm) & (dm <= half_length_nm)
    order = np.argsort(dm[keep])
    n = n[keep][order]
    total = np.nansum(np.where(np.isfinite(d), v, 0.0), axis=1)[keep][order]
    mean = total / n
    return Profile(d_nm=dm[keep][order], mean=mean, sem=np.sqrt(np.maximum(total, 1.0)) / n,
                   n=n, total=total)


# ============================================================================ models
def _through_probe(blurred, s, halo):
    """``blurred(sigma)`` (the emission profile blurred by a Gaussian of ``sigma``) seen
    through the probe: ``(1 - f) blurred(s) + f blurred(hypot(s, h))`` with
    ``halo = (f, h)``, or ``blurred(s)`` without a halo.

    The probe is a Gaussian core plus a fraction ``f`` of the current in a Gaussian
    halo (decision 0040); ``s`` is the core's blur along the profile (probe, pixel,
    interaction spread and the interface's roughness), so the halo's share is blurred
    by ``h`` on top of it (``h^2`` standing for ``h^2 - c^2``, c the core probe's own
    sigma: 0.4 % for a 300 nm halo and a 25 nm core).
    """
    if halo is None:
        return blurred(s)
    f, h = halo
    return (1.0 - f) * blurred(s) + f * blurred(np.hypot(s, h))


def _check_halo(halo) -> tuple[float, float] | None:
    if halo is None:
        return None
    try:
        f, h = (float(v) for v in halo)
    except (TypeError, ValueError):
        raise ValueError(f"halo must be (fraction, sigma_nm), got {halo!r}") from None
    if not (0.0 <= f < 1.0 and math.isfinite(h) and h > 0.0):
        raise ValueError(f"halo must have 0 <= fraction < 1 and sigma_nm > 0, got {halo!r}")
    return None if f == 0.0 else (f, h)


def step_model(d, b, s, lo, hi, halo=None):
    """``lo`` before ``b``, ``hi`` after, a Gaussian-blurred step of sigma ``s``
    (through the probe's ``halo = (fraction, sigma_nm)`` when given)."""
    d = np.asarray(d, float)
    return lo + (hi - lo) * _through_probe(lambda sig: special.ndtr((d - b) / sig), s, halo)


def box_model(d, b, c, s, before, level, after, halo=None):
    """``before`` up to ``b``, ``level`` between ``b`` and ``c``, ``after`` beyond,
    blurred by a Gaussian of sigma ``s`` (through the probe's ``halo`` when given)."""
    d = np.asarray(d, float)

    def blurred(sig):
        return (before * special.ndtr((b - d) / sig)
                + level * (special.ndtr((d - b) / sig) - special.ndtr((d - c) / sig))
                + after * special.ndtr((d - c) / sig))

    return _through_probe(blurred, s, halo)


def _tail(d, b, c, s, lam, far=0.0):
    """exp(-(t - b)/lam) on [b, c] convolved with a unit Gaussian of sigma ``s``;
    ``far``: the far end ``c`` itself spread by a Gaussian of that sigma (its height
    varying about ``c``), ``E_c[Phi((d - c)/s - s/lam)] = Phi((d - c - s^2/lam) /
    hypot(s, far))``."""
    d = np.asarray(d, float)
    base = -(d - b) / lam + 0.5 * (s / lam) ** 2
    a = special.log_ndtr((d - b) / s - s / lam)
    z = special.log_ndtr((d - c - s * s / lam) / math.hypot(s, far)) if np.isfinite(c) \
        else -np.inf
    # exp(base + a) - exp(base + z) = exp(base + a) (1 - exp(z - a)); z <= a.
    return np.exp(base + a) * -np.expm1(np.minimum(z - a, 0.0))


def dissolution_model(d, b, s, plateau, amplitude, decay, background, c=np.inf,
                      halo=None, far_sigma=0.0):
    """The source layer (``plateau``) up to ``b``, then ``amplitude exp(-(d-b)/decay)``
    up to ``c``, plus ``background``; everything blurred by a Gaussian of sigma ``s``
    (and through the probe's ``halo = (fraction, sigma_nm)`` when given);
    ``far_sigma``: the spread (sigma, nm) of ``c`` about its mean beyond ``s`` (a
    receiving layer whose thickness varies along the interface)."""
    d = np.asarray(d, float)

    def blurred(sig):
        return plateau * special.ndtr((b - d) / sig) + amplitude * _tail(d, b, c, sig, decay,
                                                                         far_sigma)

    return background + _through_probe(blurred, s, halo)


def _fit(model, names, p0, lower, upper, d, mean, n, priors=None,
         rel_noise: float = 0.0) -> FitResult:
    """Least squares with Poisson weights from the model (two passes); ``priors``
    (name -> (mean, sd)) add a Gaussian constraint on a parameter (an extra residual);
    ``rel_noise`` adds a relative noise to the Poisson variance (the probe current's
    row-to-row fluctuation: ``var = model / n + (rel_noise model)^2``)."""
    d = np.asarray(d, float)
    mean = np.asarray(mean, float)
    n = np.asarray(n, float)
    ok = np.isfinite(mean) & (n > 0)
    d, mean, n = d[ok], mean[ok], n[ok]
    if ok.sum() <= len(names):
        raise ValueError(f"{ok.sum()} bins for {len(names)} parameters")
    lower, upper = np.asarray(lower, float), np.asarray(upper, float)
    p = np.clip(np.asarray(p0, float), lower + 1e-9 * (upper - lower),
                upper - 1e-9 * (upper - lower))
    prior_idx = [(names.index(k), float(mu), float(sd)) for k, (mu, sd) in
                 (priors or {}).items()]
    rel2 = float(rel_noise) ** 2
    sigma = np.sqrt(np.maximum(mean, 0.5) / n + rel2 * mean**2)

    def residuals(q):
        r = (mean - model(d, *q)) / sigma
        if prior_idx:
            r = np.concatenate([r, [(q[i] - mu) / sd for i, mu, sd in prior_idx]])
        return r

    for _ in range(2):
        sol = optimize.least_squares(residuals, p, bounds=(lower, upper), x_scale="jac",
                                     max_nfev=20000)
        if not sol.success:
            raise RuntimeError(f"fit did not converge: {sol.message}")
        p = sol.x
        mu = model(d, *p)
        sigma = np.sqrt(np.maximum(mu, 0.5 / n.max()) / n + rel2 * mu**2)
    sol = optimize.least_squares(residuals, p, bounds=(lower, upper), x_scale="jac",
                                 max_nfev=20000)
    p = sol.x
    data_r = sol.fun[: len(d)]
    chi2 = float(np.sum(data_r ** 2) / max(1, len(d) - len(p) + len(prior_idx)))
    jac = sol.jac
    try:
        cov = np.linalg.inv(jac.T @ jac)
    except np.linalg.LinAlgError:
        cov = np.linalg.pinv(jac.T @ jac)
    cov = cov * max(1.0, chi2)
    errs = np.sqrt(np.clip(np.diag(cov), 0, None))
    best = tuple(float(v) for v in p)
    return FitResult(params=dict(zip(names, best, strict=True)),
                     errors=dict(zip(names, (float(e) for e in errs), strict=True)),
                     cov=cov, names=tuple(names), chi2_red=chi2,
                     model=lambda dd, _p=best: model(dd, *_p))


def fit_edge(profile: Profile, *, b0: float = 0.0, s0: float = 15.0,
             halo: tuple[float, float] | None = None,
             rel_noise: float = 0.0) -> FitResult:
    """:func:`step_model` fitted to a profile: ``b`` (nm), ``s`` (nm), ``lo``, ``hi``.

    ``halo``: the probe's ``(fraction, sigma_nm)`` along the profile (known, not
    fitted; :func:`temsims.analysis.halo.halo_along_normal`), in the model.
    ``rel_noise``: the relative noise of a bin beyond Poisson (:func:`row_noise`).
    """
    halo = _check_halo(halo)
    m = profile.mean[profile.valid()]
    k = max(1, len(m) // 5)
    lo, hi = float(np.mean(m[:k])), float(np.mean(m[-k:]))
    big = 10 * max(abs(lo), abs(hi), 1.0)
    dmin, dmax = float(profile.d_nm.min()), float(profile.d_nm.max())

    def model(dd, b, s, lo, hi):
        return step_model(dd, b, s, lo, hi, halo=halo)

    return _fit(model, ("b", "s", "lo", "hi"), (b0, s0, lo, hi),
                (dmin, 1.0, -big, -big), (dmax, (dmax - dmin) / 2, big, big),
                profile.d_nm, profile.mean, profile.n, rel_noise=rel_noise)


def fit_box(profile: Profile, *, b0: float, c0: float, s0: float = 15.0,
            halo: tuple[float, float] | None = None,
            rel_noise: float = 0.0) -> FitResult:
    """:func:`box_model` fitted to a profile: ``b, c, s`` (nm), ``before, level, after``
    (``halo`` and ``rel_noise`` as for :func:`fit_edge`)."""
    halo = _check_halo(halo)
    d, m = profile.d_nm, profile.mean
    ok = profile.valid()
    before = float(np.nanmean(m[ok & (d < b0 - 2 * s0)])) if (ok & (d < b0 - 2 * s0)).any() \
        else float(np.nanmax(m))
    level = float(np.nanmax(m[ok & (d > b0) & (d < c0)])) if (ok & (d > b0) & (d < c0)).any() \
        else before
    after = float(np.nanmean(m[ok & (d > c0 + 2 * s0)])) if (ok & (d > c0 + 2 * s0)).any() \
        else 0.0
    big = 10 * max(float(np.nanmax(m[ok])), 1.0)
    gap = c0 - b0

    def model(dd, b, c, s, before, level, after):
        return box_model(dd, b, c, s, before, level, after, halo=halo)

    return _fit(model, ("b", "c", "s", "before", "level", "after"),
                (b0, c0, s0, before, level, max(after, 0.0)),
                (b0 - gap / 2, c0 - gap / 2, 1.0, 0.0, 0.0, 0.0),
                (b0 + gap / 2, c0 + gap / 2, gap, big, big, big),
                d, m, profile.n, rel_noise=rel_noise)


def fit_dissolution(profile: Profile, *, thickness_nm: float = np.inf, b0: float = 0.0,
                    s0: float = 15.0, decay0: float = 50.0, decay_max: float = 1000.0,
                    decay_min: float = 1.0, fix_edge: bool = False,
                    blur_prior: tuple[float, float] | None = None,
                    background: float | None = None,
                    halo: tuple[float, float] | None = None,
                    rel_noise: float = 0.0, far_sigma_nm: float = 0.0) -> FitResult:
    """:func:`dissolution_model` fitted to a profile whose source layer lies at d < 0.

    Parameters
    ----------
    profile : Profile
        Counts of the dissolving element across the interface, the source layer first.
    thickness_nm : float
        Thickness of the receiving layer along the normal (from TEM): its far
        interface lies at ``b + thickness_nm``; infinite for a thick receiving layer.
    b0, s0, decay0 : float
        Starting interface position, blur and decay length (nm).
    decay_min, decay_max : float
        Bounds of the decay length (nm); a narrow range about one value fixes it (a
        profile likelihood over the decay length: :func:`decay_profile_interval`).
    fix_edge : bool
        Keep ``b = b0`` and ``s = s0`` (an edge measured on another species, e.g.
        Al+ for the Al/LiV3O8 interface, where the matrix change of the V+ yield
        inside the blur would otherwise be taken for the interface); their errors
        are then reported as 0.
    blur_prior : (float, float), optional
        ``(mean, sd)`` of the blur ``s`` (nm) measured elsewhere, e.g. on a sharp edge
        of the same map: a Gaussian constraint. Without it the blur, the tail's
        amplitude and its decay length trade off near the interface (a shorter,
        higher tail looks like more blur) and the fit can settle on such a pair
        with errors that do not cover it.
    background : float, optional
        With ``fix_edge``: the background (counts per pixel) measured elsewhere, kept
        fixed; for a receiving layer that fills the rest of the profile, whose own
        background the tail cannot be told from.
    halo : (float, float), optional
        The probe's halo ``(fraction, sigma_nm)`` along the profile (known, e.g.
        :data:`temsims.constants.PROBE_HALO` through
        :func:`temsims.analysis.halo.halo_along_normal`), in the model: a few % of
        the source layer's signal reaches a few hundred nm across the interface, and
        a thin receiving layer's faint tail is fitted under it, not after subtracting
        it (which left the tail's fit 6-10 times as uncertain; decision 0040).
    rel_noise : float
        Relative noise of a bin beyond Poisson (:func:`row_noise`): the probe
        current's fluctuation from one scan line to the next, which moves a bright
        source layer's bins by more than their Poisson error; without it the fit's
        chi^2 (and with it every error) grew by the plateau's misfit alone.
    far_sigma_nm : float
        The spread (sigma, nm) of the receiving layer's thickness along the interface
        (two rough interfaces), beyond ``s``: the far cut's own blur. With the
        profile's distances taken from the traced source interface
        (:func:`trace_interface`) the near interface is sharp to ``s`` and the far one
        varies by the thickness's spread (from the TEM traces of both).

    Returns
    -------
    FitResult
        ``b, s, plateau, amplitude, decay, background``.
    """
    halo = _check_halo(halo)
    d, m = profile.d_nm, profile.mean
    ok = profile.valid()
    src = ok & (d < b0 - 2 * s0)
    plateau = float(np.nanmean(m[src])) if src.any() else float(np.nanmax(m[ok]))
    near = ok & (d > b0 + s0) & (d < b0 + s0 + decay0)
    amp = float(np.nanmean(m[near])) if near.any() else 0.05 * plateau
    far = ok & (d > (b0 + thickness_nm + 3 * s0 if np.isfinite(thickness_nm)
                     else d.max() - 3 * s0))
    bkg = float(np.nanmean(m[far])) if far.any() else 0.0
    big = 10 * max(float(np.nanmax(m[ok])), 1.0)

    def model(dd, b, s, plateau, amplitude, decay, background):
        # The receiving layer's thickness is TEM's; it moves with the fitted interface.
        return dissolution_model(dd, b, s, plateau, amplitude, decay, background,
                                 c=b + thickness_nm, halo=halo, far_sigma=far_sigma_nm)

    if fix_edge:
        if background is None:
            def fixed(dd, plateau, amplitude, decay, background):
                return model(dd, b0, s0, plateau, amplitude, decay, background)

            f = _fit(fixed, ("plateau", "amplitude", "decay", "background"),
                     (plateau, max(amp, 1e-3), decay0, max(bkg, 0.0)),
                     (0.0, 0.0, decay_min, 0.0), (big, big, decay_max, big), d, m, profile.n,
                     rel_noise=rel_noise)
            extra_p, extra_e = {}, {}
        else:
            def fixed(dd, plateau, amplitude, decay):
                return model(dd, b0, s0, plateau, amplitude, decay, background)

            # A faint tail under a bright edge has a second minimum (a short, high tail
            # that reshapes the edge): start from several decay lengths, keep the best.
            fits = []
            for start in (decay0, 2 * decay0, 4 * decay0):
                try:
                    fits.append(_fit(fixed, ("plateau", "amplitude", "decay"),
                                     (plateau, 1e-3 * plateau, min(start, decay_max)),
                                     (0.0, 0.0, decay_min), (big, big, decay_max), d, m,
                                     profile.n, rel_noise=rel_noise))
                except (RuntimeError, ValueError):
                    continue
            if not fits:
                raise RuntimeError("no start of the tail fit converged")
            f = min(fits, key=lambda r: r.chi2_red)
            extra_p, extra_e = {"background": float(background)}, {"background": 0.0}
        names = ("b", "s", *f.names, *extra_p)
        cov = np.zeros((6, 6))
        k = len(f.names)
        cov[2:2 + k, 2:2 + k] = f.cov
        return FitResult(params={"b": b0, "s": s0, **f.params, **extra_p},
                         errors={"b": 0.0, "s": 0.0, **f.errors, **extra_e}, cov=cov,
                         names=names, chi2_red=f.chi2_red, model=f.model)
    return _fit(model, ("b", "s", "plateau", "amplitude", "decay", "background"),
                (b0, s0 if blur_prior is None else blur_prior[0], plateau, max(amp, 1e-3),
                 decay0, max(bkg, 0.0)),
                (float(d.min()) / 2, 1.0, 0.0, 0.0, decay_min, 0.0),
                (float(d.max()) / 2, 200.0, big, big, decay_max, big),
                d, m, profile.n, priors={"s": blur_prior} if blur_prior else None,
                rel_noise=rel_noise)


def decay_profile_interval(profile: Profile, best: FitResult, *, k: float = COVERAGE_K,
                           step: float = 0.05, max_factor: float = 8.0,
                           **fit_kwargs) -> tuple[float, float]:
    """``(lo, hi)`` of the decay length (nm) from a profile likelihood: the decay length
    held at each value, every other parameter of :func:`fit_dissolution` (blur ``s``
    with its ``blur_prior`` included) refitted, the interval where the chi^2 (with
    the prior's term) stays within ``k^2 max(1, chi2_red)`` of the best fit's.

    The covariance's interval is linear about the best fit; near the interface the
    blur, the tail's amplitude and its decay length trade off, and a short estimate's
    chi^2 rises slowly towards longer decay lengths: the profile follows that valley.
    ``best`` is the fit of ``profile`` with the same ``fit_kwargs``; the search walks
    out in steps of ``step`` in ln(decay) and stops ``max_factor`` from the best value
    (that bound is then returned).
    """
    d0 = float(best.params["decay"])
    prior = fit_kwargs.get("blur_prior")
    nbins = int(np.sum(np.isfinite(profile.mean) & (profile.n > 0)))
    dof = max(1, nbins - len(best.names) + (1 if prior else 0))

    def cost(f):
        c = f.chi2_red * dof
        if prior:
            c += ((f.params["s"] - prior[0]) / prior[1]) ** 2
        return c

    c0 = cost(best)
    limit = k**2 * max(1.0, best.chi2_red)
    kw = {key: v for key, v in fit_kwargs.items() if key not in ("decay0", "decay_min",
                                                                "decay_max")}
    ends = []
    for sign in (-1.0, 1.0):
        prev_x, prev_dc, end = 0.0, 0.0, None
        x = 0.0
        while abs(x) < math.log(max_factor):
            x += sign * step
            val = d0 * math.exp(x)
            try:
                f = fit_dissolution(profile, decay0=val, decay_min=val * (1 - 1e-6),
                                    decay_max=val * (1 + 1e-6), **kw)
                dc = cost(f) - c0
            except (RuntimeError, ValueError):
                break
            if dc >= limit:
                # Linear in ln(decay) between the last point inside and this one.
                end = prev_x + (x - prev_x) * (limit - prev_dc) / max(dc - prev_dc, 1e-12)
                break
            prev_x, prev_dc = x, max(dc, 0.0)
        ends.append(d0 * math.exp(end if end is not None else sign * math.log(max_factor)))
    return ends[0], ends[1]


def row_noise(values, region) -> float:
    """Relative noise of a map's scan lines beyond Poisson, measured on a uniform region.

    The probe current fluctuates (~1 % rms over ~0.1-1 s; the source noise of
    decision 0034): a scan line's pixels share its factor, and a profile along a nearly
    horizontal interface bins one or two lines per bin, so a bright layer's bins
    scatter by that much more than Poisson. Per line, the mean counts of the pixels of
    ``region`` (a layer of one composition, e.g. the cathode away from its
    interfaces); a quadratic over the line index (slow drifts, a wedge) is taken out;
    the lines' scatter about it beyond their Poisson variance, relative to the level.

    Parameters
    ----------
    values : array, 2-D
        Counts per pixel, the rows the scan lines (NaN: not acquired).
    region : bool array, same shape
        The uniform region's pixels.

    Returns
    -------
    float
        The relative rms (0 when the lines scatter no more than Poisson, or with
        fewer than 6 lines of at least 8 pixels in ``region``).
    """
    v = np.asarray(values, float)
    region = np.asarray(region, bool) & np.isfinite(v)
    if v.ndim != 2 or region.shape != v.shape:
        raise ValueError("values and region must be 2-D arrays of one shape")
    n = region.sum(axis=1)
    rows = np.flatnonzero(n >= 8)
    if rows.size < 6:
        return 0.0
    means = np.array([v[r][region[r]].mean() for r in rows])
    level = float(np.mean(means))
    if level <= 0:
        return 0.0
    trend = np.polyval(np.polyfit(rows, means, 2), rows)
    excess = np.sum((means - trend) ** 2) / (rows.size - 3) - np.mean(trend / n[rows])
    return float(math.sqrt(max(excess, 0.0)) / level)


def ratio_with_error(num: float, num_err: float, den: float, den_err: float,
                     cov: float = 0.0) -> tuple[float, float]:
    """``num / den`` and its first-order standard error (``cov``: their covariance)."""
    r = num / den
    rel2 = (num_err / num) ** 2 + (den_err / den) ** 2 - 2 * cov / (num * den)
    return float(r), float(abs(r) * math.sqrt(max(rel2, 0.0)))


__all__ = [
    "decay_profile_interval",
    "COVERAGE_K",
    "FitResult",
    "Interface",
    "Profile",
    "box_model",
    "dissolution_model",
    "find_tem_interfaces",
    "fit_box",
    "fit_dissolution",
    "fit_edge",
    "line_spread_nm",
    "normal_profile",
    "ratio_with_error",
    "row_noise",
    "step_model",
    "trace_interface",
]
