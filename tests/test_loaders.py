"""``temsims.app.loaders.load_correlative`` on runs written by the real plans into a real catalog.

One small correlative experiment (``correlative_tem_sims`` over the real IOCs,
li2co3-particles seed 1, written to an embedded catalog), shared by the module and
read back with :func:`load_correlative`. The spectrometer starts without drift; before
the plan the test lets the specimen drift for a known time, then stops the drift, so
the SIMS maps are displaced on the specimen by a known, non-trivial amount (about two
SIMS pixels) that the recorded geometry does not know: the truth is the stage readback
(``region``) minus that displacement, and the registration onto the overview must
recover it within half a SIMS pixel.

Why a displacement and not a drift during the plan: at a time scale S every wall second
the plan spends outside the IOCs' own waits (CA, the RunEngine, frame preparation)
is S nominal seconds of drift. At S = 20, 600 nm/min during the plan moved the
particles 0.5-0.6 um, out of the maps' 0.6 um fields, and how far depended on the load.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from temsims.app.loaders import CorrelativeExperiment, load_correlative

#: End to end (plan, catalog, loader): the module's fixture takes 16-22 s, its tests 6 s.
pytestmark = pytest.mark.slow

#: The drift that displaces the specimen before the plan (nm/min; the IOC's direction:
#: 30 deg from +x), for DRIFT_S nominal seconds: 56 nm, 1.5 SIMS pixels of the maps.
#: The drift stops when a put reaches the IOC: at load 20 it ran 1.5 times longer (2.98
#: px), beyond the registration's 2.75 px search; 1.5 px leaves room for that.
DRIFT_NM_PER_MIN = 600.0
DRIFT_S = 5.6
DRIFT_DIRECTION_DEG = 30.0
SIMS_PIXELS = (16, 11)
CAMERA_SIZE = 128
#: The spectrometer starts without drift (and a reset puts it back to none).
NO_DRIFT = {"spectrometer": ["--drift-nm-per-min", "0"]}


def _displace(procs, d) -> float:
    """Let the specimen drift for ~DRIFT_S nominal seconds; the displacement (um)."""
    from caproto.sync.client import read

    def stamp() -> float:  # the IOC's (nominal) time of the last rate change
        return read(procs.instrument_prefix + "MS:DRIFT_NM_PER_MIN", data_type="time",
                    timeout=5).metadata.timestamp

    d.spectrometer.drift.set(DRIFT_NM_PER_MIN).wait(5)
    t_on = stamp()
    time.sleep(DRIFT_S / procs.time_scale)
    d.spectrometer.drift.set(0.0).wait(5)
    t_off = stamp()
    return DRIFT_NM_PER_MIN * (t_off - t_on) / 60.0 / 1000.0


@pytest.fixture(scope="module")
def experiment(instruments, tmp_path_factory):
    """Run ``correlative_tem_sims`` into a catalog; load it back (everything a test needs)."""
    from bluesky import RunEngine
    from documents import DocumentCollector
    from instrument_support import connect_fast

    from temsims.catalog import open_catalog, require_metadata
    from temsims.plans import correlative_tem_sims

    procs = instruments.get(specimen="li2co3-particles", seed=1, extra_args=NO_DRIFT)
    cat = open_catalog(tmp_path_factory.mktemp("loaders") / "catalog")
    try:
        d = connect_fast(procs, camera_size=CAMERA_SIZE)
        assert d.spectrometer.drift.get() == 0.0
        RE = RunEngine({"sample": "li2co3-particles seed 1", "specimen": "li2co3-particles",
                        "operator": "pytest"}, call_returns_result=True)
        require_metadata(RE)
        RE.docs = DocumentCollector()
        RE.subscribe(RE.docs)
        RE.subscribe(cat.writer())
        shift_um = _displace(procs, d)
        t1 = time.monotonic()
        res = RE(correlative_tem_sims(
            d, overview_fov_um=4.0, max_rois=2, sims_pixels=SIMS_PIXELS, sims_dwell_s=1e-3,
            exposure_s=0.01, reference="li2co3-particles")).plan_result
        plan_s = time.monotonic() - t1
        assert cat.flush(60)
        t1 = time.monotonic()
        exp = load_correlative(cat, res["correlation_id"])
        load_s = time.monotonic() - t1
        print(f"\ncorrelative plan {plan_s:.1f} s, load_correlative {load_s:.2f} s; "
              f"specimen displaced {1e3 * shift_um:.1f} nm before it")
        yield {"res": res, "exp": exp, "cat": cat, "docs": RE.docs, "shift_um": shift_um}
    finally:
        cat.close(timeout=60)


def _true_affine(m, shift_um: float) -> np.ndarray:
    """SIMS (col, row, 1) -> specimen um as the simulator made the map: the stage
    readback as the centre, minus the specimen's displacement ``shift_um``."""
    from dataclasses import replace

    from temsims.ioc.physics.ion_optics import (
        draw_extraction_field_factor,
        landing_incidence_deg,
    )

    start = m.start
    # The beam as this instrument's extraction field really bent it (seed 1's field
    # factor; the start document records the uniform-field model's angle).
    incidence = landing_incidence_deg(float(start["beam_energy_keV"]),
                                      1000.0 * float(start["bias_kV"]),
                                      field_factor=draw_extraction_field_factor(1))
    geo = replace(m.geometry, centre_x_um=float(start["region"]["x_um"]),
                  centre_y_um=float(start["region"]["y_um"]), incidence_deg=incidence)
    matrix = geo.affine_to_specimen()
    ang = math.radians(DRIFT_DIRECTION_DEG)
    matrix[0, 2] -= shift_um * math.cos(ang)
    matrix[1, 2] -= shift_um * math.sin(ang)
    return matrix


