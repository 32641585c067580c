"""temsims.analysis.interfaces on synthetic data: TEM interfaces, profiles, fits.

The fits are scored on fresh seeds drawn at run time (``fresh_rng``: the entropy is
printed and ``TEMSIMS_TEST_ENTROPY`` reproduces it): the decay length and the tail
amplitude must fall within their stated 95 % interval (2 sigma) in >= 80 % of the
seeds, the interface positions within a fraction of a bin.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special
from scoring import fresh_rng

from temsims.analysis.interfaces import (
    COVERAGE_K,
    Interface,
    box_model,
    decay_profile_interval,
    dissolution_model,
    find_tem_interfaces,
    fit_box,
    fit_dissolution,
    fit_edge,
    line_spread_nm,
    normal_profile,
    row_noise,
    trace_interface,
)

FLAT = Interface(x_um=0.0, y_um=0.0, normal=(0.0, 1.0), slope=0.0, width_um=0.0, sign=1)


def _seeds(n: int, what: str) -> list[int]:
    first = int(fresh_rng(what).integers(1, 10**6))
    print(f"seeds {first}..{first + n - 1}")
    return list(range(first, first + n))


def _rng(what: str) -> np.random.Generator:
    return np.random.default_rng(int(fresh_rng(what).integers(10**6)))


def _pixels(rng, n=12000, lo=-400.0, hi=300.0):
    """SIMS pixel positions (um) scattered across the interface (a map's rows fall
    at every distance from a line that is not pixel-aligned)."""
    d = rng.uniform(lo, hi, n)
    return np.zeros_like(d), d / 1e3, d


def test_tem_interfaces_of_a_wedged_stack_are_found_within_a_pixel():
    """A bright-field image of Al / LiV3O8 / LiPON / Pt-C (mass thickness 2.7, 3.2,
    2.5, 8.0 x a wedge 60..100 nm along x), slightly tilted, Poisson noise."""
    rng = _rng("test_tem_interfaces_of_a_wedged_stack")
    n = 256
    x = np.linspace(-1.2, 1.2, n)
    y = np.linspace(-1.3, 1.1, n)
    yy, xx = np.meshgrid(y, x, indexing="ij")
    slope = 0.01
    bounds = np.array([-0.8, 0.6, 0.7])
    rho = np.select([yy < bounds[0] + slope * xx, yy < bounds[1] + slope * xx,
                     yy < bounds[2] + slope * xx], [2.7, 3.2, 2.5], 8.0)
    t = 60 + 40 * (xx - x.min()) / (x.max() - x.min())
    img = rng.poisson(2000 * np.exp(-rho * t * 0.1 / 60.0)).astype(float)
    found = find_tem_interfaces(img, x, y, n=3)
    pitch = y[1] - y[0]
    for line, b in zip(found, bounds, strict=True):
        assert abs(line.y_um - b) < pitch, (line.y_um, b)
        assert abs(line.slope - slope) < 0.01
        assert line.normal[1] > 0.99
    assert [line.sign for line in found] == [1, -1, 1]  # darker, brighter, darker


def test_edge_and_box_fits_find_the_interfaces():
    rng = _rng("test_edge_and_box_fits")
    x, y, d = _pixels(rng)
    counts = rng.poisson(300 * special.ndtr(-(d - 7.0) / 14.0))
    f = fit_edge(normal_profile(counts, x, y, FLAT, half_length_nm=300, before_nm=400,
                                bin_nm=8))
    assert abs(f.params["b"] - 7.0) < 2.0 and abs(f.params["s"] - 14.0) < 2.0
    li = rng.poisson(box_model(d, 3.0, 103.0, 15.0, 260.0, 1100.0, 0.0))
    f = fit_box(normal_profile(li, x, y, FLAT, half_length_nm=300, before_nm=400, bin_nm=8),
                b0=0.0, c0=100.0)
    assert abs(f.params["b"] - 3.0) < 2.0 and abs(f.params["c"] - 103.0) < 2.0
    assert abs(f.params["level"] / f.params["before"] - 1100 / 260) < 0.05


def test_dissolution_fit_recovers_decay_and_level_within_their_interval():
    """Plateau 250 counts, tail 18 counts at the interface decaying over 40 nm into a
    100 nm layer, blur 16 nm: the 95 % intervals hold the truth in >= 80 % of 60
    seeds (the >= 90 % of the issue is scored on the twin by
    benchmarks/cathode_case_benchmark.py). 145 runs of 30 seeds: coverage 0.958
    (decay) and 0.955 (amplitude); >= 80 % of 30 then failed ~5e-4 of runs
    (binomial), of 60 < 1e-5."""
    truth = {"b": 5.0, "s": 16.0, "plateau": 250.0, "amplitude": 18.0, "decay": 40.0,
             "background": 0.02}
    hits = {"decay": 0, "amplitude": 0}
    seeds = _seeds(60, "test_dissolution_fit_recovers_decay_and_level")
    for seed in seeds:
        rng = np.random.default_rng(seed)
        x, y, d = _pixels(rng)
        counts = rng.poisson(dissolution_model(d, c=truth["b"] + 100.0, **truth))
        f = fit_dissolution(normal_profile(counts, x, y, FLAT, half_length_nm=300,
                                           before_nm=400, bin_nm=8), thickness_nm=100.0)
        for k in hits:
            hits[k] += abs(f.params[k] - truth[k]) <= COVERAGE_K * f.errors[k]
    print(f"within the 95 % interval: {hits} of {len(seeds)}")
    assert all(v >= 0.8 * len(seeds) for v in hits.values()), hits


def test_decay_profile_interval_holds_the_estimate_and_covers_the_truth():
    """The profile likelihood's 95 % interval of the decay length (blur and the rest
    refitted at each decay held fixed; the cathode case's ``interval95``, decision
    0027) on the first test's profiles with a blur prior as the case has: it holds
    the decay found and the truth in >= 75 % of 24 fresh seeds (at 95 % missing 7
    of 24 has p ~1e-4); its lean in ln (printed) is small on this well-sampled
    profile (median +0.01), unlike the cathode's (decision 0027)."""
    truth = {"b": 5.0, "s": 16.0, "plateau": 250.0, "amplitude": 18.0, "decay": 40.0,
             "background": 0.02}
    seeds = _seeds(24, "test_decay_profile_interval")
    hits, lean = 0, []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        x, y, d = _pixels(rng)
        counts = rng.poisson(dissolution_model(d, c=truth["b"] + 100.0, **truth))
        prof = normal_profile(counts, x, y, FLAT, half_length_nm=300, before_nm=400, bin_nm=8)
        kw = {"thickness_nm": 100.0, "blur_prior": (16.0, 2.4)}
        f = fit_dissolution(prof, **kw)
        lo, hi = decay_profile_interval(prof, f, k=COVERAGE_K, **kw)
        assert lo < f.params["decay"] < hi, (seed, lo, f.params["decay"], hi)
        hits += lo <= truth["decay"] <= hi
        lean.append(np.log(hi / f.params["decay"]) - np.log(f.params["decay"] / lo))
    print(f"profile interval holds the truth in {hits} of {len(seeds)}; ln(hi/d) - "
          f"ln(d/lo) median {np.median(lean):.3f}")
    assert hits >= 0.75 * len(seeds), hits


