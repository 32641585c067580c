"""Parallax of a tilted ion beam: where a SIMS map sees raised features.

The ion beam lands at ``theta`` from the specimen normal (50.08 deg at +4.5 kV on the
30 kV column, 41.25 at -4.5 kV: decision 0036), travelling along the specimen's +y.
A map's pixel -> specimen affine places each beam position on the raster's nominal
plane; the beam's ray meets a surface point ``h`` above that plane ``h tan(theta)``
up-beam of it, so a SIMS map sees a raised feature ``h tan(theta)`` down-beam (+y) of
where the TEM, looking along the normal, projects it, and a particle as its projection
along the beam (its back flank and the film behind it in the shadow). Decision 0041's
amendment.

The TEM gives what the correction needs: a bright-field image's mass-thickness is the
projected thickness times the density, and for particles on a flat substrate the
height of the surface above it is the projected thickness wherever the particle has
no overhang (every column of material stands on the substrate): exact for a
particle that is convex and wetting, a cap or a faceted crystal lying on a face, and
for a sphere right at the top (``2r``) and low by ``r - sqrt(r^2 - rho^2)`` toward
its rim, where the beam's rays graze the flank (its centroid shift below, within
0.1 r of the sphere's). :func:`height_from_mass_thickness` turns the TEM's
mass-thickness into heights, :func:`beam_view` renders what the beam positions see of
a height map (the same ray march as the twin: one running maximum per column),
:func:`parallax_offsets` gives each particle's SIMS-view centroid minus its TEM
centroid and :func:`correct_parallax` takes that off reported SIMS positions.

Pure numpy/scipy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: Heights (nm) below which a pixel of a height map is taken as the substrate.
MIN_PARTICLE_HEIGHT_NM = 3.0


def _incidence(incidence_deg: float) -> float:
    theta = float(incidence_deg)
    if not (math.isfinite(theta) and 0.0 <= theta < 89.0):
        raise ValueError(f"incidence_deg must be within [0, 89), got {incidence_deg!r}")
    return math.radians(theta)


def _height_map(height_nm) -> np.ndarray:
    h = np.asarray(height_nm, dtype=float)
    if h.ndim != 2 or min(h.shape) < 2 or not np.isfinite(h).all():
        raise ValueError("height_nm must be a finite 2-D map of at least 2 x 2 pixels")
    return h


def height_from_mass_thickness(mass_thickness_ug_cm2, density_g_cm3: float, *,
                               substrate_ug_cm2: float | None = None) -> np.ndarray:
    """Height (nm) above the substrate from a TEM mass-thickness map.

    Parameters
    ----------
    mass_thickness_ug_cm2 : array_like
        Projected mass-thickness ``rho t`` (ug/cm^2; e.g. ``-(rho t)_0 ln(I / I_0)`` of
        a bright-field image, in the same scattering scale as ``density_g_cm3``).
    density_g_cm3 : float
        The particles' density (> 0), in the map's scale.
    substrate_ug_cm2 : float, optional
        The substrate's own mass-thickness (None: the map's median, the bare film
        of a sparse particle field).

    Returns
    -------
    numpy.ndarray
        ``(rho t - substrate) / rho`` in nm (1 g/cm^3 x 1 nm = 0.1 ug/cm^2), >= 0: for
        particles without overhang, their surface's height above the substrate.
    """
    mt = np.asarray(mass_thickness_ug_cm2, dtype=float)
    if not (math.isfinite(density_g_cm3) and density_g_cm3 > 0):
        raise ValueError(f"density_g_cm3 must be > 0, got {density_g_cm3!r}")
    base = float(np.median(mt)) if substrate_ug_cm2 is None else float(substrate_ug_cm2)
    return np.clip((mt - base) / (0.1 * density_g_cm3), 0.0, None)


def landing_rows(height_nm, pixel_nm: float, incidence_deg: float) -> np.ndarray:
    """Row where each beam position's ray first meets the surface.

    Parameters
    ----------
    height_nm : array_like
        Heights above the raster's nominal plane on a square grid whose rows run along
        the beam's azimuth (row index increasing down-beam, along the specimen's +y).
    pixel_nm : float
        The grid's pitch (nm).
    incidence_deg : float
        The beam's angle from the normal.

    Returns
    -------
    numpy.ndarray of int
        Per grid position taken as a beam position (its nominal point), the row, in the
        same column, of the pixel its ray lands on: the first whose running maximum of
        ``row + h tan(theta) / pixel`` reaches it (a pixel below the running maximum is
        in the shadow of the relief before it).
    """
    h = _height_map(height_nm)
    tan = math.tan(_incidence(incidence_deg))
    if not pixel_nm > 0:
        raise ValueError(f"pixel_nm must be > 0, got {pixel_nm!r}")
    n, m = h.shape
    reach = np.maximum.accumulate(np.arange(n)[:, None] + h * tan / pixel_nm, axis=0)
    # The columns laid end to end, each offset beyond the last one's range: one search.
    span = max(float(reach.max()), n) - min(float(reach.min()), 0.0) + 2.0
    offset = span * np.arange(m)[None, :]
    keys = (reach + offset).T.ravel()
    queries = (np.arange(n)[:, None] - 1e-3 + offset).T.ravel()
    i = np.searchsorted(keys, queries, side="left") - n * np.repeat(np.arange(m), n)
    return np.ascontiguousarray(np.clip(i, 0, n - 1).reshape(m, n).T)


def beam_view(image, height_nm, pixel_nm: float, incidence_deg: float) -> np.ndarray:
    """``image`` (per surface pixel, the height map's grid) as the beam positions see it:
    each position takes the value where its ray lands (:func:`landing_rows`)."""
    img = np.asarray(image)
    rows = landing_rows(height_nm, pixel_nm, incidence_deg)
    if img.shape != rows.shape:
        raise ValueError(f"image and height_nm differ in shape: {img.shape} vs {rows.shape}")
    return np.take_along_axis(img, rows, axis=0)


def yamamura_weight(height_nm, pixel_nm: float, incidence_deg: float,
                    yamamura: tuple[float, float]) -> np.ndarray:
    """Relative sputter yield of each surface pixel at its local incidence (Yamamura,
    Itikawa & Itoh, IPPJ-AM-26, 1983: ``t^f exp(-f cos(theta_opt) (t - 1))``, ``t = 1 /
    cos(theta_l)``), ``yamamura = (f, theta_opt_deg)`` of the particles' material; a
    facet of slopes ``(h_x, h_y)`` meets the beam at ``cos(theta_l) = (cos theta + sin
    theta h_y) / sqrt(1 + h_x^2 + h_y^2)``. Normalised to the flat surface's."""
    h = _height_map(height_nm)
    th = _incidence(incidence_deg)
    f, opt = (float(v) for v in yamamura)
    if not (f > 0 and 0 < opt < 90):
        raise ValueError(f"yamamura must be (f > 0, 0 < theta_opt_deg < 90), got {yamamura!r}")
    hy, hx = np.gradient(h, pixel_nm)
    cos_l = (math.cos(th) + math.sin(th) * hy) / np.sqrt(1.0 + hx * hx + hy * hy)
    # Past grazing (a facet turned away) no ray lands: its weight never counts.
    t = 1.0 / np.clip(cos_l, math.cos(math.radians(89.0)), 1.0)
    c = math.cos(math.radians(opt))
    t0 = 1.0 / math.cos(th)
    return (t / t0) ** f * np.exp(-f * c * (t - t0))


@dataclass(frozen=True)
class ParallaxOffsets:
    """Per particle of a height map: its TEM centroid and where a SIMS map sees it.

    Attributes
    ----------
    labels : numpy.ndarray of int
        The particles' segments on the height map's grid (0: substrate).
    seen : numpy.ndarray of int
        The segment each beam position's ray lands on (the label image in the beam's
        view).
    centroid_rc : dict of int to (float, float)
        Each particle's (row, col) centroid of area in the TEM (its projection).
    offset_rows : dict of int to float
        Its SIMS-view centroid (the area of beam positions whose rays land on it)
        minus its TEM centroid, in rows (down-beam positive); columns do not move.
    """

    labels: np.ndarray
    seen: np.ndarray
    centroid_rc: dict
    offset_rows: dict


def parallax_offsets(height_nm, pixel_nm: float, incidence_deg: float, *,
                     min_height_nm: float = MIN_PARTICLE_HEIGHT_NM,
                     yamamura: tuple[float, float] | None = None) -> ParallaxOffsets:
    """Each particle's shift between its TEM projection and its SIMS image.

    The particles are the connected regions higher than ``min_height_nm``. A SIMS map
    counts each beam position's ions where its ray lands, so a particle's image is the
    set of beam positions whose rays land on it (:func:`beam_view` of the label image):
    for a sphere (chord profile) at 50 deg that runs from ``-r`` to ``2.59 r`` along
    the beam and its centroid sits ``(g - 1) 4 r / (3 pi)``, ``g = sqrt(1 + 4
    tan^2 theta)`` (0.67 r), down-beam; the twin's yield, higher where the rays graze
    the top, puts its counts' centroid ~0.1 r further: with ``yamamura`` (the
    material's ``(f, theta_opt_deg)``, :func:`yamamura_weight`) each beam position
    weighs by the yield where its ray lands.
    """
    h = _height_map(height_nm)
    labels, n = ndimage.label(h > min_height_nm)
    rows = landing_rows(h, pixel_nm, incidence_deg)
    seen = np.take_along_axis(labels, rows, axis=0)
    idx = np.arange(1, n + 1)
    ones = np.ones(h.shape)
    weight = ones if yamamura is None else np.take_along_axis(
        yamamura_weight(h, pixel_nm, incidence_deg, yamamura), rows, axis=0)
    tem = ndimage.center_of_mass(ones, labels, idx) if n else []
    with np.errstate(invalid="ignore", divide="ignore"):  # a particle no ray lands on
        sims = ndimage.center_of_mass(weight, seen, idx) if n else []
    centroid = {int(k): (float(t[0]), float(t[1])) for k, t in zip(idx, tem, strict=True)}
    offset = {int(k): float(s[0] - t[0]) if np.isfinite(s[0]) else 0.0
              for k, t, s in zip(idx, tem, sims, strict=True)}
    return ParallaxOffsets(labels, seen, centroid, offset)


def correct_parallax(x_um, y_um, height_nm, height_to_specimen, incidence_deg: float, *,
                     min_height_nm: float = MIN_PARTICLE_HEIGHT_NM,
                     match_nm: float = 100.0, yamamura: tuple[float, float] | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reported SIMS positions moved back to the TEM projection of their particles.

    Parameters
    ----------
    x_um, y_um : array_like
        Positions reported from a SIMS map (specimen um, through the map's affine).
    height_nm : array_like
        Heights above the substrate (:func:`height_from_mass_thickness` of a TEM image
        registered to the specimen), on a grid whose rows run along +y.
    height_to_specimen : (3, 3) array_like
        Affine ``(col, row, 1) -> (x_um, y_um, 1)`` of the height map: axis-aligned
        (the TEM image's rows along the specimen's y), square pixels.
    incidence_deg : float
        The beam's landing angle (the map's recorded ``incidence_deg``).
    min_height_nm : float
        Heights above this are particles.
    match_nm : float
        A position on no particle's SIMS image is corrected by the particle whose
        image's centroid is nearest, if within this distance; otherwise left as it is.
    yamamura : (float, float), optional
        The particles' ``(f, theta_opt_deg)`` of Yamamura's angular yield: the image's
        centroid weighted by the yield where each ray lands (None: uniform).

    Returns
    -------
    (x_um, y_um, label)
        The corrected positions (x unchanged: the parallax runs along y) and the
        height map's particle each was corrected by (0: none).
    """
    a = np.asarray(getattr(height_to_specimen, "params", height_to_specimen), dtype=float)
    if a.shape != (3, 3) or abs(a[0, 1]) > 1e-9 * abs(a[0, 0]) or \
            abs(a[1, 0]) > 1e-9 * abs(a[1, 1]) or not np.isclose(a[0, 0], a[1, 1]) or \
            a[1, 1] <= 0:
        raise ValueError("height_to_specimen must be an axis-aligned affine with square "
                         "pixels and rows along +y")
    pixel_nm = 1000.0 * a[0, 0]
    x = np.atleast_1d(np.asarray(x_um, dtype=float))
    y = np.atleast_1d(np.asarray(y_um, dtype=float))
    off = parallax_offsets(height_nm, pixel_nm, incidence_deg, min_height_nm=min_height_nm,
                           yamamura=yamamura)
    col = (x - a[0, 2]) / a[0, 0]
    row = (y - a[1, 2]) / a[1, 1]
    ny, nx = off.seen.shape
    r_i = np.clip(np.round(row).astype(int), 0, ny - 1)
    c_i = np.clip(np.round(col).astype(int), 0, nx - 1)
    inside = (row >= -0.5) & (row <= ny - 0.5) & (col >= -0.5) & (col <= nx - 0.5)
    label = np.where(inside, off.seen[r_i, c_i], 0)
    keys = np.array(sorted(off.offset_rows), dtype=int)
    if keys.size:
        seen_at = np.array([[off.centroid_rc[k][0] + off.offset_rows[k],
                             off.centroid_rc[k][1]] for k in keys])
        for j in np.flatnonzero(label == 0):
            d = np.hypot(seen_at[:, 0] - row[j], seen_at[:, 1] - col[j]) * pixel_nm
            if d.min() <= match_nm:
                label[j] = keys[int(np.argmin(d))]
    shift = np.array([off.offset_rows.get(int(k), 0.0) for k in label]) * pixel_nm / 1000.0
    return x.copy(), y - shift, label.astype(int)


__all__ = [
    "MIN_PARTICLE_HEIGHT_NM",
    "ParallaxOffsets",
    "beam_view",
    "correct_parallax",
    "height_from_mass_thickness",
    "landing_rows",
    "parallax_offsets",
    "yamamura_weight",
]
