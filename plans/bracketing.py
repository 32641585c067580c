"""Standard bracketing of SIMS isotope ratios: reference, unknowns, reference.

:func:`bracketed_sims_maps` maps the specimen's isotope standard (a natural-Li
Li2CO3 pad for ``li2co3-particles``: :data:`temsims.constants.REFERENCE_REGIONS`),
then the unknown fields, then the standard again, under one ``bracketing_id``. The
two reference maps give the factor ``K = R_certified / R_measured`` that undoes the
instrumental mass fractionation and the collectors' yields, interpolated in time
for each unknown (:mod:`temsims.analysis.bracketing`, decision 0035). The runs:

* ``sims_map`` of the reference, ``bracketing.role = "reference"``,
  ``bracketing.position = "before"``;
* one ``sims_map`` per unknown field, ``role = "unknown"``, ``index`` 0, 1, ...;
* ``sims_map`` of the reference, ``position = "after"``, with a ``bracketing``
  stream: one event with the correction (K before and after, their errors, the
  drift) and one per unknown with its ``K`` and ``sigma_K`` at the unknown's time.

Every start document carries the ``bracketing`` block (``bracketing_id``, ``role``,
``reference``: where the standard is and its certified ratio) and the shared
``correlation_id``. Apply the factors with ``correction=(K, sigma_K)`` in
:func:`temsims.analysis.particles.find_particles`,
:func:`temsims.analysis.isotopes.ratio_map` or ``ratio_of_region``, or pass them to
:func:`temsims.plans.find_labelled_particles`.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Mapping
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp

from temsims.analysis.bracketing import bracketing_correction, reference_measurement
from temsims.constants import reference_region
from temsims.plans._common import (
    Values,
    check_calibration_policy,
    check_dead_time_calibration,
    check_md,
    check_number,
    check_pair,
    check_species,
    check_within,
    device_limits,
    microscope_parts,
    plan_args_md,
    read_primary_current,
    with_safe_state,
)
from temsims.plans.correlative import PARTS, check_sims_voltage
from temsims.plans.mode import to_sims_mode, to_tem_mode
from temsims.plans.sims import DWELL_RANGE_S, MAX_PIXELS_PER_SIDE, sims_map
from temsims.plans.types import Microscope, Plan

PLAN_NAME = "bracketed_sims_maps"
#: Dead time (s) assumed when the spectrometer does not report DEAD_TIME (simulation).
DEFAULT_DEAD_TIME_S = 30e-9
#: Most unknown fields in one bracket.
MAX_UNKNOWNS = 20
#: Fields of the ``bracketing`` stream of the after-reference run.
BRACKET_UNITS = {"time_s": "s", "k": "", "sigma_k": ""}


def check_reference(reference: Any, stage) -> dict:
    """A checked isotope standard: a specimen name of
    :data:`temsims.constants.REFERENCE_REGIONS`, or a dict with ``x_um``, ``y_um``,
    ``value`` (its certified ratio) and optionally ``sigma`` and ``width_um``."""
    if isinstance(reference, str):
        ref = reference_region(reference)
        if ref is None:
            raise ValueError(f"reference = {reference!r}: no isotope standard is known on "
                             f"that specimen (temsims.constants.REFERENCE_REGIONS); give "
                             "a dict with x_um, y_um and value")
    elif isinstance(reference, Mapping):
        ref = dict(reference)
    else:
        raise TypeError(f"reference must be a specimen name or a dict, got {reference!r}")
    for key in ("x_um", "y_um", "value"):
        if key not in ref:
            raise ValueError(f"reference needs {key!r} (has {sorted(ref)})")
    ref["x_um"] = check_number("reference['x_um']", ref["x_um"], unit="um")
    ref["y_um"] = check_number("reference['y_um']", ref["y_um"], unit="um")
    check_within("reference['x_um']", ref["x_um"], device_limits(stage.x), "um")
    check_within("reference['y_um']", ref["y_um"], device_limits(stage.y), "um")
    ref["value"] = check_number("reference['value']", ref["value"], low=0.0, low_open=True)
    ref["sigma"] = check_number("reference['sigma']", ref.get("sigma", 0.0), low=0.0)
    return ref


def check_reference_map(reference: Any, reference_fov_um: float, reference_pixels,
                        stage, column) -> tuple[dict, float, tuple[int, int]]:
    """The checked standard (:func:`check_reference`) and the raster of its reference
    maps: a field inside the standard and within the column's limits, and pixels."""
    ref = check_reference(reference, stage)
    ref_fov = check_number("reference_fov_um", reference_fov_um, low=0.0, low_open=True,
                           unit="um")
    check_within("reference_fov_um", ref_fov, device_limits(column.scan.fov), "um")
    if "width_um" in ref and ref_fov > ref["width_um"]:
        raise ValueError(f"reference_fov_um = {ref_fov:g} um is wider than the standard "
                         f"({ref['width_um']:g} um): the map would count its surroundings")
    ref_pixels = check_pair("reference_pixels", reference_pixels, integer=True, low=1,
                            high=MAX_PIXELS_PER_SIDE)
    return ref, ref_fov, ref_pixels