def test_dissolution_fit_with_the_edge_fixed_elsewhere():
    """Into the Al: the edge (b, s) from Al+, only the tail fitted.

    The edge's blur is the one an edge fit to the 8 nm bins gives (Al+'s, in the
    pipeline): 15 nm in quadrature with the bin's 8/sqrt(12). Fixed at the points' 15
    nm, the binned edge's excess just past it (250 counts against a 2-count tail) read
    as tail: 2000 seeds, decay 53.8 +- 4.3 nm (one below 42, the bound); at the binned
    blur 300 seeds gave 60.2 +- 4.9 (with a fitted Al+ edge's blur, 60.4 +- 5.5)."""
    rng = _rng("test_dissolution_fit_with_the_edge_fixed_elsewhere")
    x, y, d = _pixels(rng, lo=-300, hi=250)
    counts = rng.poisson(dissolution_model(d, 0.0, 15.0, 250.0, 2.0, 60.0, 0.05))
    blur = float(np.hypot(15.0, 8.0 / np.sqrt(12.0)))
    f = fit_dissolution(normal_profile(counts, x, y, FLAT, half_length_nm=250, before_nm=300,
                                       bin_nm=8), fix_edge=True, b0=0.0, s0=blur)
    assert f.errors["b"] == 0.0 and f.params["s"] == blur
    # A tail of 1 % of the plateau: found, its decay within 30 % (one draw; coverage
    # over seeds is the test above).
    assert abs(f.params["decay"] - 60.0) <= 18.0, (f.params, f.errors)


