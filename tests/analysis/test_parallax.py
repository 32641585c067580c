"""Parallax of the tilted ion beam (decision 0041's amendment): the analysis' ray march
on a height map, and reported labelled-particle positions of relief maps moved back
to the TEM projection with heights from the TEM's mass-thickness, scored per particle
against the twin's truth on fresh seeds (printed; ``TEMSIMS_TEST_ENTROPY``
reproduces a run)."""

import math

import numpy as np
import pytest
from analysis_sims import DEMO, DEMO_FULL_PIXELS, dead_time_of, particle_maps, tem_heights
from scoring import fresh_rng, score_centroids

from temsims.analysis.geometry import SimsMapGeometry
from temsims.analysis.halo import halo_sigma_px
from temsims.analysis.parallax import (
    beam_view,
    correct_parallax,
    height_from_mass_thickness,
    landing_rows,
    parallax_offsets,
)
from temsims.analysis.particles import find_particles
from temsims.constants import PROBE_HALO
from temsims.ioc.physics import sims as sp

#: +4.5 kV on the 30 kV column (decision 0036).
THETA = 50.08
#: Yamamura's (f, theta_opt) of Li2CO3 at 25.5 keV (decision 0041's table): what a lab
#: takes from the published angular formula for the particles' material.
LI2CO3_YAMAMURA = (1.89, 79.3)


def _sphere(r: float, n: int = 400, px: float = 2.0) -> np.ndarray:
    x = (np.arange(n) - n / 2) * px
    rho2 = x[None, :] ** 2 + x[:, None] ** 2
    return 2.0 * np.sqrt(np.clip(r * r - rho2, 0.0, None)), x


def test_a_flat_map_is_seen_where_it_is_and_a_plateau_h_tan_theta_down_beam():
    rows = landing_rows(np.zeros((50, 7)), 2.0, THETA)
    np.testing.assert_array_equal(rows, np.repeat(np.arange(50)[:, None], 7, axis=1))
    h = np.zeros((300, 3))
    h[100:200] = 50.0
    marker = np.zeros_like(h)
    marker[150] = 1.0
    seen = beam_view(marker, h, 2.0, THETA)
    shift_px = 50.0 * math.tan(math.radians(THETA)) / 2.0
    assert np.argmax(seen[:, 1]) == pytest.approx(150 + shift_px, abs=1.0)
    # The wall facing the beam takes the rays up to the top's first position; the film
    # behind the plateau is in its shadow for h tan(theta).
    landed = landing_rows(h, 2.0, THETA)[:, 1]
    assert set(landed[100:int(100 + shift_px)]) == {100}
    assert not set(range(200, int(200 + shift_px) - 1)) & set(landed)
    with pytest.raises(ValueError, match="incidence_deg"):
        landing_rows(h, 2.0, 90.0)
    with pytest.raises(ValueError, match="density"):
        height_from_mass_thickness(h, 0.0)


def test_a_spheres_image_is_its_projection_along_the_beam():
    """A sphere (its chord as the height: a particle without overhang) is seen from -r
    to r sqrt(1 + 4 tan^2 theta) along the beam, its image's centroid (g - 1) 4 r /
    (3 pi) down-beam (0.67 r at 50 deg), and not across it."""
    r = 150.0
    h, x = _sphere(r)
    off = parallax_offsets(h, 2.0, THETA)
    # Weighted by the yield where each ray lands (higher where they graze the top):
    # further down-beam, as the twin's counts (0.75 r for this sphere at 50 deg).
    weighted = parallax_offsets(h, 2.0, THETA, yamamura=LI2CO3_YAMAMURA).offset_rows[1]
    assert 2.0 * weighted / r == pytest.approx(0.75, abs=0.02)
    assert len(off.offset_rows) == 1
    g = math.sqrt(1 + 4 * math.tan(math.radians(THETA)) ** 2)
    assert 2.0 * off.offset_rows[1] == pytest.approx((g - 1) * 4 * r / (3 * math.pi), rel=0.03)
    col = h.shape[1] // 2
    seen = x[off.seen[:, col] > 0]
    assert seen.min() == pytest.approx(-r, abs=4.0)
    assert seen.max() == pytest.approx(g * r, abs=4.0)
    cols = np.flatnonzero((off.seen > 0).any(axis=0))
    assert x[cols].min() == pytest.approx(-r, abs=4.0) and x[cols].max() == pytest.approx(r, abs=4.0)


#: Fresh specimens per run: 6, not 3. 40 relief seeds (decision 0041: 16; 24 more with
#: TEMSIMS_TEST_ENTROPY=555 at 24 seeds): corrected, 11/480 labelled particles missed, 10/479
#: reports false, at most one of each per seed. Over 3 seeds' 36 particles the 0.9
#: bounds failed at 4 misses or 4 false reports: ~1.6 % of runs (binomial); over 72,
#: 8 of either: ~0.04 %. ~3 s a seed.
N_SEEDS = 6