def _error_sims_px(exp: CorrelativeExperiment, index: int, matrix_to_specimen: np.ndarray,
                   truth: np.ndarray) -> float:
    """Largest misplacement (in SIMS pixels) of the map's corners and centre."""
    m = exp.sims[index]
    pts = m.geometry.corners_px()
    homog = np.column_stack([pts, np.ones(len(pts))]).T
    diff = (matrix_to_specimen @ homog - truth @ homog)[:2]
    in_px = np.linalg.inv(truth[:2, :2]) @ diff  # specimen um -> SIMS (col, row) px
    return float(np.hypot(in_px[0], in_px[1]).max())


def test_runs_read_back_as_the_devices_produced_them(experiment):
    exp, res = experiment["exp"], experiment["res"]
    assert isinstance(exp, CorrelativeExperiment)
    assert exp.correlation_id == res["correlation_id"]
    n = len(res["rois"])
    assert 1 <= n <= 2
    assert len(exp.starts) == 1 + 2 * n and len(exp.sims) == n and len(exp.zooms) == n
    docs = experiment["docs"]  # what the RunEngine emitted, beside what the catalog holds
    overview = docs.run(res["uids"]["overview"]).images()["camera_image"][0]
    np.testing.assert_array_equal(exp.overview.values, overview)
    assert exp.overview.dtype == overview.dtype
    for z, uid in zip(exp.zooms, res["uids"]["tem"], strict=True):
        np.testing.assert_array_equal(z.values, docs.run(uid).images()["camera_image"][0])
    sims_maps = [docs.run(uid).maps() for uid in res["uids"]["sims"]]
    for i, (m, maps) in enumerate(zip(exp.sims, sims_maps, strict=True)):
        assert m.roi_index == i and exp.zoom_of(i).attrs["roi_index"] == i
        assert m.species == ["6Li", "7Li"]
        for s in ("6Li", "7Li"):
            assert m.data[s].dims == ("y", "x")
            assert m.data[s].shape == (SIMS_PIXELS[1], SIMS_PIXELS[0])
            assert m.data[s].dtype.kind == "i"  # counts as recorded (int32)
            np.testing.assert_array_equal(m.data[s].values, maps[s])
    assert [(r["x_um"], r["y_um"]) for r in exp.rois] == \
        [(r["x_um"], r["y_um"]) for r in res["rois"]]
    assert exp.particles == []


def test_coordinates_are_specimen_um(experiment):
    exp, res = experiment["exp"], experiment["res"]
    ov = exp.overview
    pitch = 4.0 / CAMERA_SIZE
    assert ov.dims == ("y", "x") and ov.x_um.attrs["units"] == "um"
    np.testing.assert_allclose(np.diff(ov.x_um.values), pitch, rtol=1e-9)
    np.testing.assert_allclose(np.diff(ov.y_um.values), pitch, rtol=1e-6)
    assert float(ov.x_um.mean()) == pytest.approx(0.0, abs=1e-3)
    for m, r in zip(exp.sims, res["rois"], strict=True):
        x, y = m.data.x_um.values, m.data.y_um.values
        assert x.shape == y.shape == (SIMS_PIXELS[1], SIMS_PIXELS[0])
        assert float(x.mean()) == pytest.approx(r["x_um"], abs=2e-3)
        assert float(y.mean()) == pytest.approx(r["y_um"], abs=2e-3)
        p = r["fov_um"] / SIMS_PIXELS[0]
        assert float(x[0, 1] - x[0, 0]) == pytest.approx(p, rel=1e-6)
        # Foreshortening: the map's rows are 1/cos(incidence) apart on the specimen, the
        # column's 45 deg bent to 50.08 deg by the +4.5 kV extraction field.
        assert m.start["map"]["incidence_deg"] == pytest.approx(50.08, abs=0.01)
        assert float(y[1, 0] - y[0, 0]) == pytest.approx(p / math.cos(math.radians(50.0821)),
                                                         rel=1e-5)
        assert m.data.x_um.attrs["units"] == "um"
    for z, r in zip(exp.zooms, res["rois"], strict=True):
        assert float(z.x_um.mean()) == pytest.approx(r["x_um"], abs=2e-3)
        assert float(z.x_um[-1] - z.x_um[0]) < r["fov_um"]