#: The cathode map's geometry: lines 24.4 nm apart along the normal (15.6 nm pixels at
#: the 1.56 stretch), 128 columns; the probe's halo (3 %, 300 nm FWHM) along y.
LINE_NM, COLUMNS = 24.4, 128
HALO = (0.03, 1.56 * 300.0 / 2.3548)


def _map_through_the_probe(rng, truth, *, line_noise=0.007, lo=-1400.0, hi=300.0):
    """A map of lines parallel to a flat interface: each line's counts Poisson of the
    dissolution profile through core and halo times its share of the probe current
    (``1 + line_noise g``); returns counts (lines x columns), x, y (um) and d (nm)."""
    d_lines = np.arange(lo, hi, LINE_NM) + rng.uniform(0, LINE_NM)
    factor = 1.0 + line_noise * rng.standard_normal(d_lines.size)
    mu = dissolution_model(d_lines, c=truth["b"] + 100.0, halo=HALO, **truth) * factor
    counts = rng.poisson(np.repeat(mu[:, None], COLUMNS, axis=1)).astype(float)
    d = np.repeat(d_lines[:, None], COLUMNS, axis=1)
    x = np.repeat(np.linspace(-1.0, 1.0, COLUMNS)[None, :], d_lines.size, axis=0)
    return counts, x, d / 1e3, d


def test_row_noise_measures_the_lines_share_of_the_current():
    rng = _rng("test_row_noise_measures_the_lines_share_of_the_current")
    level = 250.0 * (1.0 + 0.01 * rng.standard_normal(60))[:, None] * np.ones((60, 128))
    region = np.ones(level.shape, bool)
    # 60 lines: the estimate's own spread is ~10 % of the rms, and Poisson's line
    # means (0.56 % each) leave up to ~0.005 in a pure map. Over 2000 seeds: 1 % rms
    # read 0.0054-0.0143 (the old 0.007-0.013 failed 1.6 % of them), pure Poisson
    # at most 0.0048 (the old < 0.003 failed 7.6 %).
    assert 0.005 < row_noise(rng.poisson(level), region) < 0.0155
    assert row_noise(rng.poisson(np.full((60, 128), 250.0)), region) < 0.0055
    assert row_noise(np.ones((3, 128)), np.ones((3, 128), bool)) == 0.0


def test_dissolution_fit_through_the_probe_halo_recovers_decay_and_amplitude():
    """The cathode's tail (18 counts at the interface, 40 nm into 100 nm of LiPON,
    plateau 250, blur 20 nm) under the probe's halo, which carries 3 % of the
    plateau ~200 nm across, and ~0.7 % line-to-line current noise: with the halo and
    the line noise in the fit, the 95 % intervals hold the truth in >= 80 % of 60
    fresh seeds and are +-10-20 nm; with the halo left out of the model the decay comes
    out several times too long (the halo's wide shoulder read as the tail). 145 runs
    of 30 seeds: coverage 0.949 (decay) and 0.956 (amplitude), >= 80 % of 30 failed
    ~1e-3 of runs; the halo-less median decay >= 93 nm."""
    truth = {"b": 5.0, "s": 20.0, "plateau": 250.0, "amplitude": 18.0, "decay": 40.0,
             "background": 0.02}
    hits = {"decay": 0, "amplitude": 0}
    u95, naive = [], []
    seeds = _seeds(60, "test_dissolution_fit_through_the_probe_halo")
    for i, seed in enumerate(seeds):
        rng = np.random.default_rng(seed)
        counts, x, y, d = _map_through_the_probe(rng, truth)
        eps = row_noise(counts, d < -400.0)
        prof = normal_profile(counts, x, y, FLAT, half_length_nm=300, before_nm=400, bin_nm=8)
        f = fit_dissolution(prof, thickness_nm=100.0, blur_prior=(20.0, 3.0), halo=HALO,
                            rel_noise=eps)
        for k in hits:
            hits[k] += abs(f.params[k] - truth[k]) <= COVERAGE_K * f.errors[k]
        u95.append(COVERAGE_K * f.errors["decay"])
        if i < 5:
            naive.append(fit_dissolution(prof, thickness_nm=100.0, blur_prior=(20.0, 3.0),
                                         rel_noise=eps).params["decay"])
    print(f"within the 95 % interval: {hits} of {len(seeds)}; decay u95 "
          f"{min(u95):.1f}-{max(u95):.1f} nm; halo left out: decay {np.round(naive, 1)}")
    assert all(v >= 0.8 * len(seeds) for v in hits.values()), hits
    assert np.median(u95) < 20.0, u95
    assert np.median(naive) > 60.0, naive


