"""temsims.analysis.grains against the solar-cell twin's truth, without the IOCs.

A bright-field image of ``solar-cell`` is rendered by the TEM's own image model
(Poisson counts at the demo's dose), its grains segmented; a Na+ map is made from the
truth's Na blurred by a SIMS footprint and sampled on a coarser grid (Poisson); a
Ga/In grain set is drawn from the implant model. Seeds are fresh (``fresh_rng``).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scoring import fresh_rng

from temsims.analysis.grains import (
    boundary_interior_ratio,
    ga_fraction_per_grain,
    ridge_pixels,
    sample_on_image,
    segment_grains,
    split_at_ridges,
    sputter_yield_from_profile,
)


@pytest.fixture(scope="module")
def scene():
    from temsims.ioc.physics.specimen import build_specimen
    from temsims.ioc.physics.tem_optics import ImageGeometry, ImageRenderer, electrons_per_pixel

    rng = fresh_rng("analysis.grains")
    seed = int(rng.integers(1, 10**6))
    print(f"solar-cell seed {seed}")
    spec = build_specimen("solar-cell", seed)
    geo = ImageGeometry(0.0, 0.0, 2.4, 256)
    # The demo case's wider objective aperture (core/app/cases/solar_cell.py).
    signal = ImageRenderer(spec).expected_signal(geo, contrast_mt0=60.0)
    image = rng.poisson(signal * electrons_per_pixel(1.0, 0.05, 256)).astype(float)
    x, y = geo.pixel_coordinates_nm()
    rows, cols = spec.to_index(np.broadcast_to(x, (256, 256)), np.broadcast_to(y, (256, 256)))
    truth_labels = spec.truth["grains"][np.round(rows).astype(int), np.round(cols).astype(int)]
    return spec, geo, image, truth_labels, rng


def test_segment_grains_finds_the_boundaries(scene):
    from skimage.segmentation import find_boundaries

    _, _, image, truth_labels, _ = scene
    grains = segment_grains(image)
    true_b = find_boundaries(truth_labels, mode="inner")
    recall = float(np.mean(grains.distance_px[true_b] <= 1.5))
    precision = float(np.mean(ndimage.distance_transform_edt(~true_b)[grains.boundary] <= 1.5))
    print(f"{grains.n} grains ({np.unique(truth_labels).size} true), boundary recall "
          f"{recall:.3f}, precision {precision:.3f}")
    # 15 seeds: recall 0.845-0.931 (median 0.907), precision 0.962-0.999; seed 892972
    # read 0.827 / 0.942 once (a threshold of 0.85 failed there). With the heavier
    # elements' contrast (Z^(4/3)/A) at the case's contrast parameter 60 ug/cm^2, 8
    # seeds: recall 0.844-0.945, precision 0.975-0.997.
    assert recall >= 0.75 and precision >= 0.90


def test_na_band_ratio_from_a_blurred_map(scene):
    spec, geo, image, _, rng = scene
    grains = segment_grains(image)
    t = spec.truth
    na = np.asarray(t["na_fraction"], float)
    # A 2 um map of 128 x 128 pixels (15.6 nm), footprint sigma 15 nm.
    blurred = ndimage.gaussian_filter(na, 15.0 / spec.pixel_nm)
    xs = np.linspace(-1000, 1000, 128)
    X, Y = np.meshgrid(xs, xs)
    r, c = spec.to_index(X, Y)
    expected = ndimage.map_coordinates(blurred, [r, c], order=1) * 1.5e4  # 0.3 counts inside
    counts = rng.poisson(expected).astype(float)
    # SIMS pixel -> TEM pixel (row 0 = -y edge, as the image model).
    p = geo.pixel_nm
    trow = Y / p + (geo.size - 1) / 2
    tcol = X / p + (geo.size - 1) / 2
    dist = sample_on_image(grains.distance_px, trow, tcol) * p
    label = sample_on_image(grains.labels, trow, tcol, order=0).astype(int)
    seg = sample_on_image(grains.segment, trow, tcol, order=0).astype(np.int64)
    res = boundary_interior_ratio(counts, dist, label, band_nm=50.0, interior_nm=100.0,
                                  segment=seg)
    dist_t = np.asarray(t["grain_boundary_distance_nm"], float)
    inside = (np.abs(spec.x_nm())[None, :] <= 1000) & (np.abs(spec.y_nm())[:, None] <= 1000)
    truth = na[inside & (dist_t <= 50.0 - spec.pixel_nm / 2)].mean() / \
        na[inside & (dist_t > 100.0)].mean()
    print(f"band/interior {res.ratio:.1f} +- {2 * res.sd:.1f}, truth {truth:.1f}")
    assert abs(res.ratio / truth - 1) < 0.15


def test_na_ridges_split_the_grains_the_tem_merged(scene):
    """Boundaries the TEM missed show on the Na map: the grains' interiors cut there
    are one true grain each (the Ga figure's grains)."""
    spec, geo, image, _, rng = scene
    grains = segment_grains(image)
    na = np.asarray(spec.truth["na_fraction"], float)
    blurred = ndimage.gaussian_filter(na, 15.0 / spec.pixel_nm)
    xs = np.linspace(-1000, 1000, 128)
    X, Y = np.meshgrid(xs, xs)
    r, c = spec.to_index(X, Y)
    counts = rng.poisson(ndimage.map_coordinates(blurred, [r, c], order=1) * 1.5e4)
    p = geo.pixel_nm
    trow, tcol = Y / p + (geo.size - 1) / 2, X / p + (geo.size - 1) / 2
    dist = sample_on_image(grains.distance_px, trow, tcol) * p
    label = sample_on_image(grains.labels, trow, tcol, order=0).astype(int)
    truth = spec.truth["grains"][np.round(r).astype(int), np.round(c).astype(int)]
    ridge = ridge_pixels(np.where(dist > 50.0, counts, np.nan), 0.3)
    parts, keep, n_split = split_at_ridges(label, dist > 60.0, ridge, pitch_nm=(15.7, 15.7),
                                           clear_nm=60.0)

    def pure(lab, use):
        shares = []
        for k in np.unique(lab[use]):
            t = truth[use & (lab == k)]
            if t.size >= 8:
                shares.append(np.bincount(t).max() / t.size >= 0.9)
        return float(np.mean(shares)), len(shares)

    before, n_before = pure(label, dist > 60.0)
    after, n_after = pure(parts, keep)
    print(f"{n_split} grains cut at Na ridges; one true grain: {before:.2f} of {n_before} "
          f"TEM grains, {after:.2f} of {n_after} parts")
    # The case's 12 seeds (quick maps): 0.73-1.00 of the fitted grains before, 1.00 after.
    assert after >= max(before, 0.9) and n_after >= 0.8 * n_before


def test_ga_fraction_separates_the_implant():
    rng = fresh_rng("analysis.grains Ga/(In+Ga)")
    n_grains, n_px, y_true = 25, 200, 3.5
    r = rng.uniform(0.2, 0.4, n_grains)
    f = 1.0 / (1.0 + y_true)
    scale = 900.0
    # The absorber's Ga and In, and the implant, per pixel (69Ga, 115In abundances).
    g_exp = scale * 0.601 * (0.25 * r * (1 - f) + f)
    i_exp = scale * 0.957 * 0.25 * (1 - r) * (1 - f)
    label = np.repeat(np.arange(1, n_grains + 1), n_px)
    G = rng.poisson(np.repeat(g_exp, n_px)).astype(float)
    In = rng.poisson(np.repeat(i_exp, n_px)).astype(float)
    res = ga_fraction_per_grain(G, In, label, np.ones_like(G, bool), sputter_yield=3.5,
                                sputter_yield_sd=0.1)
    err = res.ratio - r[res.grains - 1]
    print(f"|error| max {np.abs(err).max():.4f} ({np.max(np.abs(err) / res.sd):.1f} sd), u95 "
          f"median {2 * np.median(res.sd):.4f}; "
          f"naive {np.median(res.naive - r):.3f}; implant {100 * res.implant_fraction:.0f} %")
    # The grains share the line's error: the worst of 25 reached 3.7 sd in 150 draws
    # (2.5 sd failed 4 % of them).
    assert np.all(np.abs(err) <= 4.0 * res.sd)
    # k's pull over 400 seeds: mean -0.24, std 0.94 (its sd is honest), |pull| > 3 in
    # 0.5 % of them (a 3 sd bound failed one run in 200), max 3.96.
    assert abs(res.k - 0.601 / 0.957) < 4.5 * res.k_sd + 1e-3
    assert np.all(res.naive - r > 0.3)  # the implant, left in, doubles the figure


def test_sputter_yield_from_a_stepped_profile():
    n, d_frame = 40, 95.0
    dose = d_frame * np.arange(n)
    start, y_true = 321.6, 3.5
    through = start + 150.0 * 42.76 / y_true
    signal = np.where(dose < through, 46.0, 0.0)
    res = sputter_yield_from_profile(dose, signal, 150.0, 42.76, start_dose=start)
    assert abs(res["yield"] - y_true) / y_true < d_frame / (through - start)
