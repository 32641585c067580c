"""Live SIMS views fed with documents shaped like the imager's (see conftest.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from temsims.analysis import isotopes
from temsims.callbacks.live import (
    LiveFusedOverlay,
    LiveRatioMap,
    LiveSimsMap,
    SimsMapAccumulator,
    sims_affine,
    tem_affine,
)


def feed(cb, docs):
    for name, doc in docs:
        cb(name, doc)


def png_std(path) -> float:
    import matplotlib.image as mpimg

    img = mpimg.imread(path)
    return float(img[..., :3].std())


# ---------------------------------------------------------------------------- accumulator
@pytest.mark.parametrize("lpe, pages", [(1, False), (2, True)])
def test_accumulator_holds_the_lines_given_nan_elsewhere(make, lpe, pages):
    maps = make.poisson_maps(12, 8)
    docs = make.sims_documents(maps, lines_per_event=lpe, n_lines=4, pages=pages)
    acc = SimsMapAccumulator()
    feed(acc, docs)
    assert acc.species == ["6Li", "7Li"]  # from map.species, not the unused collector
    assert acc.lines_done == 4 and acc.ny == 8 and acc.nx == 12
    for s in ("6Li", "7Li"):
        got = acc.maps[s]
        assert got.shape == (8, 12)
        np.testing.assert_array_equal(got[:4], maps[s][:4])
        assert np.isnan(got[4:]).all()  # lines not acquired yet
    assert acc.vmax["6Li"] == maps["6Li"][:4].max()


def test_accumulator_frames_latest_and_sum(make):
    maps = make.poisson_maps(6, 4)
    docs = make.sims_documents(maps, frames=3)
    latest, summed = SimsMapAccumulator(frames="latest"), SimsMapAccumulator(frames="sum")
    feed(latest, docs)
    feed(summed, docs)
    assert latest.frame == summed.frame == 2
    np.testing.assert_array_equal(latest.maps["6Li"], maps["6Li"])
    np.testing.assert_array_equal(summed.maps["6Li"], 3 * maps["6Li"])
    assert "frame 3/3" in latest.progress()


def test_accumulator_species_subset_and_unknown(make):
    docs = make.sims_documents(make.poisson_maps(5, 3))
    acc = SimsMapAccumulator(["7Li"])
    feed(acc, docs)
    assert acc.species == ["7Li"] and list(acc.maps) == ["7Li"]
    with pytest.raises(ValueError, match="no map of \\['99Xx'\\]"):
        feed(SimsMapAccumulator(["7Li", "99Xx"]), docs)


# ---------------------------------------------------------------------------- LiveSimsMap
def test_live_sims_map_headless_png(make, tmp_path, debug_callbacks):
    maps = make.poisson_maps(16, 12)
    docs = make.sims_documents(maps)
    png = tmp_path / "out" / "map_{scan_id}.png"
    cb = LiveSimsMap(png_path=png, headless=True)
    feed(cb, docs[:2 + 5])  # start, descriptor, 5 lines
    np.testing.assert_array_equal(cb.maps["6Li"][:5], maps["6Li"][:5].astype(float))
    assert np.isnan(cb.maps["6Li"][5:]).all()
    feed(cb, docs[7:])
    out = tmp_path / "out" / "map_7.png"
    assert cb.saved == [out] and out.exists()
    assert png_std(out) > 0.01
    titles = [ax.get_title() for ax in cb.axes]
    assert titles == ["#7 6Li: line 12/12", "#7 7Li: line 12/12"]
    # The colour scale of each species: 0 .. its largest count.
    assert cb.images["7Li"].get_clim() == (0.0, float(maps["7Li"].max()))
    # Unacquired pixels are masked in the image.
    partial = LiveSimsMap(headless=True, max_fps=1000)
    feed(partial, docs[:4])
    partial.draw(force=True)
    assert partial.images["6Li"].get_array().mask[2:].all()
    assert not partial.images["6Li"].get_array().mask[:2].any()


def test_live_sims_map_throttles_and_saves_every(make, tmp_path, debug_callbacks):
    docs = make.sims_documents(make.poisson_maps(8, 40))
    cb = LiveSimsMap("6Li", headless=True, max_fps=0.5, png_path=tmp_path / "m.png",
                     save_every=10)
    feed(cb, docs[:-1])
    # one draw at the descriptor, none of the 40 events within 2 s (saves render).
    assert cb.draws <= 2
    assert cb.saved == [tmp_path / "m.png"] and (tmp_path / "m.png").exists()
    assert cb.axes[0].get_title().endswith("line 40/40")
    feed(cb, docs[-1:])
    assert cb.draws <= 3


def test_live_sims_map_into_given_axes(make, debug_callbacks):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure()
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    cb = LiveSimsMap(("7Li", "6Li"), ax=axes)
    feed(cb, make.sims_documents(make.poisson_maps(6, 5)))
    assert cb.axes == list(axes)
    assert axes[0].get_title().startswith("#7 7Li")
    assert len(axes[0].images) == 1


def test_errors_do_not_reach_the_run_engine(make):
    # make_class_safe: a broken callback logs, the RunEngine goes on.
    cb = LiveRatioMap("6Li", "11B", headless=True)
    feed(cb, make.sims_documents(make.poisson_maps(4, 3)))


# ---------------------------------------------------------------------------- ratio
def test_live_ratio_map_parameters():
    import temsims.callbacks.live as live

    cb = LiveRatioMap(headless=True)
    assert cb.dead_time_s == 0.0 and cb.min_counts == 0.0
    assert cb.reference_ratio == isotopes.NATURAL_LI6_LI7 == live.NATURAL_6LI_7LI
    assert cb.systematic_rel == isotopes.DEFAULT_SYSTEMATIC_REL
    assert LiveRatioMap(dead_time_s=np.float32(3e-8), headless=True).dead_time_s \
        == pytest.approx(3e-8)
    for bad in (-1e-9, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="dead_time_s"):
            LiveRatioMap(dead_time_s=bad)
    for bad in ("30e-9", True):
        with pytest.raises(TypeError, match="dead_time_s"):
            LiveRatioMap(dead_time_s=bad)
    with pytest.raises(ValueError, match="reference_ratio"):
        LiveRatioMap(reference_ratio="lsvec")
    with pytest.raises(ValueError, match="reference_ratio"):
        LiveRatioMap(reference_ratio=0.0)
    with pytest.raises(ValueError, match="systematic_rel"):
        LiveRatioMap(systematic_rel=-0.01)
    assert LiveRatioMap(reference_ratio=None, headless=True).significance is None


def test_live_views_refuse_an_incomplete_map_block(make, debug_callbacks):
    maps = make.poisson_maps(4, 3)
    start = make.sims_start(nx=4, ny=3)
    del start["map"]["dwell_s"]
    docs = make.sims_documents(maps, start_md=start)
    with pytest.raises(ValueError, match="lacks \\['dwell_s'\\]"):
        feed(LiveRatioMap(dead_time_s=3e-8, headless=True), docs)


def test_live_ratio_map_binned_block_half_acquired(make, debug_callbacks):
    maps = make.poisson_maps(4, 4)
    cb = LiveRatioMap(binning=2, headless=True)
    feed(cb, make.sims_documents(maps, n_lines=3))  # block row 1 has one of its lines
    np.testing.assert_allclose(cb.ratio[0, 0], maps["6Li"][:2, :2].sum()
                               / maps["7Li"][:2, :2].sum())
    np.testing.assert_allclose(cb.ratio[1, 0], maps["6Li"][2, :2].sum()
                               / maps["7Li"][2, :2].sum())


def test_live_ratio_map_equals_n6_over_n7(make, tmp_path, debug_callbacks):
    ny, nx = 6, 8
    n7 = np.full((ny, nx), 100, np.int32)
    n6 = (np.arange(nx, dtype=np.int32)[None, :] * np.ones((ny, 1), np.int32))  # 0..7
    n6[2, :] = 0
    n7[2, :4] = 0  # no counts at all: NaN
    docs = make.sims_documents({"6Li": n6, "7Li": n7})
    cb = LiveRatioMap(headless=True, significance=True, png_path=tmp_path / "r.png")
    feed(cb, docs[:2 + 3])  # three lines
    with np.errstate(invalid="ignore"):
        expected = n6 / n7.astype(float)
    expected[2, :4] = np.nan
    np.testing.assert_array_equal(cb.ratio[:3], expected[:3])
    assert np.isnan(cb.ratio[3:]).all()
    # The significance is temsims.analysis.isotopes' (systematic 3 % by default) ...
    expected_sig = isotopes.significance_map(isotopes.ratio_map(n6[:3], n7[:3], min_counts=0))
    np.testing.assert_array_equal(cb.significance[:3], expected_sig)
    # ... which without the systematic is the binomial z of the 6Li fraction:
    # (N6 - r N7) / sqrt(r (N6 + N7)).
    poisson = LiveRatioMap(headless=True, systematic_rel=0.0)
    feed(poisson, docs[:3])
    r = isotopes.NATURAL_LI6_LI7
    np.testing.assert_allclose(poisson.significance[0],
                               (n6[0] - r * 100) / np.sqrt(r * (n6[0] + 100)), rtol=1e-12)
    # sigma_R = R sqrt(1/N6 + 1/N7), with N6 = 0 counted as one count
    r0 = n6[0] / 100
    np.testing.assert_allclose(poisson.sigma[0], np.sqrt(np.maximum(n6[0], 1)
                                                         + r0 * r0 * 100) / 100, rtol=1e-12)
    feed(cb, docs[5:])
    np.testing.assert_array_equal(cb.ratio, expected)
    assert (tmp_path / "r.png").exists() and png_std(tmp_path / "r.png") > 0.01
    assert len(cb.axes) == 2


def test_live_ratio_map_binned(make, debug_callbacks):
    maps = make.poisson_maps(8, 6)
    cb = LiveRatioMap("6Li", "7Li", binning=2, headless=True)
    docs = make.sims_documents(maps)
    feed(cb, docs[:2 + 3])  # 3 lines: block row 0 complete, block row 1 half
    b6 = maps["6Li"].reshape(3, 2, 4, 2).sum(axis=(1, 3))
    b7 = maps["7Li"].reshape(3, 2, 4, 2).sum(axis=(1, 3))
    np.testing.assert_allclose(cb.ratio[0], b6[0] / b7[0])
    np.testing.assert_allclose(cb.ratio[1], maps["6Li"][2].reshape(4, 2).sum(1)
                               / maps["7Li"][2].reshape(4, 2).sum(1))
    feed(cb, docs[5:])
    assert cb.ratio.shape == (3, 4)
    np.testing.assert_allclose(cb.ratio, b6 / b7)


# Dead time: counts high enough that a non-paralysable detector loses ~20 % of 7Li.
TAU_S = 50e-9  # the spectrometer's DEAD_TIME range is 20..50 ns


def _dead_time_run(nx=24, ny=16, dwell_s=1e-3, seed=3):
    """True and observed (dead-time lossy) 6Li/7Li counts: natural lithium with an
    enriched particle (6Li/7Li = 0.5); 7Li at 2.4-5.6 Mcps."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:ny, 0:nx]
    rate7 = 4e6 * (1.0 + 0.4 * np.sin(xx / 4.0) * np.cos(yy / 5.0))
    r_true = np.where((xx - 15) ** 2 + (yy - 8) ** 2 < 16, 0.5, isotopes.NATURAL_LI6_LI7)
    true = {"6Li": rng.poisson(r_true * rate7 * dwell_s), "7Li": rng.poisson(rate7 * dwell_s)}
    observed = {s: np.rint(n / (1.0 + n * TAU_S / dwell_s)).astype(np.int32)
                for s, n in true.items()}
    return r_true, true, observed