def test_a_line_nearly_parallel_to_the_interface_is_one_bin():
    """A 2-D map whose lines run 1 nm off parallel over their length: by line, one bin
    per line at its mean distance, every acquired pixel in it; by distance, lines are
    cut at bin edges."""
    rng = _rng("test_a_line_nearly_parallel_to_the_interface_is_one_bin")
    counts, x, y, d = _map_through_the_probe(rng, {"b": 0.0, "s": 20.0, "plateau": 250.0,
                                                   "amplitude": 18.0, "decay": 40.0,
                                                   "background": 0.0}, lo=-400.0)
    tilted = Interface(x_um=0.0, y_um=0.0, normal=(5e-4, 1.0), slope=-5e-4, width_um=0.0,
                       sign=1)
    counts[3, :10] = np.nan
    assert 0.9 < line_spread_nm(counts, x, y, tilted) < 1.1
    p = normal_profile(counts, x, y, tilted, half_length_nm=300, before_nm=400, bin_nm=8,
                       by_line=True)
    inside = (d[:, 0] >= -400) & (d[:, 0] <= 300)
    assert p.d_nm.size == inside.sum() and np.all(np.diff(p.d_nm) > 0)
    assert p.n.sum() == np.isfinite(counts[inside]).sum()
    np.testing.assert_allclose(p.mean, np.nanmean(counts[inside], axis=1)[np.argsort(
        d[inside, 0])])
    with pytest.raises(ValueError, match="2-D"):
        normal_profile(counts.ravel(), x.ravel(), y.ravel(), tilted, half_length_nm=300,
                       bin_nm=8, by_line=True)


def test_fits_refuse_a_bad_halo():
    rng = np.random.default_rng(1)
    x, y, d = _pixels(rng)
    prof = normal_profile(rng.poisson(300 * special.ndtr(-d / 14.0)), x, y, FLAT,
                          half_length_nm=300, before_nm=400, bin_nm=8)
    for bad in ((1.0, 100.0), (0.03, 0.0), (0.03,), "halo"):
        with pytest.raises(ValueError, match="halo"):
            fit_edge(prof, halo=bad)
    # A zero fraction is no halo at all.
    assert fit_edge(prof, halo=(0.0, 100.0)).params == fit_edge(prof).params


@pytest.mark.parametrize("bad", [np.zeros((4, 5)), np.ones((10, 10))])
def test_find_tem_interfaces_refuses_what_it_cannot_use(bad):
    with pytest.raises(ValueError):
        find_tem_interfaces(bad, np.arange(10.0), np.arange(10.0), n=3)


def _smooth_heights(rng, n, corr_px, sd_nm):
    """A rough interface's heights (nm) at ``n`` columns: smooth noise of ``sd_nm``."""
    from scipy import ndimage

    h = ndimage.gaussian_filter1d(rng.standard_normal(n), corr_px, mode="wrap")
    return sd_nm * (h - h.mean()) / h.std()