def reference_run(parts: tuple, ref: dict, *, labels: tuple, fov_um: float, pixels: tuple,
                  dwell_s: float, dead_time_s: float, min_counts: float, block: dict,
                  md: dict, on_measured, primary_current_pa: float | None = None
                  ) -> Plan[str]:
    """One ``sims_map`` run of the standard (stage moved to it first); its maps become
    a :class:`~temsims.analysis.bracketing.ReferenceMeasurement` handed to
    ``on_measured(measurement)`` (a plan: it may read into the run's streams).
    ``parts``: (stage, imager, spectrometer, column, bias). With ``primary_current_pa``
    the counts are corrected for quasi-simultaneous arrival (decision 0043)."""
    stage, imager, spectrometer, column, bias = parts
    t0 = time.time()

    def analyse(maps, layout):
        if maps is None:  # a simulation: nothing was mapped
            return
        # Wall time: the interpolation uses ratios of intervals, which the instrument's
        # clock (the wall clock times a constant scale) keeps.
        m = reference_measurement(maps[labels[0]], maps[labels[1]],
                                  time_s=0.5 * (t0 + time.time()), dwell_s=dwell_s,
                                  dead_time_s=dead_time_s, min_counts=min_counts,
                                  primary_current_pa=primary_current_pa)
        yield from on_measured(m)

    yield from bps.mv(stage.x, ref["x_um"], stage.y, ref["y_um"])
    return (yield from sims_map(imager, spectrometer, column, stage, bias, species=labels,
                                fov_um=fov_um, pixels=pixels, dwell_s=dwell_s,
                                after_map=analyse, md={**md, "bracketing": block}))


def bracket_values(corr, uids: list, times: list) -> Plan[list]:
    """The ``bracketing`` stream of an after-reference run: ``K`` and ``sigma_K`` of
    each unknown (run uid, time); returns them as dicts."""
    out = []
    buf = Values("bracketing", units=BRACKET_UNITS)
    for uid, t in zip(uids, times, strict=True):
        k, sk = corr.factor(t)
        out.append({"uid": uid, "time_s": t, "k": k, "sigma_k": sk})
        buf.set_values(unknown_uid=uid, time_s=t, k=k, sigma_k=sk)
        yield from bps.trigger_and_read([buf], name="bracketing")
    return out