def test_live_ratio_map_dead_time_correction(make, debug_callbacks):
    r_true, true, obs = _dead_time_run()
    docs = make.sims_documents(obs)
    dwell = docs[0][1]["map"]["dwell_s"]
    corrected = LiveRatioMap(dead_time_s=TAU_S, significance=True, headless=True)
    raw = LiveRatioMap(headless=True)
    feed(corrected, docs)
    feed(raw, docs)
    assert corrected.dwell_s == dwell == 1e-3
    assert (true["7Li"] * TAU_S / dwell).mean() > 0.15  # dead time matters here
    # Corrected: the ratio scatters about the true one by its Poisson sigma.
    pull = (corrected.ratio - r_true) / corrected.sigma
    assert np.isfinite(pull).all()
    assert abs(pull.mean()) < 0.2  # 384 pixels: the mean pull's sd is 0.05
    assert 0.7 < pull.std() < 1.3
    assert (np.abs(pull) < 3).mean() > 0.98
    # Uncorrected: 7Li loses more than 6Li, the ratio is biased high by ~20 %.
    raw_pull = (raw.ratio - r_true) / raw.sigma
    assert raw_pull.mean() > 1.5
    assert np.median(raw.ratio / r_true) > 1.12
    # The live maps are temsims.analysis.isotopes' on the same final arrays.
    result = isotopes.ratio_map(obs["6Li"], obs["7Li"], min_counts=0, dwell_s=dwell,
                                dead_time_s=TAU_S)
    np.testing.assert_array_equal(corrected.ratio, result.ratio)
    np.testing.assert_array_equal(corrected.sigma, result.sigma)
    np.testing.assert_array_equal(corrected.significance, isotopes.significance_map(result))
    plain = isotopes.ratio_map(obs["6Li"], obs["7Li"], min_counts=0)
    np.testing.assert_array_equal(raw.ratio, plain.ratio)
    np.testing.assert_array_equal(raw.sigma, plain.sigma)
    # The particle stands out against natural lithium, the background does not.
    particle = r_true > 0.4
    assert (corrected.significance[particle] > 5).all()
    assert np.abs(corrected.significance[~particle]).max() < 4


