"""Particles of simulated 6Li/7Li maps, scored against the specimen's hidden truth.

The scored maps are eight fresh specimen seeds per map size, each on a fresh
instrument of the harder twin (instrumental mass fractionation and collector yields,
decision 0035) and bracketed by the specimen's natural-Li pad, drawn at run time and
printed (``TEMSIMS_TEST_ENTROPY`` reproduces a run); labelled particles are scored per
particle by the reported centroid (``tests/scoring.py``). The sweep over 30+ seeds is
``benchmarks/particles_benchmark.py``.
"""

import json
import math

import numpy as np
import pytest
from analysis_sims import (
    DEMO,
    DEMO_FULL_PIXELS,
    DEMO_QUICK_PIXELS,
    HYDRIDE_COUNT_S,
    bracketed_particle_maps,
    dead_time_of,
    map_time_s,
    match_truth,
    measured_halo,
    pad_hydride_counts,
    particle_maps,
    score,
)
from scoring import TOLERANCE_NM, fresh_rng, score_centroids

from temsims.analysis.geometry import SimsMapGeometry
from temsims.analysis.isotopes import hydride_ratio
from temsims.analysis.particles import (
    classify,
    find_particles,
    segment_sims_particles,
    segment_tem_particles,
    split_labelled_segments,
)
from temsims.ioc.physics import sims as sp

#: Fresh specimen seeds per map size (about 0.4 s each at the full size). 8, not 5:
#: resampling 300 seeds per size, the ratio test below failed in 1.0 % of runs of 5
#: quick seeds (two 4-sigma pulls in ~110) and 0.4 % of 8 (its 4-sigma count is now
#: bounded by :data:`MAX_BEYOND_4`).
N_SEEDS = 8


def _run(seed, pixels, *, instrument_seed=None, **kw):
    """Segment and score one map: on the plain twin, or (``instrument_seed``) on the
    harder twin (IMF and collector yields of that instrument) with the map bracketed
    by the natural-Li pad and corrected, 6LiH+ subtracted from 7Li with LiH+/Li+
    counted on the pad (``sc["uncorrected"]``: the same map's scores without either,
    ``sc["no_hydride"]``: bracketed, the hydride left in). The probe's halo (decision
    0040) is measured on an edge with the map's instrument and subtracted
    (``sc["halo_uncorrected"]``: the scores without that)."""
    hydride = None
    if instrument_seed is None:
        spec, geo, n6, n7 = particle_maps(seed, pixels)
        corr = None
    else:
        spec, geo, n6, n7, bracket, extra = bracketed_particle_maps(
            seed, pixels, instrument_seed=instrument_seed)
        corr = bracket.factor(map_time_s(geo))
        n8_pad, n7_pad = pad_hydride_counts(seed, instrument_seed=instrument_seed)
        hydride = hydride_ratio(n8_pad, n7_pad, dwell_s=HYDRIDE_COUNT_S,
                                dead_time_s=dead_time_of(instrument_seed),
                                primary_current_pa=DEMO["current_pa"])
    affine = SimsMapGeometry(nx=pixels[0], ny=pixels[1], fov_um=geo.fov_um, centre_x_um=0.0,
                             centre_y_um=0.0).affine_to_specimen()
    # The instrument's own dead time, as a calibration would give it (decision 0034).
    inst = seed if instrument_seed is None else instrument_seed
    tau = dead_time_of(inst)
    fit = measured_halo(inst, rng_seed=7000 + seed)
    kw.setdefault("halo", fit.halo(1000.0 * geo.fov_um / pixels[0]))
    # Quasi-simultaneous arrival corrected from the known primary current (decision
    # 0043), in the references (bracketed_particle_maps) and the map alike.
    kw.setdefault("primary_current_pa", DEMO["current_pa"])
    table = find_particles(n6, n7, pixel_to_specimen=affine, dwell_s=DEMO["dwell_s"],
                           dead_time_s=tau, correction=corr, hydride=hydride, **kw)
    sc = score(table, affine, spec.truth["particles"])
    sc["centroids"] = score_centroids(table.labelled(), spec.truth["particles"])
    sc["halo"] = fit
    if corr is not None:
        raw = find_particles(n6, n7, pixel_to_specimen=affine, dwell_s=DEMO["dwell_s"],
                             dead_time_s=tau, **kw)
        sc["uncorrected"] = score(raw, affine, spec.truth["particles"])
        sc["correction"] = corr
        left_in = find_particles(n6, n7, pixel_to_specimen=affine, dwell_s=DEMO["dwell_s"],
                                 dead_time_s=tau, correction=corr, **kw)
        sc["no_hydride"] = score(left_in, affine, spec.truth["particles"])
        sc["hydride"] = hydride
        bare = find_particles(n6, n7, pixel_to_specimen=affine, dwell_s=DEMO["dwell_s"],
                              dead_time_s=tau, correction=corr, hydride=hydride,
                              **dict(kw, halo=None))
        sc["halo_uncorrected"] = score(bare, affine, spec.truth["particles"])
        sc["halo_uncorrected"]["centroids"] = score_centroids(bare.labelled(),
                                                              spec.truth["particles"])
        # QSA left in everywhere: the pad's K from uncorrected references, the map
        # and the pad's hydride count uncorrected.
        h_raw = hydride_ratio(n8_pad, n7_pad, dwell_s=HYDRIDE_COUNT_S,
                              dead_time_s=dead_time_of(instrument_seed))
        no_qsa = find_particles(n6, n7, pixel_to_specimen=affine, dwell_s=DEMO["dwell_s"],
                                dead_time_s=tau, hydride=h_raw,
                                correction=extra["no_qsa"].factor(map_time_s(geo)),
                                **dict(kw, primary_current_pa=None))
        sc["no_qsa"] = score(no_qsa, affine, spec.truth["particles"])
    return spec, table, affine, sc