def bracketed_sims_maps(microscope: Microscope, *, centers: list, fov_um: float,
                        pixels: tuple = (64, 45), dwell_s: float = 1e-3,
                        species: tuple = ("6Li", "7Li"),
                        reference: str | dict = "li2co3-particles",
                        reference_fov_um: float = 0.2, reference_pixels: tuple = (16, 16),
                        aperture: str | None = None, sims_voltage_v: float = 4500.0,
                        min_reference_counts: float = 1000.0,
                        calibration: str = "warn",
                        md: dict | None = None) -> Plan[dict]:
    """Map the isotope standard, the unknown fields, and the standard again.

    Parameters
    ----------
    microscope : temsims.plans.types.Microscope
        The instrument (``stage``, ``mode``, ``imager``, ``spectrometer``, ``column``,
        ``bias``; as :func:`temsims.plans.correlative.correlative_tem_sims`).
    centers : list of (float, float)
        Stage positions (um) of the unknown fields, 1..20 of them, mapped in order.
    fov_um : float
        Raster width of each unknown map (um).
    pixels : (int, int)
        Unknown maps' (nx, ny), each 1..1024.
    dwell_s : float
        Dwell per pixel (s) of every map (the references' too: the same conditions).
    species : (str, str)
        Numerator and denominator isotope of the ratio (default 6Li/7Li).
    reference : str or dict
        The standard: a specimen name (its standard from
        :data:`temsims.constants.REFERENCE_REGIONS`) or a dict with ``x_um``,
        ``y_um`` (its centre on the stage), ``value`` (certified ratio) and
        ``sigma``.
    reference_fov_um : float
        Raster width of each reference map (um): inside the standard (the pad is
        0.24 um wide; the map's y extent is fov x ny / nx / cos 45).
    reference_pixels : (int, int)
        Reference maps' (nx, ny).
    aperture : str, optional
        Ion-column aperture of every map (e.g. ``"100 pA"``: the same conditions for
        the standard and the unknowns), restored after the bracket. ``None``: the
        present one.
    sims_voltage_v : float
        Holder bias in SIMS (V), 100..4500 in magnitude.
    min_reference_counts : float
        Fewest numerator counts a reference map must give (else the plan fails
        after it: the beam is not on the standard), >= 0.
    calibration : {"warn", "refuse", "ignore"}
        What to do when the spectrometer's dead time is only the maker's nominal one
        (DEAD_TIME:SOURCE "nominal":
        :func:`temsims.plans._common.check_dead_time_calibration`): log a warning,
        refuse before anything moves (run ``calibrate_dead_time`` first), or not
        check. The standard's 7Li counts at MHz, where a wrong dead time biases K
        by several per cent. Recorded in every run's ``bracketing`` block
        (``dead_time_source``, ``dead_time_problems``).
    md : dict, optional
        Extra start metadata of every run (``correlation_id`` links them; it is
        also the ``bracketing_id`` unless ``md["bracketing_id"]`` is given).

    Yields
    ------
    msg : Msg
        ``2 + len(centers)`` ``sims_map`` runs (see the module docstring).

    Returns
    -------
    dict
        ``bracketing_id``, ``uids`` {"reference_before", "unknowns" (list),
        "reference_after"}, ``correction`` (:meth:`BracketCorrection.to_dict`) and
        ``factors``: ``[{"uid", "time_s", "k", "sigma_k"}]`` per unknown. In a
        simulation (no documents) ``correction`` and ``factors`` are None. The
        references are corrected for quasi-simultaneous arrival with the column's
        current (decision 0043; ``primary_current_pa`` in every run's ``bracketing``
        block): correct the unknowns' counts the same way before applying K
        (``ratio_of_region(..., primary_current_pa=...)``).

    Raises
    ------
    TypeError, ValueError
        For any invalid argument, before any message that moves or triggers.
    """
    stage, mode, imager, spectrometer, column, bias = microscope_parts(
        microscope, "stage", "mode", "imager", "spectrometer", "column", "bias")
    if isinstance(centers, str | bytes) or not isinstance(centers, list | tuple):
        raise TypeError(f"centers must be a list of (x_um, y_um), got {centers!r}")
    if not 1 <= len(centers) <= MAX_UNKNOWNS:
        raise ValueError(f"centers: 1..{MAX_UNKNOWNS} fields, got {len(centers)}")
    fields = []
    for i, c in enumerate(centers):
        xy = check_pair(f"centers[{i}]", c, unit="um")
        check_within(f"centers[{i}][0]", xy[0], device_limits(stage.x), "um")
        check_within(f"centers[{i}][1]", xy[1], device_limits(stage.y), "um")
        fields.append(xy)
    fov_um = check_number("fov_um", fov_um, low=0.0, low_open=True, unit="um")
    check_within("fov_um", fov_um, device_limits(column.scan.fov), "um")
    pixels = check_pair("pixels", pixels, integer=True, low=1, high=MAX_PIXELS_PER_SIDE)
    dwell_s = check_number("dwell_s", dwell_s, low=DWELL_RANGE_S[0], high=DWELL_RANGE_S[1],
                           unit="s")
    labels = check_species("species", species, min_n=2, max_n=2)
    ref, ref_fov, ref_pixels = check_reference_map(reference, reference_fov_um,
                                                   reference_pixels, stage, column)
    if aperture is not None:
        if not isinstance(aperture, str):
            raise TypeError(f"aperture must be an aperture name such as '100 pA' or None, "
                            f"got {aperture!r}")
        names = tuple(getattr(column.aperture, "enum_strs", None) or ())
        if names and aperture not in names:
            raise ValueError(f"aperture {aperture!r} is not one of the column's apertures "
                             f"{list(names)}")
    volts = check_sims_voltage(sims_voltage_v)
    min_counts = check_number("min_reference_counts", min_reference_counts, low=0.0,
                              unit="counts")
    calibration = check_calibration_policy(calibration)
    md = check_md(md)
    bid = md["bracketing_id"] if "bracketing_id" in md else (
        md.get("correlation_id") or str(uuid.uuid4()))
    if not isinstance(bid, str) or not bid.strip():
        raise ValueError(f"md['bracketing_id'] must be a non-empty string, got {bid!r}")
    plan_args = plan_args_md(
        microscope={name: getattr(microscope, name) for name in PARTS if
                    hasattr(microscope, name)}, centers=fields, fov_um=fov_um,
        pixels=pixels, dwell_s=dwell_s, species=labels, reference=ref,
        reference_fov_um=ref_fov, reference_pixels=ref_pixels, aperture=aperture,
        sims_voltage_v=volts,
        min_reference_counts=min_counts, calibration=calibration)
    common = {"bracketing_id": bid, "parent_plan": PLAN_NAME, "parent_plan_args": plan_args,
              "species": list(labels), "ratio": f"{labels[0]}/{labels[1]}",
              "reference": {k: ref[k] for k in sorted(ref)}}
    base_md = {**md, "correlation_id": md.get("correlation_id") or bid}
    result: dict[str, Any] = {"bracketing_id": bid,
                              "uids": {"reference_before": None, "unknowns": [],
                                       "reference_after": None},
                              "correction": None, "factors": None}
    state: dict[str, Any] = {"before": None, "times": []}

    def body():
        old_aperture = None
        if aperture is not None:
            old_aperture = yield from bps.rd(column.aperture, default_value=None)
            yield from bps.mv(column.aperture, aperture)

        def restore():
            if old_aperture is not None:
                yield from bps.mv(column.blank, "Blanked")
                yield from bps.mv(column.aperture, str(old_aperture))

        return (yield from bpp.finalize_wrapper(bracket(), restore()))

    def bracket():
        tau = common["dead_time_s"]
        yield from to_sims_mode(mode, voltage_v=volts)
        # The references' quasi-simultaneous arrival is corrected (decision 0043): the
        # unknowns' ratios take K only after the same correction with this current.
        current = yield from read_primary_current(column)
        common["primary_current_pa"] = current

        def reference_map(position: str):
            def measured(m):
                if position == "before":
                    state["before"] = m
                    return
                corr = bracketing_correction(state["before"], m,
                                             certified_ratio=ref["value"],
                                             certified_sigma=ref["sigma"])
                result["correction"] = corr.to_dict()
                result["factors"] = yield from bracket_values(
                    corr, result["uids"]["unknowns"], state["times"])

            block = dict(common, role="reference", position=position, index=None)
            uid = yield from reference_run(
                (stage, imager, spectrometer, column, bias), ref, labels=labels,
                fov_um=ref_fov, pixels=ref_pixels, dwell_s=dwell_s, dead_time_s=tau,
                min_counts=min_counts, block=block, md=base_md, on_measured=measured,
                primary_current_pa=current)
            result["uids"][f"reference_{position}"] = uid

        yield from reference_map("before")
        for i, (x, y) in enumerate(fields):
            yield from bps.checkpoint()
            yield from bps.mv(stage.x, x, stage.y, y)
            t0 = time.time()
            block = dict(common, role="unknown", position=None, index=i)
            uid = yield from sims_map(imager, spectrometer, column, stage, bias,
                                      species=labels, fov_um=fov_um, pixels=pixels,
                                      dwell_s=dwell_s, md={**base_md, "bracketing": block})
            state["times"].append(0.5 * (t0 + time.time()))
            result["uids"]["unknowns"].append(uid)
        yield from reference_map("after")
        yield from to_tem_mode(mode)
        return result

    # Reads only: refused here (calibration="refuse") before anything moves, and
    # before the safe state's finaliser would blank the beam and ramp the bias.
    tau, source, problems = yield from check_dead_time_calibration(
        spectrometer, calibration, plan=PLAN_NAME, default=DEFAULT_DEAD_TIME_S)
    common.update(dead_time_s=DEFAULT_DEAD_TIME_S if tau is None else tau,
                  dead_time_source=source, dead_time_problems=problems)
    return (yield from with_safe_state(body(), column, bias))


def correction_of(result: dict, unknown: int | str = 0) -> tuple[float, float]:
    """``(K, sigma_K)`` of one unknown of a :func:`bracketed_sims_maps` result (by its
    index or run uid), for ``correction=`` of the analysis."""
    factors = result.get("factors") if isinstance(result, Mapping) else None
    if not factors:
        raise ValueError("the result holds no correction (a simulation, or not a "
                         "bracketed_sims_maps result)")
    for i, f in enumerate(factors):
        if unknown in (i, f["uid"]):
            k, sk = float(f["k"]), float(f["sigma_k"])
            if not (math.isfinite(k) and k > 0):
                raise ValueError(f"unknown {unknown!r}: K = {k!r}")
            return k, sk
    raise ValueError(f"unknown {unknown!r} is not among the bracket's {len(factors)} unknowns")


__all__ = ["bracketed_sims_maps", "bracket_values", "check_reference", "correction_of",
           "reference_run"]