@pytest.fixture(scope="module")
def relief_searches():
    """Labelled particles of full demo maps of the twin with relief (parallax,
    shadows) at +4.5 kV's 50.08 deg, on fresh specimens: (truth, reported, corrected)
    per seed."""
    rng = fresh_rng("test_parallax relief maps")
    seeds = [int(s) for s in rng.choice(np.arange(10, 1_000_000), N_SEEDS, replace=False)]
    print(f"specimen seeds {seeds}")
    out = {}
    for seed in seeds:
        params = sp.SimsParameters(dead_time_s=dead_time_of(seed), relief=True)
        pixels = DEMO_FULL_PIXELS
        spec, geo, n6, n7 = particle_maps(seed, pixels, params=params,
                                          geometry_incidence_deg=THETA)
        affine = SimsMapGeometry(nx=pixels[0], ny=pixels[1], fov_um=geo.fov_um,
                                 centre_x_um=0.0, centre_y_um=0.0,
                                 incidence_deg=THETA).affine_to_specimen()
        table = find_particles(n6, n7, pixel_to_specimen=affine, dwell_s=DEMO["dwell_s"],
                               dead_time_s=dead_time_of(seed),
                               primary_current_pa=DEMO["current_pa"],
                               halo=(PROBE_HALO["fraction"], halo_sigma_px(
                                   PROBE_HALO["fwhm_nm"], 1000.0 * geo.fov_um / pixels[0])))
        rep = table.labelled()
        h, h_affine = tem_heights(spec)
        x, y, lab = correct_parallax([p.x_um for p in rep], [p.y_um for p in rep], h,
                                     h_affine, THETA, yamamura=LI2CO3_YAMAMURA)
        # Segments of one particle (a long image split in two) are one report: the
        # most significant (the table's order).
        first = [i for i in range(len(rep)) if not lab[i] or lab[i] not in lab[:i]]
        corrected = [{"x_um": x[i], "y_um": y[i]} for i in first]
        out[seed] = (spec.truth["particles"], rep, corrected)
    return out


def _offsets(reports, truth):
    """(dx/r, dy/r) of each report from the labelled particle it finds."""
    lab = [t for t in truth if t["labelled"]]
    out = []
    for p in reports:
        get = p.get if isinstance(p, dict) else lambda k, p=p: getattr(p, k)
        x, y = 1e3 * get("x_um"), 1e3 * get("y_um")
        t = min(lab, key=lambda t: math.hypot(x - t["x_nm"], y - t["y_nm"]))
        if math.hypot(x - t["x_nm"], y - t["y_nm"]) < t["radius_nm"] + 60.0:
            out.append(((x - t["x_nm"]) / t["radius_nm"], (y - t["y_nm"]) / t["radius_nm"]))
    return np.array(out)


@pytest.mark.slow
def test_corrected_positions_match_the_tem_projection(relief_searches):
    """A relief map sees each labelled particle ~0.78 r down-beam of its centre (its
    projection along the beam, weighted by the yield where the rays land); taken back
    with the TEM's heights and Yamamura's angular yield the reports sit on it (8
    seeds: +0.02 r median, IQR 0.00..0.05 r; the uniform model leaves +0.13 r), and
    across the beam nothing moves. Two segments of one long image are one report.
    Recall and precision per particle: the issue's 0.95 is met pooled over 16 seeds
    (benchmarks/parallax_benchmark.py: 0.97-0.98, decision 0041's amendment); here, ~72
    labelled particles over 6 seeds, the bound is 0.9 (:data:`N_SEEDS`: misses and false
    reports are ~2 % each; a small natural particle inside a labelled one's image, 2.6 r
    down-beam of it, is still called labelled)."""
    raw, fixed = [], []
    totals = np.zeros(4)
    for truth, rep, corrected in relief_searches.values():
        raw.append(_offsets(rep, truth))
        fixed.append(_offsets(corrected, truth))
        c = score_centroids(corrected, truth)
        totals += [c["found"], c["n_labelled"], c["tp"], c["reported"]]
    raw, fixed = np.concatenate(raw), np.concatenate(fixed)
    recall, precision = totals[0] / totals[1], totals[2] / max(totals[3], 1)
    print(f"labelled offsets / r along the beam: reported median {np.median(raw[:, 1]):+.3f}, "
          f"corrected {np.median(fixed[:, 1]):+.3f} (IQR {np.percentile(fixed[:, 1], 25):+.3f}"
          f"..{np.percentile(fixed[:, 1], 75):+.3f}); across {np.median(fixed[:, 0]):+.3f}; "
          f"corrected recall {recall:.3f}, precision {precision:.3f} ({totals})")
    assert 0.6 < np.median(raw[:, 1]) < 0.95
    assert abs(np.median(fixed[:, 1])) < 0.1
    assert abs(np.median(fixed[:, 0])) < 0.05
    assert recall >= 0.9 and precision >= 0.9