def test_live_ratio_map_takes_the_dead_time_the_run_recorded(make, debug_callbacks):
    """The plans record the spectrometer's DEAD_TIME as ``dead_time_s`` in the start
    document: by default the live map corrects with it; an explicit value wins."""
    _, _, obs = _dead_time_run()
    docs = make.sims_documents(obs)
    docs[0][1]["dead_time_s"] = TAU_S
    recorded, explicit = LiveRatioMap(headless=True), LiveRatioMap(dead_time_s=TAU_S,
                                                                   headless=True)
    off = LiveRatioMap(dead_time_s=0.0, headless=True)
    for cb in (recorded, explicit, off):
        feed(cb, docs)
    assert recorded.dead_time_s == TAU_S and off.dead_time_s == 0.0
    np.testing.assert_array_equal(recorded.ratio, explicit.ratio)
    assert np.median(off.ratio / recorded.ratio) > 1.1


def test_live_ratio_map_takes_the_recorded_bracketing_correction(make, debug_callbacks):
    """A bracketed particle search records its (K, sigma_K) in
    ``correlative.particle_analysis`` (decision 0035): by default the live map shows
    K x the ratio with K's error propagated; an explicit None shows it as measured."""
    ny, nx = 4, 5
    n7 = np.full((ny, nx), 400, np.int32)
    n6 = np.full((ny, nx), 36, np.int32)
    docs = make.sims_documents({"6Li": n6, "7Li": n7})
    docs[0][1]["correlative"] = {"particle_analysis": {"correction_factor": 0.95,
                                                       "correction_sigma": 0.005}}
    recorded, raw = LiveRatioMap(headless=True), LiveRatioMap(correction=None, headless=True)
    given = LiveRatioMap(correction=(0.95, 0.005), headless=True)
    for cb in (recorded, raw, given):
        feed(cb, docs)
    assert recorded.correction == (0.95, 0.005) and raw.correction is None
    np.testing.assert_allclose(recorded.ratio, 0.95 * raw.ratio, rtol=1e-12)
    np.testing.assert_array_equal(recorded.ratio, given.ratio)
    np.testing.assert_allclose(recorded.sigma, np.hypot(0.95 * raw.sigma,
                                                        recorded.ratio * 0.005 / 0.95))
    with pytest.raises(ValueError):
        LiveRatioMap(correction="yes", headless=True)
    with pytest.raises(ValueError):
        LiveRatioMap(correction=(0.0, 0.1), headless=True)


