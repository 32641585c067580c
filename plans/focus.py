"""The ion probe's focus at the working bias: a through-focus series across an edge.

The holder's bias makes the extraction gap an immersion lens (decision 0044): the
probe's focus moves with the bias's size and polarity. The column compensates it from
its focus table, which leaves an error (the holder's seating, the table's age), and a
probe out of focus by ``dz`` is wider by its cone, ``~1.18 alpha dz`` in quadrature
(alpha the convergence semi-angle: 1 mrad and 10 um add 12 nm to a 7 nm probe). A lab
refocuses on the specimen after every bias change, the way an operator does:
through focus on a sharp edge, taking the setting where the edge is sharpest.

:func:`focus_probe` is a multi-run plan (like
:func:`temsims.plans.coincidence.calibrate_coincidence`): in the SIMS geometry at the
working bias, one small ``sims_map`` across a straight edge per focus setting (FOCUS
stepped about its present value), each at a fresh place along the edge (a map sputters
~10-25 nm of Li2CO3 at 1 pA), its edge fitted inside its run
(:func:`temsims.analysis.focus.edge_width`, a ``focus`` stream); then the widths
against the settings (:func:`temsims.analysis.focus.fit_focus_curve`: the defocused
cone's hyperbola), recorded in a last run of its own (``focus.role`` ``"fit"``), and
FOCUS set to the minimum. All runs share one ``correlation_id`` and carry a ``focus``
block; every SIMS run of every plan records the focus it was mapped with
(``focus_um``, :func:`temsims.plans._common.sims_md`). The focus holds for the bias
(and the specimen height) it was found at: run it again after changing them. The
instrument is left in the TEM geometry, beam blanked, bias at 0 V, the stage at the
edge.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np

from temsims.analysis.focus import edge_width, fit_focus_curve
from temsims.plans._common import (
    Values,
    check_int,
    check_number,
    check_pair,
    check_within,
    device_limits,
    microscope_parts,
    region_md,
    require_settings,
    sims_md,
    start_metadata,
    with_safe_state,
)
from temsims.plans.correlative import check_sims_voltage
from temsims.plans.mode import to_sims_mode, to_tem_mode
from temsims.plans.sims import check_sims_map_args, sims_map
from temsims.plans.types import Microscope, Plan

#: The parts the plan drives, in :func:`microscope_parts` order.
PARTS = ("stage", "mode", "imager", "spectrometer", "column", "bias")
#: The column's focus range (um): FIB:FOCUS's limits.
FOCUS_RANGE_UM = 50.0
#: Focus settings in a series: MIN_STEPS..MAX_STEPS.
MIN_STEPS, MAX_STEPS = 5, 25
#: Where the natural-Li pad of ``li2co3-particles`` has a straight edge along y with
#: nothing within 100 nm on the film's side: its left edge (x 1.80 um, y 1.80-2.04).
PAD_EDGE_UM = (1.80, 1.92)
EDGE_UNITS = {"focus_um": "um", "fwhm_nm": "nm", "fwhm_err_nm": "nm", "position_nm": "nm",
              "contrast": "counts", "chi2_dof": "", "x_um": "um", "y_um": "um"}
FIT_UNITS = {"best_focus_um": "um", "best_focus_err_um": "um", "width_at_best_nm": "nm",
             "width_at_best_err_nm": "nm", "slope_nm_per_um": "nm/um", "chi2_dof": "",
             "focus_before_um": "um", "width_before_nm": "nm"}


def measure_edge(counts: np.ndarray, pitch_nm: float) -> dict[str, Any]:
    """One map's edge (:func:`temsims.analysis.focus.edge_width`) as the stream's values:
    ``fwhm_nm``, ``fwhm_err_nm``, ``position_nm``, ``contrast``, ``chi2_dof``, ``ok``."""
    fit = edge_width(counts, pitch_nm)
    return {"fwhm_nm": fit.fwhm_nm, "fwhm_err_nm": fit.fwhm_err_nm,
            "position_nm": fit.position_nm, "contrast": fit.contrast,
            "chi2_dof": fit.chi2_dof, "ok": fit.ok}


def focus_probe(microscope: Microscope, *, edge: tuple = PAD_EDGE_UM,
                voltage_v: float = 4500.0, species: tuple = ("6Li", "7Li"),
                span_um: float = 20.0, steps: int = 9, step_along_um: float = 0.02,
                fov_um: float = 0.16, pixels: tuple = (64, 6), dwell_s: float = 1e-3,
                md: dict | None = None) -> Plan[dict]:
    """Find the ion probe's best focus at the working bias on an edge and set FOCUS to it.

    Sequence: SIMS geometry at ``voltage_v`` -> for each of ``steps`` focus settings
    (the present FOCUS +- ``span_um``): FOCUS and the stage to a fresh place along the
    edge, a ``sims_map`` across it, its edge fitted -> the widths against the settings
    fitted, a run recording the fit -> FOCUS to the best focus -> TEM geometry.

    Parameters
    ----------
    microscope : temsims.plans.types.Microscope
        ``stage`` (moved along the edge), ``mode`` (:func:`to_sims_mode`,
        :func:`to_tem_mode`), ``imager``, ``spectrometer``, ``column`` (with ``focus``:
        the setting stepped and written) and ``bias`` (:func:`temsims.plans.sims.sims_map`).
    edge : (float, float)
        Stage position (um) of a point on a straight, sharp edge that runs along the
        stage's y (the maps' columns) with nothing else within the map: default the
        left edge of ``li2co3-particles``'s natural-Li pad (:data:`PAD_EDGE_UM`).
    voltage_v : float
        The working holder bias (V), 100..4500 in magnitude: the focus depends on it.
    species : tuple of str
        1..4 isotopes mapped (their total is fitted), bright on one side of the edge.
    span_um : float
        Half-width of the series (um), 1..50: settings from FOCUS - span to FOCUS +
        span, within the column's +-50 um. The best focus must lie inside.
    steps : int
        Focus settings (maps), 5..25.
    step_along_um : float
        Stage step along the edge between maps (um), 0..1: each map on fresh ground
        (the series spans ``(steps - 1) * step_along_um`` centred on ``edge``).
    fov_um : float
        Map width across the edge (um); its pixel (``fov_um / nx``) must resolve the
        probe: 2.5 nm with the defaults.
    pixels : (int, int)
        Map (nx, ny): nx across the edge, ny lines summed along it.
    dwell_s : float
        Dwell per pixel (s).
    md : dict, optional
        Extra start metadata of every run; ``correlation_id`` links them (else a new
        uuid4).

    Yields
    ------
    msg : Msg
        ``steps + 1`` runs: each setting's map (``focus.role`` ``"map"``, ``index``, a
        ``focus`` stream with its edge), then the fit (``"fit"``, a ``focus_fit``
        stream), and the puts of FOCUS and the stage between them.

    Returns
    -------
    dict
        ``correlation_id``, ``uids`` {"maps": [uid, ...], "fit": uid}, ``edges`` (each
        map's :func:`measure_edge` with its ``focus_um``), ``best_focus_um`` and its
        error, ``width_at_best_nm`` (the edge's FWHM there: probe, pixel and the
        ion-solid interaction together), ``width_before_nm`` (the fit's width at the
        focus before), ``focus_before_um``, ``focus_um`` (written), ``bias_v``.

    Raises
    ------
    TypeError, ValueError
        For any invalid argument, before anything moves.
    RuntimeError
        If fewer than 5 maps show an edge, or the best focus lies outside the series
        (widen ``span_um`` or centre FOCUS nearer): FOCUS is put back as it was.
    """
    stage, mode, imager, spectrometer, column, bias = microscope_parts(microscope, *PARTS)
    require_settings(column, "column", ("focus",), "a focus setting to step and write")
    edge = check_pair("edge", edge, unit="um")
    voltage_v = check_sims_voltage(voltage_v)
    labels, fov_um, pixels, dwell_s, _, md = check_sims_map_args(
        imager, spectrometer, column, stage, bias, species, fov_um, pixels, dwell_s, 1, md)
    span_um = check_number("span_um", span_um, low=1.0, high=FOCUS_RANGE_UM, unit="um")
    steps = check_int("steps", steps, low=MIN_STEPS, high=MAX_STEPS)
    step_along_um = check_number("step_along_um", step_along_um, low=0.0, high=1.0, unit="um")
    if pixels[0] < 16:
        raise ValueError(f"pixels[0] = {pixels[0]}: the edge's profile needs >= 16 pixels")
    along = [edge[1] + (k - (steps - 1) / 2.0) * step_along_um for k in range(steps)]
    check_within("edge[0]", edge[0], device_limits(stage.x), "um")
    for name, y in (("edge[1] - series", along[0]), ("edge[1] + series", along[-1])):
        check_within(name, y, device_limits(stage.y), "um")
    cid = md.get("correlation_id") or str(uuid.uuid4())
    base_md = {**md, "correlation_id": cid}
    pitch_nm = 1000.0 * fov_um / pixels[0]
    plan_args = {"edge": list(edge), "voltage_v": voltage_v, "species": list(labels),
                 "span_um": span_um, "steps": steps, "step_along_um": step_along_um,
                 "fov_um": fov_um, "pixels": list(pixels), "dwell_s": dwell_s}
    result: dict[str, Any] = {"correlation_id": cid, "uids": {"maps": [], "fit": None},
                              "edges": [], "best_focus_um": None, "best_focus_err_um": None,
                              "width_at_best_nm": None, "width_before_nm": None,
                              "focus_before_um": None, "focus_um": None, "bias_v": voltage_v}

    def body():
        # Read (not moved) before anything moves: the series is centred on it.
        before = float((yield from bps.rd(column.focus, default_value=0.0)) or 0.0)
        rotation = float((yield from bps.rd(column.scan.rotation, default_value=0.0)) or 0.0)
        if abs(math.remainder(rotation, 180.0)) > 1.0:
            raise ValueError(f"SCAN:ROTATION = {rotation:g} deg: the maps' rows must cross "
                             "the edge (rotation 0 or 180 deg)")
        settings = [before + span_um * (2.0 * k / (steps - 1) - 1.0) for k in range(steps)]
        if max(abs(settings[0]), abs(settings[-1])) > FOCUS_RANGE_UM:
            raise ValueError(f"focus series {settings[0]:+.1f}..{settings[-1]:+.1f} um (FOCUS "
                             f"{before:+.1f} +- span_um {span_um:g}) leaves the column's "
                             f"+-{FOCUS_RANGE_UM:g} um")
        result["focus_before_um"] = before
        block = {"voltage_v": voltage_v, "edge_um": list(edge), "species": list(labels),
                 "fov_um": fov_um, "pixels": list(pixels), "dwell_s": dwell_s,
                 "settings_um": settings, "step_along_um": step_along_um,
                 "focus_before_um": before}
        yield from to_sims_mode(mode, voltage_v=voltage_v)
        for k, (focus, y) in enumerate(zip(settings, along, strict=True)):
            yield from bps.checkpoint()
            yield from bps.mv(column.focus, focus, stage.x, edge[0], stage.y, y)
            measured: dict[str, Any] = {}

            def after_map(maps, layout, focus=focus, y=y, measured=measured):
                if maps is None:  # a simulation: nothing mapped
                    return
                total = sum(np.clip(np.asarray(maps[s], float), 0, None) for s in labels)
                measured.update(measure_edge(total, pitch_nm), focus_um=focus,
                                x_um=edge[0], y_um=y)
                buf = Values("focus", units=EDGE_UNITS)
                buf.set_values(**{n: float(v) for n, v in measured.items() if n != "ok"})
                yield from bps.trigger_and_read([buf], name="focus")

            result["uids"]["maps"].append((yield from sims_map(
                imager, spectrometer, column, stage, bias, species=labels, fov_um=fov_um,
                pixels=pixels, dwell_s=dwell_s, after_map=after_map,
                md={**base_md, "focus": dict(block, role="map", index=k,
                                             focus_um=focus)})))
            if measured:
                result["edges"].append(measured)
        if not result["edges"]:  # a simulation
            yield from to_tem_mode(mode)
            return result
        good = [e for e in result["edges"] if e["ok"]]
        if len(good) < MIN_STEPS:
            yield from bps.mv(column.focus, before)
            raise RuntimeError(f"focus_probe: only {len(good)} of {steps} maps show an edge "
                               "at (edge); is it in the field?")
        fit = fit_focus_curve([e["focus_um"] for e in good], [e["fwhm_nm"] for e in good],
                              [e["fwhm_err_nm"] for e in good])
        values = {"best_focus_um": fit.best_focus_um,
                  "best_focus_err_um": fit.best_focus_err_um,
                  "width_at_best_nm": fit.width_at_best_nm,
                  "width_at_best_err_nm": fit.width_at_best_err_nm,
                  "slope_nm_per_um": fit.slope_nm_per_um, "chi2_dof": fit.chi2_dof,
                  "focus_before_um": before,
                  "width_before_nm": float(fit.width_nm(before))}
        result.update({k: values[k] for k in ("best_focus_um", "best_focus_err_um",
                                              "width_at_best_nm", "width_before_nm")})
        usable = fit.inside and abs(fit.best_focus_um) <= FOCUS_RANGE_UM
        yield from bps.mv(column.focus, fit.best_focus_um if usable else before)
        region = yield from region_md(stage, fov_um=fov_um, x_um=edge[0], y_um=edge[1])
        sims = yield from sims_md(spectrometer, column, bias)
        fit_md = start_metadata(
            plan_name="focus_probe", plan_args=plan_args, mode="SIMS", region=region,
            md=base_md, sims=sims, extra={"focus": dict(
                block, role="fit", inside=fit.inside, applied=usable,
                map_uids=list(result["uids"]["maps"]),
                model="w(f)^2 = w0^2 + K^2 (f - f0)^2 (analysis.focus)")})

        @bpp.run_decorator(md=fit_md)
        def record():
            buf = Values("focus_fit", units=FIT_UNITS)
            buf.set_values(**values)
            yield from bps.trigger_and_read([buf], name="focus_fit")

        result["uids"]["fit"] = yield from record()
        if not usable:
            raise RuntimeError(
                f"focus_probe: the best focus {fit.best_focus_um:+.1f} um lies outside the "
                f"series {settings[0]:+.1f}..{settings[-1]:+.1f} um (or the column's "
                f"+-{FOCUS_RANGE_UM:g} um); FOCUS left at {before:+.1f} um: widen span_um or "
                "centre FOCUS nearer")
        result["focus_um"] = fit.best_focus_um
        yield from to_tem_mode(mode)
        return result

    return (yield from with_safe_state(body(), column, bias))


__all__ = ["PAD_EDGE_UM", "focus_probe", "measure_edge"]