@pytest.fixture(scope="module", params=[DEMO_FULL_PIXELS, DEMO_QUICK_PIXELS],
                ids=["demo-full-96x68", "demo-quick-64x45"])
def scores(request):
    """Fresh specimens on fresh instruments of the harder twin (IMF and collector
    yields, decision 0035), each map bracketed by the natural-Li pad."""
    rng = fresh_rng(f"test_particles {request.param[0]}x{request.param[1]}")
    seeds = [int(s) for s in rng.choice(np.arange(10, 1_000_000), N_SEEDS, replace=False)]
    instruments = [int(s) for s in rng.integers(1, 1_000_000, N_SEEDS)]
    print(f"specimen seeds {seeds}, instrument seeds {instruments}")
    return request.param, {seed: _run(seed, request.param, instrument_seed=inst)[3]
                           for seed, inst in zip(seeds, instruments, strict=True)}


#: Pooled over the fresh seeds (~12 labelled particles each). Over 60 seeds the benchmark
#: measured recall 0.993 (full) and 0.976 (quick); resampling five of those seeds (now eight),
#: these bounds fail in 0.03 % (full) and 0.2 % (quick) of runs. Precision 0.99-1.00.
RECALL_MIN = {DEMO_FULL_PIXELS: 0.95, DEMO_QUICK_PIXELS: 0.90}


def test_labelled_precision_and_recall_at_the_demo_dose(scores):
    """Per particle by the reported centroid (a labelled truth particle is found when a
    reported labelled centroid lies within its radius + 60 nm; each report finds at
    most one; a report finding none is false): recall and precision pooled over
    the fresh seeds. Merged segments count once, not for every particle under them."""
    pixels, per_seed = scores
    c = {seed: s["centroids"] for seed, s in per_seed.items()}
    found, n, tp, rep = (sum(v[k] for v in c.values())
                         for k in ("found", "n_labelled", "tp", "reported"))
    report = {seed: (v["found"], v["n_labelled"], v["tp"], v["reported"], v["missed"])
              for seed, v in c.items()}
    print(f"{pixels[0]}x{pixels[1]}: recall {found / n:.3f} ({found}/{n}), precision "
          f"{tp / max(rep, 1):.3f} ({tp}/{rep}), tolerance radius + {TOLERANCE_NM:g} nm; "
          f"per seed (found, labelled, true, reported, missed ids): {report}")
    assert found / n >= RECALL_MIN[pixels], report
    assert tp / max(rep, 1) >= 0.95, report
    for s in per_seed.values():  # every particle is in some segment
        assert s["detected"] == s["n_particles"], report


def test_labelled_particle_beside_a_natural_one_is_its_own_segment():
    """Seed 1, full map: two 10-11 nm labelled particles (ids 3 and 30) 130-200 nm
    from ~90 nm natural ones (8 and 1). On the total counts they are shoulders of
    their neighbours (one segment, "uncertain" at z ~ 4-5); the 6Li map's own maxima
    (segment_sims_particles' channels) give each a segment: labelled, its centroid
    on it, and the natural neighbour's segment natural. The segments of the total
    counts alone (the segmentation before issue 15) miss both."""
    spec, table, affine, sc = _run(1, DEMO_FULL_PIXELS)
    truth = {t["id"]: t for t in spec.truth["particles"]}
    assert {3, 30}.isdisjoint(sc["centroids"]["missed"])
    seg = dict(zip([t["id"] for t in spec.truth["particles"]],
                   match_truth(table, affine, spec.truth["particles"]), strict=True))
    by_label = {p.label: p for p in table}
    for small, big in ((3, 8), (30, 1)):
        p = min(table.labelled(), key=lambda q: math.hypot(
            q.x_um * 1e3 - truth[small]["x_nm"], q.y_um * 1e3 - truth[small]["y_nm"]))
        assert math.hypot(p.x_um * 1e3 - truth[small]["x_nm"],
                          p.y_um * 1e3 - truth[small]["y_nm"]) < truth[small]["radius_nm"] + 60
        assert by_label[seg[big]].classification == "natural"
        assert seg[big] != p.label
    # The segmentation of the total counts alone merges them; the split recovers them.
    _, _, n6, n7 = particle_maps(1, DEMO_FULL_PIXELS)
    total = (n6 + n7).astype(float)
    merged = segment_sims_particles(total, min_counts=20.0)
    cut = find_particles(n6, n7, pixel_to_specimen=affine, dwell_s=DEMO["dwell_s"],
                         dead_time_s=dead_time_of(1), labels=merged)
    assert {3, 30} <= set(score_centroids(cut.labelled(), spec.truth["particles"])["missed"])