def test_live_ratio_map_dead_time_over_summed_frames(make, debug_callbacks):
    """Frames added up: counts of k frames are corrected over k dwells; while frame 2
    crosses a 2x2 block, the block keeps its frame-1 value."""
    _, true, obs = _dead_time_run(nx=8, ny=6)
    dwell = 1e-3
    docs = make.sims_documents(obs, frames=2)  # start, descriptor, 6 + 6 lines, stop
    cb = LiveRatioMap(dead_time_s=TAU_S, binning=2, headless=True)

    def expected(frames, rows):
        return isotopes.ratio_map(frames * obs["6Li"][rows], frames * obs["7Li"][rows],
                                  binning=2, min_counts=0, dwell_s=frames * dwell,
                                  dead_time_s=TAU_S).ratio

    feed(cb, docs[:2 + 6 + 1])  # frame 1, then line 0 of frame 2
    one = expected(1, slice(0, 6))
    np.testing.assert_array_equal(cb.ratio, one)
    feed(cb, docs[9:10])  # line 1: block row 0 has both frames
    np.testing.assert_array_equal(cb.ratio[0], expected(2, slice(0, 2))[0])
    np.testing.assert_array_equal(cb.ratio[1:], one[1:])
    feed(cb, docs[10:])
    np.testing.assert_allclose(cb.ratio, expected(2, slice(0, 6)), rtol=1e-12)
    # ... the ratio of the true counts (both frames saw the same), up to the rounding
    # of the observed counts.
    truth = isotopes.ratio_map(2 * true["6Li"], 2 * true["7Li"], binning=2).ratio
    np.testing.assert_allclose(cb.ratio, truth, rtol=0.005)
    # Without the correction the same run is biased high.
    raw = LiveRatioMap(binning=2, headless=True)
    feed(raw, docs)
    assert np.median(raw.ratio / cb.ratio) > 1.12


