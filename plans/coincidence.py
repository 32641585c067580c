"""TEM/FIB coincidence calibration: a fiducial imaged by TEM and mapped by SIMS.

The ion field's centre is not where the stage puts the TEM's (decision 0042): what
the column's bias-dependent beam shift leaves of the extraction field's landing shift
(its sign and size follow the bias), the specimen's height above the eucentric point
on the 0 -> -68 deg tilt (``dz sin(tilt)``), and the beams' own alignment. A lab
measures it the way a dual-beam user sets the coincidence point: image a feature with
both beams at the working conditions, measure how far apart they see it, and shift
the ion beam by that much.

:func:`calibrate_coincidence` is a multi-run plan (like
:func:`temsims.plans.correlative.correlative_tem_sims`): a ``tem_image`` of the
fiducial in the TEM geometry, then in the SIMS geometry at the working bias one
``sims_map`` per pass, each registered (translation only,
:func:`temsims.analysis.registration.register_sims_to_tem`) onto the TEM image
inside its run, against the TEM image or against it as the tilted beam sees a
raised specimen, whichever the map's features fit better
(:func:`temsims.plans._tem_referenced.measure_against_tem`: on relief the projection
puts the offset ~0.75 r of the particles down-beam, ~50 nm on the particle field;
decision 0042's amendment "Relief"). Each pass's measured offset is added to the column's correction
(``COINCIDENCE:X/Y``), so the next pass (and every later map) lands where the TEM
looked; the last pass measures what remains. All runs share one ``correlation_id``
and carry a ``coincidence`` block; each SIMS run records the correction it was
mapped with (``coincidence_um``, :func:`temsims.plans._common.sims_md`) and its
measurement in its ``coincidence`` stream. The correction holds for the bias, tilt
and height it was measured at: measure again after changing any of them (or the
holder). The instrument is left in the TEM geometry, beam blanked, bias at 0 V.
"""

from __future__ import annotations

import math
from typing import Any

import bluesky.plan_stubs as bps
import numpy as np

from temsims.analysis.geometry import TemImageGeometry
from temsims.analysis.registration import register_sims_to_tem
from temsims.plans._common import microscope_parts, require_settings
from temsims.plans._tem_referenced import PARTS, check_calibration_args, tem_referenced_passes
from temsims.plans.types import Microscope, Plan

#: Passes of :func:`calibrate_coincidence`: 1..MAX_PASSES maps.
MAX_PASSES = 4
#: Largest coincidence correction the plan writes (um, each axis): the column's range.
MAX_CORRECTION_UM = 5.0
#: Largest shift a pass measures, as a fraction of the map's smaller side: beyond it
#: the map and the TEM image share too little of the field to trust the peak.
MAX_SHIFT_FRACTION = 0.4
COINCIDENCE_UNITS = {"dx_um": "um", "dy_um": "um", "shift_row_px": "px", "shift_col_px": "px",
                     "correction_x_um": "um", "correction_y_um": "um", "ncc": "",
                     "residual_px": "px"}


def measure_coincidence(sims_counts: np.ndarray, tem_image: np.ndarray, sims_geometry,
                        tem_geometry: TemImageGeometry, *,
                        max_shift_fraction: float = MAX_SHIFT_FRACTION) -> dict[str, Any]:
    """How far (um, specimen x, y) the SIMS map's content lies from where its recorded
    geometry puts it, measured on the TEM image: the coincidence offset left.

    Registration by translation only (:func:`register_sims_to_tem`,
    ``model="translation"``): the offset is a shift, and a few features fix it; the
    raster's field and rotation, if off, are the registration's business per map.

    Returns
    -------
    dict
        ``dx_um``, ``dy_um`` (the map's centre on the specimen, registered minus
        recorded), ``shift_row_px``, ``shift_col_px`` (SIMS px), ``ncc``,
        ``residual_px`` and ``refined`` (False: no trustworthy shift found, the
        offsets are NaN).
    """
    ny, nx = np.shape(sims_counts)
    reg = register_sims_to_tem(np.asarray(sims_counts, float), np.asarray(tem_image, float),
                               sims_geometry, tem_geometry, model="translation",
                               max_shift_px=max_shift_fraction * min(nx, ny))
    r0, c0 = (ny - 1) / 2.0, (nx - 1) / 2.0
    rows, cols = reg.sims_to_tem_px([r0], [c0])
    x1, y1 = tem_geometry.pixel_to_specimen_um(rows, cols)
    xy0 = reg.initial_transform(np.array([[c0, r0]]))
    x0, y0 = tem_geometry.pixel_to_specimen_um(xy0[:, 1], xy0[:, 0])
    ok = bool(reg.refined)
    nan = float("nan")
    return {"dx_um": float(x1[0] - x0[0]) if ok else nan,
            "dy_um": float(y1[0] - y0[0]) if ok else nan,
            "shift_row_px": float(reg.shift_px[0]), "shift_col_px": float(reg.shift_px[1]),
            "ncc": float(reg.quality.get("ncc", nan)),
            "residual_px": float(reg.residual_sims_px), "refined": ok}


def check_coincidence_args(microscope: Microscope, **kwargs: Any) -> tuple[tuple, dict]:
    """:func:`calibrate_coincidence`'s checks (its keyword arguments, all given):
    the parts and the checked values; raises before anything moves."""
    parts = microscope_parts(microscope, *PARTS)
    column = parts[6]
    require_settings(column, "column", ("coincidence_x", "coincidence_y"),
                     "a coincidence correction to write")
    return parts, check_calibration_args(parts, tem_fov_factor=2.0, max_passes=MAX_PASSES,
                                         **kwargs)