#: Bound on the pulls' systematic mean (measured -0.04 to -0.07 over 300 seeds).
SYSTEMATIC_PULL_BOUND = 0.1
#: Pulls beyond 4 sigma allowed in a run (or 1 % of the pulls, if more). 156 quick and 60
#: full fresh seeds (3256 and 1734 pulls, std 1.02 / 1.02): 5 beyond 4, all at 4.0-4.2,
#: 0.1 % of the pulls (a normal std 1.02 gives 0.01 %). "At most 1 %" of a quick run's
#: ~170 pulls allowed one: two came in ~1.3 % of runs (full, ~230 pulls: three in
#: ~0.2 %). At 0.1 % per pull four come in < 1e-4 of runs; a tail of a few per cent
#: still fails. 2026-12-05, 300 quick and 100 full fresh seeds (pool entropy 20261205,
#: 6351 and 2928 pulls, std 1.02 / 0.99): 5 and 1 beyond 4 (quick -5.7 and -4.06 to
#: -4.21, full -4.03); the quick tail is small natural particles whose ~10-20 counts of
#: 6Li dipped (the error is the observed counts': decision 0040, amendment of this
#: date). Resampling 8 of them, this test failed 0.15 % of quick runs (its std bound),
#: none of the full ones.
MAX_BEYOND_4 = 3


def test_ratio_errors_are_within_1_2_poisson_bounds(scores):
    """(R_est - R_true) / sigma_Poisson over every isolated particle (more than two
    pixels from any other: ``analysis_sims.score``) of every seed: standard deviation
    <= 1.2 and at most 1 % beyond 4 sigma; the mean within 3 standard errors of the
    systematic measured over 300 seeds per size (8856 and 6538 pulls: mean -0.04 to
    -0.07, std 1.00; a small labelled particle's ratio is diluted by a natural
    neighbour's beam tail more than a pixel away; 2026-12-05, 300 quick and 100 full
    seeds: -0.066 +- 1.018 and -0.044 +- 0.987), bounded here by 0.1. Particles
    without a measured ratio (``table.no_ratio``: no 7Li left) are not pulls."""
    _, per_seed = scores
    err = np.concatenate([s["errors"] for s in per_seed.values()])
    print(f"{len(err)} isolated particles: pull mean {np.mean(err):+.2f}, std {np.std(err):.2f}")
    assert len(err) > 60
    assert np.std(err) <= 1.2, np.sort(err)
    assert abs(np.mean(err)) <= 3 * 1.2 / math.sqrt(len(err)) + SYSTEMATIC_PULL_BOUND
    assert np.sum(np.abs(err) > 4) <= max(MAX_BEYOND_4, 0.01 * len(err)), np.sort(err)


def test_uncorrected_ratios_carry_the_instrument_bias(scores):
    """The harder twin is on: without the bracketing correction the isolated
    particles' ratios are off by the instrument's bias (IMF x collector yields, ~3-8 %
    from 1 here: the pulls' mean moves with 1/K - 1 over the seeds), with it they are
    not (the test above). Per seed, the mean uncorrected pull minus the corrected one
    has the sign of 1/K - 1 wherever the bias is well above the correction's error."""
    _, per_seed = scores
    shifts = []
    for s in per_seed.values():
        k, sk = s["correction"]
        raw, fixed = np.mean(s["uncorrected"]["errors"]), np.mean(s["errors"])
        shifts.append((1 / k - 1, raw - fixed, sk / k))
        print(f"1/K - 1 = {1 / k - 1:+.4f} +- {sk / k:.4f}: mean pull {raw:+.2f} "
              f"uncorrected, {fixed:+.2f} corrected")
    strong = [(b, d) for b, d, rel in shifts if abs(b) > 4 * rel]
    assert strong, shifts
    assert all(np.sign(b) == np.sign(d) for b, d in strong), shifts