# ---------------------------------------------------------------------------- fusion
def _correlative_pair(make, *, sims_xy=(11.0, -4.0), nx=16, ny=12, fov=3.0):
    cb_tem = make.correlative_block("overview")
    yy, xx = np.mgrid[0:100, 0:100]
    tem = (1000.0 - 400.0 * np.exp(-((xx - 60) ** 2 + (yy - 55) ** 2) / 200.0)).astype(
        np.float32)
    tem_docs = make.tem_documents(tem, fov_um=10.0, correlative=cb_tem)
    corr = make.correlative_block("sims_map")
    start = make.sims_start(nx=nx, ny=ny, fov_um=fov, x_um=sims_xy[0], y_um=sims_xy[1],
                            correlative=corr)
    sims_docs = make.sims_documents(make.poisson_maps(nx, ny), start_md=start)
    return tem, tem_docs, sims_docs


def test_geometry_matches_the_plans_convention(make):
    from temsims.analysis.geometry import SimsMapGeometry
    from temsims.plans.correlative import tem_pixel_to_stage

    tem, tem_docs, sims_docs = _correlative_pair(make)
    a = sims_affine(sims_docs[0][1])
    geometry = SimsMapGeometry(nx=16, ny=12, fov_um=3.0, centre_x_um=11.0, centre_y_um=-4.0)
    np.testing.assert_allclose(a, geometry.affine_to_specimen(), atol=1e-12)
    for row, col in [(0, 0), (11, 15), (3, 7)]:
        # 45 deg incidence: a row is 1/cos 45 = 1.414 times as long on the specimen
        x, y = geometry.pixel_to_specimen_um(row, col)
        assert x == pytest.approx(11.0 + (col - 7.5) * 3.0 / 16)
        assert y == pytest.approx(-4.0 + (row - 5.5) * 3.0 / 16 * math.sqrt(2))
        np.testing.assert_allclose(a @ [col, row, 1], [x, y, 1], atol=1e-9)
    t = tem_affine(tem_docs[0][1], tem.shape)
    x, y = tem_pixel_to_stage(20, 70, size=100, fov_um=10.0, x_um=10.0, y_um=-5.0)
    np.testing.assert_allclose(t @ [70, 20, 1], [x, y, 1], atol=1e-9)


def test_live_fused_overlay_draws_in_the_footprint(make, tmp_path, debug_callbacks):
    tem, tem_docs, sims_docs = _correlative_pair(make)
    cb = LiveFusedOverlay(tem, tem_docs[0][1], species=("6Li", "7Li"), headless=True,
                          png_path=tmp_path / "fused.png", max_fps=1000)
    feed(cb, sims_docs[:2])
    grey = cb.fused.copy()
    assert np.allclose(grey[..., 0], grey[..., 1])  # TEM only: grey
    # The footprint: 3 um x 3*12/16/cos45 um around (11, -4) on a 0.1 um TEM grid
    # centred at (10, -5) (pixel 49.5): columns 45..74, rows 59.5 -+ 15.9.
    fp = cb.footprint
    cols = np.nonzero(fp.any(axis=0))[0]
    rows = np.nonzero(fp.any(axis=1))[0]
    assert (cols.min(), cols.max()) == (45, 74)
    height_um = 3.0 * 12 / 16 / np.cos(np.radians(45.0))
    assert rows.max() - rows.min() + 1 == pytest.approx(height_um / 0.1, abs=1.5)
    assert (rows.min() + rows.max()) / 2 == pytest.approx(59.5, abs=1)
    feed(cb, sims_docs[2:8])  # 6 lines
    cb.draw(force=True)
    warped = cb.warped_channels()
    lit = np.isfinite(warped[0])
    assert lit.any() and (lit <= fp).all()
    assert not np.allclose(cb.fused[lit][:, 0], cb.fused[lit][:, 1])  # coloured
    np.testing.assert_array_equal(cb.fused[~fp], grey[~fp])  # TEM alone outside
    feed(cb, sims_docs[8:])
    assert (tmp_path / "fused.png").exists() and png_std(tmp_path / "fused.png") > 0.01
    assert "line 12/12" in cb.axes[0].get_title()


