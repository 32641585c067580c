"""Correlative TEM-SIMS and the labelled-particle search on the real IOCs.

The module gets the shared instrument (li2co3-particles, seed 1), reset at its start
(``pdev``): the maps sputter the whole particle field, and the next module's reset
gives the holder a pristine specimen again. Both plans start and end in the TEM geometry. The
particle search runs once (module fixture) at the demo's dose (1 ms, 100 pA) and
size and is scored against the specimen's ground truth per particle by the
reported centroid (``tests/scoring.py``; precision and recall, printed) on the module's
seed 1 and two fresh seeds drawn at run time (printed); one more fresh seed with
the beam meeting the relief checks the search's parallax survey. Every run's start document must give its pixel -> specimen geometry
(``temsims.analysis.geometry``) without extra arguments.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
import pytest
from faults import raise_at
from scoring import fresh_rng, score_centroids

from temsims.analysis.geometry import SimsMapGeometry, TemImageGeometry
from temsims.analysis.isotopes import NATURAL_LI6_LI7
from temsims.analysis.particles import find_particles
from temsims.catalog import check_start_metadata
from temsims.constants import PROBE_HALO, reference_region
from temsims.plans import (
    calibrate_dead_time,
    correlative_tem_sims,
    find_labelled_particles,
    to_sims_mode,
)
from temsims.plans._common import HARDWARE_COMMANDS
from temsims.plans.correlative import tem_pixel_to_stage

TIMINGS: dict[str, float] = {}
#: The dead-time calibration's apertures on the pad (test_plans_bracketing.py's, the demo's).
PAD_APERTURES = ("30 pA", "100 pA", "300 pA", "1 nA")
#: The particle search at the demo's dose and full size (core/app/demo.py FULL).
SEARCH = {"fov_um": 4.0, "pixels": (96, 68), "dwell_s": 1e-3, "aperture": "100 pA"}
if os.environ.get("TEMSIMS_SEARCH_PIXELS"):  # e.g. 64x45: the demo's quick map
    SEARCH["pixels"] = tuple(int(v) for v in os.environ["TEMSIMS_SEARCH_PIXELS"].split("x"))
#: Specimen seeds of the particle search: the module's instrument (seed 1) and two
#: fresh ones, drawn when the search runs (each starts an instrument, as seeds 2 and 3
#: did before issue 15).
N_FRESH = int(os.environ.get("TEMSIMS_SEARCH_SEEDS", "2"))
#: TEMSIMS_SEARCH_RELIEF=1: the scored searches on instruments whose beam meets the
#: relief (decision 0041), their positions corrected by a TEM survey (``parallax``):
#: the 0041 amendment's plan-level figures. By default they are the flat twin (relief
#: is opt-in: its second kind of false report, a natural particle inside a labelled
#: neighbour's image, fails the precision bound ~1 run in 4) and one more fresh seed
#: with relief checks the survey (``relief_search``).
_RELIEF_ENV = os.environ.get("TEMSIMS_SEARCH_RELIEF")


def _relief(seed: int) -> bool:
    return _RELIEF_ENV == "1"


def _starts(RE):
    return RE.docs.docs["start"]


def _run(RE, run_uid):
    return RE.docs.run(run_uid)


def _search(engine, start) -> dict:
    """What a particle search stored: its maps, its particle table (the ``particles``
    stream) and the analysis redone on the stored maps with the recorded parameters
    (its segment label image), which must give the same table."""
    run = _run(engine, start["uid"])
    maps = run.maps()
    table = [{k[len("particle_"):]: e["data"][k] for k in e["data"]}
             for e in _events(engine, start["uid"], "particles")]
    params = start["correlative"]["particle_analysis"]
    again = find_particles(maps["6Li"], maps["7Li"],
                           pixel_to_specimen=SimsMapGeometry.from_metadata(start)
                           .affine_to_specimen(), dwell_s=start["map"]["dwell_s"],
                           dead_time_s=params["dead_time_s"],
                           significance=params["significance_sigma"],
                           min_counts=params["min_counts"],
                           reference_ratio=params["reference_ratio"],
                           correction=None if params["correction_factor"] is None else
                           (params["correction_factor"], params["correction_sigma"]),
                           hydride=None if params.get("hydride_ratio") is None else
                           (params["hydride_ratio"], params["hydride_sigma"]),
                           halo=None if params.get("halo_fraction") is None else
                           (params["halo_fraction"], params["halo_sigma_px"]),
                           primary_current_pa=params.get("primary_current_pa"),
                           trim_fraction=params["trim_fraction"])
    assert [p.label for p in again] == [c["label"] for c in table]
    assert [p.classification for p in again] == [c["classification"] for c in table]
    return {"maps": maps, "candidates": table, "labels": again.labels, "table": again,
            # A labelled segment of a TEM particle reported by another is part of it.
            "particles": [c for c in table if c["labelled"] and not c.get("merged_into")],
            "uncertain": [c for c in table if c["classification"] == "uncertain"]}


def _search_start(engine) -> dict:
    """The particle search's SIMS run (the bracket's reference maps come before it)."""
    return next(s for s in engine.docs.docs["start"]
                if (s.get("correlative") or {}).get("role") == "particle_search")


def _events(RE, run_uid, stream):
    from event_model import unpack_event_page

    descs = {x["uid"] for x in RE.docs.docs["descriptor"]
             if x["run_start"] == run_uid and x.get("name") == stream}
    evs = [e for e in RE.docs.docs["event"] if e["descriptor"] in descs]
    for page in RE.docs.docs["event_page"]:
        if page["descriptor"] in descs:
            evs.extend(unpack_event_page(page))
    return sorted(evs, key=lambda e: e["seq_num"])


# ------------------------------------------------------------------ arguments
def _bad_cases():
    corr_ok = dict(overview_fov_um=4.0, sims_pixels=(8, 6), sims_dwell_s=1e-3,
                   exposure_s=0.01)
    corr_bad = [{"overview_fov_um": 0.0}, {"overview_fov_um": "4"}, {"max_rois": 0},
                {"rois": [(0.0, 0.0)]}, {"rois": "0,0,1"}, {"rois": [(5000.0, 0.0, 1.0)]},
                {"rois": [(0.0, 0.0, -1.0)]}, {"species": ("6Li", "6Li")},
                {"sims_pixels": (0, 4)}, {"sims_dwell_s": 1.0}, {"zoom_fov_um": 1000.0},
                {"exposure_s": math.nan}, {"sims_voltage_v": 10.0}, {"md": {"correlation_id": ""}},
                {"center": (5000.0, 0.0)}, {"md": 5},
                # refused by the SIMS map itself, but now before the overview is taken
                {"species": ("6Li", "69Ga")}, {"fly": "no"},
                {"fly": False, "sims_pixels": (128, 128)}, {"fly": False, "sims_dwell_s": 1e-6},
                {"rois": [(0.0, 0.0, 1e4)]}]
    part_ok = dict(fov_um=4.0, pixels=(8, 6), dwell_s=1e-3)
    part_bad = [{"fov_um": 0.0}, {"fov_um": 1e6}, {"pixels": (2000, 4)}, {"dwell_s": 0.0},
                {"significance": 0.0}, {"significance": "5"}, {"min_counts": -1.0},
                {"zoom_fov_um": 0.0}, {"exposure_s": 100.0}, {"max_particles": -1},
                {"center": (0.0, 1e5)}, {"image_uncertain": "yes"}, {"md": []},
                # the hydride correction (decision 0039)
                {"hydride": "measure"}, {"hydride": "guess"}, {"hydride": (0.5, 0.0)},
                {"hydride": (1e-3,)}, {"hydride": (math.nan, 1e-4)},
                {"hydride_count_s": 0.0}, {"hydride_count_s": "2"},
                {"halo": 0.03}, {"halo": (0.5, 300.0)}, {"halo": (0.03, 0.0)},
                {"halo": (math.nan, 300.0)},
                # the parallax survey (decision 0041)
                {"parallax": "yes"}, {"parallax_exposure_s": 0.0},
                {"parallax_exposure_s": math.inf}]
    return [(correlative_tem_sims, corr_ok, b) for b in corr_bad] + \
        [(find_labelled_particles, part_ok, b) for b in part_bad]


@pytest.mark.parametrize("plan,ok,bad", _bad_cases(),
                         ids=lambda v: getattr(v, "__name__", None) or str(v)[:40])
def test_invalid_arguments_refused_before_any_hardware_message(pdev, plan, ok, bad):
    msgs = []
    gen = plan(pdev, **{**ok, **bad})
    with pytest.raises((TypeError, ValueError)) as info:
        msgs.append(next(gen))
    assert not [m for m in msgs if m.command in HARDWARE_COMMANDS]
    assert any(name in str(info.value) for name in bad), info.value  # names the argument


@pytest.mark.parametrize("bad", [
    {"coarse_fov_um": 0.0}, {"fine_fov_um": 1e4}, {"raster_fov_um": "4"},
    {"raster_passes": 0}, {"voltage_v": 10.0}, {"center": (5000.0, 0.0)},
    {"species": ("6Li", "6Li")}, {"sims_dwell_s": 0.0}, {"exposure_s": 100.0}, {"md": 5}],
    ids=str)
def test_align_ion_beam_refuses_bad_input_before_any_hardware_message(pdev, bad):
    from temsims.plans import align_ion_beam

    msgs = []
    with pytest.raises((TypeError, ValueError)) as info:
        msgs.append(next(align_ion_beam(pdev, **bad)))
    assert not msgs
    assert any(name in str(info.value) for name in bad), info.value


def test_wrong_device_refused(pdev):
    from dataclasses import replace

    with pytest.raises(TypeError, match="microscope.imager must be a device"):
        next(correlative_tem_sims(replace(pdev, imager="imager"), overview_fov_um=4.0))
    with pytest.raises(TypeError, match="microscope.camera .* is not a CameraDevice: it has "
                                        "no exposure, image"):
        next(correlative_tem_sims(replace(pdev, camera=pdev.stage), overview_fov_um=4.0))
    with pytest.raises(TypeError, match="microscope must be an object"):
        next(find_labelled_particles({"stage": pdev.stage}, fov_um=2.0))


def test_the_calibration_in_force_is_checked_before_anything_moves(RE, pdev, caplog):
    """``calibration=``: the raster never calibrated, the coincidence never measured or
    measured at another bias is refused before any hardware message (``refuse``),
    naming the plan to run, or logged (``warn``); a column aligned at the plan's bias
    passes (decision 0042, 2026-12-05 amendment)."""
    import logging

    from temsims.plans._common import check_geometry_calibration

    col = pdev.column
    n_starts = len(RE.docs.docs["start"])
    try:
        for plan, kw in ((find_labelled_particles, {"fov_um": 2.0, "pixels": (8, 6)}),
                         (correlative_tem_sims, {"overview_fov_um": 2.0})):
            msgs = []
            gen = plan(pdev, calibration="refuse", **kw)
            with pytest.raises(RuntimeError) as info:
                msg = next(gen)
                while True:  # the check's reads, answered by the IOCs
                    msgs.append(msg)
                    msg = gen.send({msg.obj.name: {"value": msg.obj.get()}})
            assert not [m for m in msgs if m.command in HARDWARE_COMMANDS]
            assert {m.command for m in msgs} <= {"read"}
            text = str(info.value)
            assert "run calibrate_raster" in text
            assert "calibrate_coincidence(voltage_v=4500)" in text, text
        col.fov_cal.set(1.01).wait(10)
        col.rot_cal.set(0.5).wait(10)
        col.coincidence_bias.set(3000.0).wait(10)
        with pytest.raises(RuntimeError, match="measured at 3000 V, this plan maps at 4500 V"):
            RE(check_geometry_calibration(col, 4500.0, "refuse", plan="test"))
        with caplog.at_level(logging.WARNING, logger="temsims.plans._common"):
            found = RE(check_geometry_calibration(col, -4500.0, "warn", plan="test")).plan_result
        assert len(found["problems"]) == 1 and "calibrate_coincidence(voltage_v=-4500)" in \
            caplog.text
        assert found["fov_cal"] == pytest.approx(1.01) and found["coincidence_bias_v"] == 3000.0
        col.coincidence_bias.set(4500.0).wait(10)
        assert RE(check_geometry_calibration(col, 4500.0, "refuse",
                                             plan="test")).plan_result["problems"] == []
        assert RE(check_geometry_calibration(col, 100.0, "ignore", plan="test")).plan_result[
            "fov_cal"] is None
        with pytest.raises(ValueError, match="calibration must be one of"):
            next(correlative_tem_sims(pdev, overview_fov_um=2.0, calibration="check"))
    finally:
        for sig, value in ((col.fov_cal, 1.0), (col.rot_cal, 0.0), (col.coincidence_bias, 0.0)):
            sig.set(value).wait(10)
    assert len(RE.docs.docs["start"]) == n_starts  # no run started


def test_the_particle_search_checks_the_dead_time_in_force(RE, pdev, caplog):
    """The search on the nominal dead time (DEAD_TIME:SOURCE "nominal", the reset's)
    is refused before any hardware message with ``calibration="refuse"``, naming
    calibrate_dead_time, and logged with "warn" (on the nominal 30 ns the isolated
    labelled pulls averaged -1.2; decision 0035, 2026-12-05 amendment); a dead time
    put by hand ("manual") passes."""
    import logging

    from temsims.plans._common import check_dead_time_calibration

    col, spec = pdev.column, pdev.spectrometer
    n_starts = len(RE.docs.docs["start"])
    nominal = spec.dead_time.get()
    assert spec.dead_time_source.get() == "nominal"
    try:
        # The geometry aligned at the plan's bias: the dead time is what is refused.
        for sig, value in ((col.fov_cal, 1.01), (col.rot_cal, 0.5), (col.coincidence_bias,
                                                                       4500.0)):
            sig.set(value).wait(10)
        msgs = []
        gen = find_labelled_particles(pdev, fov_um=2.0, pixels=(8, 6), calibration="refuse")
        with pytest.raises(RuntimeError, match="run calibrate_dead_time first") as info:
            msg = next(gen)
            while True:  # the checks' reads, answered by the IOCs
                msgs.append(msg)
                msg = gen.send({msg.obj.name: {"value": msg.obj.get()}})
        assert {m.command for m in msgs} <= {"read"}
        assert "DEAD_TIME:SOURCE 'nominal'" in str(info.value)
        with caplog.at_level(logging.WARNING, logger="temsims.plans._common"):
            tau, source, problems = RE(check_dead_time_calibration(
                spec, "warn", plan="test", default=None)).plan_result
        assert (tau, source, len(problems)) == (pytest.approx(nominal), "nominal", 1)
        assert "calibrate_dead_time" in caplog.text
        assert RE(check_dead_time_calibration(spec, "ignore", plan="test", default=None)
                  ).plan_result[2] == []
        spec.dead_time.set(nominal).wait(10)  # a put: DEAD_TIME:SOURCE "manual"
        assert RE(check_dead_time_calibration(spec, "refuse", plan="test", default=None)
                  ).plan_result[1:] == ("manual", [])
    finally:
        for sig, value in ((col.fov_cal, 1.0), (col.rot_cal, 0.0), (col.coincidence_bias, 0.0),
                           (spec.dead_time, nominal), (spec.dead_time_source, "nominal")):
            sig.set(value).wait(10)
    assert len(RE.docs.docs["start"]) == n_starts  # no run started


def test_failure_leaves_instrument_safe(RE, pdev):
    """An exception inside the SIMS part: beam blanked, bias ramped to 0 V."""
    import bluesky.preprocessors as bpp

    d = pdev

    plan = find_labelled_particles(d, fov_um=2.0, pixels=(8, 6), dwell_s=1e-3)
    with pytest.raises(RuntimeError, match="injected"):
        RE(bpp.plan_mutator(plan, raise_at("collect")))
    assert d.column.blank.get() == "Blanked"
    assert abs(d.bias.position) < 1.0
    assert RE.docs.docs["stop"][-1]["exit_status"] == "fail"
    from bluesky import RunEngine

    from temsims.plans import to_tem_mode

    RunEngine({})(to_tem_mode(d.mode))
    assert d.mode.infer() == "TEM"


def test_correlative_failure_in_a_sims_map_leaves_instrument_safe(RE, pdev, particles):
    """An exception in the first SIMS map of a correlative experiment (after the
    overview and the change to SIMS): beam blanked, bias at 0 V, no TEM zoom taken."""
    import bluesky.preprocessors as bpp
    from bluesky import RunEngine

    from temsims.plans import to_tem_mode

    d = pdev
    target = particles[0][0]
    roi = (target["x_nm"] / 1000.0, target["y_nm"] / 1000.0, 0.4)

    plan = correlative_tem_sims(d, overview_fov_um=2.0, center=roi[:2], rois=[roi],
                                sims_pixels=(8, 6), sims_dwell_s=1e-3, exposure_s=0.01)
    n_before = len(_starts(RE))
    with pytest.raises(RuntimeError, match="injected"):
        RE(bpp.plan_mutator(plan, raise_at("collect")))
    assert d.column.blank.get() == "Blanked"
    assert abs(d.bias.position) < 1.0
    runs = _starts(RE)[n_before:]
    assert [r["correlative"]["role"] for r in runs] == ["overview", "sims_map"]
    assert RE.docs.docs["stop"][-1]["exit_status"] == "fail"
    RunEngine({})(to_tem_mode(d.mode))
    assert d.mode.infer() == "TEM"


def test_summarize_plan_on_the_correlative_plans(pdev, particles, capsys):
    """summarize_plan (no hardware) walks both plans: the correlative plan with given
    regions to its TEM zooms, the particle search to its map."""
    from bluesky.simulators import summarize_plan

    target = particles[0][0]
    roi = (target["x_nm"] / 1000.0, target["y_nm"] / 1000.0, 0.4)
    summarize_plan(correlative_tem_sims(pdev, overview_fov_um=2.0, rois=[roi, roi],
                                        sims_pixels=(4, 3), sims_dwell_s=1e-3))
    out = capsys.readouterr().out
    assert out.count("Open Run") == 5  # overview, 2 SIMS maps, 2 zooms
    assert "mode" in out
    summarize_plan(find_labelled_particles(pdev, fov_um=2.0, pixels=(4, 3),
                                           dwell_s=1e-3))
    out = capsys.readouterr().out
    assert out.count("Open Run") >= 1 and "imager" in out


def _geometry(RE, start):
    """The run's pixel model from its start document alone (with and without the
    ``correlative`` block: plain ``tem_image`` / ``sims_map`` starts); it must equal
    the affine the plan recorded, the plans' pixel helper and, for TEM, the image
    centre the camera reports."""
    plain = {k: v for k, v in start.items() if k != "correlative"}
    if start["plan_name"] == "tem_image":
        geo = TemImageGeometry.from_metadata(start)
        recorded = start["image"]["pixel_to_specimen"]
        (ev,) = _events(RE, start["uid"], "primary")
        n = np.asarray(ev["data"]["camera_image"]).shape[0]
        assert geo.shape == (n, n) == (start["image"]["size"],) * 2
        centre = geo.pixel_to_specimen_um((n - 1) / 2, (n - 1) / 2)
        assert centre == pytest.approx((ev["data"]["camera_center_x"],
                                        ev["data"]["camera_center_y"]), abs=2e-3)
        got = tem_pixel_to_stage(3.0, n - 2.0, size=n, fov_um=geo.fov_um, x_um=geo.centre_x_um,
                                 y_um=geo.centre_y_um, tilt_deg=geo.tilt_alpha_deg)
        assert got == pytest.approx(geo.pixel_to_specimen_um(3.0, n - 2.0), abs=1e-12)
    else:
        geo = SimsMapGeometry.from_metadata(start)
        recorded = start["map"]["pixel_to_specimen"]
        assert [geo.nx, geo.ny] == start["map"]["pixels"]
        assert [geo.centre_x_um, geo.centre_y_um] == [start["region"]["x_um"],
                                                      start["region"]["y_um"]]
        # The column's 45 deg bent by the +4.5 kV extraction field (decision 0036).
        assert geo.incidence_deg == pytest.approx(50.08, abs=0.01)
    plain_geo = type(geo).from_metadata(plain)
    np.testing.assert_allclose(geo.affine_to_specimen(), recorded, atol=1e-9)
    np.testing.assert_allclose(plain_geo.affine_to_specimen(), recorded, atol=1e-9)
    return geo


# ------------------------------------------------------------------ correlative
def test_correlative_links_runs_and_regions(RE, pdev):
    d = pdev
    t0 = time.monotonic()
    res = RE(correlative_tem_sims(d, overview_fov_um=4.0, max_rois=2,
                                  sims_pixels=(16, 11), sims_dwell_s=1e-3,
                                  exposure_s=0.01)).plan_result
    TIMINGS["correlative"] = time.monotonic() - t0
    rois = res["rois"]
    assert 1 <= len(rois) <= 2
    starts = _starts(RE)
    assert len(starts) == 1 + 2 * len(rois)
    assert {s["correlation_id"] for s in starts} == {res["correlation_id"]}
    assert [s["uid"] for s in starts] == ([res["uids"]["overview"]] + res["uids"]["sims"]
                                         + res["uids"]["tem"])
    for s in starts:
        assert check_start_metadata(s) == [], s["plan_name"]
        _geometry(RE, s)
    overview, sims, tems = starts[0], starts[1:1 + len(rois)], starts[1 + len(rois):]
    assert overview["correlative"]["role"] == "overview"
    assert overview["correlative"]["roi_source"] == "auto"
    roi_events = _events(RE, overview["uid"], "rois")
    assert [(e["data"]["rois_x_um"], e["data"]["rois_y_um"]) for e in roi_events] == \
        [(r["x_um"], r["y_um"]) for r in rois]
    for i, (r, s, t) in enumerate(zip(rois, sims, tems, strict=True)):
        assert s["plan_name"] == "sims_map" and s["mode"] == "SIMS"
        assert t["plan_name"] == "tem_image" and t["mode"] == "TEM"
        for run in (s, t):
            assert run["correlative"]["roi_index"] == i
            assert run["region"]["x_um"] == pytest.approx(r["x_um"], abs=2e-3)
            assert run["region"]["y_um"] == pytest.approx(r["y_um"], abs=2e-3)
        assert s["region"]["tilt_deg"] == pytest.approx(-68.0, abs=0.1)
        assert t["region"]["tilt_deg"] == pytest.approx(0.0, abs=0.1)
        assert s["region"]["fov_um"] == pytest.approx(r["fov_um"])
        geo = SimsMapGeometry.from_metadata(s)
        assert geo.shape == (11, 16) and geo.incidence_deg == pytest.approx(50.08, abs=0.01)
        assert geo.extent_um[1] == pytest.approx(
            r["fov_um"] * 11 / 16 / math.cos(math.radians(50.08)), rel=1e-4)
        assert s["correlative"]["rois"][i][:2] == [r["x_um"], r["y_um"]]
    # The SIMS map's brightest 7Li pixel of the first region lies on a truth particle.
    from temsims.ioc.physics.specimen import build_specimen

    spec = build_specimen("li2co3-particles", 1)
    # The natural-Li pad (the specimen's isotope standard) is a Li feature too.
    pad = spec.reference
    truth = spec.truth["particles"] + [{"x_nm": 1e3 * pad["x_um"], "y_nm": 1e3 * pad["y_um"],
                                        "radius_nm": 500 * pad["width_um"] * math.sqrt(2)}]
    m7 = _run(RE, sims[0]["uid"]).maps()["7Li"]
    assert m7.shape == (11, 16) and m7.dtype == np.int32
    row, col = np.unravel_index(np.argmax(m7), m7.shape)
    x, y = SimsMapGeometry.from_metadata(sims[0]).pixel_to_specimen_um(row, col)
    pitch_y = rois[0]["fov_um"] / 16 / math.cos(math.radians(45))
    nearest = min(math.hypot(x - p["x_nm"] / 1e3, y - p["y_nm"] / 1e3) - p["radius_nm"] / 1e3
                  for p in truth)
    assert nearest < pitch_y
    assert d.mode.infer() == "TEM"
    assert d.column.blank.get() == "Blanked"


def test_correlative_given_rois_and_correlation_id(RE, pdev, particles):
    d = pdev
    p = particles[0][0]
    roi = (round(p["x_nm"] / 1e3, 4), round(p["y_nm"] / 1e3, 4), 0.6)
    res = RE(correlative_tem_sims(d, overview_fov_um=4.0, rois=[roi],
                                  sims_pixels=(8, 6), sims_dwell_s=1e-3, zoom_fov_um=0.3,
                                  exposure_s=0.01,
                                  md={"correlation_id": "corr-test-1"})).plan_result
    assert res["correlation_id"] == "corr-test-1"
    starts = _starts(RE)
    assert [s["correlation_id"] for s in starts] == ["corr-test-1"] * 3
    assert starts[0]["correlative"]["rois"] == [{"x_um": roi[0], "y_um": roi[1],
                                                 "fov_um": roi[2]}]
    assert starts[1]["region"]["x_um"] == pytest.approx(roi[0], abs=2e-3)
    assert starts[2]["region"]["fov_um"] == 0.3
    # The given ROI is a labelled particle: its SIMS map is rich in 6Li.
    maps = _run(RE, starts[1]["uid"]).maps()
    assert maps["6Li"].sum() > 5 * NATURAL_LI6_LI7 * maps["7Li"].sum()


# ------------------------------------------------------------------ particles
def _segment_score(res, start, truth) -> dict:
    """Segment scoring (as ``tests/analysis``): each truth particle belongs to the
    segment under its centre, found through the run's recorded geometry. Precision:
    labelled segments holding a labelled particle; recall: labelled particles whose
    segment is labelled. ``members``: segment label -> truth particles."""
    geo = SimsMapGeometry.from_metadata(start)
    rows, cols = geo.specimen_to_pixel([p["x_nm"] / 1e3 for p in truth],
                                       [p["y_nm"] / 1e3 for p in truth])
    r, c = np.rint(rows).astype(int), np.rint(cols).astype(int)
    ny, nx = res["labels"].shape
    inside = (r >= 0) & (r < ny) & (c >= 0) & (c < nx)
    seg = np.where(inside, res["labels"][np.clip(r, 0, ny - 1), np.clip(c, 0, nx - 1)], 0)
    members: dict[int, list] = {}
    for p, lab in zip(truth, seg, strict=True):
        if lab:
            members.setdefault(int(lab), []).append(p)
    cls = {c["label"]: c["classification"] for c in res["candidates"]}
    flagged = [c for c in res["candidates"] if c["labelled"]]
    tp = sum(any(m["labelled"] for m in members.get(c["label"], [])) for c in flagged)
    labelled = [lab for p, lab in zip(truth, seg, strict=True) if p["labelled"]]
    found = [lab for lab in labelled if cls.get(int(lab)) == "labelled"]
    uncertain = [lab for lab in labelled if cls.get(int(lab)) == "uncertain"]
    return {"precision": tp / len(flagged) if flagged else 0.0, "tp": tp,
            "flagged": len(flagged), "found": len(found), "uncertain": len(uncertain),
            "n_labelled": len(labelled), "recall": len(found) / len(labelled),
            "members": members}


def _search_config(seed: int, relief: bool) -> dict:
    """The instrument a search on ``seed`` runs on (``instruments.get``'s keywords):
    seed 1 exact (the module's), the fresh ones with their geometry errors."""
    return {"specimen": "li2co3-particles", "seed": seed,
            "calibration_errors": "none" if seed == 1 else "typical",
            "extra_args": {"spectrometer": ["--relief"]} if relief else None}


@pytest.fixture(scope="module", autouse=True)
def search_seeds(request, instruments):
    """The searches' fresh specimen seeds, drawn once per module, and their instruments
    launched side by side at the module's start (autouse: with its first test;
    ``instruments.prestart``): their start-up (~3 s each) runs while the tests before
    the searches use seed 1's (the relief search's starts with the last search: an
    idle instrument costs 7.5 % of a core). Only for the searches this run selected (``-m "not slow"`` runs none)."""
    wanted = {name for item in request.session.items
              if item.path == request.path for name in ("searches", "relief_search")
              if name in item.fixturenames}
    seeds: dict[str, list[int]] = {}
    if "searches" in wanted:
        rng = fresh_rng("test_correlative particle search")
        seeds["searches"] = [1] + [int(s) for s in rng.choice(np.arange(10, 1_000_000),
                                                              N_FRESH, replace=False)]
    if "relief_search" in wanted:
        rng = fresh_rng("test_correlative relief search")
        seeds["relief_search"] = [int(rng.integers(10, 1_000_000))]
    for seed in seeds.get("searches", [])[1:]:
        instruments.prestart(**_search_config(seed, _relief(seed)))
    return seeds


@pytest.fixture(scope="module")
def searches(instruments, search_seeds):
    """The particle search at the demo's dose and size on seed 1 and two fresh seeds,
    each on the session's instrument of that seed, reset (seed 1: this module's,
    exact, imaging the uncertain particles too; the fresh ones with their geometry
    errors, aligned by ``instrument_support.aligned``): seed -> (result, RunEngine,
    truth).

    Each search starts with the dead time calibrated on the pad, as the demo does
    (``calibrate_dead_time``; the reset puts DEAD_TIME back to nominal).
    17-23 s plus the calibrations (three instruments' maps, two instruments started):
    the tests that use it are marked slow. The reset gives the search a pristine specimen and no drift yet:
    the spectrometer's default drift (3 nm/min) runs on the nominal clock, where each
    wall second the tests before spent is S nominal seconds (at S = 20, ~1 nm per wall
    second).
    """
    seeds = search_seeds["searches"]
    print(f"specimen seeds {seeds}")
    done = {}
    for seed in seeds:
        if seed == seeds[-1]:
            for relief_seed in search_seeds.get("relief_search", []):
                instruments.prestart(**_search_config(relief_seed, True))
        done[seed] = _particle_search(instruments, seed, _relief(seed))
    return done


@pytest.fixture(scope="module")
def relief_search(instruments, search_seeds):
    """The search on one fresh seed whose beam meets the relief (decision 0041), with
    ``parallax=True``: seed -> (result, RunEngine, truth). ~15 s with its start."""
    (seed,) = search_seeds["relief_search"]
    print(f"specimen seed {seed}")
    return {seed: _particle_search(instruments, seed, True)}


def _particle_search(instruments, seed: int, relief: bool):
    from bluesky import RunEngine
    from documents import DocumentCollector
    from instrument_support import ALIGNMENT_WALL_S, aligned, connect_fast

    from temsims.catalog import require_metadata
    from temsims.ioc.physics.geometry_errors import draw_geometry_errors
    from temsims.ioc.physics.specimen import build_specimen

    # The fresh seeds on instruments with their own geometry errors (drawn from the
    # seed), aligned as a lab does at the start of a session (decision 0042,
    # 2026-12-05 amendment); seed 1 on the module's exact instrument, the regression
    # anchor the other tests share (an alignment costs ~10-17 s).
    errors = "none" if seed == 1 else "typical"
    procs = instruments.get(**_search_config(seed, relief))
    waited = instruments.start_wait_s.get(procs.instrument_prefix)
    if waited is not None:
        print(f"seed {seed}: instrument {'launched ahead, ' if seed != 1 else ''}"
              f"answering {waited:.1f} s after it was asked for")
    d = connect_fast(procs, camera_size=64)
    settings = aligned(procs, d) if errors == "typical" else None
    e = draw_geometry_errors(seed, errors)
    if settings is None:
        print(f"seed {seed}: exact geometry")
    else:
        wall = ALIGNMENT_WALL_S.get(procs.instrument_prefix)
        print(f"seed {seed}: errors field {e['fov_error_pct']:+.2f} %, rotation "
              f"{e['raster_rotation_deg']:+.2f} deg, static {e['coincidence_um'][0]:+.2f}, "
              f"{e['coincidence_um'][1]:+.2f} um, landing {e['landing_error_pct']:+.3f} %, "
              f"dz {e['eucentric_dz_um']:+.2f} um; aligned: FOV_CAL "
              f"{settings['fov_cal']:.4f}, ROT_CAL {settings['rot_cal']:+.3f}, COINCIDENCE "
              f"{settings['coincidence_x']:+.3f}, {settings['coincidence_y']:+.3f} um"
              + (f" in {wall:.1f} s" if wall is not None else ""))
    engine = RunEngine({"sample": f"li2co3-particles seed {seed}",
                        "specimen": "li2co3-particles", "operator": "pytest"},
                       call_returns_result=True)
    require_metadata(engine)
    engine.docs = DocumentCollector()
    engine.subscribe(engine.docs)
    t0 = time.monotonic()
    try:
        # The dead time first, on the pad, as the demo does (decision 0034): the pad's
        # 7Li counts at ~2e6 /s per 100 pA, where the nominal 30 ns against the
        # instrument's own (22-45 ns) biases K low by 2-5 % and every labelled ratio with it.
        pad = reference_region("li2co3-particles")
        engine(to_sims_mode(d.mode, voltage_v=4500.0))
        engine(calibrate_dead_time(
            d.spectrometer, d.column, species=("6Li", "7Li"), apertures=PAD_APERTURES,
            count_time_s=1e-3, fov_um=0.15, stage=d.stage,
            center_um=(pad["x_um"], pad["y_um"]), bias=d.bias))
        TIMINGS[f"dead time seed {seed}"] = time.monotonic() - t0
        d.column.aperture.set(SEARCH["aperture"]).wait(10)
        t0 = time.monotonic()
        res = engine(find_labelled_particles(
            d, fov_um=SEARCH["fov_um"], pixels=SEARCH["pixels"],
            dwell_s=SEARCH["dwell_s"], significance=5.0, min_counts=50,
            zoom_fov_um=0.4, exposure_s=0.01, image_uncertain=seed == 1,
            parallax=relief, reference="li2co3-particles", hydride="measure",
            halo=(PROBE_HALO["fraction"], PROBE_HALO["fwhm_nm"]),
            calibration="ignore" if settings is None else "refuse")).plan_result
        TIMINGS[f"particles seed {seed}"] = time.monotonic() - t0
        engine.dead_time_s = d.spectrometer.dead_time.get()
        assert d.mode.infer() == "TEM"
    finally:
        d.column.aperture.set("1 pA").wait(10)
    return res, engine, build_specimen("li2co3-particles", seed).truth["particles"]


@pytest.mark.slow
def test_find_labelled_particles_matches_truth(searches):
    """Precision and recall of the labelled particles against the specimen's truth,
    per particle by the reported centroid (found: a labelled report within the
    particle's radius + 60 nm, one report finding one particle), pooled over the
    seeds; segment scoring printed beside it. The analysis alone, over 60 fresh seeds
    at this size: recall 0.99-1.00, precision 1.00 (benchmarks/particles_benchmark.py);
    the bound allows 2 misses in 36."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "analysis"))
    from analysis_sims import score

    from temsims.ioc.physics import sims as sp

    totals = {"found": 0, "n_labelled": 0, "tp": 0, "reported": 0}
    # The analysis tests' pulls (analysis_sims.score: every isolated particle, natural
    # too, in units of the Poisson sigma; segments reaching another particle or cut
    # from one left out), printed beside the plan-level ones asserted below.
    segment_pulls = []
    for seed, (res, engine, truth) in searches.items():
        res = _search(engine, _search_start(engine))
        segment_pulls.extend(score(res["table"], SimsMapGeometry.from_metadata(
            _search_start(engine)).affine_to_specimen(), truth)["errors"])
        sc = _segment_score(res, _search_start(engine), truth)
        cs = score_centroids(res["particles"], truth)
        for k in totals:
            totals[k] += cs[k]
        classes = [c["classification"] for c in res["candidates"]]
        print(f"\nseed {seed}, {SEARCH['pixels'][0]}x{SEARCH['pixels'][1]} px, "
              f"{SEARCH['dwell_s'] * 1e3:g} ms, {SEARCH['aperture']}: "
              f"{len(classes)} segmented ({ {c: classes.count(c) for c in sorted(set(classes))} })"
              f", {cs['reported']} labelled; truth {cs['n_labelled']} labelled: per particle "
              f"recall {cs['found'] / cs['n_labelled']:.2f} (missed ids {cs['missed']}), "
              f"precision {cs['tp'] / max(cs['reported'], 1):.2f}; segment scoring: "
              f"precision {sc['precision']:.2f}, recall {sc['recall']:.2f}; "
              f"{TIMINGS[f'particles seed {seed}']:.1f} s (dead time "
              f"{TIMINGS[f'dead time seed {seed}']:.1f} s)")
        big = {p["id"] for p in truth if p["labelled"] and p["radius_nm"] >= 30.0}
        assert big.isdisjoint(cs["missed"]), (seed, cs["missed"])
        for p in res["particles"]:
            assert p["classification"] == "labelled" and p["labelled"]
            assert p["z"] > 5.0 and p["p_natural"] < 1e-6 and p["confidence"] > 0.999
            assert p["ratio"] > NATURAL_LI6_LI7
    precision = totals["tp"] / max(totals["reported"], 1)
    recall = totals["found"] / totals["n_labelled"]
    # Where the reports land: each against the nearest labelled particle's centre.
    # Uncalibrated, the geometry errors put them 0.1-2 um off (the coincidence offset
    # plus 2-4 % of their distance from the map's centre); aligned, within the
    # centroid's own scatter (a small particle's segment is a few 42 nm pixels).
    # Their 6Li/7Li against the truth, in units of the reported sigma_total, for the
    # isolated ones (every other particle's edge > 2 map pixels away: a neighbour
    # shares counts by design); printed, the ratio's bound is test_particles.py's.
    offsets, pulls, halo_shares = [], [], []
    for seed, (_res, engine, truth) in searches.items():
        # The search on the instrument's calibrated dead time: on the nominal 30 ns
        # (instruments count with 22-45 ns) the pad's K read 2-5 % low and the isolated
        # labelled pulls averaged -1.2 (std 1.7) instead of -0.2 (std 0.9) on seeds
        # 1, 474673, 644500, 362112.
        params = _search_start(engine)["correlative"]["particle_analysis"]
        assert params["dead_time_source"].startswith("calibrated"), params
        assert params["dead_time_s"] == pytest.approx(sp.true_dead_time_s(seed), rel=0.05)
        lab = [t for t in truth if t["labelled"]]
        for p in _search(engine, _search_start(engine))["particles"]:
            dist = [math.hypot(1e3 * p["x_um"] - t["x_nm"], 1e3 * p["y_um"] - t["y_nm"])
                    for t in lab]
            offsets.append(min(dist))
            t = lab[int(np.argmin(dist))]
            gaps = [math.hypot(t["x_nm"] - o["x_nm"], t["y_nm"] - o["y_nm"]) - t["radius_nm"]
                    - o["radius_nm"] for o in truth if o["id"] != t["id"]]
            if min(dist) < t["radius_nm"] and min(gaps) > 2 * 1e3 * SEARCH["fov_um"] / \
                    SEARCH["pixels"][0] * 1.42 and p["sigma_total"] > 0:
                pulls.append((p["ratio"] - t["li6_li7_ratio"]) / p["sigma_total"])
                halo_shares.append(p["halo_share"])
    offsets, pulls, halo_shares = (np.asarray(a) for a in (offsets, pulls, halo_shares))
    mad_std = 1.4826 * np.median(np.abs(pulls - np.median(pulls)))
    print(f"reported centroids to the nearest labelled particle: median "
          f"{np.median(offsets):.1f} nm, p90 {np.percentile(offsets, 90):.1f} nm, "
          f"max {offsets.max():.1f} nm over {offsets.size}")
    print(f"seeds {list(searches)}: per particle precision {precision:.3f} "
          f"({totals['tp']}/{totals['reported']}), recall {recall:.3f} "
          f"({totals['found']}/{totals['n_labelled']}); 6Li/7Li pulls of isolated labelled "
          f"particles: {pulls.size}, mean {pulls.mean():+.2f}, std {pulls.std(ddof=1):.2f}, "
          f"robust std {mad_std:.2f}, mean clipped at +-4 {np.clip(pulls, -4, 4).mean():+.2f}; "
          f"largest {np.round(sorted(pulls, key=abs)[-3:], 2)} "
          f"(halo share of 7Li {np.round(halo_shares[np.argsort(np.abs(pulls))[-3:]], 2)}); "
          f"analysis-test pulls of the same tables {len(segment_pulls)}, mean "
          f"{np.mean(segment_pulls):+.2f}, std {np.std(segment_pulls):.2f}")
    assert np.median(offsets) < 30.0
    # Issue 15's "pull std <= 1.2 after the corrections", at plan level: 30 fresh
    # searches (benchmarks/particle_search_benchmark.py; decision 0040's 2026-12-05
    # amendment) gave 267 pulls, mean -0.08, std 0.95, robust std (1.4826 MAD) 0.82,
    # one beyond 4 (-5.4: a 14 nm labelled particle 190 nm from two small natural
    # ones). Three searches give ~27 pulls (18-40): resampling three of the 30 searches
    # 40000 times, the std exceeds 1.6 in 0.4 % of sets (1.2 in 10 %: the outlier's
    # search), the robust std 1.45 in 0.7 %, |mean| 0.6 in 0.06 %. Whole segments
    # (before) gave std 1.31 pooled, a pull of -14.6, and the std above 1.6 in 10 % of
    # sets; the nominal dead time's mean of -1.2 fails the mean bound.
    assert pulls.size >= 10
    assert abs(pulls.mean()) <= 0.6, pulls
    assert pulls.std(ddof=1) <= 1.6, pulls
    assert mad_std <= 1.45, pulls
    assert precision >= 0.95
    # 36 labelled particles over the three searches: with the per-particle recall of
    # 0.97-0.99 scored over 30 fresh seeds at the analysis level (the harder twin with
    # its corrections), 3 misses come in ~1 run in 10 and 4 in ~1 in 100 (this stop:
    # 33/36 once, entropy 302555835057292503838211583642675688964, each miss a small
    # particle whose reported centroid fell just outside its radius + 60 nm). The
    # issue's 0.95 is scored over seeds by tests/analysis/test_particles.py.
    assert recall >= 0.90


@pytest.mark.slow
def test_the_pads_lih_count_is_the_twins_and_corrects_the_search(searches):
    """hydride="measure": LiH+/Li+ counted at mass 8 against 7 on each fresh pad
    (0.05 s at the search's current, after the first reference map, in its run) is
    the twin's 1e-3 within its counting error, and the search's table subtracted
    it (particle_analysis records it; decision 0039)."""
    from temsims.ioc.physics import sims as sp

    truth = dict(sp.SimsParameters().hydride_ratios)["Li"]
    for seed, (res, engine, _truth) in searches.items():
        h, sh = res["hydride"]
        ref_uid = res["bracketing"]["uids"]["reference_before"]
        names = {d["name"] for d in engine.docs.docs["descriptor"] if d["run_start"] == ref_uid}
        params = _search_start(engine)["correlative"]["particle_analysis"]
        print(f"seed {seed}: LiH+/Li+ on the pad {h:.2e} +- {sh:.1e} (twin {truth:.1e})")
        assert {"hydride", "hydride_count"} <= names
        assert (params["hydride_ratio"], params["hydride_sigma"]) == pytest.approx((h, sh))
        assert h == pytest.approx(truth, abs=4 * sh + 0.05 * truth)
        assert sh < 0.25 * h


@pytest.mark.slow
def test_bright_natural_particles_are_not_flagged(searches):
    """The old false positive: bright natural particles lose 7Li counts to dead time
    (MHz rates), which made their ratio 'significant' (z = 8.1 on seed 1); with the
    dead-time correction and the systematic term the bright ones (N7 > 2e4) are called
    natural. (A small natural particle beside a labelled one can hold enough of its
    6Li tail to be called labelled: a false report, counted by the precision of
    test_find_labelled_particles_matches_truth.)"""
    bright = 0
    for seed, (res, engine, truth) in searches.items():
        res = _search(engine, _search_start(engine))
        sc = _segment_score(res, _search_start(engine), truth)
        by_label = {c["label"]: c for c in res["candidates"]}
        for lab, members in sc["members"].items():
            cand = by_label[lab]
            if any(m["labelled"] for m in members):
                continue
            if cand["n7"] > 2e4:
                bright += 1
                print(f"seed {seed}: natural r = "
                      f"{'+'.join(str(round(m['radius_nm'])) for m in members)} nm, N7 "
                      f"{cand['n7']:.0f}, ratio {cand['ratio']:.4f}, z {cand['z']:+.1f}, "
                      f"{cand['classification']}")
                assert cand["classification"] == "natural" and abs(cand["z"]) < 3.0
    assert bright >= 3  # over the seeds (seeds 1-3 had 2-4 each)


@pytest.mark.slow
def test_particle_search_documents(searches):
    result, engine, _ = searches[1]
    # The dead time's calibration on the pad comes first, a run of its own.
    every = [s for s in engine.docs.docs["start"] if s["plan_name"] != "calibrate_dead_time"]
    # The bracket's two reference maps have a correlation_id (the bracketing id) of
    # their own; the search's SIMS run carries the same bracketing id.
    refs = [s for s in every if s["correlation_id"] != result["correlation_id"]]
    assert [s["bracketing"]["position"] for s in refs] == ["before", "after"]
    starts = [s for s in every if s["correlation_id"] == result["correlation_id"]]
    sims = starts[0]
    assert {s["bracketing"]["bracketing_id"] for s in refs + [sims]} == {
        result["bracketing"]["bracketing_id"]}
    res = _search(engine, sims)  # the maps, table and analysis as stored
    found = res["particles"]
    imaged = found + res["uncertain"]  # image_uncertain=True
    assert all(p["classification"] == "uncertain" for p in res["uncertain"])
    assert {s["correlation_id"] for s in starts} == {result["correlation_id"]}
    assert len(starts) == 1 + len(imaged)
    assert result["uids"] == {"sims": [sims["uid"]], "tem": [s["uid"] for s in starts[1:]]}
    for s in starts:
        assert check_start_metadata(s) == [], s["plan_name"]
        _geometry(engine, s)
    assert sims["mode"] == "SIMS" and sims["correlative"]["role"] == "particle_search"
    params = sims["correlative"]["particle_analysis"]
    assert params["significance_sigma"] == 5.0 and params["min_counts"] == 50
    assert params["reference_ratio"] == NATURAL_LI6_LI7
    assert params["dead_time_s"] == pytest.approx(engine.dead_time_s)
    geo = SimsMapGeometry.from_metadata(sims)
    assert res["maps"]["6Li"].shape == geo.shape and res["labels"].shape == geo.shape
    assert res["maps"]["7Li"].dtype == np.int32  # every line acquired: no marker, no NaN
    stream = _events(engine, sims["uid"], "particles")
    assert sum(e["data"]["particle_labelled"] for e in stream) == len(found)
    for e in stream:
        data = e["data"]
        assert {"particle_confidence", "particle_p_natural", "particle_z"} <= set(data)
        assert all(v is not None for v in data.values())
    for p, s, done in zip(imaged, starts[1:], result["imaged"], strict=True):
        assert s["mode"] == "TEM" and s["region"]["fov_um"] == 0.4
        assert s["region"]["x_um"] == pytest.approx(p["x_um"], abs=2e-3)
        assert s["correlative"]["particle"]["classification"] == p["classification"]
        assert done == {"label": p["label"], "classification": p["classification"],
                        "tem_uid": s["uid"]}
        (ev,) = _events(engine, s["uid"], "primary")
        assert np.asarray(ev["data"]["camera_image"]).shape == (64, 64)


@pytest.mark.slow
def test_the_parallax_survey_is_recorded_and_moves_reports_up_beam(relief_search, searches):
    """The relief searches (decision 0041): a 1024 px TEM survey of the search field
    under its own correlation id before the search, its uid and parameters in the SIMS
    run's ``correlative.parallax``, every particle's map position and shift in the
    ``particles`` stream; the labelled ones seen down-beam (+y) of their TEM projection
    by ~0.75 r (r: the nearest labelled particle's, truth), x unmoved."""
    relief = {**relief_search, **{seed: v for seed, v in searches.items() if _relief(seed)}}
    for seed, (result, engine, truth) in relief.items():
        info = result["parallax"]
        survey = next(s for s in engine.docs.docs["start"] if s["uid"] == info["survey_uid"])
        assert survey["correlation_id"] == info["parallax_id"] != result["correlation_id"]
        assert survey["correlative"]["role"] == "particle_survey"
        assert survey["image"]["size"] == 1024 and survey["mode"] == "TEM"
        sims = _search_start(engine)
        assert sims["correlative"]["parallax"]["survey_uid"] == info["survey_uid"]
        table = _search(engine, sims)["candidates"]
        corr = info["corrections"]
        assert corr["corrected"] == sum(1 for p in table if p["tem_particle"])
        merged = {m for g in corr["merges"] for m in g["merged"]}
        assert merged == {p["label"] for p in table if p["merged_into"]}
        lab = [t for t in truth if t["labelled"]]
        shifts = []
        for p in table:
            if p["labelled"] and p["tem_particle"] and not p["merged_into"]:
                t = min(lab, key=lambda t: math.hypot(1e3 * p["x_um"] - t["x_nm"],
                                                      1e3 * p["y_um"] - t["y_nm"]))
                shifts.append(p["parallax_dy_um"] * 1e3 / t["radius_nm"])
        cs = score_centroids(_search(engine, sims)["particles"], truth)
        print(f"seed {seed} (relief): recall {cs['found']}/{cs['n_labelled']}, precision "
              f"{cs['tp']}/{cs['reported']} (scored with relief by TEMSIMS_SEARCH_RELIEF=1)")
        print(f"seed {seed}: {corr['tem_particles']} survey particles, {corr['corrected']} "
              f"reports corrected, labelled shifts / r: median {np.median(shifts):.2f}; "
              f"merges {corr['merges']}")
        assert 0.5 < np.median(shifts) < 1.0
        kept = {g["kept"] for g in corr["merges"]}  # at their group's mean
        for p in table:
            if p["label"] not in kept:
                assert p["x_um"] == p["sims_x_um"]
                assert p["y_um"] == pytest.approx(p["sims_y_um"] - p["parallax_dy_um"])


def test_automatic_regions_leave_out_the_isotope_standard():
    """An automatic region centred on the standard (within half its width and a quarter
    of the region's field) is not mapped as an unknown."""
    from temsims.constants import reference_region
    from temsims.plans.correlative import _on_reference

    pad = dict(reference_region("li2co3-particles"))
    on = {"x_um": pad["x_um"] + 0.1, "y_um": pad["y_um"] - 0.05, "fov_um": 0.6}
    beside = {"x_um": pad["x_um"] + 0.3, "y_um": pad["y_um"], "fov_um": 0.6}
    assert _on_reference(on, pad) and not _on_reference(beside, pad)
    assert not _on_reference(on, None)