def test_the_pads_hydride_count_removes_the_labelled_particles_6lih_bias(scores):
    """6LiH+ lands on 7Li (LiH+/Li+ 1e-3 on the twin, decision 0039): a labelled
    particle's ratio (~19) is low by h R ~ 2 %, which the natural pad's bracket does
    not see (its 6LiH+ is 1e-4 of its 7Li). LiH+/Li+ counted at mass 8 against 7 on
    the pad and ``h N6`` subtracted from N7 removes it: the isolated labelled
    particles' pulls move up by about h R / (sigma_R / R), and the corrected pulls
    are the ones the test above scores."""
    _, per_seed = scores
    with_h = np.concatenate([s["labelled_errors"] for s in per_seed.values()])
    without = np.concatenate([s["no_hydride"]["labelled_errors"] for s in per_seed.values()])
    hs = [s["hydride"] for s in per_seed.values()]
    print(f"LiH+/Li+ counted on the pad: {np.mean([h for h, _ in hs]):.2e} "
          f"(+- {np.mean([sh for _, sh in hs]):.1e} per count, spread "
          f"{np.std([h for h, _ in hs]):.1e}); labelled pulls: mean {np.mean(without):+.2f} "
          f"with the hydride left in, {np.mean(with_h):+.2f} subtracted "
          f"({len(with_h)} particles)")
    truth = dict(sp.SimsParameters().hydride_ratios)["Li"]
    for h, sh in hs:
        assert abs(h - truth) < 4 * sh + 0.05 * truth, (h, sh, truth)
    assert len(with_h) > 20
    # Per particle the subtraction raises the pull by ~h R / sigma_R (0.05-0.2 on the
    # quick map), but it also moves some labelled segments' borders (the split uses
    # the ratio map): single particles then move by up to -0.5 (4 quick seeds of
    # entropy 335168645860286997862150901155567294907), and the mean of the shifts
    # over 8 quick seeds fell to 0.025 there. The median of the paired shifts holds.
    shifts = np.concatenate([
        np.subtract(s["labelled_errors"], s["no_hydride"]["labelled_errors"])
        for s in per_seed.values()
        if len(s["labelled_errors"]) == len(s["no_hydride"]["labelled_errors"])])
    print(f"paired pull shifts: median {np.median(shifts):+.3f}, mean "
          f"{np.mean(shifts):+.3f} ({shifts.size})")
    assert np.median(shifts) > 0.01


def test_the_qsa_correction_raises_the_labelled_particles_ratios(scores):
    """Quasi-simultaneous arrival (decision 0043): a collector counts ``1 - K/2`` of
    what arrives, K the ions per primary ion (6e-3 for 7Li on natural Li2CO3 in the
    twin). The natural pad's 7Li loses K/2, so its bracket lowers every ratio by that;
    a labelled particle's own loss is on 6Li: bracketed but uncorrected, its ratio
    reads low. Corrected from the known primary current in the pad and the map alike,
    every isolated labelled particle's ratio goes up by the same few per mil: +0.24 to
    +0.48 % per particle, run medians +0.27..+0.39 %, over 60 fresh seed pairs (both map
    sizes, 4-10 particles each; the run that failed the old check, entropy ...952,
    0.25-0.45 %); on the same segment in both analyses, 24 more pairs: +0.245..+0.458 %,
    medians +0.26..+0.37 %. The pulls move up
    with it, by +0.02..+0.05 per run: that mean shift was the old check (> 0.01), and a
    run of small, few-count particles put it at +0.008 with every ratio corrected as
    here; it is printed, not bounded."""
    pixels, per_seed = scores
    # Each particle on the same segment in both analyses (its area): the segmentation
    # follows the corrected counts, and one pixel more of a few-count segment beside a
    # bright neighbour (n7 ~25, halo share 1.4) moved its ratio by -11 % (entropy
    # ...336091, specimen 493117), which is the segment's change, not the correction's.
    pairs = [(s["labelled_ratios"][i], s["no_qsa"]["labelled_ratios"][i])
             for s in per_seed.values()
             for i in set(s["labelled_ratios"]) & set(s["no_qsa"]["labelled_ratios"])]
    changes = np.array([fixed[0] / left[0] - 1 for fixed, left in pairs
                        if fixed[1] == left[1]])
    fixed = np.concatenate([s["labelled_errors"] for s in per_seed.values()])
    left_in = np.concatenate([s["no_qsa"]["labelled_errors"] for s in per_seed.values()])
    every = np.concatenate([s["no_qsa"]["errors"] for s in per_seed.values()])
    print(f"{pixels[0]}x{pixels[1]}: labelled ratios raised by {100 * np.median(changes):.3f} % "
          f"(median; {100 * changes.min():.3f}..{100 * changes.max():.3f} % over "
          f"{len(changes)} of {len(pairs)} on the same segment); labelled pulls mean {np.mean(left_in):+.3f} with QSA left in, "
          f"{np.mean(fixed):+.3f} corrected; all pulls left in: std {np.std(every):.2f}")
    assert len(changes) > 20
    assert 0.002 <= np.median(changes) <= 0.005, changes
    assert np.all((changes > 0.001) & (changes < 0.008)), np.sort(changes)
    assert np.mean(fixed) > np.mean(left_in)


