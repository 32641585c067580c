"""Correlative TEM-SIMS and the labelled-particle search on the real IOCs (small sizes).

The module runs its own instrument (li2co3-particles, seed 1), stopped at the end of
the module: the maps sputter the whole particle field, which the other plan tests'
shared instrument must not see. Both plans start and end in the TEM geometry. The particle search is scored against the specimen's
ground truth (precision and recall, printed).
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from temsims.catalog import check_start_metadata
from temsims.plans import correlative_tem_sims, find_labelled_particles
from temsims.plans._common import HARDWARE_COMMANDS
from temsims.plans.correlative import sims_pixel_to_stage
from temsims.plans.particles import NATURAL_LI6_LI7, ratio_z

TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def pdev(start_instrument, slot_pool):
    """Connected devices on an instrument of this module alone; fast axes and ramps."""
    from instrument_support import stop_instrument

    from temsims.devices import connect

    procs = start_instrument(specimen="li2co3-particles", seed=1)
    d = connect(procs.instrument_prefix, timeout=15.0)
    for sig, value in {d.stage.alpha.velocity: 30.0, d.stage.x.velocity: 200.0,
                       d.stage.y.velocity: 200.0, d.bias.ramp_rate: 10000.0,
                       d.mode.bias.ramp_rate: 10000.0, d.camera.size: 64}.items():
        sig.set(value).wait(10)
    yield d
    stop_instrument(procs, slot_pool)


def _devs(d):
    return (d.stage, d.tem, d.camera, d.mode, d.imager, d.spectrometer, d.column, d.bias)


def _starts(RE):
    return RE.docs.docs["start"]


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
                {"center": (5000.0, 0.0)}, {"md": 5}]
    part_ok = dict(fov_um=4.0, pixels=(8, 6), dwell_s=1e-3)
    part_bad = [{"fov_um": 0.0}, {"fov_um": 1e6}, {"pixels": (2000, 4)}, {"dwell_s": 0.0},
                {"significance": 0.0}, {"significance": "5"}, {"min_counts": -1.0},
                {"zoom_fov_um": 0.0}, {"exposure_s": 100.0}, {"max_particles": -1},
                {"center": (0.0, 1e5)}, {"md": []}]
    return [(correlative_tem_sims, corr_ok, b) for b in corr_bad] + \
        [(find_labelled_particles, part_ok, b) for b in part_bad]


@pytest.mark.parametrize("plan,ok,bad", _bad_cases(),
                         ids=lambda v: getattr(v, "__name__", None) or str(v)[:40])
def test_invalid_arguments_refused_before_any_hardware_message(pdev, plan, ok, bad):
    msgs = []
    gen = plan(*_devs(pdev), **{**ok, **bad})
    with pytest.raises((TypeError, ValueError)):
        msgs.append(next(gen))
    assert not [m for m in msgs if m.command in HARDWARE_COMMANDS]


def test_wrong_device_refused(pdev):
    devs = list(_devs(pdev))
    devs[4] = "imager"
    with pytest.raises(TypeError, match="imager"):
        next(correlative_tem_sims(*devs, overview_fov_um=4.0))


def test_ratio_z_is_poisson_significance():
    assert ratio_z(NATURAL_LI6_LI7 * 1e4, 1e4) == pytest.approx(0.0, abs=1e-9)
    # 1000 7Li counts, natural expects 82 6Li: 150 is (150 - 82.15) / sqrt(150 + 6.75)
    assert ratio_z(150, 1000) == pytest.approx((150 - 82.15) / math.sqrt(150 + 6.7486), 1e-3)
    assert ratio_z(0, 0) == 0.0


def test_failure_leaves_instrument_safe(RE, pdev):
    """An exception inside the SIMS part: beam blanked, bias ramped to 0 V."""
    import bluesky.preprocessors as bpp

    d = pdev

    def fail_at_collect(msg):
        if msg.command == "collect":
            def boom():
                raise RuntimeError("injected failure")
                yield  # pragma: no cover
            return boom(), None
        return None, None

    plan = find_labelled_particles(*_devs(d), fov_um=2.0, pixels=(8, 6), dwell_s=1e-3)
    with pytest.raises(RuntimeError, match="injected"):
        RE(bpp.plan_mutator(plan, fail_at_collect))
    assert d.column.blank.get() == "Blanked"
    assert abs(d.bias.position) < 1.0
    assert RE.docs.docs["stop"][-1]["exit_status"] == "fail"
    from bluesky import RunEngine

    from temsims.plans import to_tem_mode

    RunEngine({})(to_tem_mode(d.mode))
    assert d.mode.infer() == "TEM"


# ------------------------------------------------------------------ correlative
def test_correlative_links_runs_and_regions(RE, pdev):
    d = pdev
    t0 = time.monotonic()
    res = RE(correlative_tem_sims(*_devs(d), overview_fov_um=4.0, max_rois=2,
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
        geo = s["correlative"]
        assert geo["pixels"] == [16, 11] and geo["incidence_deg"] == 45.0
        assert geo["sample_extent_um"][1] == pytest.approx(
            r["fov_um"] * 11 / 16 / math.cos(math.radians(45)), rel=1e-4)
        assert "scan_rotation_deg" in geo and geo["rois"][i][:2] == [r["x_um"], r["y_um"]]
    # The SIMS map's brightest 7Li pixel of the first region lies on a truth particle.
    from temsims.ioc.specimen import build_specimen

    truth = build_specimen("li2co3-particles", 1).truth["particles"]
    m7 = res["sims_maps"][0]["7Li"]
    row, col = np.unravel_index(np.argmax(m7), m7.shape)
    x, y = sims_pixel_to_stage(row, col, pixels=(16, 11), fov_um=rois[0]["fov_um"],
                               x_um=rois[0]["x_um"], y_um=rois[0]["y_um"])
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
    res = RE(correlative_tem_sims(*_devs(d), overview_fov_um=4.0, rois=[roi],
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
    maps = res["sims_maps"][0]
    assert maps["6Li"].sum() > 5 * NATURAL_LI6_LI7 * maps["7Li"].sum()


# ------------------------------------------------------------------ particles
def _match(found, truth, tol_nm=60.0):
    matched_truth, hits = set(), 0
    for f in found:
        best = None
        for p in truth:
            dist = math.hypot(f["x_um"] * 1e3 - p["x_nm"], f["y_um"] * 1e3 - p["y_nm"])
            if dist < p["radius_nm"] + tol_nm and (best is None or dist < best[0]):
                best = (dist, p)
        if best is not None and best[1]["labelled"]:
            hits += 1
            matched_truth.add(best[1]["id"])
    return hits, matched_truth


def test_find_labelled_particles_matches_truth(RE, pdev):
    from temsims.ioc.specimen import build_specimen

    d = pdev
    t0 = time.monotonic()
    res = RE(find_labelled_particles(*_devs(d), fov_um=4.0, pixels=(64, 45), dwell_s=1e-3,
                                     significance=5.0, min_counts=50, zoom_fov_um=0.4,
                                     exposure_s=0.01)).plan_result
    TIMINGS["particles"] = time.monotonic() - t0
    truth = build_specimen("li2co3-particles", 1).truth["particles"]
    labelled = [p for p in truth if p["labelled"]]
    found = res["particles"]
    hits, matched = _match(found, truth)
    precision = hits / len(found) if found else 0.0
    recall = len(matched) / len(labelled)
    big = [p for p in labelled if p["radius_nm"] >= 30.0]
    recall_big = len(matched & {p["id"] for p in big}) / max(1, len(big))
    print(f"\nlabelled particles: found {len(found)}, truth {len(labelled)} "
          f"({len(big)} with r >= 30 nm); precision {precision:.2f}, recall {recall:.2f}, "
          f"recall (r >= 30 nm) {recall_big:.2f}; {len(res['candidates'])} segmented; "
          f"{TIMINGS['particles']:.1f} s")
    assert precision >= 0.8
    assert recall_big >= 0.7
    # Documents: one SIMS run with the particles stream, one TEM zoom per particle.
    starts = _starts(RE)
    assert {s["correlation_id"] for s in starts} == {res["correlation_id"]}
    assert len(starts) == 1 + len(found)
    sims = starts[0]
    assert sims["mode"] == "SIMS" and sims["correlative"]["role"] == "particle_search"
    stream = _events(RE, sims["uid"], "particles")
    assert len(stream) == len(res["candidates"])
    assert sum(e["data"]["particle_labelled"] for e in stream) == len(found)
    for p, s in zip(found, starts[1:], strict=True):
        assert s["mode"] == "TEM" and s["region"]["fov_um"] == 0.4
        assert s["region"]["x_um"] == pytest.approx(p["x_um"], abs=2e-3)
        assert p["tem_uid"] == s["uid"] and p["z"] > 5.0
        assert p["ratio"] > NATURAL_LI6_LI7
    assert d.mode.infer() == "TEM"
