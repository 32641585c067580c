"""Particles of simulated 6Li/7Li maps, scored against the specimen's hidden truth."""

import json
import math

import numpy as np
import pytest
from analysis_sims import (
    DEAD_TIME_S,
    DEMO,
    DEMO_FULL_PIXELS,
    DEMO_QUICK_PIXELS,
    match_truth,
    particle_maps,
    score,
)

from temsims.analysis.geometry import SimsMapGeometry
from temsims.analysis.particles import (
    classify,
    find_particles,
    segment_sims_particles,
    segment_tem_particles,
    split_labelled_segments,
)
from temsims.ioc.physics import sims as sp

SEEDS = (1, 2, 3, 4, 5)


def _run(seed, pixels, **kw):
    spec, geo, n6, n7 = particle_maps(seed, pixels)
    affine = SimsMapGeometry(nx=pixels[0], ny=pixels[1], fov_um=geo.fov_um, centre_x_um=0.0,
                             centre_y_um=0.0).affine_to_specimen()
    table = find_particles(n6, n7, pixel_to_specimen=affine, dwell_s=DEMO["dwell_s"],
                           dead_time_s=DEAD_TIME_S, **kw)
    return spec, table, affine, score(table, affine, spec.truth["particles"])


@pytest.fixture(scope="module", params=[DEMO_FULL_PIXELS, DEMO_QUICK_PIXELS],
                ids=["demo-full-96x68", "demo-quick-64x45"])
def scores(request):
    return request.param, {seed: _run(seed, request.param)[3] for seed in SEEDS}


def test_labelled_precision_and_recall_at_the_demo_dose(scores):
    """Per seed, not only in aggregate: labelled precision and recall >= 0.95 (with
    12 labelled particles a seed, no miss and no false label). The misses were
    10-13 nm labelled particles within a pixel or so of ~90 nm natural ones: one
    segment, "uncertain"; split_labelled_segments cuts them out on their 6Li."""
    _, per_seed = scores
    report = {seed: (s["tp"], s["flagged"], s["found"], s["n_labelled"])
              for seed, s in per_seed.items()}
    for s in per_seed.values():
        assert s["tp"] >= 0.95 * s["flagged"], report
        assert s["found"] >= 0.95 * s["n_labelled"], report
        assert s["detected"] == s["n_particles"], report
    tp, flagged = (sum(s[k] for s in per_seed.values()) for k in ("tp", "flagged"))
    assert tp == flagged, report  # precision 1.00 over all seeds


def test_labelled_particle_merged_with_a_natural_one_is_cut_out():
    """Seed 1, full map: two 10-11 nm labelled particles share a segment with a
    ~90 nm natural one ("uncertain" at z ~ 4-5 without the split). Split, each is a
    labelled segment of its own, and the natural remainder is natural."""
    spec, table, affine, _ = _run(1, DEMO_FULL_PIXELS)
    _, merged, _, _ = _run(1, DEMO_FULL_PIXELS, split_labelled=False)
    truth = spec.truth["particles"]
    seg = match_truth(table, affine, truth)
    seg0 = match_truth(merged, affine, truth)
    by_label = {p.label: p for p in table}
    by_label0 = {p.label: p for p in merged}
    cut = [k for k, t in enumerate(truth) if t["labelled"] and seg[k] in table.split_from]
    assert len(cut) >= 2
    for k in cut:
        assert by_label0[seg0[k]].classification == "uncertain"
        assert by_label[seg[k]].classification == "labelled"
        rest = table.split_from[seg[k]]
        assert by_label[rest].classification == "natural"
        assert not any(t["labelled"] for t, lab in zip(truth, seg, strict=True)
                       if lab == rest)
    assert merged.split_from == {}
    assert table.parameters["split_labelled"] and not merged.parameters["split_labelled"]


def test_ratio_errors_are_within_1_2_poisson_bounds(scores):
    """(R_est - R_true) / sigma_Poisson over every isolated particle of every seed:
    standard deviation <= 1.2 and at most 1 % beyond 4 sigma."""
    _, per_seed = scores
    err = np.concatenate([s["errors"] for s in per_seed.values()])
    assert len(err) > 80
    assert np.std(err) <= 1.2, np.sort(err)
    assert abs(np.mean(err)) <= 3 * 1.2 / math.sqrt(len(err))
    assert np.mean(np.abs(err) > 4) <= 0.01


def test_no_natural_particle_is_called_labelled(scores):
    _, per_seed = scores
    classes = [c for s in per_seed.values() for c in s["natural_classes"]]
    assert "labelled" not in classes
    assert classes.count("natural") >= 0.95 * len(classes)


def test_bright_natural_particle_needs_dead_time_and_systematic_term():
    """The old false positive: with neither the dead-time correction nor the
    systematic term a bright natural particle's ratio (7Li losses at ~5e6 /s) is
    'significant'; with both it is natural."""
    spec, table, affine, _ = _run(1, DEMO_FULL_PIXELS)
    _, _, n6, n7 = particle_maps(1, DEMO_FULL_PIXELS)
    naive = find_particles(n6, n7, systematic_rel=0.0)
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
    full = find_particles(n6, n7, dwell_s=1e-3, dead_time_s=DEAD_TIME_S)
    n6p, n7p = n6.astype(float), n7.astype(float)
    n6p[-5:], n7p[-5:] = np.nan, np.nan  # last lines not acquired (an aborted run)
    part = find_particles(n6p, n7p, dwell_s=1e-3, dead_time_s=DEAD_TIME_S)
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
])
def test_bad_input(kwargs, exc):
    with pytest.raises(exc):
        find_particles(**kwargs)


def test_segment_bad_input_and_empty_map():
    with pytest.raises(ValueError):
        segment_sims_particles(np.zeros(5))
    with pytest.raises(TypeError):
        segment_sims_particles(np.zeros((5, 5)), min_area_px=1.5)
    assert segment_sims_particles(np.zeros((5, 5))).max() == 0
    assert len(find_particles(np.zeros((6, 6)), np.zeros((6, 6)))) == 0