def test_the_probe_halo_is_measured_and_subtracted(scores):
    """The probe's halo (decision 0040: 3 % of the current in a 300 nm FWHM Gaussian)
    is measured on an edge with each instrument and subtracted: without it the
    isolated particles' pulls widen (a natural particle near a bright labelled one
    picks up its 6Li, a labelled one is diluted by its natural neighbours; measured
    std 1.36-1.71 full, 1.11-2.93 quick over 8-seed runs, against 0.95-1.17 with it)
    and precision falls (0.92-0.97 full).

    Only a third of the seeds have a natural particle near a bright labelled one; on
    the rest the subtraction moves the pulls' std by noise (-0.34..+0.1 per quick
    seed). Over 8 seeds, resampled from 156 quick and 60 full fresh seeds, bare minus
    subtracted std has its 0.1 % quantile at +0.053 full (never <= 0 in 20000 sets) but
    -0.051 quick, where ``std < bare`` failed 4.3 % of runs: the quick maps are held
    to "no wider than bare" within 0.1 (their 0.01 % quantile: -0.071), the full maps
    to the narrowing."""
    pixels, per_seed = scores
    fits = [s["halo"] for s in per_seed.values()]
    for fit in fits:
        assert fit.fraction == pytest.approx(0.03, abs=4 * fit.fraction_sigma + 0.002)
        assert fit.fwhm_nm == pytest.approx(300.0, abs=4 * fit.fwhm_sigma_nm + 10.0)
    err = np.concatenate([s["errors"] for s in per_seed.values()])
    bare = np.concatenate([s["halo_uncorrected"]["errors"] for s in per_seed.values()])
    c = [s["halo_uncorrected"]["centroids"] for s in per_seed.values()]
    found, n, tp, rep = (sum(v[k] for v in c) for k in ("found", "n_labelled", "tp",
                                                          "reported"))
    print(f"{pixels[0]}x{pixels[1]}: halo {np.mean([f.fraction for f in fits]):.4f}, "
          f"{np.mean([f.fwhm_nm for f in fits]):.0f} nm FWHM; pulls with the halo "
          f"subtracted {np.mean(err):+.2f} +- {np.std(err):.2f}, without "
          f"{np.mean(bare):+.2f} +- {np.std(bare):.2f}; without: recall {found / n:.3f}, "
          f"precision {tp / max(rep, 1):.3f}")
    assert np.std(err) < np.std(bare) + (0.0 if pixels == DEMO_FULL_PIXELS else 0.1)


def test_no_natural_particle_is_called_labelled(scores):
    """Isolated natural particles (as for the ratio errors) are natural; a natural
    particle beside a labelled one is scored through precision (a labelled report
    that finds no labelled particle is false)."""
    _, per_seed = scores
    classes = [c for s in per_seed.values() for c in s["natural_classes"]]
    assert "labelled" not in classes
    assert classes.count("natural") >= 0.95 * len(classes)


def test_bright_natural_particle_needs_dead_time_and_systematic_term():
    """The old false positive: with neither the dead-time correction nor the
    systematic term a bright natural particle's ratio (7Li losses at ~5e6 /s) is
    'significant'; with both it is natural."""
    spec, table, affine, _ = _run(1, DEMO_FULL_PIXELS)
    # The naive analysis sees the counts' expectation: its bias is the dead time's,
    # not the draw's (a fixed draw's luck moved with every change of the twin).
    _, _, n6, n7 = particle_maps(1, DEMO_FULL_PIXELS, rng_seed="expected")
    # The halo is subtracted in both: this is about the dead time and the systematic.
    halo = (table.parameters["halo_fraction"], table.parameters["halo_sigma_px"])
    naive = find_particles(n6, n7, systematic_rel=0.0, halo=halo)
    natural_truth = [p for p in spec.truth["particles"] if not p["labelled"]]
    big = max(natural_truth, key=lambda p: p["radius_nm"])
    col, row, _ = np.linalg.inv(affine) @ np.array([big["x_nm"] / 1e3, big["y_nm"] / 1e3, 1])
    lab = table.labels[int(round(row)), int(round(col))]
    good = next(p for p in table if p.label == lab)
    bad = next(p for p in naive if p.label == naive.labels[int(round(row)), int(round(col))])
    assert bad.ratio > 1.05 * big["li6_li7_ratio"] and bad.z > 5
    assert good.classification == "natural" and abs(good.z) < 3
    assert good.confidence > 0.99


