"""EDX-guided SIMS quantification end to end: ``edx_sims_calibration`` on the real IOCs
(diffusion-couple, a fresh instrument seed drawn at run time and printed: the seed of
its EDX and SIMS noise), then ``temsims.app.calibration_data`` on its documents and on
the catalog, scored against the specimen's true C(x).

The module gets the session's diffusion-couple instrument, reset at its start (the
SIMS map sputters the couple; the next get() gives the holder a pristine one), with a
spectrometer without drift: the plan cannot know the drift, and at a time scale S every
wall second of CA, RunEngine and frame preparation since the reset is S nominal
seconds of it (at S = 20 and the default 3 nm/min the worst error between 0.1 and
10 at.% was 4.3-9.7 % over five runs, depending on the machine's load; without drift it
is 4.4 % at S = 1 and at S = 20). Sizes are small so that the plan takes well under a minute: an EDX
line of 50 points, 40 nm apart (10 nA x 0.1 s = 1 nC per point), and a 200 x 64 px
SIMS map of 2 um (10 nm pixels) at 1 nA, 1 ms dwell (12.8 s). The k-factors are the
simulator's (``EDXModel.k_factor``), as if measured on a standard. Before the line the
plan records the column's system peaks beyond the couple's edge (100 nA x 10 s), which
the analysis subtracts with the sum peaks (decision 0037).
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scoring import fresh_rng

from temsims.catalog import check_start_metadata
from temsims.plans import edx_sims_calibration
from temsims.plans._common import HARDWARE_COMMANDS

LINE = {"start_um": (-0.28, 0.0), "stop_um": (1.68, 0.0), "points": 50}
EDX = {"edx_live_time_s": 0.1, "edx_current_na": 10.0}
SIMS = {"sims_pixels": (200, 64), "sims_dwell_s": 1e-3, "sims_aperture": "1 nA"}
#: The system-peak reference beyond the couple's edge (its grid ends at y = 2.05 um).
REFERENCE = {"edx_reference_um": (0.0, 3.0), "edx_reference_current_na": 100.0,
             "edx_reference_live_time_s": 10.0}
FIGURES: dict[str, object] = {}
NO_DRIFT = {"spectrometer": ["--drift-nm-per-min", "0"]}


@pytest.fixture(scope="module")
def seed():
    """The instrument's seed, fresh (issue 15: no score rests on one chosen seed); only
    this module starts a diffusion-couple instrument with these arguments, so a fresh
    seed costs no extra start."""
    s = int(fresh_rng("test_calibration instrument").integers(2, 1_000_000))
    print(f"diffusion-couple seed {s}")
    return s


@pytest.fixture(scope="module")
def cdev(instruments, seed):
    """Connected devices on the diffusion-couple instrument (no drift), reset for this
    module."""
    from instrument_support import connect_fast

    return connect_fast(instruments.get(specimen="diffusion-couple", seed=seed,
                                        extra_args=NO_DRIFT))


def _true_k_factors(ht_kv: float) -> dict[str, float]:
    from temsims.ioc.physics.edx import EDXModel

    model = EDXModel(["Cu", "Ni"], ht_kv=ht_kv)
    return {"Cu": model.k_factor("Cu", "Ni"), "Ni": 1.0}


@pytest.fixture(scope="module")
def calibration_run(cdev, seed, tmp_path_factory):
    """The plan, once, into a document collector and an embedded catalog (8-19 s with
    the catalog's start and close: the tests that use it are marked slow)."""
    from bluesky import RunEngine
    from documents import DocumentCollector

    from temsims.catalog import open_catalog, require_metadata

    d = cdev
    before = {"tem_current": float(d.tem.beam_current.get()),
              "aperture": str(d.column.aperture.get())}
    k = _true_k_factors(float(d.tem.ht.get()))
    RE = RunEngine({"sample": f"Cu-Ni couple seed {seed}", "specimen": "diffusion-couple",
                    "operator": "pytest"}, call_returns_result=True)
    require_metadata(RE)
    docs = DocumentCollector()
    RE.subscribe(docs)
    cat = open_catalog(tmp_path_factory.mktemp("calibration") / "catalog")
    writer = cat.writer()
    RE.subscribe(writer)
    t0 = time.monotonic()
    result = RE(edx_sims_calibration(
        d, **LINE, **EDX, **SIMS, **REFERENCE, k_factors=k,
        k_factor_source="simulator (EDXModel.k_factor), standing in for a standard")).plan_result
    FIGURES["plan_wall_s"] = time.monotonic() - t0
    t1 = time.monotonic()
    assert writer.flush(60)
    FIGURES["catalog_drain_s"] = time.monotonic() - t1
    yield {"result": result, "docs": docs, "catalog": cat, "k": k, "before": before}
    cat.close(timeout=60)


@pytest.fixture(scope="module")
def truth(seed):
    from temsims.ioc.physics.specimen import build_specimen

    spec = build_specimen("diffusion-couple", seed)
    x, c = spec.truth["x_nm"], spec.truth["solute_fraction"]
    return lambda x_nm: np.interp(x_nm, x, c)


# ------------------------------------------------------------------ arguments
def _bad_cases():
    return [({"start_um": (0.0, 0.0), "stop_um": (0.0, 0.0)}, ValueError),
            ({"start_um": (0.0,)}, TypeError), ({"stop_um": "1,0"}, TypeError),
            ({"stop_um": (500.0, 0.0)}, ValueError), ({"points": 1}, ValueError),
            ({"points": 1000}, ValueError), ({"points": 2.5}, TypeError),
            ({"edx_live_time_s": 0.0}, ValueError), ({"edx_live_time_s": "1"}, TypeError),
            ({"edx_current_na": 1000.0}, ValueError), ({"edx_current_na": math.nan}, ValueError),
            ({"sims_fov_um": 0.0}, ValueError), ({"sims_fov_um": 1e6}, ValueError),
            ({"sims_fov_um": 1.0}, ValueError),  # the line does not fit in the field
            ({"sims_center_um": (1.5, 0.0)}, ValueError),  # ... nor here
            ({"sims_pixels": (0, 64)}, ValueError), ({"sims_pixels": 64}, TypeError),
            ({"sims_dwell_s": 1.0}, ValueError), ({"sims_aperture": "2 nA"}, ValueError),
            ({"sims_aperture": 1000}, TypeError), ({"sims_voltage_v": 50.0}, ValueError),
            ({"sims_voltage_v": 9000.0}, ValueError), ({"analyte": "Ni"}, ValueError),
            ({"analyte": 29}, TypeError), ({"analyte_species": "58Ni"}, ValueError),
            ({"analyte_species": "Cu"}, ValueError),
            ({"matrix_species": "63Cu", "analyte_species": "63Cu"}, ValueError),
            ({"matrix_species": "7Li"}, ValueError),  # beyond the focal plane's mass ratio
            ({"k_factors": {"Cu": 1.3}}, ValueError), ({"k_factors": [1.3, 1.0]}, TypeError),
            ({"k_factors": {"Cu": -1.0, "Ni": 1.0}}, ValueError),
            ({"k_factor_source": 3}, TypeError), ({"fwhm_mn_ka_ev": 5.0}, ValueError),
            ({"edx_reference_um": (0.0, 5000.0)}, ValueError),
            ({"edx_reference_um": "hole"}, TypeError),
            ({"edx_reference_live_time_s": 0.0}, ValueError),
            ({"edx_reference_current_na": 500.0}, ValueError),
            ({"system_elements": "Fe"}, TypeError), ({"system_elements": ("Cu",)}, ValueError),
            ({"system_elements": (26,)}, TypeError),
            ({"md": {"correlation_id": ""}}, ValueError), ({"md": 5}, TypeError)]


@pytest.mark.parametrize("bad,exc", _bad_cases(), ids=lambda v: str(v)[:40])
def test_invalid_arguments_refused_before_any_hardware_message(cdev, bad, exc):
    msgs = []
    gen = edx_sims_calibration(cdev, **{**LINE, **EDX, **SIMS, **bad})
    with pytest.raises(exc):  # the plan may read (the scan rotation) before it refuses
        for msg in gen:
            msgs.append(msg)
    assert not [m for m in msgs if m.command in HARDWARE_COMMANDS]


def test_wrong_device_refused(cdev):
    from dataclasses import replace

    with pytest.raises(TypeError, match="microscope.edx .* is not a EdxDevice"):
        next(edx_sims_calibration(replace(cdev, edx=cdev.camera), **LINE))


def test_message_order_edx_first_then_sims_then_safe(cdev):
    """The message stream without a RunEngine (``list``: every read answers its
    default): EDX acquisition before the SIMS geometry and the raster, TEM at the end."""
    msgs = list(edx_sims_calibration(cdev, **LINE, **EDX, **SIMS))
    kinds = []
    for m in msgs:
        if m.command == "trigger" and m.obj is cdev.edx:
            kinds.append("edx")
        elif m.command == "set" and m.obj is cdev.stage.alpha:  # the mode changes' tilts
            kinds.append(f"mode:{'SIMS' if m.args[0] < -1 else 'TEM'}")
        elif m.command == "kickoff":
            kinds.append("raster")
    assert kinds.index("edx") < kinds.index("mode:SIMS") < kinds.index("raster")
    assert kinds[-1] == "mode:TEM"
    assert [m.command for m in msgs].count("open_run") == 2


# ------------------------------------------------------------------ the plan on the IOCs
@pytest.mark.slow
def test_runs_linked_and_metadata_recorded(calibration_run):
    res, docs = calibration_run["result"], calibration_run["docs"]
    starts = docs.docs["start"]
    assert [s["uid"] for s in starts] == [res["uids"]["edx_system_reference"],
                                          res["uids"]["edx_line"], res["uids"]["sims_map"]]
    assert {s["correlation_id"] for s in starts} == {res["calibration_id"]}
    assert {s["calibration_id"] for s in starts} == {res["calibration_id"]}
    assert [s["calibration"]["role"] for s in starts] == ["edx_system_reference", "edx_line",
                                                          "sims_map"]
    assert [s["mode"] for s in starts] == ["TEM", "TEM", "SIMS"]
    assert [s["plan_name"] for s in starts] == ["edx_point", "edx_line", "sims_map"]
    ref_start, starts = starts[0], starts[1:]
    ref = ref_start["calibration"]["reference"]
    assert ref["point_um"] == list(REFERENCE["edx_reference_um"])
    assert ref["beam_current_na"] == pytest.approx(100.0)
    assert ref["live_time_s"] == REFERENCE["edx_reference_live_time_s"]
    for s in starts:
        assert check_start_metadata(s) == [], s["plan_name"]
        block = s["calibration"]
        for key in ("calibration_id", "parent_plan", "parent_plan_args", "analyte",
                    "matrix_reference", "elements", "analyte_species", "matrix_species",
                    "binary", "gradient_direction", "line"):
            assert key in block, key
        assert block["analyte"] == "Cu" and block["matrix_reference"] == "Ni"
        assert block["binary"] is True
        assert block["gradient_direction"] == pytest.approx([1.0, 0.0])
    edx_start, sims_start = starts
    assert len(edx_start["edx"]["points_um"]) == LINE["points"]
    e = edx_start["calibration"]["edx"]
    for key in ("beam_kev", "beam_current_na", "live_time_s", "nchan", "ev_per_chan",
                "offset_ev", "tilt_deg", "fwhm_mn_ka_ev", "elements", "k_factors",
                "k_factor_source", "data_keys"):
        assert key in e, key
    assert e["beam_kev"] == pytest.approx(200.0)
    assert e["beam_current_na"] == pytest.approx(EDX["edx_current_na"])
    assert abs(e["tilt_deg"]) < 1.0
    assert e["k_factors"] == pytest.approx(calibration_run["k"])
    assert e["pulse_pair_time_s"] == pytest.approx(100e-9)
    assert e["system_elements"] == ["Fe"]
    assert e["system_reference_run"] == ref_start["uid"]
    s = sims_start["calibration"]["sims"]
    for key in ("species", "dead_time_s", "dark_rate_per_s", "beam_current_pa", "polarity",
                "bias_kV", "frame_index", "dose_ions_nm2"):
        assert key in s, key
    assert s["species"] == {"analyte": "63Cu", "matrix": "58Ni"}
    # the geometry, data keys and dwell: the map block every SIMS map run has, only there
    assert not {"nx", "fov_um", "pixel_to_specimen_nm", "data_keys", "dwell_s"} & set(s)
    assert sims_start["map"]["data_keys"] == ["imager_63Cu", "imager_58Ni"]
    assert s["beam_current_pa"] == pytest.approx(1000.0, rel=0.05)
    assert sims_start["calibration"]["edx_run_uid"] == edx_start["uid"]
    assert [c["species"] for c in sims_start["collectors"][:2]] == ["63Cu", "58Ni"]
    assert sims_start["region"]["tilt_deg"] == pytest.approx(-68.0, abs=1.0)


@pytest.mark.slow
def test_edx_line_inside_sims_field(calibration_run):
    from temsims.app import calibration_data as cd

    data = cd.from_documents(calibration_run["docs"])
    assert data.line_inside_field()
    assert data.start["sims_map"]["calibration"]["sims"]["edx_line_inside"] is True
    # Every EDX point's bin holds SIMS pixels: a whole column block, all rows.
    ny, nx = data.analyte_map.shape
    assert (ny, nx) == (SIMS["sims_pixels"][1], SIMS["sims_pixels"][0])


@pytest.mark.slow
def test_instrument_left_safe_and_restored(calibration_run, cdev):
    d, before = cdev, calibration_run["before"]
    assert d.mode.infer() == "TEM"
    assert d.column.blank.get() == "Blanked"
    assert abs(d.bias.position) < 1.0
    assert float(d.tem.beam_current.get()) == pytest.approx(before["tem_current"])
    assert str(d.column.aperture.get()) == before["aperture"]


def _score(result, truth) -> dict:
    x = result.positions_nm  # the line runs along +x at y = 0: projected = x
    c_true = truth(x)
    rel = result.profile.concentration / c_true - 1.0
    rel_sigma = result.profile.sigma / c_true
    band = (c_true >= 1e-3) & (c_true <= 0.1)
    decades = {}
    for lo, hi in ((0.03, 0.1), (0.01, 0.03), (3e-3, 0.01), (1e-3, 3e-3), (3e-4, 1e-3)):
        sel = (c_true >= lo) & (c_true < hi)
        if sel.any():
            decades[(lo, hi)] = (int(sel.sum()), float(np.mean(rel[sel])),
                                 float(np.max(np.abs(rel[sel]))), float(np.mean(rel_sigma[sel])))
    return {"c_true": c_true, "rel": rel, "rel_sigma": rel_sigma, "band": band,
            "decades": decades}


@pytest.mark.slow
def test_quantified_sims_concentration_against_the_truth(calibration_run, truth):
    """< 12 % relative error from 10 at.% down to 0.1 at.%, below the EDX detection limit,
    on this fresh seed. The scored figure is the 90th percentile over fresh seed pairs
    of this geometry (benchmarks/quantification_benchmark.py, ``plan``: p90 5.4-5.6 %,
    max 7.7-9.8 % over 100 and 300 pairs at the EDX points' resolution, decision 0045;
    before it 8.4 % and 11.0-12.8 %, 3 in 360 over 12 %); 12 % bounds one pair."""
    from temsims.app import calibration_data as cd

    t0 = time.monotonic()
    data = cd.from_documents(calibration_run["docs"])
    result = cd.quantify(data)
    analysis_s = time.monotonic() - t0
    s = _score(result, truth)
    dl, ql = result.detection_limit, result.quantification_limit
    cal = result.calibration
    print(f"\nedx_sims_calibration: plan {FIGURES['plan_wall_s']:.1f} s wall (EDX "
          f"{LINE['points']} pts x {EDX['edx_live_time_s']} s at {EDX['edx_current_na']} nA; "
          f"SIMS {SIMS['sims_pixels'][0]}x{SIMS['sims_pixels'][1]} px, "
          f"{SIMS['sims_dwell_s'] * 1e3:g} ms, {SIMS['sims_aperture']}), analysis "
          f"{analysis_s:.2f} s")
    print(f"EDX Cu detection limit {dl * 100:.3f} at.% (quantification limit "
          f"{ql * 100:.2f} at.%); RSF fit on {int(result.mask.sum())} points, C_EDX "
          f"{cal.c_range[0] * 100:.2f}..{cal.c_range[1] * 100:.1f} at.%, degree {cal.degree}, "
          f"reduced chi2 {cal.reduced_chi2:.2f}")
    print("   C_true range       n   mean rel. err   max |rel. err|   mean 1-sigma")
    for (lo, hi), (n, mean, worst, sig) in s["decades"].items():
        below = "  below EDX DL" if hi <= dl else ("  partly below EDX DL" if lo < dl else "")
        print(f"   {lo * 100:6.2f}-{hi * 100:5.2f} at.%  {n:3d}   {mean * 100:+7.1f} %"
              f"        {worst * 100:6.1f} %        {sig * 100:5.1f} %{below}")
    band = s["band"]
    worst = float(np.max(np.abs(s["rel"][band])))
    z = s["rel"][band] / s["rel_sigma"][band]
    print(f"   max |rel. error| for 0.1-10 at.%: {worst * 100:.1f} % over {int(band.sum())} "
          f"points ({int(np.sum(band & (s['c_true'] < dl)))} below the EDX limit); "
          f"rms z {np.sqrt(np.mean(z**2)):.2f}")
    FIGURES.update(detection_limit=dl, worst=worst)
    assert dl > 1e-3, "the EDX detection limit should be above 0.1 at.% (else no extrapolation)"
    assert band.sum() >= 15
    assert np.any(band & (s["c_true"] < dl))  # part of the asserted range is below EDX
    assert worst < 0.12
    # Below the calibration range the concentrations are extrapolated, and flagged so.
    # (below half the true C of the most dilute calibration point: its C_EDX, noisy near
    # the detection limit, can lie well above the truth there)
    assert np.all(result.profile.extrapolated[s["c_true"] < s["c_true"][result.mask].min() / 2])
    # Error bars: the scatter is consistent with the quoted 1-sigma (within 3x).
    assert np.sqrt(np.mean(z**2)) < 3.0
    # The map, pixel by pixel: column means agree with the truth where Cu is 1-30 at.%.
    ny, nx = data.analyte_map.shape
    cols = np.arange(nx)
    x_col = data.affine_nm[0, 0] * cols + data.affine_nm[0, 2] + data.affine_nm[0, 1] * (ny - 1) / 2
    c_col = truth(x_col)
    rich = (c_col > 0.01) & (c_col < 0.3)
    col_mean = np.nanmean(result.map.concentration, axis=0)
    assert np.max(np.abs(col_mean[rich] / c_col[rich] - 1)) < 0.10
    assert result.map.concentration.shape == (ny, nx)
    assert np.all(np.isfinite(result.map.sigma[:, rich]))
    record = result.record()
    assert record["runs"] == {"edx_line": data.edx_uid, "sims_map": data.sims_uid}
    assert len(record["coefficients"]) == cal.degree + 1
    # The EDX corrections, and what they did: the system spectrum in the hole holds Cu
    # and Fe, not Ni; its Cu at each point is of the order of 0.1 at.% Cu.
    corr = record["edx_corrections"]
    assert corr["sum_peaks"]["pulse_pair_time_s"] == pytest.approx(100e-9)
    system = corr["system_peaks"]
    assert system["reference_run"] == data.reference_uid
    print(f"system peaks: Cu/Fe {system['ratios']['Cu']:.2f} +- "
          f"{system['ratio_sigma']['Cu']:.2f}, Ni/Fe {system['ratios']['Ni']:+.3f}; Cu "
          f"subtracted per point {system['subtracted_median']['Cu']:.1f} counts")
    assert system["ratios"]["Cu"] > 5 * system["ratio_sigma"]["Cu"]
    assert abs(system["ratios"]["Ni"]) < 4 * system["ratio_sigma"]["Ni"] + 0.05
    assert system["subtracted_median"]["Cu"] > 3.0


@pytest.mark.slow
def test_same_result_from_the_catalog(calibration_run):
    """The runs read back from the embedded catalog give the same arrays and result."""
    from temsims.app import calibration_data as cd

    cid = calibration_run["result"]["calibration_id"]
    t0 = time.monotonic()
    from_cat = cd.from_catalog(calibration_run["catalog"], cid)
    read_s = time.monotonic() - t0
    from_docs = cd.from_documents(calibration_run["docs"])
    print(f"\ncatalog: drain after the plan {FIGURES['catalog_drain_s']:.2f} s, read both runs "
          f"{read_s:.2f} s")
    assert (from_cat.edx_uid, from_cat.sims_uid) == (from_docs.edx_uid, from_docs.sims_uid)
    assert from_cat.reference_uid == from_docs.reference_uid is not None
    np.testing.assert_array_equal(from_cat.system_reference.counts,
                                  from_docs.system_reference.counts)
    np.testing.assert_array_equal(from_cat.spectra, from_docs.spectra)
    np.testing.assert_array_equal(from_cat.analyte_map, from_docs.analyte_map)
    np.testing.assert_array_equal(from_cat.matrix_map, from_docs.matrix_map)
    np.testing.assert_allclose(from_cat.affine_nm, from_docs.affine_nm)
    assert from_cat.axis == from_docs.axis
    a, b = cd.quantify(from_cat), cd.quantify(from_docs)
    np.testing.assert_allclose(a.profile.concentration, b.profile.concentration)


@pytest.mark.slow
def test_missing_k_factors_refused(calibration_run):
    """Runs recorded without k-factors: the analysis asks for them."""
    import dataclasses

    from temsims.app import calibration_data as cd

    data = dataclasses.replace(cd.from_documents(calibration_run["docs"]), k_factors=None)
    with pytest.raises(ValueError, match="k-factors"):
        cd.quantify(data)
    assert cd.quantify(data, k_factors=calibration_run["k"]).calibration is not None
    with pytest.raises(cd.CalibrationDataError):
        cd.from_documents({"start": [], "event": []})


def test_summarize_plan_lists_both_runs(cdev, capsys):
    """bluesky's summarize_plan reads the plan without hardware (as the queue server's
    plan preview does): both runs open, the EDX line and the raster appear."""
    from bluesky.simulators import summarize_plan

    summarize_plan(edx_sims_calibration(cdev, **LINE, **EDX, **SIMS))
    out = capsys.readouterr().out
    assert out.count("Open Run") == 2 and out.count("Close Run") == 2, out[-2000:]
    assert "edx_npts -> 50" in out and "column_scan_nx -> 200" in out, out[-2000:]
    assert out.rstrip().endswith("bias -> 0.0")  # left safe
