"""Grains of a polycrystalline film on a bright-field TEM image, and SIMS maps read
against them: boundary vs interior, per-grain composition, implanted Ga.

Pure numpy/scipy/scikit-image on arrays (the solar-cell case,
:mod:`temsims.app.cases.solar_cell`, feeds it the catalog's data).

Grains (:func:`segment_grains`)
    In bright field a grain's brightness is set by its orientation (diffraction
    contrast), and its boundaries are thin dark lines. The counts are made of even
    noise (Anscombe's ``2 sqrt(n + 3/8)``, negated: boundaries are ridges), smoothed, and an edge strength is formed
    from the gradient magnitude (steps between grains) and a dark-ridge filter (the
    boundary lines, which also separate grains of the same brightness). Markers are
    the connected regions of low edge strength, a watershed on the edge strength
    grows them, and neighbours whose shared border shows neither a step nor a line
    above the noise are merged. The watershed lines are the boundaries.

Boundary vs interior on a SIMS map (:func:`boundary_interior_ratio`)
    Each SIMS pixel's registered specimen position is looked up in the TEM distance
    map (distance to the nearest boundary line) and the label map. The ratio is the
    mean counts of the pixels within ``band_nm`` of a boundary over the interior level
    (pixels farther than ``interior_nm``): a band twice as wide as the SIMS footprint's
    sigma holds nearly all of a boundary's excess however the beam blurred it, so the
    ratio is that of the specimen averaged over the same band. The interior level is
    the median over grains of each grain's interior mean: a boundary the TEM did not
    find puts its Na into one or two grains' "interiors", and a mean over all of them
    would take it in (at 100-1000x the interior concentration, a few percent of the
    boundary length missed doubles the interior).

Ga/(In+Ga) with the implanted Ga (:func:`ga_fraction_per_grain`)
    A Ga+ beam implants Ga: at steady state the surface holds ``f = 1 / (1 + Y)`` of
    it (``Y`` the sputter yield), so per primary ion the Ga+ signal is the absorber's
    ``Y x_Ga (1 - f)`` plus the implant's ``Y f``, in one matrix with one ionisation
    probability. With ``x_Ga + x_In = x_III`` in every grain (chalcopyrite: the group
    III site is full), ``G + k I`` is the same in every grain (``k``: Ga/In useful-yield
    ratio), so the grains lie on one line ``G = c - k I``; its value at ``I = 0``
    (pure Ga on the site) is ``c = J (1 + x_III Y)`` with ``J`` the implanted Ga's
    signal (``Y x_Ga (1 - f) / (Y f) = x_Ga Y``). Hence ``J = c / (1 + x_III Y)`` and
    ``Ga/(In+Ga) = (G - J) / (c - J)`` per grain. ``Y`` is measured by the depth
    profile (the dose that sputters through the absorber's known thickness,
    :func:`sputter_yield_from_profile`); its error is the largest of the figure's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

#: Gaussian smoothing of the TEM image before the edges (pixels).
SMOOTH_PX = 1.5


@dataclass
class Grains:
    """Grains found on a TEM image.

    Attributes
    ----------
    labels : numpy.ndarray
        (ny, nx) int: grain 1..n, 0 on the boundary lines.
    boundary : numpy.ndarray
        (ny, nx) bool: the boundary lines (one pixel wide).
    distance_px : numpy.ndarray
        (ny, nx) float: distance of each pixel centre to the nearest boundary pixel.
    edge : numpy.ndarray
        The edge strength the watershed ran on (noise units).
    merged : int
        Regions merged into a neighbour (neither a step nor a line between them).
    segment : numpy.ndarray
        (ny, nx) int: the boundary segment (pair of grains) nearest to each pixel.
    """

    labels: np.ndarray
    boundary: np.ndarray
    distance_px: np.ndarray
    edge: np.ndarray
    merged: int = 0
    segment: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.labels.max())


def _noise_sigma(img: np.ndarray) -> float:
    """Noise of an image from its pixel-to-pixel differences (MAD, robust to edges)."""
    d = np.diff(img, axis=1).ravel()
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2.0))


def segment_grains(image, *, smooth_px: float = SMOOTH_PX, min_grain_px: int = 30,
                   marker_quantile: float = 0.5, merge_snr: float = 5.0) -> Grains:
    """Grains and their boundaries on a bright-field TEM image.

    Parameters
    ----------
    image : array_like
        (ny, nx) bright-field counts (brighter = more transmitted).
    smooth_px : float
        Gaussian sigma (pixels) before the edge filters.
    min_grain_px : int
        Markers (and so grains) smaller than this many pixels are dropped.
    marker_quantile : float
        Pixels whose edge strength is below this quantile seed the markers.
    merge_snr : float
        Neighbours are merged when neither their brightness step nor the darkness of
        the shared border exceeds this many standard errors.

    Returns
    -------
    Grains
    """
    from skimage.filters import sato
    from skimage.segmentation import watershed

    img = np.asarray(image, float)
    if img.ndim != 2 or min(img.shape) < 8:
        raise ValueError(f"image must be 2-D and at least 8 x 8, got {img.shape}")
    # Anscombe's transform: the camera counts electrons, and on sqrt(counts) the
    # noise is the same in a dark grain as in a bright one (on -log(counts) a dark
    # grain's noise, several times the bright ones', drew false boundaries in it).
    mt = -2.0 * np.sqrt(np.clip(img, 0.0, None) + 0.375)
    noise = max(_noise_sigma(mt), 1e-9)
    sm = ndimage.gaussian_filter(mt, smooth_px, mode="nearest")
    grad = np.hypot(ndimage.sobel(sm, 0), ndimage.sobel(sm, 1)) / 8.0
    # The boundary lines are dark in the image: ridges of -sqrt(counts).
    ridge = sato(sm, sigmas=[smooth_px, 1.5 * smooth_px], black_ridges=False)
    edge = grad / (noise / smooth_px) + ridge / (noise / smooth_px)
    low = edge < np.quantile(edge, marker_quantile)
    low = ndimage.binary_opening(low, np.ones((3, 3), bool))
    markers, n = ndimage.label(low)
    if n:
        sizes = ndimage.sum_labels(np.ones_like(markers), markers, np.arange(1, n + 1))
        keep = np.zeros(n + 1, bool)
        keep[1:] = sizes >= min_grain_px
        markers = np.where(keep[markers], markers, 0)
        markers, n = ndimage.label(markers > 0)
    if n == 0:
        raise ValueError("no grain found on the TEM image")
    labels = watershed(edge, markers, watershed_line=True)
    labels, merged = _merge_weak(labels, mt, noise, merge_snr)
    boundary = labels == 0
    distance, (ir, ic) = ndimage.distance_transform_edt(~boundary, return_indices=True)
    # Each boundary pixel's segment: the pair of grains it separates (the lowest and
    # highest label around it); every pixel takes its nearest boundary pixel's.
    n = int(labels.max())
    hi = ndimage.maximum_filter(labels, 3)
    lo = ndimage.minimum_filter(np.where(labels == 0, n + 1, labels), 3)
    key = np.where(boundary, lo.astype(np.int64) * (n + 2) + hi, -1)
    return Grains(labels=labels, boundary=boundary, distance_px=distance, edge=edge,
                  merged=merged, segment=key[ir, ic])


def _merge_weak(labels: np.ndarray, mt: np.ndarray, noise: float, snr: float
                ) -> tuple[np.ndarray, int]:
    """Merge neighbouring regions separated by neither a step nor a dark line.

    For each pair of regions touching across a watershed line: the step is the
    difference of their interior means (pixels >= 2 from the line) in standard errors;
    the line is how much darker the border pixels are than the mean of the two
    sides, in standard errors of the border's mean. Pairs below ``snr`` on both are
    merged, the weakest first, recomputing after each merge. (The ridge filter's
    response along the border, tried instead, kept more false borders: it responds
    to the noise's own ridges.)
    """
    labels = labels.copy()
    merged = 0
    for _ in range(400):
        boundary = labels == 0
        dist = ndimage.distance_transform_edt(~boundary)
        inner = dist >= 2
        n = int(labels.max())
        idx = np.arange(1, n + 1)
        cnt = ndimage.sum_labels(inner, labels, idx)
        mean = ndimage.sum_labels(mt * inner, labels, idx) / np.maximum(cnt, 1)
        # Border pixels: each boundary pixel's two different neighbours (3x3).
        big = ndimage.maximum_filter(labels, 3)
        small = ndimage.minimum_filter(np.where(labels == 0, n + 1, labels), 3)
        edge_px = boundary & (big > 0) & (small <= n) & (big != small)
        a, b = small[edge_px], big[edge_px]
        if a.size == 0:
            break
        pair = a.astype(np.int64) * (n + 2) + b
        vals = mt[edge_px]
        keys, inverse, counts = np.unique(pair, return_inverse=True, return_counts=True)
        sums = np.bincount(inverse, weights=vals)
        best = None
        for key, total, m in zip(keys, sums, counts, strict=True):
            if m < 3:
                continue
            i, j = int(key // (n + 2)), int(key % (n + 2))
            if cnt[i - 1] < 5 or cnt[j - 1] < 5:
                continue
            se = noise * np.sqrt(1 / cnt[i - 1] + 1 / cnt[j - 1])
            step = abs(mean[i - 1] - mean[j - 1]) / max(se, 1e-12)
            line = (total / m - 0.5 * (mean[i - 1] + mean[j - 1])) / (noise / np.sqrt(m))
            score = max(step, line)
            if score < snr and (best is None or score < best[0]):
                best = (score, i, j)
        if best is None:
            break
        _, i, j = best
        labels[labels == j] = i
        # The line between them goes too: pixels of 0 whose non-zero neighbours are all i.
        nb_max = ndimage.maximum_filter(labels, 3)
        nb_min = ndimage.minimum_filter(np.where(labels == 0, n + 1, labels), 3)
        labels[(labels == 0) & (nb_max == i) & (nb_min == i)] = i
        merged += 1
    # Consecutive labels.
    uniq = np.unique(labels[labels > 0])
    lut = np.zeros(int(labels.max()) + 1, np.int32)
    lut[uniq] = np.arange(1, uniq.size + 1)
    return lut[labels], merged


def sample_on_image(values: np.ndarray, rows, cols, *, order: int = 1) -> np.ndarray:
    """``values`` (an image) at fractional pixel positions; NaN outside it."""
    rows = np.asarray(rows, float)
    cols = np.asarray(cols, float)
    out = ndimage.map_coordinates(np.asarray(values, float), [rows, cols], order=order,
                                  mode="nearest")
    ny, nx = np.shape(values)
    inside = (rows >= -0.5) & (rows <= ny - 0.5) & (cols >= -0.5) & (cols <= nx - 0.5)
    return np.where(inside, out, np.nan)


@dataclass
class BoundaryRatio:
    """Boundary / interior ratio of one SIMS map (see :func:`boundary_interior_ratio`).

    Attributes
    ----------
    ratio, sd : float
        The ratio and its standard error (bootstrap over grains).
    band_mean, interior_level : float
        Counts per pixel in the band and in the interiors.
    n_band, n_interior, n_grains, n_segments : int
        Pixels in the band and in the interiors, grains with an interior (outliers
        left out), boundary segments used.
    profile_nm, profile_mean, profile_sem : numpy.ndarray
        Mean counts per pixel against the distance to the nearest boundary.
    """

    ratio: float
    sd: float
    band_mean: float
    interior_level: float
    n_band: int
    n_interior: int
    n_grains: int
    n_segments: int
    band_nm: float
    interior_nm: float
    profile_nm: np.ndarray = field(default_factory=lambda: np.zeros(0))
    profile_mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    profile_sem: np.ndarray = field(default_factory=lambda: np.zeros(0))


def boundary_interior_ratio(counts, distance_nm, grain, *, band_nm: float,
                            interior_nm: float, segment=None, bin_nm: float = 10.0,
                            max_profile_nm: float = 200.0, outlier_sigma: float = 4.0,
                            n_boot: int = 400, seed: int = 0) -> BoundaryRatio:
    """Boundary band over interior: the specimen's mean within ``band_nm`` of a boundary
    over its mean in the interiors, from counts the beam has blurred.

    Parameters
    ----------
    counts : array_like
        Counts per SIMS pixel (any shape; NaN: not measured).
    distance_nm : array_like
        Each pixel's distance to the nearest TEM boundary (nm), same shape.
    grain : array_like
        Each pixel's TEM grain label (0: on a boundary line, same shape).
    band_nm : float
        Half-width of the boundary band.
    interior_nm : float
        Pixels farther than this from every boundary are interior; the boundaries'
        excess is summed over the pixels nearer than this.
    segment : array_like, optional
        Each pixel's nearest boundary segment (same shape; :attr:`Grains.segment`):
        the ratio is then the band-weighted median of the segments' ratios, which a
        false boundary (no excess) or a missed one (its excess beside a found one)
        moves little, where the ratio over all pixels takes them in.
    bin_nm, max_profile_nm : float
        The profile against distance (shown, not used for the ratio).
    outlier_sigma : float
        A grain whose interior mean exceeds the median of the grains' by this many
        Poisson standard errors holds a boundary the TEM missed: its interior is left
        out of the interior level.
    n_boot : int
        Bootstrap resamples of the grains for the standard error.
    seed : int
        Of the bootstrap.

    Returns
    -------
    BoundaryRatio

    Notes
    -----
    The interior level ``a`` is the pooled mean of the interior pixels (outlier grains
    left out). A boundary's excess ``E = sum (c - a)`` over every pixel nearer than
    ``interior_nm`` to it, wherever the beam put it, divided by its band's pixels
    ``N_band`` (the band's area: pixels sample the specimen uniformly) is its band's
    mean excess: ``ratio = 1 + E / (N_band a)``. The beam's blur moves counts out of
    the band but not out of the sum, so the ratio is the specimen's over the band; the
    truth it is scored against is the same band around the true boundaries. Per
    segment (``segment``), the median over segments weighted by their band's pixels.
    """
    c = np.asarray(counts, float).ravel()
    d = np.asarray(distance_nm, float).ravel()
    g = np.asarray(grain, int).ravel()
    ok = np.isfinite(c) & np.isfinite(d)
    band = ok & (d <= band_nm)
    near = ok & (d <= interior_nm)
    inner = ok & (d > interior_nm) & (g > 0)
    grains = np.unique(g[inner])
    if grains.size < 3 or band.sum() < 10:
        raise ValueError(f"too few grains ({grains.size}) or band pixels ({band.sum()})")
    sums = np.array([c[inner & (g == k)].sum() for k in grains])
    ns = np.array([np.sum(inner & (g == k)) for k in grains], float)
    means = sums / ns
    med = float(np.median(means))
    good = means <= med + outlier_sigma * np.sqrt(max(med, 1e-9) / ns)
    # Near pixels (and band pixels) go with the grain they lie in for the bootstrap;
    # those on a line (label 0) with the nearest grain is not needed: resampled as one.
    near_c = c[near]
    band_in_near = (d[near] <= band_nm)
    if segment is None:
        seg = np.zeros(near_c.size, np.int64)
    else:
        seg = np.asarray(segment, np.int64).ravel()[near]
    segs, seg_idx = np.unique(seg, return_inverse=True)
    seg_n = np.bincount(seg_idx, minlength=segs.size).astype(float)
    seg_sum = np.bincount(seg_idx, weights=near_c, minlength=segs.size)
    seg_band = np.bincount(seg_idx, weights=band_in_near, minlength=segs.size)
    # Segments whose band holds a few pixels only are left out (their ratio is noise).
    usable = seg_band >= max(3.0, 0.1 * np.median(seg_band[seg_band > 0]))

    def weighted_median(v, w):
        order = np.argsort(v)
        cw = np.cumsum(w[order])
        return float(v[order][np.searchsorted(cw, 0.5 * cw[-1])])

    def level_of(pick):
        return sums[pick][good[pick]].sum() / max(ns[pick][good[pick]].sum(), 1.0)

    def ratio_at(a, use):
        r = 1.0 + (seg_sum[use] - a * seg_n[use]) / (np.maximum(seg_band[use], 1.0)
                                                     * max(a, 1e-12))
        return weighted_median(r, seg_band[use])

    all_grains = np.arange(grains.size)
    level = level_of(all_grains)
    ratio = ratio_at(level, usable)
    # Bootstrap: the grains (interior level) and the segments (their ratios) resampled.
    rng = np.random.default_rng(seed)
    ok_segs = np.flatnonzero(usable)
    boots = []
    for _ in range(n_boot):
        a = level_of(rng.integers(0, grains.size, grains.size))
        pick = ok_segs[rng.integers(0, ok_segs.size, ok_segs.size)]
        r = 1.0 + (seg_sum[pick] - a * seg_n[pick]) / (np.maximum(seg_band[pick], 1.0)
                                                       * max(a, 1e-12))
        boots.append(weighted_median(r, seg_band[pick]))
    edges = np.arange(0.0, max_profile_nm + bin_nm, bin_nm)
    which = np.digitize(d[ok], edges) - 1
    prof_m = np.full(edges.size - 1, np.nan)
    prof_s = np.full(edges.size - 1, np.nan)
    for i in range(edges.size - 1):
        v = c[ok][which == i]
        if v.size >= 3:
            prof_m[i] = v.mean()
            prof_s[i] = v.std(ddof=1) / np.sqrt(v.size)
    return BoundaryRatio(ratio=float(ratio), sd=float(np.std(boots, ddof=1)),
                         band_mean=float(c[band].mean()), interior_level=float(level),
                         n_band=int(band.sum()), n_interior=int(inner.sum()),
                         n_grains=int(good.sum()), n_segments=int(usable.sum()),
                         band_nm=float(band_nm),
                         interior_nm=float(interior_nm),
                         profile_nm=0.5 * (edges[:-1] + edges[1:]), profile_mean=prof_m,
                         profile_sem=prof_s)


def ridge_pixels(counts, level: float, *, z: float = 6.0) -> np.ndarray:
    """Pixels of a boundary species' map that lie near a boundary, found or not.

    A boundary species (Na in CIGS) stands out of a grain's interior by two orders of
    magnitude: a pixel above ``level + z sqrt(max(level, 1))`` counts (``level`` the
    interior's counts per pixel, the halo taken out) is not an interior one. At
    ``z = 6`` a pure interior of 3000 pixels at ~1 count gives ~0.2 such pixels.
    """
    c = np.asarray(counts, float)
    return np.isfinite(c) & (c > level + z * np.sqrt(max(level, 1.0)))


def split_at_ridges(grain, inner, ridge, *, pitch_nm: tuple[float, float],
                    clear_nm: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Interior pixels cut at boundaries a SIMS map shows and the TEM missed.

    Interior pixels within ``clear_nm`` of a ridge pixel (:func:`ridge_pixels`) are
    dropped, and what is left of each grain is split into its connected parts
    (4-connected): a TEM grain that is two true grains becomes two.

    Parameters
    ----------
    grain : array_like
        (ny, nx) TEM grain label of each SIMS pixel.
    inner : array_like of bool
        (ny, nx) pixels far enough from every TEM boundary.
    ridge : array_like of bool
        (ny, nx) pixels near a boundary the TEM did not find.
    pitch_nm : (float, float)
        The pixels' (row, column) pitch on the specimen.
    clear_nm : float
        Distance kept from a ridge pixel.

    Returns
    -------
    label : numpy.ndarray
        (ny, nx) int: each part's label (a grain's largest part keeps its label, the
        others get new ones above every label), 0 outside ``keep``.
    keep : numpy.ndarray
        (ny, nx) bool: the interior pixels left.
    split : int
        Grains cut into two or more parts.
    """
    g = np.asarray(grain, int)
    far = ndimage.distance_transform_edt(~np.asarray(ridge, bool), sampling=pitch_nm) > clear_nm
    keep = np.asarray(inner, bool) & far & (g > 0)
    out = np.zeros_like(g)
    nxt = int(g.max()) + 1
    split = 0
    for lab in np.unique(g[keep]):
        parts, n = ndimage.label(keep & (g == lab))
        sizes = ndimage.sum_labels(np.ones_like(parts), parts, np.arange(1, n + 1))
        order = np.argsort(sizes)[::-1] + 1
        out[parts == order[0]] = lab
        for p in order[1:]:
            out[parts == p] = nxt
            nxt += 1
        split += int(n > 1)
    return out, keep, split


def sputter_yield_from_profile(dose_ions_nm2, signal, thickness_nm: float,
                               atomic_density_nm3: float, *, start_dose: float = 0.0,
                               thickness_rel_sd: float = 0.0) -> dict:
    """Sputter yield of a layer from the dose that takes a depth profile through it.

    Parameters
    ----------
    dose_ions_nm2 : array_like
        Cumulative dose at the start of each frame (ions/nm^2).
    signal : array_like
        The layer's signal per frame (e.g. In+ totals); its last fall to half its
        plateau (the median of the frames above 70 % of the maximum) is where the
        layer is sputtered through.
    thickness_nm : float
        The layer's thickness.
    atomic_density_nm3 : float
        Its atoms per nm^3.
    start_dose : float
        Dose at which the layer starts (e.g. the buffer's own fall to half).
    thickness_rel_sd : float
        Relative standard error of ``thickness_nm`` (added in quadrature).

    Returns
    -------
    dict
        ``yield``, ``sd`` (the frame step: the crossing lies within one frame's dose,
        a uniform error of that width; and the thickness), ``through_dose``,
        ``frame_dose``, ``plateau``.
    """
    dose = np.asarray(dose_ions_nm2, float)
    s = np.asarray(signal, float)
    top = s >= 0.7 * np.nanmax(s)
    plateau = float(np.median(s[top]))
    half = 0.5 * plateau
    last_top = int(np.flatnonzero(top)[-1])
    after = np.flatnonzero((np.arange(s.size) > last_top) & (s < half))
    if after.size == 0:
        raise ValueError("the profile does not go through the layer (no fall to half)")
    k = int(after[0])
    # Linear interpolation of the half crossing between frames k-1 and k.
    f = (s[k - 1] - half) / max(s[k - 1] - s[k], 1e-12)
    through = dose[k - 1] + f * (dose[k] - dose[k - 1])
    step = float(dose[k] - dose[k - 1])
    span = through - start_dose
    if span <= 0:
        raise ValueError("the layer ends before it starts")
    y = thickness_nm * atomic_density_nm3 / span
    rel = np.hypot(step / np.sqrt(12.0) / span, thickness_rel_sd)
    return {"yield": float(y), "sd": float(y * rel), "through_dose": float(through),
            "frame_dose": step, "plateau": plateau}


def half_fall_dose(dose_ions_nm2, signal) -> float:
    """Dose (ions/nm^2) at which ``signal`` first falls below half its first maximum
    (a layer's end in a depth profile), interpolated between frames."""
    dose = np.asarray(dose_ions_nm2, float)
    s = np.asarray(signal, float)
    peak = int(np.nanargmax(s))
    half = 0.5 * s[peak]
    after = np.flatnonzero((np.arange(s.size) > peak) & (s < half))
    if after.size == 0:
        raise ValueError("the signal never falls to half its maximum")
    k = int(after[0])
    f = (s[k - 1] - half) / max(s[k - 1] - s[k], 1e-12)
    return float(dose[k - 1] + f * (dose[k] - dose[k - 1]))


@dataclass
class GaFraction:
    """Ga/(In+Ga) per grain, the implanted Ga taken out (:func:`ga_fraction_per_grain`).

    Attributes
    ----------
    grains : numpy.ndarray
        The grain labels.
    ga, in_ : numpy.ndarray
        Per grain, mean Ga and In signal per pixel (elements: isotope counts over
        their abundance).
    n_px : numpy.ndarray
        Interior pixels per grain.
    ratio, sd : numpy.ndarray
        Ga/(In+Ga) per grain and its standard error (Poisson, line fit, yield).
    naive : numpy.ndarray
        ``G / (G + k I)``: the figure if the implanted Ga were counted as the absorber's.
    k, c, implant : float
        Useful-yield ratio Ga/In, the line's value at I = 0, and the implanted Ga's
        signal per pixel (``J``), with ``k_sd``, ``c_sd``, ``implant_sd``.
    implant_fraction : float
        The implant's share of the Ga signal (mean over grains).
    """

    grains: np.ndarray
    ga: np.ndarray
    in_: np.ndarray
    n_px: np.ndarray
    ratio: np.ndarray
    sd: np.ndarray
    naive: np.ndarray
    k: float
    k_sd: float
    c: float
    c_sd: float
    implant: float
    implant_sd: float
    implant_fraction: float
    sputter_yield: float
    sputter_yield_sd: float
    x_iii: float
    on_line: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    sd_parts: dict = field(default_factory=dict)


def ga_fraction_per_grain(ga_counts, in_counts, grain, inner, *, sputter_yield: float,
                          sputter_yield_sd: float, x_iii: float = 0.25,
                          min_px: int = 8, clip_sigma: float = 4.0, n_boot: int = 400,
                          seed: int = 0) -> GaFraction:
    """Ga/(In+Ga) of each grain with the Ga implanted by the Ga+ beam separated.

    Parameters
    ----------
    ga_counts, in_counts : array_like
        Ga and In signal per SIMS pixel (element totals, e.g. 69Ga counts over the
        69Ga abundance), same shape; NaN: not measured.
    grain : array_like
        Each pixel's TEM grain label.
    inner : array_like of bool
        Pixels far enough from every boundary that one grain fills the footprint.
    sputter_yield, sputter_yield_sd : float
        The absorber's sputter yield (atoms/ion) and its standard error.
    x_iii : float
        Atomic fraction of the group III site (In + Ga) in the absorber: 1/4 in
        Cu(In,Ga)Se2.
    min_px : int
        Grains with fewer interior pixels are left out.
    clip_sigma : float
        Grains farther from the line than this many robust standard deviations of
        the residuals (at least their counting error) are left out of the fit; their
        Ga/(In+Ga) is still given and flagged (``on_line``).
    n_boot : int
        Bootstrap resamples of the grains for the line's errors.
    seed : int
        Of the bootstrap.

    Returns
    -------
    GaFraction

    Notes
    -----
    See the module notes. The line ``G = c - k I`` is fitted over the grains by
    least squares weighted with each grain's Poisson variance; its errors come from a
    bootstrap over grains (they include anything that scatters the grains off the
    line, not only counting). ``J = c / (1 + x_III Y)`` and
    ``r = (G - J) / (c - J)``; the standard error of ``r`` adds in quadrature the
    grain's counting, the bootstrap of ``c`` and the yield's error.
    """
    ga = np.asarray(ga_counts, float).ravel()
    ind = np.asarray(in_counts, float).ravel()
    g = np.asarray(grain, int).ravel()
    use = np.asarray(inner, bool).ravel() & np.isfinite(ga) & np.isfinite(ind) & (g > 0)
    labels = np.unique(g[use])
    n_px = np.array([np.sum(use & (g == k)) for k in labels])
    labels, n_px = labels[n_px >= min_px], n_px[n_px >= min_px]
    if labels.size < 3:
        raise ValueError(f"{labels.size} grains with >= {min_px} interior pixels: "
                         "at least 3 are needed for the In/Ga line")
    G = np.array([ga[use & (g == k)].mean() for k in labels])
    In = np.array([ind[use & (g == k)].mean() for k in labels])
    # Poisson variance of a grain's mean (the signals are counts over an abundance:
    # their variance is value x (1 / abundance) / n; the abundance scale cancels in
    # the weights' ratio, so counts / n is used).
    vG = np.maximum(G, 1e-9) / n_px
    vI = np.maximum(In, 1e-9) / n_px

    def fit(Gs, Is, vGs, vIs):
        # G = c - k I, weights from the variance along G (k ~ 1: vI adds alike).
        w = 1.0 / (vGs + vIs)
        A = np.stack([np.ones_like(Is), -Is], axis=1)
        sw = np.sqrt(w)
        sol, *_ = np.linalg.lstsq(A * sw[:, None], Gs * sw, rcond=None)
        return float(sol[0]), float(sol[1])

    # Grains off the line (a footprint that still reads unsputtered buffer at the
    # raster's edge, a segmentation error that is not a mixture of two grains) are
    # left out of the fit: residuals beyond clip_sigma robust standard deviations.
    kept = np.ones(labels.size, bool)
    for _ in range(3):
        c, k = fit(G[kept], In[kept], vG[kept], vI[kept])
        res = G - (c - k * In)
        scale = 1.4826 * np.median(np.abs(res[kept] - np.median(res[kept])))
        scale = max(scale, float(np.sqrt(np.median(vG + k * k * vI))))
        new = np.abs(res) <= clip_sigma * scale
        if new.sum() < 3 or np.array_equal(new, kept):
            break
        kept = new
    c, k = fit(G[kept], In[kept], vG[kept], vI[kept])
    rng = np.random.default_rng(seed)
    boots = []
    kg = np.flatnonzero(kept)
    for _ in range(n_boot):
        pick = kg[rng.integers(0, kg.size, kg.size)]
        if np.unique(pick).size < 3:
            continue
        boots.append(fit(G[pick], In[pick], vG[pick], vI[pick]))
    boots = np.array(boots)
    c_sd, k_sd = (float(v) for v in boots.std(axis=0, ddof=1))
    a = 1.0 / (1.0 + x_iii * sputter_yield)
    J = c * a
    ratio = (G - J) / (c - J)
    # Derivatives of r = (G - a c) / (c (1 - a)) = (G / c - a) / (1 - a).
    dr_dG = 1.0 / (c * (1 - a))
    dr_dc = -G / (c * c * (1 - a))
    da_dY = -x_iii * a * a
    dr_da = (G / c - 1.0) / (1 - a) ** 2
    sd_count = dr_dG * np.sqrt(vG)
    sd_line = np.abs(dr_dc) * c_sd
    sd_yield = np.abs(dr_da * da_dY) * sputter_yield_sd
    sd = np.sqrt(sd_count**2 + sd_line**2 + sd_yield**2)
    J_sd = float(np.hypot(a * c_sd, c * abs(da_dY) * sputter_yield_sd))
    naive = G / (G + k * In)
    return GaFraction(grains=labels, ga=G, in_=In, n_px=n_px, ratio=ratio, sd=sd,
                      naive=naive, k=k, k_sd=k_sd, c=c, c_sd=c_sd, implant=float(J),
                      implant_sd=J_sd, implant_fraction=float(np.mean(J / G)),
                      sputter_yield=float(sputter_yield),
                      sputter_yield_sd=float(sputter_yield_sd), x_iii=float(x_iii),
                      on_line=kept, sd_parts={"counting": sd_count, "line": sd_line, "yield": sd_yield})


__all__ = ["BoundaryRatio", "GaFraction", "Grains", "boundary_interior_ratio",
           "ga_fraction_per_grain", "half_fall_dose", "ridge_pixels", "sample_on_image",
           "segment_grains", "split_at_ridges", "sputter_yield_from_profile"]