def calibrate_coincidence(microscope: Microscope, *, center: tuple = (0.0, 0.0),
                          voltage_v: float = 4500.0, species: tuple = ("7Li",),
                          sims_fov_um: float = 2.0, sims_pixels: tuple = (128, 96),
                          sims_dwell_s: float = 1e-3, tem_fov_um: float | None = None,
                          exposure_s: float = 0.05, passes: int = 2,
                          md: dict | None = None) -> Plan[dict]:
    """Measure the TEM/FIB coincidence offset at the working bias and correct it.

    Sequence: TEM geometry (if not already) -> ``tem_image`` of the fiducial at
    ``center`` -> SIMS geometry at ``voltage_v`` -> ``passes`` SIMS maps at the same
    stage position, each registered on the TEM image; after each, the column's
    COINCIDENCE:X/Y += the offset measured -> TEM geometry.

    Parameters
    ----------
    microscope : temsims.plans.types.Microscope
        ``stage``, ``tem``, ``camera`` (:func:`temsims.plans.tem.tem_image`), ``mode``
        (:func:`to_sims_mode`, :func:`to_tem_mode`), ``imager``, ``spectrometer``,
        ``column`` (with ``coincidence_x``, ``coincidence_y``: the correction
        written; and ``coincidence_bias``, where it has one: the bias it was measured
        at, which the correlative plans check) and ``bias`` (:func:`temsims.plans.sims.sims_map`).
    center : (float, float)
        Stage position (um) of a fiducial both see: particles, a grain, an edge (on
        ``li2co3-particles`` the particle field, e.g. (0, 0)).
    voltage_v : float
        The working holder bias (V), 100..4500 in magnitude: the offset depends on it
        (its polarity flips the landing shift).
    species : tuple of str
        1..4 isotopes mapped (their total is registered), showing the fiducial.
    sims_fov_um : float
        SIMS raster width (um); the offset found must stay within
        :data:`MAX_SHIFT_FRACTION` of the map's smaller side.
    sims_pixels : (int, int)
        SIMS map (nx, ny).
    sims_dwell_s : float
        SIMS dwell per pixel (s).
    tem_fov_um : float, optional
        TEM field of view (um), 0.05..100; default twice ``sims_fov_um``, so that the
        map's field lies on the image however far off it is.
    exposure_s : float
        TEM exposure (s).
    passes : int
        SIMS maps, 1..4: the first measures and corrects, each later one measures what
        is left (and corrects it too). 2 checks the correction.
    md : dict, optional
        Extra start metadata of every run; ``correlation_id`` links them (else a new
        uuid4).

    Yields
    ------
    msg : Msg
        ``1 + passes`` runs: the TEM image (``coincidence.role`` ``"tem"``), then each
        pass's SIMS map (``"sims"``, ``index`` the pass, a ``coincidence`` stream with
        its measurement), and the puts of COINCIDENCE:X/Y between them.

    Returns
    -------
    dict
        ``correlation_id``, ``uids`` {"tem": uid, "sims": [uid, ...]}, ``passes`` (each
        pass's measurement, :func:`measure_coincidence`, with the correction it was
        mapped with), ``correction_um`` (the correction written last) and
        ``residual_um`` (the last pass's offset: what is left after the correction
        before it), ``bias_v``.

    Raises
    ------
    TypeError, ValueError
        For any invalid argument, before anything moves.
    RuntimeError
        If a pass finds no trustworthy shift (too few features, or the offset beyond
        the map: widen ``sims_fov_um``); the correction is left as the last good pass
        wrote it.
    """
    parts, args = check_coincidence_args(
        microscope, center=center, voltage_v=voltage_v, species=species,
        sims_fov_um=sims_fov_um, sims_pixels=sims_pixels, sims_dwell_s=sims_dwell_s,
        tem_fov_um=tem_fov_um, exposure_s=exposure_s, passes=passes, md=md)
    column = parts[6]
    result: dict[str, Any] = {"correlation_id": args["correlation_id"],
                              "uids": {"tem": None, "sims": []}, "passes": [],
                              "correction_um": None, "residual_um": None,
                              "bias_v": args["voltage_v"]}

    def read_setting():
        cx = float((yield from bps.rd(column.coincidence_x, default_value=0.0)) or 0.0)
        cy = float((yield from bps.rd(column.coincidence_y, default_value=0.0)) or 0.0)
        return {"correction_x_um": cx, "correction_y_um": cy}

    def apply_pass(n, measured, setting):
        if not measured["refined"]:
            raise RuntimeError(
                f"coincidence pass {n + 1}: no trustworthy shift between the SIMS map "
                f"and the TEM image (ncc {measured['ncc']:.2f}); widen sims_fov_um or "
                "choose a fiducial with more features")
        result["residual_um"] = [measured["dx_um"], measured["dy_um"]]
        new = (setting["correction_x_um"] + measured["dx_um"],
               setting["correction_y_um"] + measured["dy_um"])
        if not all(math.isfinite(v) and abs(v) <= MAX_CORRECTION_UM for v in new):
            raise RuntimeError(f"coincidence correction {new} um is beyond the column's "
                               f"+-{MAX_CORRECTION_UM:g} um: is the fiducial in both "
                               "fields?")
        yield from bps.mv(column.coincidence_x, new[0], column.coincidence_y, new[1])
        bias_record = getattr(column, "coincidence_bias", None)
        if bias_record is not None:  # what the correlative plans check it against
            yield from bps.mv(bias_record, args["voltage_v"])
        result["correction_um"] = [new[0], new[1]]

    return (yield from tem_referenced_passes(
        parts, args, key="coincidence", units=COINCIDENCE_UNITS, skip=("refined",),
        result=result, read_setting=read_setting, measure=measure_coincidence,
        apply_pass=apply_pass))

__all__ = ["calibrate_coincidence", "check_coincidence_args", "measure_coincidence"]
