"""Adaptive search for 6Li-labelled particles: SIMS map -> particles -> TEM zooms.

:func:`find_labelled_particles` maps 6Li and 7Li, segments the particles on the
total Li map, counts N6 and N7 per particle and keeps those whose 6Li/7Li ratio is
significantly above the natural ratio by Poisson statistics (:func:`ratio_z`), then
goes back to TEM and images each of them at high magnification. The particles are
recorded in the SIMS run's ``particles`` stream (one event per segmented particle,
significant or not); all runs share one ``correlation_id``.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

import bluesky.plan_stubs as bps
import numpy as np

from temsims.plans._common import (
    Values,
    check_int,
    check_md,
    check_number,
    check_pair,
    with_safe_state,
)
from temsims.plans.correlative import (
    SIMS_TILT_DEG,
    Tap,
    check_common,
    check_sims_voltage,
    geometry_md,
    map_arrays,
    sims_pixel_to_stage,
)
from temsims.plans.mode import to_sims_mode, to_tem_mode
from temsims.plans.sims import DWELL_RANGE_S, MAX_PIXELS_PER_SIDE, sims_map
from temsims.plans.tem import EXPOSURE_RANGE_S, FOV_RANGE_UM, tem_image

#: n(6Li)/n(7Li) of natural lithium: reference material LSVEC (IUPAC/CIAAW), the
#: value the specimen's natural particles carry (not periodictable's 4.85 % midpoint).
NATURAL_LI6_LI7 = 0.08215


def ratio_z(n6, n7, r0: float = NATURAL_LI6_LI7):
    """Significance (sigma) of N6/N7 above ``r0``: ``(N6 - r0 N7) / sqrt(N6 + r0^2 N7)``
    (Poisson variances of both counts); 0 where there are no counts."""
    n6 = np.asarray(n6, dtype=float)
    n7 = np.asarray(n7, dtype=float)
    var = n6 + r0 * r0 * n7
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(var > 0, (n6 - r0 * n7) / np.sqrt(np.where(var > 0, var, 1.0)), 0.0)
    return z


def segment_particles(n6_map, n7_map, *, fov_um: float, x_um: float, y_um: float,
                      rotation_deg: float = 0.0, min_counts: float = 50.0,
                      significance: float = 5.0, r0: float = NATURAL_LI6_LI7,
                      threshold_sigma: float = 5.0) -> list[dict]:
    """Particles of a 6Li/7Li map pair: threshold + labelling on N6 + N7.

    The background is the median of the total map and its noise the Poisson
    ``sqrt(median + 1)``; pixels above ``median + threshold_sigma * noise`` and
    above 10 % of the 99.5th percentile (what separates a particle edge from the
    film) are labelled (8-connected). Per particle N6 and N7 are summed over its
    pixels; its position is the count-weighted centroid mapped to the specimen
    (:func:`sims_pixel_to_stage`). Particles with fewer than ``min_counts`` Li counts
    are dropped.

    Returns
    -------
    list of dict
        ``x_um, y_um, n6, n7, ratio, z, area_px, labelled`` (z > significance),
        sorted by z, largest first.
    """
    from scipy import ndimage

    n6 = np.asarray(n6_map, dtype=float)
    n7 = np.asarray(n7_map, dtype=float)
    total = n6 + n7
    if total.size == 0:
        return []
    ny, nx = total.shape
    bkg = float(np.median(total))
    thr = max(bkg + threshold_sigma * math.sqrt(bkg + 1.0),
              bkg + 0.1 * (float(np.percentile(total, 99.5)) - bkg))
    labels, n = ndimage.label(total > thr, structure=np.ones((3, 3)))
    out = []
    for lab in range(1, n + 1):
        sel = labels == lab
        s6, s7 = float(n6[sel].sum()), float(n7[sel].sum())
        if s6 + s7 < min_counts:
            continue
        row, col = ndimage.center_of_mass(total, labels, lab)
        x, y = sims_pixel_to_stage(row, col, pixels=(nx, ny), fov_um=fov_um, x_um=x_um,
                                   y_um=y_um, rotation_deg=rotation_deg)
        z = float(ratio_z(s6, s7, r0))
        out.append({"x_um": round(float(x), 5), "y_um": round(float(y), 5), "n6": s6,
                    "n7": s7, "ratio": s6 / s7 if s7 > 0 else math.inf, "z": z,
                    "area_px": int(sel.sum()), "labelled": bool(z > significance)})
    out.sort(key=lambda p: -p["z"])
    return out


def find_labelled_particles(stage, tem, camera, mode, imager, spectrometer, column, bias, *,
                            fov_um: float, pixels: tuple = (64, 45), dwell_s: float = 1e-3,
                            center: tuple = (0.0, 0.0), significance: float = 5.0,
                            min_counts: float = 50.0, zoom_fov_um: float = 0.4,
                            exposure_s: float = 0.05, max_particles: int = 20,
                            sims_voltage_v: float = 4500.0, md: dict | None = None):
    """Find the 6Li-labelled particles by SIMS and image each of them by TEM.

    Parameters
    ----------
    stage, tem, camera, mode, imager, spectrometer, column, bias
        As in :func:`temsims.plans.correlative.correlative_tem_sims`.
    fov_um : float
        SIMS raster width (um); the map covers ``fov x fov * ny / nx / cos 45`` of the
        specimen around ``center``.
    pixels : (int, int)
        SIMS map (nx, ny), each 1..1024.
    dwell_s : float
        Dwell per pixel (s).
    center : (float, float)
        Map centre on the specimen (um).
    significance : float
        Keep particles whose ratio is above natural by more than this many sigma
        (:func:`ratio_z`), > 0.
    min_counts : float
        Segmented particles with fewer Li (6 + 7) counts are ignored, >= 0.
    zoom_fov_um : float
        Field of view of each particle's TEM image (um).
    exposure_s : float
        TEM exposure (s).
    max_particles : int
        At most this many TEM zooms (most significant first), 0..200.
    sims_voltage_v : float
        Holder bias in SIMS (V).
    md : dict, optional
        Extra start metadata of every run (``correlation_id`` links them).

    Yields
    ------
    msg : Msg
        One ``sims_map`` run (with a ``particles`` stream) and one ``tem_image`` run
        per labelled particle (up to ``max_particles``).

    Returns
    -------
    dict
        ``correlation_id``, ``uids`` {"sims": [...], "tem": [...]}, ``particles``
        (the significant ones: x_um, y_um, n6, n7, ratio, z, area_px, labelled,
        tem_uid), ``candidates`` (every segmented particle), ``maps`` {species: array},
        ``geometry`` (the SIMS map's correlative block).
    """
    check_common(stage, tem, camera, mode, imager, spectrometer, column, bias)
    fov_um = check_number("fov_um", fov_um, low=0.0, low_open=True, unit="um")
    low, high = column.scan.fov.limits
    if low < high and not low <= fov_um <= high:
        raise ValueError(f"fov_um = {fov_um!r} um is outside the column's SCAN:FOV limits "
                         f"[{low:g}, {high:g}] um")
    pixels = check_pair("pixels", pixels, integer=True, low=1, high=MAX_PIXELS_PER_SIDE)
    dwell_s = check_number("dwell_s", dwell_s, low=DWELL_RANGE_S[0], high=DWELL_RANGE_S[1],
                           unit="s")
    center = check_pair("center", center, unit="um")
    for i, axis in enumerate((stage.x, stage.y)):
        lo, hi = axis.limits
        if lo < hi and not lo <= center[i] <= hi:
            raise ValueError(f"center[{i}] = {center[i]!r} um is outside the stage limits "
                             f"[{lo:g}, {hi:g}] um")
    significance = check_number("significance", significance, low=0.0, low_open=True,
                                unit="sigma")
    min_counts = check_number("min_counts", min_counts, low=0.0, unit="counts")
    zoom_fov_um = check_number("zoom_fov_um", zoom_fov_um, low=FOV_RANGE_UM[0],
                               high=FOV_RANGE_UM[1], unit="um")
    exposure_s = check_number("exposure_s", exposure_s, low=EXPOSURE_RANGE_S[0],
                              high=EXPOSURE_RANGE_S[1], unit="s")
    max_particles = check_int("max_particles", max_particles, low=0, high=200)
    sims_voltage_v = check_sims_voltage(sims_voltage_v)
    md = check_md(md)
    cid = md.get("correlation_id") or str(uuid.uuid4())
    base_md = {**md, "correlation_id": cid}
    labels = ("6Li", "7Li")
    result: dict[str, Any] = {"correlation_id": cid, "uids": {"sims": [], "tem": []},
                              "particles": [], "candidates": [], "maps": {},
                              "geometry": None}

    def body():
        rotation = float((yield from bps.rd(column.scan.rotation, default_value=0.0)))
        size = int((yield from bps.rd(camera.size, default_value=0)) or 0)
        yield from to_sims_mode(mode, voltage_v=sims_voltage_v)
        yield from bps.mv(stage.x, center[0], stage.y, center[1])
        geometry = geometry_md(
            role="particle_search", roi_index=None,
            roi={"x_um": center[0], "y_um": center[1], "fov_um": fov_um},
            x_um=center[0], y_um=center[1], tilt_deg=SIMS_TILT_DEG, fov_um=fov_um,
            pixels=pixels, rotation_deg=rotation, mode="SIMS",
            significance_sigma=significance, min_counts=min_counts,
            natural_li6_li7=NATURAL_LI6_LI7)
        result["geometry"] = geometry
        tap = Tap()

        def analyse():
            maps = {s: map_arrays(tap.collected, f"{imager.name}_{s}") for s in labels}
            # The collectors' whole-frame maps: when a line event was assembled before
            # its map monitor arrived (zeros), the final frame is the better record.
            for k, s in enumerate(labels):
                sig = getattr(imager, f"map{k + 1}", None)
                if sig is None:
                    continue
                full = yield from bps.rd(sig, default_value=None)
                full = None if full is None else np.asarray(full, dtype=float)
                nx, ny = pixels
                if full is not None and full.size == nx * ny \
                        and full.sum() > maps[s].sum():
                    maps[s] = full.reshape(ny, nx)
            result["maps"] = maps
            found = segment_particles(maps["6Li"], maps["7Li"], fov_um=fov_um,
                                      x_um=center[0], y_um=center[1], rotation_deg=rotation,
                                      min_counts=min_counts, significance=significance)
            result["candidates"] = found
            buf = Values("particle", units={"x_um": "um", "y_um": "um", "n6": "counts",
                                            "n7": "counts", "z": "sigma", "area_px": "px"})
            for i, p in enumerate(found):
                buf.set_values(index=i, x_um=p["x_um"], y_um=p["y_um"], n6=p["n6"],
                               n7=p["n7"], ratio=float(min(p["ratio"], 1e9)), z=p["z"],
                               area_px=p["area_px"], labelled=p["labelled"])
                yield from bps.trigger_and_read([buf], name="particles")

        run_md = {**base_md, "correlative": geometry}
        yield from tap.wrap(sims_map(imager, spectrometer, column, stage, bias,
                                     species=labels, fov_um=fov_um, pixels=pixels,
                                     dwell_s=dwell_s, fly=True, md=run_md),
                            before_close=analyse)
        result["uids"]["sims"].extend(tap.uids)
        significant = [dict(p) for p in result["candidates"] if p["labelled"]]
        result["particles"] = significant
        yield from to_tem_mode(mode)
        for i, p in enumerate(significant[:max_particles]):
            yield from bps.checkpoint()
            x = min(max(p["x_um"], stage.x.limits[0]), stage.x.limits[1]) \
                if stage.x.limits[0] < stage.x.limits[1] else p["x_um"]
            y = min(max(p["y_um"], stage.y.limits[0]), stage.y.limits[1]) \
                if stage.y.limits[0] < stage.y.limits[1] else p["y_um"]
            zmd = {**base_md, "correlative": geometry_md(
                role="particle_zoom", roi_index=i,
                roi={"x_um": x, "y_um": y, "fov_um": zoom_fov_um}, x_um=x, y_um=y,
                tilt_deg=0.0, fov_um=zoom_fov_um, pixels=(size, size), rotation_deg=0.0,
                mode="TEM", particle={k: p[k] for k in ("n6", "n7", "z", "area_px")})}
            t = Tap()
            yield from t.wrap(tem_image(stage, tem, camera, x_um=x, y_um=y,
                                        fov_um=zoom_fov_um, exposure_s=exposure_s, md=zmd))
            result["uids"]["tem"].extend(t.uids)
            p["tem_uid"] = t.uids[0] if t.uids else None
            img = t.reads.get(camera.name, {}).get(f"{camera.name}_image", {}).get("value")
            p["tem_image"] = None if img is None else np.asarray(img)
        return result

    return (yield from with_safe_state(body(), column, bias))


__all__ = ["NATURAL_LI6_LI7", "find_labelled_particles", "ratio_z", "segment_particles"]
