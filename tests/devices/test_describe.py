"""The devices describe themselves: ophyd labels for the session's magics, ``dims`` and
the true dtype of every array, hints that leave arrays out of the live table, and a
TEM image run whose stored descriptor keeps them."""

from __future__ import annotations

import warnings

import bluesky.plans as bp
import pytest
from bluesky.magics import get_labeled_devices


def test_labels_let_wa_and_ct_find_the_axes_and_the_detectors(devices):
    found = get_labeled_devices(user_ns=devices.all_devices())
    motors = {name for name, _ in found["motors"]}
    assert motors == {f"stage.{axis}" for axis in ("x", "y", "z", "alpha", "beta")}
    assert {name for name, _ in found["detectors"]} == {"camera", "edx", "spectrometer"}


def _arrays(description: dict) -> dict:
    return {key: entry for key, entry in description.items() if entry["dtype"] == "array"}


def test_every_array_has_dims_matching_its_shape_and_a_numpy_dtype(devices):
    d = devices
    d.camera.size.set(64).wait(10)
    described = {**d.camera.describe(), **d.edx.describe(), **d.spectrometer.mass_scan.describe()}
    d.edx.mode.set("Line").wait(10)
    try:
        described.update(d.edx.describe())
    finally:
        d.edx.mode.set("Point").wait(10)
    arrays = _arrays(described)
    assert {"camera_image", "edx_spectrum", "edx_line_spectra", "edx_energy"} <= set(arrays)
    assert arrays["camera_image"]["dims"] == ["y", "x"]
    assert arrays["camera_image"]["shape"] == [64, 64]
    assert arrays["edx_line_spectra"]["dims"] == ["point", "channel"]
    for key, entry in arrays.items():
        assert len(entry["dims"]) == len(entry["shape"]), key
        assert entry["dtype_numpy"], key
    (stream,) = d.imager.describe_collect().values()
    for key, entry in _arrays(stream).items():
        assert entry["dims"] == ["line", "x"], key


def test_arrays_are_not_hinted_so_the_live_table_skips_nothing(devices):
    for device in (devices.camera, devices.edx, devices.spectrometer):
        hinted = device.hints["fields"]
        described = device.describe()
        assert hinted, device.name
        assert all(described[field]["dtype"] != "array" for field in hinted), device.name


def test_a_tem_image_run_stores_its_dims_and_dtype(devices, RE, tmp_path):
    """The descriptor in the catalog keeps ``dims`` and ``dtype_numpy``. (TiledWriter
    still names the stored array's axes by size, ``dim_int_1`` twice for a square
    image, so xarray warns of duplicate dimensions on ``primary.read()``: open in
    issue 11.)"""
    from temsims.catalog import open_catalog

    devices.camera.size.set(64).wait(10)
    devices.camera.exposure.set(0.01).wait(10)
    catalog = open_catalog(tmp_path / "catalog")
    try:
        RE.subscribe(catalog.writer())
        (uid,) = RE(bp.count([devices.camera], num=2)).run_start_uids
        catalog.flush(30)
        primary = catalog.runs[uid]["primary"]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            image = primary["camera_image"].read()
        assert image.shape == (2, 64, 64) and image.dtype == "float32"
        stored = primary.descriptors[0]["data_keys"]["camera_image"]
        assert stored["dims"] == ["y", "x"] and stored["dtype_numpy"] == "<f4"
    finally:
        catalog.close(timeout=60)


@pytest.fixture(autouse=True)
def _restore_camera(devices):
    size, exposure = devices.camera.size.get(), devices.camera.exposure.get()
    yield
    devices.camera.size.set(size).wait(10)
    devices.camera.exposure.set(exposure).wait(10)