def test_trace_interface_follows_a_rough_interface_column_by_column():
    """A bright-field image (9.4 nm pixels, each the mean transmission over its area,
    Poisson at ~4000 electrons; the twin's overview) of a LiV3O8 / LiPON / Pt-C stack
    whose interfaces are rough (8 nm rms, ~100 nm correlation): the traces follow each
    column's height to < 2 nm rms (the roughness is 8; ~1 nm on the twin), with no
    offset across the strong, dark Pt-C step beyond 1 nm."""
    rng = _rng("test_trace_interface_follows_a_rough_interface")
    n, sub = 256, 8
    x = np.linspace(-1.2, 1.2, n)
    y = np.linspace(-0.3, 1.1, 150)
    pitch = (y[1] - y[0]) * 1e3
    xf = np.linspace(x[0], x[-1], n * 4)
    heights = {0.6: _smooth_heights(rng, xf.size, 25, 8.0),
               0.7: _smooth_heights(rng, xf.size, 25, 8.0)}
    h = {b: np.interp(x, xf, v) for b, v in heights.items()}
    # Sub-pixel rows: the camera pixel averages the transmission over its height.
    yf = (y[:, None] + (np.arange(sub) - (sub - 1) / 2)[None, :] * pitch / sub / 1e3)
    yf = yf[:, :, None] * 1e3  # nm, (rows, sub, 1)
    mt = np.where(yf < 600 + h[0.6], 3.2, np.where(yf < 700 + h[0.7], 2.5, 8.0))
    # Contrast as the twin's overview: ~30 % between LiV3O8 and LiPON.
    trans = np.exp(-mt * 80 / 190.0).mean(axis=1)
    img = rng.poisson(4000 * trans).astype(float)
    found = find_tem_interfaces(img, x, y, n=2, min_separation_um=0.05)
    for line, b in zip(found, (0.6, 0.7), strict=True):
        t = trace_interface(img, x, y, line, half_window_um=0.04)
        off = t.offset_nm(x, line.y_um + line.slope * (x - line.x_um))
        true = 1e3 * (b - line.y_um - line.slope * (x - line.x_um)) + h[b]
        err = off - true
        print(f"interface {b}: trace - truth mean {err.mean():+.2f} rms {err.std():.2f} nm "
              f"(roughness {h[b].std():.1f})")
        assert abs(err.mean()) < 1.0 and err.std() < 2.0
        # The local distance of a point on the true interface is ~0.
        d = 1e3 * t.local_distance_um(x, b + 1e-3 * h[b])
        assert np.sqrt(np.mean(d ** 2)) < 2.5


def test_profiles_from_the_traced_interface_lose_the_roughness_shape():
    """Noiseless maps of a V tail (40 nm into a 100 nm layer, 18 counts under a 250
    count plateau, probe blur 18 nm along the normal) across an interface whose height
    along it is skewed (the twin's: smooth noise over ~20 correlation lengths; here
    exaggerated to a skew of ~1): binned from the line, the Gaussian-blurred model
    takes the edge's excess for tail (decay > 5 % short); from the traced interface,
    with the layer's thickness spread as the far end's blur, it finds 40 nm within
    1.5 %."""
    rng = np.random.default_rng(3)
    nx, ny = 160, 120
    xs = np.linspace(-1.0, 1.0, nx)
    ys = np.linspace(-0.4, 0.3, ny)  # um; rows parallel to the interface
    x, y = np.meshgrid(xs, ys)
    g = _smooth_heights(rng, nx, 6, 1.0)
    h = 8.0 * (np.exp(g) - np.exp(g).mean()) / np.exp(g).std()   # skewed heights, nm
    far = _smooth_heights(rng, nx, 6, 9.0)                         # the far interface's
    d = 1e3 * y - h[None, :]
    truth = {"b": 0.0, "s": 18.0, "plateau": 250.0, "amplitude": 18.0, "decay": 40.0,
             "background": 0.05}
    counts = np.empty_like(d)
    for j in range(nx):
        counts[:, j] = dissolution_model(d[:, j], c=100.0 + far[j] - h[j], **truth)
    traced = Interface(x_um=0.0, y_um=0.0, normal=(0.0, 1.0), slope=0.0, width_um=0.0,
                       sign=1, trace=(tuple(xs), tuple(h)))
    kw = {"bin_nm": 8.0, "half_length_nm": 250.0, "before_nm": 300.0}
    skew = float(np.mean(h ** 3) / np.std(h) ** 3)
    line_fit = fit_dissolution(normal_profile(counts, x, y, FLAT, **kw), thickness_nm=100.0,
                               blur_prior=(18.0, 2.7))
    t = 100.0 + far - h
    local_fit = fit_dissolution(normal_profile(counts, x, y, traced, local=True, **kw),
                                thickness_nm=float(t.mean()), far_sigma_nm=float(t.std()),
                                blur_prior=(18.0, 2.7))
    print(f"skew {skew:.2f}: from the line decay {line_fit.params['decay']:.2f} nm "
          f"(s {line_fit.params['s']:.2f}); from the trace {local_fit.params['decay']:.2f} "
          f"nm (s {local_fit.params['s']:.2f})")
    assert line_fit.params["decay"] < 0.95 * truth["decay"]
    assert abs(local_fit.params["decay"] / truth["decay"] - 1) < 0.015
    assert abs(local_fit.params["s"] - truth["s"]) < 0.3