def test_positions_radii_and_records():
    spec, table, affine, _ = _run(2, DEMO_FULL_PIXELS)
    truth = spec.truth["particles"]
    pitch_um = DEMO["fov_um"] / DEMO_FULL_PIXELS[0]
    by_label = {p.label: p for p in table}
    to_pixel = np.linalg.inv(affine)
    checked = 0
    for t in truth:
        if t["radius_nm"] < 40:
            continue
        col, row = (to_pixel @ np.array([t["x_nm"] / 1e3, t["y_nm"] / 1e3, 1.0]))[:2]
        own = by_label.get(int(table.labels[int(round(row)), int(round(col))]))
        if own is not None and own.labelled and not t["labelled"]:
            # A natural particle sharing its segment with a labelled one: the segment
            # is placed on the 6Li excess, i.e. on the labelled particle.
            continue
        d = [math.hypot(p.x_um - t["x_nm"] / 1e3, p.y_um - t["y_nm"] / 1e3) for p in table]
        k = int(np.argmin(d))
        assert d[k] < 1.5 * pitch_um / math.cos(math.radians(45))
        # Equivalent radius includes the blur (footprint ~ 40 nm FWHM): not smaller.
        assert table[k].radius_nm > 0.7 * t["radius_nm"]
        checked += 1
    assert checked >= 10
    records = table.to_records()
    json.dumps(records)
    assert {"x_um", "y_um", "n6", "n7", "ratio", "sigma", "z", "p_natural", "p_label",
            "classification", "confidence", "area_px", "radius_nm"} <= set(records[0])
    zs = [p.z for p in table]
    assert zs == sorted(zs, reverse=True)
    assert table.to_array().shape == (len(table),)


def test_affine_matches_the_scan_geometry():
    geo = sp.ScanGeometry(40, 30, 2.0, rotation_deg=20.0, centre_x_nm=150.0,
                          centre_y_nm=-80.0)
    a = SimsMapGeometry(nx=40, ny=30, fov_um=2.0, centre_x_um=0.15, centre_y_um=-0.08,
                        rotation_deg=20.0).affine_to_specimen()
    rows, cols = np.array([0, 7, 29]), np.array([0, 33, 39])
    x, y = geo.to_specimen(*geo.beam_coords(rows, cols))
    got = a @ np.vstack([cols, rows, np.ones(3)])
    np.testing.assert_allclose(got[0], x / 1e3, atol=1e-9)
    np.testing.assert_allclose(got[1], y / 1e3, atol=1e-9)


def test_unacquired_pixels_are_masked_not_zero():
    _, geo, n6, n7 = particle_maps(3, DEMO_QUICK_PIXELS)
    full = find_particles(n6, n7, dwell_s=1e-3, dead_time_s=dead_time_of(3))
    n6p, n7p = n6.astype(float), n7.astype(float)
    n6p[-5:], n7p[-5:] = np.nan, np.nan  # last lines not acquired (an aborted run)
    part = find_particles(n6p, n7p, dwell_s=1e-3, dead_time_s=dead_time_of(3))
    assert (part.labels[-5:] == 0).all()
    assert 0 < len(part) <= len(full)
    assert all(p.n6 + p.n7 > 0 for p in part)


def test_classify_rules():
    assert classify(1e-9, 1.0)[0] == "labelled"
    assert classify(0.5, 1e-9) == ("natural", pytest.approx(1.0))
    assert classify(1e-4, 1e-9)[0] == "uncertain"  # enriched, yet below a label
    assert classify(0.3, 0.3)[0] == "uncertain"


def test_small_particles_on_empty_film_are_found():
    """A 20 nm particle gives a few hundred counts over a few pixels: summed, they
    are unmistakable even at 1/10 of the demo's dose."""
    rng = np.random.default_rng(5)
    lam = np.zeros((40, 40))
    yy, xx = np.mgrid[:40, :40]
    centres = [(8, 8), (8, 30), (30, 10), (28, 28)]
    for r, c in centres:
        lam += 60.0 * np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * 0.8**2))
    li6 = np.array([19.0, 0.08215, 19.0, 0.08215])
    share = np.zeros((4, 40, 40))
    for k, (r, c) in enumerate(centres):
        share[k] = np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * 0.8**2))
    q = (share * (li6 / (1 + li6))[:, None, None]).sum(0) / np.maximum(share.sum(0), 1e-12)
    n6 = rng.poisson(lam * q)
    n7 = rng.poisson(lam * (1 - q))
    table = find_particles(n6, n7)
    assert len(table) == 4
    assert sorted(p.classification for p in table) == ["labelled", "labelled", "natural",
                                                       "natural"]


