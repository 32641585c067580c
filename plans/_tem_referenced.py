"""What the calibrations measured against a TEM image share (decisions 0042, 0029).

:func:`temsims.plans.coincidence.calibrate_coincidence` and
:func:`temsims.plans.raster_calibration.calibrate_raster` run one sequence: a
``tem_image`` of a feature-rich area in the TEM geometry, then in the SIMS geometry at
the working bias one ``sims_map`` per pass, each measured against the TEM image inside
its run (a stream named after the calibration) and folded into the column's setting
before the next pass. They differ in what they measure and what they write:
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


def tem_referenced_passes(
        parts: tuple, args: dict[str, Any], *, key: str, units: dict[str, str],
        skip: tuple[str, ...], result: dict[str, Any],
        read_setting: Callable[[], Generator[Any, Any, dict[str, float]]],
        measure: Callable[..., dict[str, Any]],
        apply_pass: Callable[[int, dict, dict], Generator[Any, Any, None]]):
    """The TEM image, then ``args["passes"]`` SIMS maps each measured against it.

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
        ``(sims_counts, tem_image, sims_geometry, tem_geometry) -> dict``.
    apply_pass
        Plan given ``(index, measured, setting)``: refuses a pass that measured
        nothing and writes the new setting (the next pass measures what it left).
    """
    stage, tem, camera, mode, imager, spectrometer, column, bias = parts
    block, base_md, labels = args["block"], args["base_md"], args["labels"]
    center, tem_fov_um = args["center"], args["tem_fov_um"]
    seen: dict[str, Any] = {}

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
                measured.update(measure(total, image, layout.geometry(), tem_geometry))
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