def test_registration_against_the_specimen_truth(experiment):
    exp = experiment["exp"]
    for i, m in enumerate(exp.sims):
        reg = m.registration
        assert reg is not None, m.registration_error
        truth = _true_affine(m, experiment["shift_um"])
        ov = exp.overview_geometry.affine_to_specimen()
        registered = ov @ reg.transform.params
        initial = ov @ reg.initial_transform.params
        err = _error_sims_px(exp, i, registered, truth)
        err0 = _error_sims_px(exp, i, initial, truth)
        err_um = exp.registration_error_um(i, truth)
        print(f"map {i}: registration error {err:.3f} SIMS px ({1e3 * err_um:.1f} nm), "
              f"recorded geometry alone {err0:.3f} px; shift {reg.shift_px}, "
              f"ncc {reg.quality['ncc']:.3f} (initial {reg.quality['ncc_initial']:.3f}), "
              f"residual {reg.residual_sims_px:.3f} px, "
              f"TEM inverted {reg.quality['tem_inverted']}")
        assert reg.refined and reg.quality["tem_inverted"]  # bright field vs Li counts
        assert err < 0.5
        # The registered coordinates are the refined transform.
        xr_, yr_ = m.data.x_um_registered.values, m.data.y_um_registered.values
        c = m.geometry.shape
        assert float(xr_.mean()) == pytest.approx(
            float((registered @ [(c[1] - 1) / 2, (c[0] - 1) / 2, 1])[0]), abs=1e-9)
        assert np.isfinite(yr_).all()
        # The warped maps: on the overview grid, NaN outside the map, counts inside.
        w = m.warped
        assert w["7Li"].shape == exp.overview.shape
        inside = np.isfinite(w["7Li"].values)
        assert 0 < inside.sum() < inside.size
        assert float(np.nanmax(w["7Li"].values)) <= float(m.data["7Li"].max()) + 1e-3
    # A known drift was there to be found (the test would be vacuous without it).
    truth0 = _true_affine(exp.sims[0], experiment["shift_um"])
    init0 = exp.overview_geometry.affine_to_specimen() @ \
        exp.sims[0].registration.initial_transform.params
    assert _error_sims_px(exp, 0, init0, truth0) > 0.5


@pytest.mark.parametrize("method", ["ihs", "laplacian"])
@pytest.mark.parametrize("grid", ["overview", "zoom"])
def test_fuse_shape_and_values(experiment, method, grid):
    exp = experiment["exp"]
    for i in range(len(exp.sims)):
        rgb = exp.fuse(i, method=method, grid=grid)
        target = exp.overview if grid == "overview" else exp.zoom_of(i)
        assert rgb.dims == ("y", "x", "rgb") and rgb.shape[2] == 3
        assert 4 <= rgb.shape[0] <= target.shape[0] and 4 <= rgb.shape[1] <= target.shape[1]
        assert np.isfinite(rgb.values).all()
        assert 0.0 <= float(rgb.min()) and float(rgb.max()) <= 1.0 and float(rgb.std()) > 0
        # Cropped to the map: its coordinates lie inside the map's registered footprint.
        xr_ = exp.sims[i].data.x_um_registered.values
        assert xr_.min() - 0.05 <= float(rgb.x_um.min()) <= float(rgb.x_um.max()) \
            <= xr_.max() + 0.05
        full = exp.fuse(i, method=method, grid=grid, crop=False)
        assert full.shape == (*target.shape, 3) and np.isfinite(full.values).all()
        metrics = exp.fusion_metrics(i, method=method, grid=grid, fused=rgb)
        assert all(math.isfinite(metrics[k]) for k in ("cc", "ssim", "sam_deg", "ergas",
                                                         "spatial_cc"))
        print(f"map {i} {grid} {method}: " + ", ".join(
            f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float)))