def test_a_segment_without_7li_is_summed_whole_or_has_no_ratio():
    """A ratio needs 7Li. Segment 1's 7Li is all in its contact pixel (beside segment
    2's bright 7Li, left out): its sums are taken over the whole segment, not 6Li over
    nothing (a ratio of inf and a NaN sigma: one NaN pull failed five scored tests).
    A segment with no 7Li at all has no measured ratio, and says so."""
    table = find_particles(np.array([[10.0, 0, 0]]), np.array([[0.0, 5, 100]]),
                           labels=np.array([[1, 1, 2]]))
    one = next(p for p in table if p.label == 1)
    assert (one.n6, one.n7) == (10.0, 5.0) and math.isfinite(one.sigma)
    assert table.untrimmed == (1,) and table.no_ratio == ()
    table = find_particles(np.array([[10.0, 0, 0]]), np.array([[0.0, 0, 100]]),
                           labels=np.array([[1, 0, 2]]))
    one = next(p for p in table if p.label == 1)
    assert table.no_ratio == (1,) and table.untrimmed == ()
    assert one.ratio == math.inf and one.classification == "labelled"
    assert all(math.isfinite(p.sigma) for p in table if p.label not in table.no_ratio)


def test_a_particles_own_peak_pixel_is_summed_beside_an_empty_basin():
    """A contact pixel is left out of a particle's sums only where the other
    segment's pixel beside it can hold a share of its counts: an 11 nm natural
    particle (specimen 654557, instrument 798764, quick map) had its second peak pixel
    (~105 of its ~230 counts of 7Li) touching the empty far end of a bright
    neighbour's basin, and its sums lost it (pull -6.2 from a 2.7-sigma dip of
    its 6Li in the pixel kept). Here: segment 1's peak pixels touch segment 2 only
    where 2 holds nothing, and the counts are all 1's."""
    n7 = np.zeros((5, 7))
    n6 = np.zeros((5, 7))
    n7[2, 1:3] = [100.0, 90.0]
    n6[2, 1:3] = [8.0, 7.0]
    n7[2, 5], n6[2, 5] = 3000.0, 250.0
    labels = np.zeros((5, 7), int)
    labels[1:4, 0:3] = 1
    labels[1:4, 3:7] = 2
    table = find_particles(n6, n7, labels=labels)
    one = next(p for p in table if p.label == 1)
    assert (one.n6, one.n7) == (15.0, 190.0)


