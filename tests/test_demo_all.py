"""``temsims demo --case all --quick`` once, in a subprocess: every case into one
catalog and one HTML index whose links all resolve; then each case's figures scored
against its twin.

One run for all of it (a case alone costs an interpreter, an instrument and a catalog
server: the cases' separate end-to-end tests took ~1.5 times as long in all). The run
uses one fresh seed (``tests/scoring.py``'s :func:`fresh_rng`, printed) for every
specimen, at time scale 20 with the drift at 3 / 20 nm/min (decision 0031: the
specimen then drifts per wall second as at time scale 1).

- The index (every case :func:`temsims.app.cases.available_cases` finds, on IOCs with
  its own specimen, started and stopped by the demo for each): parsed with
  :mod:`html.parser` (every ``img`` and link a file that exists) and, where a Chromium
  is installed (Debian's ``chromium-headless-shell``), loaded in it headless: every
  image loaded and decoded. Each case well under the three minutes allowed.
- particles (the default case): the report read back from the catalog, not blank,
  every region registered and fused, labelled particles found.
- cathode: the runs under one correlation id, a report that is not blank, the twin's
  truth (``livo-cathode``'s recipe) recovered: the V decay length in the LiPON and
  the V level at its interface within 1.5 x their stated 95 % intervals (3 sigma: one
  seed), each interface's SIMS position within one SIMS pixel of the TEM one and the
  TEM one within a TEM pixel of the truth. Over >= 10 seeds (the issue's ">= 90 % of
  seeds"): ``benchmarks/cathode_case_benchmark.py``.
- quantification: the EDX line, the calibration map and the quantified map under one
  correlation id; the quantified Cu profile, an absolute concentration from the
  EDX-calibrated RSF, matches the ``diffusion-couple`` truth from 10 at.% down to
  0.1 at.%, below the EDX detection limit; one seed held to 12 % and its stated errors
  to an RMS z below 3 (the p90 over seeds, < 10 %, is
  ``benchmarks/quantification_case_benchmark.py``'s; each bound's measured spread is
  beside it).
- solar-cell: ``solar_cell_scoring.check_solar_cell`` (the runs, the report, the Na
  boundary/interior ratio within 20 % of the truth, Ga/(In+Ga) per grain within its
  stated bound); over seeds: ``benchmarks/solar_cell_case_benchmark.py``.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from demo_support import TIME_SCALE, check_in_chromium, index_links, run_demo, starts_of
from scoring import fresh_rng, score_quantified_profile

from temsims.app.cases import available_cases

pytestmark = pytest.mark.slow

CATHODE_FILES = ("cathode_published.png", "cathode_sims_maps.png", "cathode_profiles.png")
QUANT_FILES = ("quantification_calibration.png", "quantification_profile.png",
               "quantification_map.png")
#: Drift per nominal minute that drifts per wall second as the default does at scale 1.
DRIFT_NM_PER_MIN = 3.0 / TIME_SCALE
#: One seed's worst error over 0.1-10 at.% (the p90 over seeds is the benchmark's).
#: Measured (decision 0045, 48 runs of the case, 23 of them re-analysed and 25 fresh):
#: quantified map median 3.1 %, p90 4.6 %, max 5.4 %; calibration map 3.4 / 5.0 /
#: 8.1 %: a lognormal fit puts P(> 12 %) at 1e-6 and 1e-4 per run (before 0045: 6.0 /
#: 7.7 / 8.7 % and 6.1 / 8.8 / 11.5 %, ~3 % of runs over 12 %).
SINGLE_SEED_WORST = 0.12
#: The RMS over 0.1-10 at.% of error / stated 1-sigma, per profile. Measured (same 48
#: runs): quantified map median 0.80, p90 1.49, max 2.11; calibration map 0.80 / 1.39 /
#: 1.91: P(> 3) ~1e-3 and 3e-4 per run from a lognormal fit (before 0045: 1.58 / 2.44 /
#: 2.97 and 1.42 / 2.30 / 2.77, 3-4 % of runs over 3: the CI failure of seed 867712).
MAX_RMS_Z = 3.0
#: What a case may take (the particle case's allowance).
CASE_LIMIT_S = 180.0


@pytest.fixture(scope="module")
def all_run(slot_pool, tmp_path_factory):
    rng = fresh_rng("demo --case all")
    seed = int(rng.integers(1, 10**6))
    print(f"\nseed {seed} for every specimen")
    run = run_demo(slot_pool, tmp_path_factory.mktemp("all"), "--case", "all", "--quick",
                   "--seed", str(seed), "--drift-nm-per-min", f"{DRIFT_NM_PER_MIN:g}",
                   timeout_s=900.0, tail=1500)
    run.seed = seed
    run.entropy = rng.bit_generator.seed_seq.entropy
    return run


def _finished(run):
    assert run.proc.returncode == 0, run.failure()
    return run


def _pictures(run, out: Path, names) -> None:
    import matplotlib.image as mpimg

    for name in names:
        img = mpimg.imread(out / name)
        assert img.ndim == 3 and float(np.std(img)) > 0.0, name
        assert str(out / name) in run.stdout, name


def test_demo_all_quick_writes_one_index_linking_every_case(all_run):
    run = _finished(all_run)
    cases = available_cases()
    index = run.out / "index.html"
    assert index.is_file() and f"report index: {index}" in run.stdout
    assert run.stdout.count("IOCs stopped") == len(cases)

    links = index_links(index)
    assert links["sections"] == list(cases), links["sections"]
    targets = [(index.parent / h).resolve() for h in links["href"] + links["img"]]
    missing = [str(t) for t in targets if not t.is_file()]
    assert not missing, missing
    for name, case in cases.items():
        report = run.out / name / "report.json"
        pngs = sorted((run.out / name).glob("*.png"))
        assert report.resolve() in targets, name
        assert pngs and all(p.resolve() in targets for p in pngs), (name, pngs)
        # Each case's runs are in the one catalog, linked by its correlation id(s).
        cids = json.loads(report.read_text())["correlation_ids"]
        for cid in (cids.values() if isinstance(cids, dict) else cids):
            starts = starts_of(run.catalog, cid)
            assert starts and {s["specimen"] for s in starts} == {case.specimen}, name

    seen = check_in_chromium(index)
    if seen is None:
        print("no Chromium installed: the index was checked with html.parser only")
        return
    print(f"{seen['browser']}: {len(seen['images'])} images, "
          f"{sum(i['ok'] for i in seen['images'])} loaded; sections {seen['sections']}")
    assert seen["sections"] == list(cases)
    assert len(seen["images"]) == len(links["img"])
    assert all(i["ok"] for i in seen["images"]), [i for i in seen["images"] if not i["ok"]]
    assert {Path(h).name for h in seen["links"] if not h.startswith("#")} == \
        {Path(h).name for h in links["href"]}


def test_each_case_takes_well_under_three_minutes(all_run):
    run = _finished(all_run)
    took = {name: float(s) for name, s in re.findall(r"case (\S+) took ([0-9.]+) s", run.stdout)}
    print(took)
    assert set(took) == set(available_cases()), took
    assert all(s < CASE_LIMIT_S for s in took.values()), took


def test_particles_report_is_read_back_and_not_blank(all_run):
    """The particle case (the default ``temsims demo``: ``tests/catalog/
    test_demo_on_postgres.py`` runs it without ``--case``)."""
    run = _finished(all_run)
    out = run.out / "particles"
    names = ("correlative.png", "fusion.png", "sims_ratio.png", "particles.png",
             "quantified.png")
    _pictures(run, out, names)
    assert (run.catalog / "catalog.db").exists()
    # report.json: the figures, per region registration and fusion metrics, particles.
    report = json.loads((out / "report.json").read_text())
    assert report["source"] == "catalog"  # read back by temsims.app.loaders
    assert report["regions"]
    for region in report["regions"]:
        reg = region["registration"]
        assert reg["refined"] and reg["ncc"] > 0.5, reg
        for method in ("ihs", "laplacian"):
            metrics = region["fusion"][method]
            assert all(metrics[k] is not None for k in ("q", "ssim", "sam_deg", "ergas",
                                                        "spatial_cc")), metrics
        assert 0.0 <= region["x6Li"]["map"] <= 1.0 and region["x6Li"]["sigma"] > 0
    parts = report["particles"]
    assert parts["segmented"] == len(parts["table"]) and parts["labelled"] >= 1
    assert set(report["figures"]) == {str(out / n) for n in names}


def _truth(seed: int, x_lo_um: float, x_hi_um: float) -> dict:
    from temsims.ioc.physics.specimen import build_specimen, livo_cathode

    defaults = {k: p.default for k, p in inspect.signature(livo_cathode).parameters.items()}
    spec = build_specimen("livo-cathode", seed)
    x = spec.x_nm() / 1e3
    cols = (x >= x_lo_um) & (x <= x_hi_um)
    return {"decay_nm": defaults["v_in_lipon_decay_nm"], "level": defaults["v_in_lipon"],
            "y_um": {k: float(np.mean(np.asarray(v)[cols])) / 1e3
                     for k, v in spec.truth["interfaces_y_nm"].items()}}


def test_cathode_recovers_the_twins_truth(all_run):
    run, seed = _finished(all_run), all_run.seed
    assert "specimen livo-cathode" in run.stdout
    out = run.out / "cathode"
    _pictures(run, out, CATHODE_FILES)

    report = json.loads((out / "report.json").read_text())
    assert report["source"] == "catalog" and report["specimen"] == "livo-cathode"
    starts = starts_of(run.catalog, report["correlation_ids"]["cathode"])
    roles = sorted(s["correlative"]["role"] for s in starts)
    assert roles == ["overview", "sims_map", "sims_map", "tem_zoom"], roles
    assert {s["specimen"] for s in starts} == {"livo-cathode"}

    fov = report["sizes"]["map_fov_um"]
    cx = report["sizes"]["center_um"][0]
    truth = _truth(seed, cx - fov / 2, cx + fov / 2)
    # One seed: within 1.5 x the stated 95 % interval (3 sigma), so that the test fails
    # on a broken analysis and not in 1 run of 20; the 95 % coverage over seeds is
    # benchmarks/cathode_case_benchmark.py's (decision 0040: 15 of 15 fresh seeds with
    # the probe halo in the fits' model). The truth is the recipe's (livo_cathode's
    # v_in_lipon_decay_nm and v_in_lipon: the V atom fraction at the LiPON side).
    decay, level = report["v_decay_length_nm"], report["v_level_lipon_atom_fraction"]
    where = f"seed {seed} (reproduce: TEMSIMS_TEST_ENTROPY={all_run.entropy})"
    print(f"cathode, {where}: decay {decay['value']:.1f} nm (95 %: {decay['interval95'][0]:.1f}"
          f"-{decay['interval95'][1]:.1f}; +- {decay['u95']:.1f}) (truth {truth['decay_nm']}), "
          f"level {level['value']:.4f} +- {level['u95']:.4f} (truth {truth['level']})")
    # The decay's interval is a profile likelihood's, asymmetric (decision 0027's
    # 2026-12-05 amendments): 1.5 x its half-width in ln(decay) on the truth's side,
    # i.e. |pull| <= 3 in ln. With the profiles binned from the interfaces traced on
    # TEM (the last amendment), over 64 fresh seeds (156641-156672, 629418-629449):
    # decay 42.6 nm (sd 5.6), pulls mean +0.35, sd 0.87, -1.85..+1.93, the truth
    # inside interval95 in 64 of 64 (binned from the lines, the same runs: 38.0 nm,
    # pulls -0.30, sd 0.83, -2.61..+1.40; CI had failed at pulls -2.8 and -3.5).
    lo, hi = decay["interval95"]
    half_log = math.log(hi / decay["value"]) if truth["decay_nm"] > decay["value"] \
        else math.log(decay["value"] / lo)
    assert abs(math.log(decay["value"] / truth["decay_nm"])) <= 1.5 * half_log, \
        (where, decay, truth)
    assert abs(level["value"] - truth["level"]) <= 1.5 * level["u95"], (where, level, truth)
    pixel = report["sims_pixel_nm"]["along_normal"]
    tem_pixel_um = report["sizes"]["overview_fov_um"] / report["sizes"]["camera_size"]
    for name, e in report["interfaces"].items():
        assert e["within_one_pixel"], (where, name, e)
        assert abs(e["offset_nm"]) <= pixel
        assert abs(e["tem_y_um"] - truth["y_um"][name]) <= tem_pixel_um, (where, name, e, truth)
        sims_y = e["sims"][e["sims_edge"]]["y_um"]
        assert abs(sims_y - truth["y_um"][name]) <= 1e-3 * pixel, (where, name, sims_y, truth)


def test_quantification_matches_the_couple_below_the_edx_limit(all_run):
    run, seed = _finished(all_run), all_run.seed
    assert "specimen diffusion-couple" in run.stdout
    out = run.out / "quantification"
    _pictures(run, out, QUANT_FILES)

    report = json.loads((out / "report.json").read_text())
    assert report["source"] == "catalog" and report["specimen"] == "diffusion-couple"
    cid = report["correlation_ids"]["quantification"]
    starts = starts_of(run.catalog, cid)
    roles = sorted((s.get("calibration") or s.get("quantification") or {}).get("role", "")
                   for s in starts)
    assert roles == ["edx_line", "edx_system_reference", "quantified_map", "sims_map"], roles
    corrections = report["calibration"]["edx_corrections"]
    print(f"EDX corrections: {corrections}")
    assert corrections["sum_peaks"]["pulse_pair_time_s"] > 0
    # 6.8-15.9 Cu counts per point over 48 runs (mean 10.2, sd 1.8; truth 11.2).
    assert corrections["system_peaks"]["subtracted_median"]["Cu"] > 3.0
    # SIMS and EDX compared at one resolution (decision 0045): the 1 nA probe recorded.
    blur = report["calibration"]["sims_probe_blur"]
    assert blur is not None and 80.0 < blur["core_fwhm_nm"] < 110.0, blur
    assert {s["correlation_id"] for s in starts} == {cid}
    assert {s["specimen"] for s in starts} == {"diffusion-couple"}
    q = next(s for s in starts if "quantification" in s)
    assert q["quantification"]["calibration_id"] == report["calibration"]["calibration_id"]

    # Where EDX stops and SIMS continues: EDX quantitative down to a few tenths of an
    # at.%, the quantified map's bins detected far beyond it. Measured over 48 runs
    # (decision 0045): DL 0.247-0.265 at.%; SIMS continues 620-820 nm beyond where EDX
    # stops, to 0.003-0.009 x DL (the map's last bin).
    dl = report["edx_detection_limit_fraction"]
    stop, cont = report["edx_stops"], report["sims_continues_to"]
    assert 1e-3 < dl < 1e-2, dl
    assert stop["x_nm"] is not None and cont["x_nm"] is not None
    assert cont["x_nm"] > stop["x_nm"] + 300.0 and cont["concentration"] < dl / 10

    worst = {}
    for key in ("quantified_profile", "calibration_profile"):
        s = score_quantified_profile(report[key], seed)
        worst[key] = s
        print(f"{key}: worst |C/C_true - 1| over 0.1-10 at.% {100 * s['worst']:.1f} % at "
              f"x = {s['worst_x_nm']:.0f} nm ({s['n']} bins, mean {100 * s['mean']:+.1f} %, "
              f"rms z {s['rms_z']:.2f})")
        # 23 bins (quantified) and 22 (calibration) in every one of 48 runs, no NaN.
        assert s["n"] >= 20 and s["nan"] == 0, s
        assert s["worst"] < SINGLE_SEED_WORST, (key, s)
        # The stated errors describe the scatter (bias included) within a factor 3.
        assert s["rms_z"] < MAX_RMS_Z, (key, s)
    # Part of the scored band is below the EDX limit (~0.25 at.%: 0.1-0.25 at.% is
    # ~160 nm of the couple; 4 bins in 48 of 48 runs), and the map quantifies far below
    # it (18 bins below the limit in 48 of 48).
    qp = report["quantified_profile"]
    c = np.array([np.nan if v is None else v for v in qp["concentration"]], float)
    assert np.sum((c > 1e-3) & (c < dl)) >= 2
    assert report["quantified_below_edx_limit"]["bins"] >= 10


def test_solar_cell_recovers_the_twins_truth(all_run):
    from solar_cell_scoring import check_solar_cell

    run = _finished(all_run)
    check_solar_cell(run.stdout, run.out / "solar-cell", run.catalog, all_run.seed)
