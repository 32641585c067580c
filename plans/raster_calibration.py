"""Ion-raster calibration: the field and rotation the deflectors really write,
measured on a TEM image and corrected on the column.

A column's field-of-view calibration is good to a few % and its scan rotation to a
degree or two (decision 0029): the deflectors' gain and the raster's angle to the
stage drift with the lens excitations. Registration recovers them per map, but every
plan reports positions from the recorded (nominal) raster, so a 3 % field error puts
a feature at the edge of a 6 um map ~90 nm off. A lab calibrates the raster once per
session against a reference; here the reference is the TEM image (its pixel size is
the TEM's calibration, far better than the raster's).

:func:`calibrate_raster` follows :func:`temsims.plans.coincidence.calibrate_coincidence`:
a ``tem_image`` of a feature-rich area in the TEM geometry, then in the SIMS geometry
at the working bias one ``sims_map`` per pass, each registered onto the TEM image with
the raster model (:func:`temsims.analysis.registration.register_sims_to_tem`,
``model="raster"``: field scale, rotation and the stretch along y, about the recorded
geometry whose incidence is the bias-bent one of
:func:`temsims.constants.extraction_incidence_deg`) inside its run. The scale and
rotation found are folded into the column's SCAN:FOV_CAL (a factor on the field the
deflectors write) and SCAN:ROT_CAL (deg added to their rotation); the stretch (the
extraction field's strength, a property of the bias, not of the raster) is reported,
not corrected. Each map is measured against the TEM image and against the TEM image as
the tilted beam sees the specimen (a raised particle seen ~0.75 r down-beam and
stretched along the beam), and the one its features fit better is kept
(:func:`temsims.plans._tem_referenced.measure_against_tem`; decision 0042's amendment
"Relief": against the projection alone 4 of 11 relief maps could not constrain the
raster). Every SIMS run of every plan records the calibration it was mapped with
(``raster_cal``, :func:`temsims.plans._common.sims_md`). The instrument is left in the
TEM geometry, beam blanked, bias at 0 V.
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

#: Passes of :func:`calibrate_raster`: 1..MAX_PASSES maps.
MAX_PASSES = 4
#: The column's range of SCAN:FOV_CAL and SCAN:ROT_CAL (deg).
FOV_CAL_RANGE = (0.8, 1.2)
ROT_CAL_RANGE_DEG = 10.0
#: Fewest pixels along the map's shorter side: the field and rotation are read off the
#: features' positions across the map, so their precision grows with its size in px.
MIN_PIXELS = 64
RASTER_UNITS = {"scale": "", "rotation_deg": "deg", "stretch": "", "ncc": "",
                "residual_px": "px", "features": "", "feature_rms_px": "px", "fov_cal": "",
                "rot_cal_deg": "deg"}


def measure_raster(sims_counts: np.ndarray, tem_image: np.ndarray, sims_geometry,
                   tem_geometry: TemImageGeometry) -> dict[str, Any]:
    """The raster the map was really written with, relative to its recorded geometry,
    measured on the TEM image.

    Registration with the raster model (:func:`register_sims_to_tem`,
    ``model="raster"``): the features' positions fix the field scale, the rotation and
    the stretch along y about the recorded ones
    (:func:`temsims.analysis.registration.raster_model_parameters`). Where the fit is
    refused as within the noise, its estimate is still what the features say (a
    calibration pass that finds nothing left reports ~1 and ~0).

    Returns
    -------
    dict
        ``scale`` (true field / recorded), ``rotation_deg`` (true minus recorded),
        ``stretch`` (true y stretch / recorded), ``ncc``, ``residual_px`` (SIMS px),
        ``features`` (consistent features fitted; 0 for an intensity fit),
        ``feature_rms_px`` (their shifts' scatter about the fitted model, SIMS px, even
        where that fit was refused; NaN if none was made), ``method``
        ("features", "intensity", or "" if none) and ``measured`` (False: the features
        and the images could not constrain the model; the parameters are NaN).
    """
    reg = register_sims_to_tem(np.asarray(sims_counts, float), np.asarray(tem_image, float),
                               sims_geometry, tem_geometry, model="raster")
    affine = reg.quality.get("affine", {})
    model = affine.get("raster_model")
    method = affine.get("method", "features" if model is not None else "")
    nan = float("nan")
    ok = bool(reg.refined) and model is not None
    model = model or {}
    return {"scale": float(model.get("scale", nan)) if ok else nan,
            "rotation_deg": float(model.get("rotation_deg", nan)) if ok else nan,
            "stretch": float(model.get("stretch", nan)) if ok else nan,
            "ncc": float(reg.quality.get("ncc", nan)),
            "residual_px": float(reg.residual_sims_px),
            "features": int(affine.get("features", 0) or 0) if method == "features" else 0,
            "feature_rms_px": float(affine.get("feature_rms_px", nan)),
            "method": method if ok else "", "measured": ok}


def check_raster_args(microscope: Microscope, **kwargs: Any) -> tuple[tuple, dict]:
    """:func:`calibrate_raster`'s checks (its keyword arguments, all given): the
    parts and the checked values; raises before anything moves."""
    parts = microscope_parts(microscope, *PARTS)
    column = parts[6]
    require_settings(column, "column", ("fov_cal", "rot_cal"), "a raster calibration to write")
    args = check_calibration_args(parts, tem_fov_factor=1.5, max_passes=MAX_PASSES,
                                  **kwargs)
    if min(args["sims_pixels"]) < MIN_PIXELS:
        raise ValueError(f"sims_pixels must be >= {MIN_PIXELS} each (the raster is read "
                         f"off features across the map), got {tuple(args['sims_pixels'])}")
    return parts, args


def calibrate_raster(microscope: Microscope, *, center: tuple = (0.0, 0.0),
                     voltage_v: float = 4500.0, species: tuple = ("7Li",),
                     sims_fov_um: float = 4.0, sims_pixels: tuple = (256, 192),
                     sims_dwell_s: float = 1e-3, tem_fov_um: float | None = None,
                     exposure_s: float = 0.05, passes: int = 2,
                     md: dict | None = None) -> Plan[dict]:
    """Measure the ion raster's field and rotation errors at the working bias and
    correct them on the column.

    Sequence: TEM geometry (if not already) -> ``tem_image`` of the area at ``center``
    -> SIMS geometry at ``voltage_v`` -> ``passes`` SIMS maps at the same stage
    position, each registered on the TEM image with the raster model; after each,
    SCAN:FOV_CAL /= the scale found and SCAN:ROT_CAL -= the rotation found -> TEM
    geometry. Run :func:`~temsims.plans.coincidence.calibrate_coincidence` first if
    the coincidence offset may exceed a quarter of the map.

    Parameters
    ----------
    microscope : temsims.plans.types.Microscope
        ``stage``, ``tem``, ``camera`` (:func:`temsims.plans.tem.tem_image`), ``mode``
        (:func:`to_sims_mode`, :func:`to_tem_mode`), ``imager``, ``spectrometer``,
        ``column`` (with ``fov_cal`` and ``rot_cal``: the calibration written) and
        ``bias`` (:func:`temsims.plans.sims.sims_map`).
    center : (float, float)
        Stage position (um) of a feature-rich area both see, features spread over the
        map (on ``li2co3-particles`` the particle field, e.g. (0, 0)).
    voltage_v : float
        The working holder bias (V), 100..4500 in magnitude: the map's recorded
        incidence (the bias stretch) follows it.
    species : tuple of str
        1..4 isotopes mapped (their total is registered), showing the features.
    sims_fov_um : float
        SIMS raster width (um): the wider, the more features.
    sims_pixels : (int, int)
        SIMS map (nx, ny), each >= :data:`MIN_PIXELS`: the scale and rotation are
        read off features across the map, ~0.1 px each.
    sims_dwell_s : float
        SIMS dwell per pixel (s).
    tem_fov_um : float, optional
        TEM field of view (um), 0.05..100; default 1.5 times ``sims_fov_um`` (the map
        is stretched along y by the incidence, ~1.5 at +4.5 kV).
    exposure_s : float
        TEM exposure (s).
    passes : int
        SIMS maps, 1..4: the first measures and corrects, each later one measures what
        is left and corrects it too. 2 checks the correction.
    md : dict, optional
        Extra start metadata of every run; ``correlation_id`` links them (else a new
        uuid4).

    Yields
    ------
    msg : Msg
        ``1 + passes`` runs: the TEM image (``raster_calibration.role`` ``"tem"``),
        then each pass's SIMS map (``"sims"``, ``index`` the pass, a
        ``raster_calibration`` stream with its measurement), and the puts of
        SCAN:FOV_CAL/ROT_CAL between them.

    Returns
    -------
    dict
        ``correlation_id``, ``uids`` {"tem": uid, "sims": [uid, ...]}, ``passes`` (each
        pass's measurement, :func:`measure_raster`, with the calibration it was mapped
        with: ``fov_cal``, ``rot_cal_deg``), ``fov_cal`` and ``rot_cal_deg`` (written
        last), ``residual`` ({"scale", "rotation_deg"}: the last pass's measurement,
        what the calibration before it left), ``bias_v``.

    Raises
    ------
    TypeError, ValueError
        For any invalid argument, before anything moves.
    RuntimeError
        If a pass cannot measure the raster (too few features: choose a busier area or
        widen ``sims_fov_um``) or the calibration would leave the column's range; the
        calibration is left as the last good pass wrote it.
    """
    parts, args = check_raster_args(
        microscope, center=center, voltage_v=voltage_v, species=species,
        sims_fov_um=sims_fov_um, sims_pixels=sims_pixels, sims_dwell_s=sims_dwell_s,
        tem_fov_um=tem_fov_um, exposure_s=exposure_s, passes=passes, md=md)
    column = parts[6]
    result: dict[str, Any] = {"correlation_id": args["correlation_id"],
                              "uids": {"tem": None, "sims": []}, "passes": [],
                              "fov_cal": None, "rot_cal_deg": None, "residual": None,
                              "bias_v": args["voltage_v"]}

    def read_setting():
        fov_cal = float((yield from bps.rd(column.fov_cal, default_value=1.0)) or 1.0)
        rot_cal = float((yield from bps.rd(column.rot_cal, default_value=0.0)) or 0.0)
        return {"fov_cal": fov_cal, "rot_cal_deg": rot_cal}

    def apply_pass(n, measured, setting):
        if not measured["measured"]:
            raise RuntimeError(
                f"raster calibration pass {n + 1}: the map's features do not constrain "
                f"the raster (ncc {measured['ncc']:.2f}, residual "
                f"{measured['residual_px']:.2f} px); choose a busier area or widen "
                "sims_fov_um")
        result["residual"] = {"scale": measured["scale"],
                              "rotation_deg": measured["rotation_deg"]}
        # The deflectors write fov * FOV_CAL * (their own gain): a field found
        # ``scale`` times the recorded one is taken out by dividing the factor.
        new_fov = setting["fov_cal"] / measured["scale"]
        new_rot = setting["rot_cal_deg"] - measured["rotation_deg"]
        if not (math.isfinite(new_fov) and FOV_CAL_RANGE[0] <= new_fov <= FOV_CAL_RANGE[1]
                and math.isfinite(new_rot) and abs(new_rot) <= ROT_CAL_RANGE_DEG):
            raise RuntimeError(f"raster calibration (field factor {new_fov:.4f}, rotation "
                               f"{new_rot:+.3f} deg) is beyond the column's range "
                               f"{FOV_CAL_RANGE}, +-{ROT_CAL_RANGE_DEG:g} deg")
        yield from bps.mv(column.fov_cal, new_fov, column.rot_cal, new_rot)
        result["fov_cal"], result["rot_cal_deg"] = new_fov, new_rot

    return (yield from tem_referenced_passes(
        parts, args, key="raster_calibration", units=RASTER_UNITS,
        skip=("measured", "method"), result=result, read_setting=read_setting,
        measure=measure_raster, apply_pass=apply_pass))

__all__ = ["calibrate_raster", "check_raster_args", "measure_raster"]