def _blob_scene(particles, shape=(30, 40), sigma=0.6):
    """Expected 6Li and 7Li counts of Gaussian blobs (row, col, total, 6Li/7Li)."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    lam6, lam7 = np.zeros(shape), np.zeros(shape)
    for r, c, total, ratio in particles:
        g = total * np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * sigma**2))
        g /= 2 * math.pi * sigma**2
        lam6 += g * ratio / (1 + ratio)
        lam7 += g / (1 + ratio)
    return lam6, lam7


def test_split_cuts_a_labelled_shoulder_off_a_natural_particle():
    """A bright natural particle (40000 counts) with a faint labelled one (600
    counts) 2.5 px away: one segment, "uncertain"; split: labelled + natural. A pure
    labelled particle and a natural one on their own are not cut."""
    rng = np.random.default_rng(3)
    big = [(10, 10, 40000.0, 0.08215), (10, 12.5, 600.0, 19.0)]
    lam6, lam7 = _blob_scene(big + [(20, 30, 3000.0, 19.0), (22, 12, 3000.0, 0.08215)],
                             sigma=0.9)
    n6, n7 = rng.poisson(lam6), rng.poisson(lam7)
    merged = find_particles(n6, n7, split_labelled=False)
    table = find_particles(n6, n7)
    assert len(merged) == 3 and len(table) == 4
    assert sorted(p.classification for p in merged) == ["labelled", "natural", "uncertain"]
    assert sorted(p.classification for p in table) == ["labelled", "labelled", "natural",
                                                       "natural"]
    (new, old), = table.split_from.items()
    assert table.labels[10, 13] == new and table.labels[10, 9] == old
    assert next(p for p in table if p.label == old).classification == "natural"
    # Direct call on the dead-time-free counts: the same cut; nothing to cut in a
    # map without labelled Li.
    labels, cuts = split_labelled_segments(merged.labels, n6, n7)
    assert cuts == table.split_from and (labels == table.labels).all()
    labels, cuts = split_labelled_segments(merged.labels, n6, rng.poisson(lam6 / 0.08215))
    assert cuts == {} and (labels == merged.labels).all()


def test_tem_dark_blobs():
    rng = np.random.default_rng(2)
    img = 1000.0 + rng.normal(0, 10, (128, 128))
    yy, xx = np.mgrid[:128, :128]
    for r, c, rad in [(30, 30, 8), (90, 40, 5), (60, 100, 12), (60, 124, 3)]:
        img[(yy - r) ** 2 + (xx - c) ** 2 < rad**2] -= 300.0
    labels = segment_tem_particles(img)
    assert labels.max() == 4


@pytest.mark.parametrize("kwargs, exc", [
    ({"n6_counts": np.zeros((4, 4)), "n7_counts": np.zeros((4, 4)), "halo": 0.03}, TypeError),
    ({"n6_counts": np.zeros((4, 4)), "n7_counts": np.zeros((4, 4)), "halo": (0.6, 3.0)},
     ValueError),
    ({"n6_counts": np.zeros((4, 4)), "n7_counts": np.zeros((4, 4)), "halo": (0.03, 0.0)},
     ValueError),
    ({"n6_counts": np.zeros((4, 4)), "n7_counts": np.zeros((4, 4)),
      "halo": (float("nan"), 3.0)}, ValueError),
    ({"n6_counts": np.zeros((4, 4)), "n7_counts": np.zeros((4, 4)), "halo": (0.03,)},
     TypeError),
    ({"n6_counts": np.zeros((4, 4)), "n7_counts": np.zeros((4, 5))}, ValueError),
    ({"n6_counts": np.zeros(4), "n7_counts": np.zeros(4)}, ValueError),
    ({"n6_counts": -np.ones((4, 4)) * 2, "n7_counts": np.zeros((4, 4))}, ValueError),
    ({"n6_counts": np.zeros((4, 4)), "n7_counts": np.zeros((4, 4)), "dead_time_s": 3e-8},
     ValueError),
    ({"n6_counts": np.zeros((4, 4)), "n7_counts": np.zeros((4, 4)),
      "pixel_to_specimen": np.eye(2)}, ValueError),
    ({"n6_counts": np.zeros((4, 4)), "n7_counts": np.zeros((4, 4)), "significance": -1},
     ValueError),
    ({"n6_counts": np.zeros((4, 4)), "n7_counts": np.zeros((4, 4)), "significance": "5"},
     TypeError),
    ({"n6_counts": [["a"]], "n7_counts": [[1]]}, TypeError),
    ({"n6_counts": np.zeros((4, 4)), "n7_counts": np.zeros((4, 4)), "hydride": (0.5, 0.0)},
     ValueError),
    ({"n6_counts": np.zeros((4, 4)), "n7_counts": np.zeros((4, 4)), "hydride": "1e-3"},
     TypeError),
    ({"n6_counts": np.zeros((4, 4)), "n7_counts": np.zeros((4, 4)),
      "hydride": (1e-3, -1.0)}, ValueError),
])
def test_bad_input(kwargs, exc):
    with pytest.raises(exc):
        find_particles(**kwargs)


def test_hydride_ratio_and_its_subtraction():
    """LiH+/Li+ from counts at mass 8 and 7 (both dead time corrected), and
    N7 - h N6 with its variance; bad counts refused."""
    h, sh = hydride_ratio(100.0, 1e5)
    assert h == pytest.approx(1e-3) and sh == pytest.approx(1e-3 * math.sqrt(1e-2 + 1e-5))
    h_dt, _ = hydride_ratio(100.0, 1e5, dwell_s=0.1, dead_time_s=40e-9)
    loss = 40e-9 / 0.1  # tau / dwell: both counts are corrected
    assert h_dt == pytest.approx((100.0 / (1 - 100 * loss)) / (1e5 / (1 - 1e5 * loss)),
                                 rel=1e-6)
    with pytest.raises(ValueError):
        hydride_ratio(10.0, 0.0)
    with pytest.raises(ValueError):
        hydride_ratio(-1.0, 10.0)
    n6 = np.array([[1900.0, 0.0]])
    n7 = np.array([[102.0, 0.0]])
    plain = find_particles(n6, n7, labels=np.array([[1, 0]]))
    fixed = find_particles(n6, n7, labels=np.array([[1, 0]]), hydride=(1e-3, 1e-4))
    assert fixed.particles[0].n7 == pytest.approx(102.0 - 1.9)
    assert fixed.particles[0].ratio / plain.particles[0].ratio == pytest.approx(102 / 100.1)
    assert fixed.parameters["hydride_ratio"] == 1e-3


def test_segment_bad_input_and_empty_map():
    with pytest.raises(ValueError):
        segment_sims_particles(np.zeros(5))
    with pytest.raises(TypeError):
        segment_sims_particles(np.zeros((5, 5)), min_area_px=1.5)
    assert segment_sims_particles(np.zeros((5, 5))).max() == 0
    assert len(find_particles(np.zeros((6, 6)), np.zeros((6, 6)))) == 0
