"""Exporters: OME-TIFF and NeXus-style HDF5 round trips of SIMS map and TEM image runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from temsims.callbacks.export import (
    Exporter,
    documents_to_run,
    export_hdf5,
    export_tiff,
    load_run,
)


@pytest.fixture
def sims(make):
    maps = make.poisson_maps(12, 9)
    corr = make.correlative_block("sims_map")
    start = make.sims_start(nx=12, ny=9, fov_um=3.0, x_um=11.0, y_um=-4.0, correlative=corr)
    return maps, make.sims_documents(maps, lines_per_event=3, start_md=start, pages=True)


@pytest.fixture
def tem(make):
    rng = np.random.default_rng(3)
    image = rng.integers(0, 4000, size=(32, 32)).astype(np.uint16)
    return image, make.tem_documents(image, fov_um=8.0)


def test_documents_to_run_assembles_the_map(sims):
    maps, docs = sims
    run = documents_to_run(docs)
    # the mapped species first, then the collector left on its mass
    assert run.map_keys() == {"6Li": "imager_6Li", "7Li": "imager_7Li",
                              "m12p000": "imager_m12p000"}
    got = run.maps()
    assert not got["m12p000"].any()
    for s in maps:
        assert got[s].dtype == np.int32
        np.testing.assert_array_equal(got[s], maps[s])
    assert run.images() == {}  # map lines are not images
    assert run.units("imager_7Li") == "counts"


def test_assemble_frames_and_gaps(make):
    from temsims.analysis.maps import IncompleteMapError, MapLayout, assemble

    layout = MapLayout.from_start(make.sims_start(nx=3, ny=3, frames=2))
    lines = np.array([0, 2, 0, 1])
    values = np.arange(4 * 1 * 3, dtype=np.int16).reshape(4, 1, 3)
    with pytest.raises(IncompleteMapError, match="frame 0: rows \\[1\\]"):
        assemble(layout, lines, {"7Li": values})  # line 1 of frame 0 never came
    out = assemble(layout, lines, {"7Li": values}, partial=True)["7Li"]
    assert out.shape == (2, 3, 3) and out.dtype == np.float64
    assert np.isnan(out[0, 1]).all() and np.isnan(out[1, 2]).all()
    np.testing.assert_array_equal(out[1, 1], values[3, 0])
    complete = assemble(layout, [0, 1, 2, 0, 1, 2], {"7Li": np.ones((6, 1, 3), np.int16)})
    assert complete["7Li"].shape == (2, 3, 3) and complete["7Li"].dtype == np.int16


def test_tiff_round_trip_sims_map(sims, tmp_path):
    import tifffile

    maps, docs = sims
    run = documents_to_run(docs)
    paths = export_tiff(run, tmp_path / "map.ome.tif")
    assert paths == [tmp_path / "map.ome.tif"]
    with tifffile.TiffFile(paths[0]) as tf:
        assert tf.is_ome
        series = tf.series[0]
        assert series.axes == "CYX"
        data = series.asarray()
        ome = tifffile.xml2dict(tf.ome_metadata)["OME"]["Image"]
    assert data.dtype == np.int32
    np.testing.assert_array_equal(data[0], maps["6Li"])
    np.testing.assert_array_equal(data[1], maps["7Li"])
    pixels = ome["Pixels"]
    assert [c["Name"] for c in pixels["Channel"]] == ["6Li", "7Li", "m12p000"]
    assert pixels["PhysicalSizeX"] == pytest.approx(3.0 / 12)
    assert pixels["PhysicalSizeY"] == pytest.approx(3.0 / 12 / math.cos(math.radians(45)))
    assert pixels["PhysicalSizeXUnit"] == "µm"
    described = json.loads(ome["Description"])
    assert described["start"]["uid"] == run.uid and described["units"] == "counts"


def test_tiff_one_file_per_species_and_tem(sims, tem, tmp_path):
    import tifffile

    maps, docs = sims
    paths = export_tiff(docs, tmp_path / "m", per_array=True)
    assert [p.name for p in paths] == ["m_map_6Li.ome.tif", "m_map_7Li.ome.tif",
                                       "m_map_m12p000.ome.tif"]
    np.testing.assert_array_equal(tifffile.imread(paths[1]), maps["7Li"])
    image, tdocs = tem
    out = export_tiff(tdocs, tmp_path)  # a directory: named after the run
    assert [p.name for p in out] == ["6_tem_image.ome.tif"]
    with tifffile.TiffFile(out[0]) as tf:
        back = tf.series[0].asarray()
        px = tifffile.xml2dict(tf.ome_metadata)["OME"]["Image"]["Pixels"]["PhysicalSizeX"]
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, image)
    assert px == pytest.approx(8.0 / 32)


def test_hdf5_round_trip_correlative(sims, tem, tmp_path):
    import h5py

    maps, docs = sims
    image, tdocs = tem
    path = export_hdf5([tdocs, docs], tmp_path / "exp.h5")
    with h5py.File(path, "r") as f:
        assert f.attrs["NX_class"] == "NXroot" and f.attrs["default"] == "entry1"
        assert f.attrs["correlation_id"] == "cid-test"
        e1, e2 = f["entry1"], f["entry2"]
        assert e1.attrs["NX_class"] == "NXentry" and e1["definition"][()] == b"NXem"
        # TEM image
        d = e1[e1.attrs["default"]]
        assert d.attrs["NX_class"] == "NXdata" and d.attrs["signal"] == "data"
        np.testing.assert_array_equal(d["data"][()], image)
        assert d["data"].dtype == np.uint16
        assert list(d.attrs["axes"]) == ["y", "x"]
        assert d["x"].attrs["units"] == "um" and d["y"].attrs["units"] == "um"
        np.testing.assert_allclose(d["x"][[0, -1]], 10.0 + np.array([-15.5, 15.5]) * 0.25)
        # SIMS maps, one NXdata per species
        assert e2.attrs["default"] == "map_6Li"
        for s in ("6Li", "7Li"):
            g = e2[f"map_{s}"]
            assert g.attrs["NX_class"] == "NXdata" and g.attrs["signal"] == "data"
            assert g["data"].dtype == np.int32
            np.testing.assert_array_equal(g["data"][()], maps[s])
            assert g["data"].attrs["units"] == "counts"
            assert g.attrs["x_indices"] == 1 and g.attrs["y_indices"] == 0
            np.testing.assert_allclose(np.diff(g["y"][()]), 0.25 / math.cos(math.radians(45)))
            assert g["transformation"].shape == (3, 3)
        inst = e2["instrument"]
        assert inst["ibeam_column"].attrs["NX_class"] == "NXibeam_column"
        assert inst["ibeam_column/current"].attrs["units"] == "pA"
        assert inst["collector1/species"][()] == b"6Li"
        assert inst["stage"].attrs["NX_class"] == "NXstage_lab"
        assert e2["sample/name"][()] == b"LCO-7"
        # raw lines as recorded and the start document
        raw = e2["measurement/primary/imager_7Li"][()]
        assert raw.shape == (3, 3, 12) and raw.dtype == np.int32
        start = json.loads(e2["bluesky/start"][()])
        assert start["uid"] == documents_to_run(docs).uid
        assert e2["bluesky"].attrs["plan_name"] == "sims_map"
        assert e2.attrs["role"] == "sims_map"


def test_in_memory_dict_and_exporter_callback(make, tmp_path):
    import h5py

    maps = make.poisson_maps(5, 4)
    start = make.sims_start(nx=5, ny=4)
    run = {"start": {**start, "uid": "u1"}, "primary": {
        "imager_line": np.arange(4), **{f"imager_{s}": m[:, None, :] for s, m in maps.items()}}}
    data = load_run(run)
    np.testing.assert_array_equal(data.maps()["7Li"], maps["7Li"])
    path = export_hdf5(run, tmp_path / "one.h5", raw=False)
    with h5py.File(path) as f:
        assert "measurement" not in f["entry1"]
        np.testing.assert_array_equal(f["entry1/map_6Li/data"][()], maps["6Li"])

    exporter = Exporter(tmp_path / "auto", formats=("hdf5", "tiff"))
    for name, doc in make.sims_documents(maps):
        exporter(name, doc)
    assert exporter.flush(timeout=60)
    assert sorted(p.name for p in exporter.written) == ["7_sims_map.h5",
                                                        "7_sims_map.ome.tif"]
    assert not exporter.errors
    exporter.close()


@pytest.mark.slow
def test_tiled_catalog_run(make, tmp_path):
    """A run written to a real embedded catalog and read back through tiled."""
    import h5py

    from temsims.catalog import open_catalog

    maps = make.poisson_maps(8, 6)
    docs = make.sims_documents(maps, lines_per_event=2)
    cat = open_catalog(tmp_path / "catalog")
    try:
        writer = cat.writer()
        for name, doc in docs:
            writer(name, doc)
        uid = docs[0][1]["uid"]
        assert writer.wait_for_run(uid, 60)
        run = cat.runs[uid]
        data = load_run(run)
        assert data.uid == uid
        for s in maps:
            np.testing.assert_array_equal(data.maps()[s], maps[s])
            assert data.maps()[s].dtype == np.int32
        path = export_hdf5(run, tmp_path / "cat.h5")
        with h5py.File(path) as f:
            np.testing.assert_array_equal(f["entry1/map_7Li/data"][()], maps["7Li"])
            assert f["entry1/map_7Li/data"].attrs["units"] == "counts"
    finally:
        cat.close(timeout=60)
