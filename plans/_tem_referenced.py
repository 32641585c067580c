"""What the calibrations measured against a TEM image share (decisions 0042, 0029).

:func:`temsims.plans.coincidence.calibrate_coincidence` and
:func:`temsims.plans.raster_calibration.calibrate_raster` run one sequence: a
``tem_image`` of a feature-rich area in the TEM geometry, then in the SIMS geometry at
the working bias one ``sims_map`` per pass, each measured against the TEM image inside
its run (a stream named after the calibration) and folded into the column's setting
before the next pass. Each map is measured against the TEM image and against the TEM
image as the tilted beam sees a raised specimen
(:func:`temsims.plans._parallax.beam_view_reference`), and the one whose features fit
the model better is kept (:func:`measure_against_tem`; the stream's ``beam_view`` says
which): on relief the TEM's projection scatters the features' shifts with the
particles' sizes and moves them ~0.75 r down-beam on average (decision 0042's
amendment "Relief"). They differ in what they measure and what they write:
:func:`check_calibration_args` validates the arguments both take, and
:func:`tem_referenced_passes` runs the sequence with the calibration's own
``read_setting``, ``measure`` and ``apply_pass``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Generator
from typing import Any

import bluesky.plan_stubs as bps
import numpy as np

from temsims.analysis.geometry import TemImageGeometry
from temsims.analysis.registration import register_sims_to_tem
from temsims.constants import SIMS_TILT_DEG
from temsims.plans._common import (
    Values,
    check_int,
    check_number,
    check_pair,
    check_within,
    device_limits,
    with_safe_state,
)
from temsims.plans._parallax import beam_view_reference
from temsims.plans.correlative import check_sims_voltage, ensure_tem_mode
from temsims.plans.mode import to_sims_mode, to_tem_mode
from temsims.plans.sims import check_sims_map_args, sims_map
from temsims.plans.tem import EXPOSURE_RANGE_S, FOV_RANGE_UM, tem_image

#: The parts both calibrations drive, in :func:`microscope_parts` order.
PARTS = ("stage", "tem", "camera", "mode", "imager", "spectrometer", "column", "bias")


def check_calibration_args(parts: tuple, *, center, voltage_v, species, sims_fov_um,
                           sims_pixels, sims_dwell_s, tem_fov_um, tem_fov_factor: float,
                           exposure_s, passes, max_passes: int, md) -> dict[str, Any]:
    """Validate a TEM-referenced calibration's arguments before anything moves.

    ``tem_fov_um`` None becomes ``tem_fov_factor`` times the map's field (within the
    TEM's range). Returns the checked values (``labels`` for ``species``) with the
    start documents' ``block`` and ``base_md`` (one ``correlation_id`` for the runs).
    """
    stage, _, _, _, imager, spectrometer, column, bias = parts
    center = check_pair("center", center, unit="um")
    check_within("center[0]", center[0], device_limits(stage.x), "um")
    check_within("center[1]", center[1], device_limits(stage.y), "um")
    voltage_v = check_sims_voltage(voltage_v)
    labels, sims_fov_um, sims_pixels, sims_dwell_s, _, md = check_sims_map_args(
        imager, spectrometer, column, stage, bias, species, sims_fov_um, sims_pixels,
        sims_dwell_s, 1, md, arg_names={"pixels": "sims_pixels", "dwell_s": "sims_dwell_s",
                                        "fov_um": "sims_fov_um"})
    if tem_fov_um is None:
        tem_fov_um = min(FOV_RANGE_UM[1], tem_fov_factor * sims_fov_um)
    tem_fov_um = check_number("tem_fov_um", tem_fov_um, low=FOV_RANGE_UM[0],
                              high=FOV_RANGE_UM[1], unit="um")
    exposure_s = check_number("exposure_s", exposure_s, low=EXPOSURE_RANGE_S[0],
                              high=EXPOSURE_RANGE_S[1], unit="s")
    passes = check_int("passes", passes, low=1, high=max_passes)
    cid = md.get("correlation_id") or str(uuid.uuid4())
    block = {"voltage_v": voltage_v, "tilt_deg": SIMS_TILT_DEG, "center_um": list(center),
             "species": list(labels), "sims_fov_um": sims_fov_um,
             "sims_pixels": list(sims_pixels), "tem_fov_um": tem_fov_um, "passes": passes}
    return {"center": center, "voltage_v": voltage_v, "labels": labels,
            "sims_fov_um": sims_fov_um, "sims_pixels": sims_pixels,
            "sims_dwell_s": sims_dwell_s, "tem_fov_um": tem_fov_um, "exposure_s": exposure_s,
            "passes": passes, "block": block, "base_md": {**md, "correlation_id": cid},
            "correlation_id": cid}


def _trusted(measured: dict[str, Any]) -> bool:
    return bool(measured.get("measured", measured.get("refined", False)))


def _score(measured: dict[str, Any]) -> tuple:
    rms = float(measured.get("feature_rms_px", np.nan))
    ncc = float(measured.get("ncc", np.nan))
    return (_trusted(measured), -rms if np.isfinite(rms) else -np.inf,
            ncc if np.isfinite(ncc) else -np.inf)


def measure_against_tem(measure: Callable[..., dict[str, Any]], sims_counts: np.ndarray,
                        tem_image: np.ndarray, sims_geometry, tem_geometry: TemImageGeometry,
                        *, contrast_ug_cm2: float | None,
                        views: dict | None = None) -> dict[str, Any]:
    """``measure`` of a SIMS map against the TEM image and against the TEM image as the
    tilted beam sees the specimen (:func:`temsims.plans._parallax.beam_view_reference`
    at the map's recorded incidence; only with the TEM's mass-thickness contrast
    ``contrast_ug_cm2``), with ``beam_view`` 1.0 for the beam's view: of the
    trustworthy ones (``measured`` or ``refined`` true) the one whose features scatter
    least about the fitted raster model (``feature_rms_px``: the measurement's own, else
    a raster-model registration's, added), else the better correlated.

    A raised particle is seen ~0.75 r down-beam of its TEM projection and stretched to
    ~2.6 r along the beam at 50 deg: against the projection the features' shifts scatter
    with the particles' sizes (0.7-1.2 px rms on the twin with relief, 0.2-0.4 against
    the beam's view) and can leave the raster unconstrained; a map rendered as the
    projection (the twin without relief) scatters 0.1-0.2 px against it and 0.8-1.1
    against the beam's view. The correlation coefficient tells them apart less well
    (the beam's view correlated better with 2 maps of 2 without relief). ``views``
    caches the beam's views by incidence (one TEM image).
    """
    views = {} if views is None else views
    refs = [(0.0, tem_image)]
    if contrast_ug_cm2 is not None and float(contrast_ug_cm2) > 0:
        incidence = float(sims_geometry.incidence_deg)
        if incidence not in views:
            views[incidence] = beam_view_reference(
                tem_image, fov_um=tem_geometry.fov_um, contrast_ug_cm2=float(contrast_ug_cm2),
                incidence_deg=incidence)
        refs.append((1.0, views[incidence]))
    found = []
    for flag, ref in refs:
        m = dict(measure(sims_counts, ref, sims_geometry, tem_geometry), beam_view=flag)
        if "feature_rms_px" not in m and len(refs) > 1:
            m["feature_rms_px"] = _feature_rms_px(sims_counts, ref, sims_geometry,
                                                  tem_geometry)
        found.append(m)
    return max(found, key=_score)


def _feature_rms_px(sims_counts, tem_image, sims_geometry, tem_geometry) -> float:
    """The scatter (SIMS px) of the map's features about the raster model fitted on
    ``tem_image`` (:func:`register_sims_to_tem`, ``model="raster"``, shifts up to 0.4
    of the map as the coincidence's): for a measurement that fits none itself."""
    counts = np.asarray(sims_counts, float)
    reg = register_sims_to_tem(counts, np.asarray(tem_image, float), sims_geometry,
                               tem_geometry, model="raster",
                               max_shift_px=0.4 * min(counts.shape))
    return float(reg.quality.get("affine", {}).get("feature_rms_px", np.nan))


def tem_referenced_passes(
        parts: tuple, args: dict[str, Any], *, key: str, units: dict[str, str],
        skip: tuple[str, ...], result: dict[str, Any],
        read_setting: Callable[[], Generator[Any, Any, dict[str, float]]],
        measure: Callable[..., dict[str, Any]],
        apply_pass: Callable[[int, dict, dict], Generator[Any, Any, None]]):
    """The TEM image, then ``args["passes"]`` SIMS maps each measured against it and
    against its beam's view (:func:`measure_against_tem`; the stream's ``beam_view``).

    Parameters
    ----------
    parts
        The :data:`PARTS`, in order.
    args
        :func:`check_calibration_args`' result.
    key
        The start documents' block and the measurement stream's name.
    units
        The stream's units per field.
    skip
        ``measure``'s keys that are not numbers for the stream.
    result
        The plan's result: ``uids`` (``tem``, ``sims``) and ``passes`` are filled here.
    read_setting
        Plan reading the column's setting before a pass (the stream records it).
    measure
        ``(sims_counts, tem_image, sims_geometry, tem_geometry) -> dict`` with ``ncc``
        and ``measured`` or ``refined`` (False: nothing trustworthy).
    apply_pass
        Plan given ``(index, measured, setting)``: refuses a pass that measured
        nothing and writes the new setting (the next pass measures what it left).
    """
    stage, tem, camera, mode, imager, spectrometer, column, bias = parts
    block, base_md, labels = args["block"], args["base_md"], args["labels"]
    center, tem_fov_um = args["center"], args["tem_fov_um"]
    seen: dict[str, Any] = {}
    units = {**units, "beam_view": "", "feature_rms_px": "px"}
    views: dict = {}

    def keep_image(image):
        seen["tem"] = image
        yield from bps.null()

    def body():
        yield from ensure_tem_mode(stage, mode)
        result["uids"]["tem"] = yield from tem_image(
            stage, tem, camera, x_um=center[0], y_um=center[1], fov_um=tem_fov_um,
            exposure_s=args["exposure_s"], after_image=keep_image,
            md={**base_md, key: dict(block, role="tem")})
        image = seen.get("tem")
        contrast = yield from bps.rd(tem.contrast, default_value=None)
        tem_geometry = None if image is None else TemImageGeometry(
            size=int(np.shape(image)[0]), fov_um=tem_fov_um, centre_x_um=center[0],
            centre_y_um=center[1])
        yield from to_sims_mode(mode, voltage_v=args["voltage_v"])
        for n in range(args["passes"]):
            yield from bps.checkpoint()
            setting = yield from read_setting()
            measured: dict[str, Any] = {}

            def after_map(maps, layout, setting=setting, measured=measured):
                if maps is None or tem_geometry is None:  # a simulation: nothing mapped
                    return
                total = sum(np.clip(np.asarray(maps[s], float), 0, None) for s in labels)
                measured.update(measure_against_tem(
                    measure, total, image, layout.geometry(), tem_geometry,
                    contrast_ug_cm2=contrast, views=views))
                buf = Values(key, units=units)
                buf.set_values(**{k: float(v) for k, v in measured.items() if k not in skip},
                               **setting)
                yield from bps.trigger_and_read([buf], name=key)

            result["uids"]["sims"].append((yield from sims_map(
                imager, spectrometer, column, stage, bias, species=labels,
                fov_um=args["sims_fov_um"], pixels=args["sims_pixels"],
                dwell_s=args["sims_dwell_s"], after_map=after_map,
                md={**base_md, key: dict(block, role="sims", index=n)})))
            if not measured:  # a simulation
                continue
            result["passes"].append(dict(measured, **setting))
            yield from apply_pass(n, measured, setting)
        yield from to_tem_mode(mode)
        return result

    return (yield from with_safe_state(body(), column, bias))