def test_ratio_and_atom_fraction(experiment):
    exp = experiment["exp"]
    m = exp.sims[0]
    n6 = m.data["6Li"].values.astype(float)
    n7 = m.data["7Li"].values.astype(float)
    rm = exp.ratio_map(0, min_counts=10)
    valid = rm.valid
    assert valid.any()
    n = n6 + n7
    with np.errstate(divide="ignore", invalid="ignore"):
        expected_ratio, expected_fraction = n6 / n7, n6 / n
    np.testing.assert_allclose(rm.ratio[valid], expected_ratio[valid])
    frac = exp.atom_fraction(0, min_counts=10)
    x = frac["fraction"].values
    np.testing.assert_allclose(x[valid], expected_fraction[valid], rtol=1e-12)
    both = valid & (n6 > 0)
    np.testing.assert_allclose(frac["sigma"].values[both],
                               np.sqrt(x[both] * (1 - x[both]) / n[both]), rtol=1e-9)
    assert np.isnan(x[~valid]).all() and ((x[valid] >= 0) & (x[valid] <= 1)).all()
    np.testing.assert_allclose(frac.x_um.values, m.data.x_um.values)
    binned = exp.atom_fraction(0, binning=2)
    assert binned["fraction"].shape == (SIMS_PIXELS[1] // 2, SIMS_PIXELS[0] // 2)
    assert float(binned.x_um[0, 0]) == pytest.approx(float(m.data.x_um[0, :2].mean()))


def test_tiled_container_and_errors(experiment):
    cat, exp = experiment["cat"], experiment["exp"]
    again = load_correlative(cat.runs, exp.correlation_id, register=False)
    assert len(again.sims) == len(exp.sims) and again.sims[0].registration is None
    np.testing.assert_array_equal(again.sims[0].data["7Li"].values,
                                  exp.sims[0].data["7Li"].values)
    with pytest.raises(LookupError):
        load_correlative(cat, "no-such-experiment")
    with pytest.raises(ValueError, match="method"):
        exp.fuse(0, method="wavelet")


def test_direct_stream_reads_equal_the_clients(experiment, monkeypatch):
    """The loader reads each stream whole in one request (the server's ``.npz``
    export), or, from a server without it, its table and arrays in one request each:
    both give the same arrays, dtypes and shapes as tiled's client node by node (each
    column the loader reads, read as temsims.callbacks.export.load_run reads it:
    ``np.asarray(run[stream][key].read())``; load_run read every column of the runs,
    ~100 nodes, 2 requests each, 42-50 s of this test at load 8-10, to compare 20)."""
    from concurrent.futures import ThreadPoolExecutor

    from temsims.app import loaders
    from temsims.callbacks.export import RunData

    cat, res = experiment["cat"], experiment["res"]
    uids = [res["uids"]["overview"], *res["uids"]["tem"], *res["uids"]["sims"]]
    via_columns = {}
    with ThreadPoolExecutor(4) as pool:
        for uid in uids:
            run = cat.runs[uid]
            start = dict(run.metadata["start"])
            via_columns[uid] = {name: loaders._read_stream_columns(run[name], start, name, pool)
                                for name in run if name in ("primary", *loaders.TABLE_STREAMS)}
    assert "rois" in via_columns[res["uids"]["overview"]]  # a table stream too

    def refused(*args):
        raise AssertionError("the stream was not read whole")

    monkeypatch.setattr(loaders, "_read_stream_columns", refused)
    compared = 0
    for uid in uids:
        run = cat.runs[uid]
        whole = loaders._read_tiled_run(run)
        via_nodes = RunData(start=dict(run.metadata["start"]), streams={
            name: {key: np.asarray(run[name][key].read()) for key in columns}
            for name, columns in whole.streams.items()})
        assert whole.streams["primary"], uid
        compared += sum(map(len, whole.streams.values()))
        assert set(whole.streams) == set(via_columns[uid]), uid
        for name, columns in whole.streams.items():
            assert set(columns) == set(via_columns[uid][name]), (uid, name)
            for key, values in columns.items():
                for expected in (via_nodes.streams[name][key], via_columns[uid][name][key]):
                    assert values.dtype == expected.dtype, (name, key)
                    assert values.shape == expected.shape, (name, key)
                    np.testing.assert_array_equal(values, expected)
        if whole.is_sims_map():
            for s, m in whole.maps().items():
                np.testing.assert_array_equal(m, via_nodes.maps()[s])
    print(f"\n{compared} columns of {len(uids)} runs read three ways")