def test_live_fused_overlay_from_run_and_methods(make, debug_callbacks):
    tem, tem_docs, sims_docs = _correlative_pair(make, sims_xy=(10.0, -5.0))
    for method in ("ihs", "laplacian", "alpha"):
        cb = LiveFusedOverlay.from_run(tem_docs, method=method, headless=True, max_fps=1000)
        feed(cb, sims_docs)
        assert cb.footprint[50, 50]
        assert np.isfinite(cb.fused).all() and cb.fused.min() >= 0 and cb.fused.max() <= 1
    with pytest.raises(ValueError):
        LiveFusedOverlay(tem, tem_docs[0][1], method="median")


@pytest.mark.parametrize("rows", [1, 2, 3, 5, 12])
def test_laplacian_overlay_of_the_first_lines_of_a_map(rows):
    """A map a few lines high is fused too (CI once rendered a 3-line box, where three
    pyramid levels do not fit): fewer levels, or IHS under 3 lines, never an error."""
    from temsims.callbacks.live import _fuse

    rng = np.random.default_rng(rows)
    pan = rng.random((rows, 30))
    rgb = rng.random((rows, 30, 3))
    fused = _fuse(pan, rgb, "laplacian")
    assert fused.shape == (rows, 30, 3)
    assert np.isfinite(fused).all() and 0 <= fused.min() and fused.max() <= 1
    # the pan's detail is in the result: it correlates with the pan in every band
    if rows >= 3:
        for band in range(3):
            assert np.corrcoef(fused[..., band].ravel(), pan.ravel())[0, 1] > 0.3


# ---------------------------------------------------------------------------- RunEngine
def test_with_run_engine_and_a_line_flyer(make, tmp_path, debug_callbacks):
    """The callbacks subscribed to a RunEngine: a fly scan whose flyer yields map lines
    the way temsims.devices.imager.SIMSImager does (collect() -> event pages)."""
    import bluesky.plan_stubs as bps
    import bluesky.preprocessors as bpp
    from bluesky import RunEngine
    from ophyd.status import StatusBase

    maps = make.poisson_maps(10, 6)

    class LineFlyer:
        name = "imager"
        parent = None

        def kickoff(self):
            st = StatusBase()
            st.set_finished()
            return st

        def complete(self):
            return self.kickoff()

        def describe_collect(self):
            dk = {"imager_line": {"source": "sim", "dtype": "integer", "shape": []}}
            for s in maps:
                dk[f"imager_{s}"] = {"source": "sim", "dtype": "array", "shape": [1, 10],
                                     "units": "counts"}
            return {"primary": dk}

        def collect(self):
            for row in range(6):
                data = {"imager_line": row}
                data.update({f"imager_{s}": m[row:row + 1].copy() for s, m in maps.items()})
                yield {"time": 0.0, "data": data, "timestamps": dict.fromkeys(data, 0.0)}

    flyer = LineFlyer()
    md = make.sims_start(nx=10, ny=6)

    @bpp.run_decorator(md=md)
    def plan():
        yield from bps.kickoff(flyer, wait=True)
        yield from bps.complete(flyer, wait=True)
        yield from bps.collect(flyer)

    live = LiveSimsMap(headless=True, png_path=tmp_path / "re.png")
    ratio = LiveRatioMap(headless=True)
    RE = RunEngine({})
    RE(plan(), [live, ratio])
    np.testing.assert_array_equal(live.maps["7Li"], maps["7Li"])
    np.testing.assert_allclose(ratio.ratio, maps["6Li"] / maps["7Li"])
    assert (tmp_path / "re.png").exists()
