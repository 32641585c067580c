"""The devices describe themselves: ophyd labels for the session's magics, the true
``dtype_numpy`` of every data key and ``dims`` of every array, hints that leave arrays
out of the live table, and TEM image and EDX spectrum runs that the catalog keeps
with their dims and dtypes and reads back without a warning."""

from __future__ import annotations

import warnings

import numpy as np
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


def _described(obj) -> dict:
    """Every data key ``obj`` describes, read or configuration, with its value."""
    described = {**obj.describe(), **obj.describe_configuration()}  # first: EDX sets kinds
    values = {**obj.read(), **obj.read_configuration()}
    return {key: (entry, values[key]["value"]) for key, entry in described.items()}


def _check_data_key(key: str, entry: dict, value=None) -> None:
    """``entry`` has the ``dtype_numpy`` of ``value`` (as storage keeps it) and, for an
    array, its shape and ``dims``, one distinct name per axis."""
    assert "dtype_numpy" in entry, key
    dtype = np.dtype(entry["dtype_numpy"])
    if entry["dtype"] == "array":
        dims = entry.get("dims")
        assert dims and len(dims) == len(entry["shape"]) == len(set(dims)), (key, entry)
    if value is None:
        return
    if isinstance(value, str):
        assert dtype.kind == "U", (key, entry)
    else:
        assert dtype == np.asarray(value).dtype, (key, entry, type(value))
        assert list(np.shape(value)) == list(entry["shape"]), (key, entry)


def test_every_data_key_of_every_device_has_its_true_dtype_and_arrays_dims(devices):
    """Every device, every sub-device a plan reads, every signal (omitted ones too):
    what ``describe()`` and ``describe_configuration()`` say is what a reading holds."""
    d = devices
    objects = [*d.all_devices().values(), d.column.scan, d.spectrometer.mass_scan,
               *d.spectrometer.collector_list(),
               *(getattr(d.stage, axis) for axis in ("x", "y", "z", "alpha", "beta"))]
    objects += [walk.item for device in d.all_devices().values()
                for walk in device.walk_signals()]
    checked = 0
    for obj in objects:
        for key, (entry, value) in _described(obj).items():
            _check_data_key(key, entry, value)
            checked += 1
    d.edx.mode.set("Line").wait(10)
    try:
        for key, (entry, value) in _described(d.edx).items():
            _check_data_key(key, entry, value)
    finally:
        d.edx.mode.set("Point").wait(10)
    (stream,) = d.imager.describe_collect().values()
    for key, entry in stream.items():
        _check_data_key(key, entry)
    assert checked > 300


def _check_descriptors(docs) -> None:
    for desc in docs.docs["descriptor"]:
        keys = dict(desc["data_keys"])
        for config in desc["configuration"].values():
            keys.update(config["data_keys"])
        for key, entry in keys.items():
            _check_data_key(key, entry)


def test_tem_image_and_edx_spectrum_runs_read_back_with_dims_and_no_warning(devices, RE,
                                                                               tmp_path):
    """The runs of ``tem_image`` (a square image) and ``edx_point`` (a spectrum and its
    energy axis on one ``channel`` axis), stored and read back whole as xarray: no
    warning, the arrays' axes named by the devices' ``dims``, their dtypes kept."""
    from temsims.catalog import open_catalog
    from temsims.plans import edx_point, tem_image

    d = devices
    d.camera.size.set(64).wait(10)
    md = {"sample": "describe", "operator": "pytest"}
    catalog = open_catalog(tmp_path / "catalog")
    try:
        RE.subscribe(catalog.writer())
        (tem,) = RE(tem_image(d.stage, d.tem, d.camera, x_um=0.0, y_um=0.0, fov_um=2.0,
                              exposure_s=0.01, md=md)).run_start_uids
        (edx,) = RE(edx_point(d.stage, d.tem, d.edx, x_um=0.0, y_um=0.0, live_time_s=0.01,
                              md=md)).run_start_uids
        _check_descriptors(RE.docs)
        catalog.flush(30)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            image_run = catalog.runs[tem]["primary"].read()
            spectrum_run = catalog.runs[edx]["primary"].read()
            image = catalog.runs[tem]["primary"]["camera_image"].read()
        assert image_run["camera_image"].dims == ("time", "y", "x")
        assert image_run["camera_image"].shape == (1, 64, 64)
        assert image_run["camera_image"].dtype == np.float32 == image.dtype
        assert spectrum_run["edx_spectrum"].dims == ("time", "channel")
        assert spectrum_run["edx_energy"].dims == ("time", "channel")
        assert spectrum_run["edx_spectrum"].dtype == np.float32
        assert spectrum_run["edx_energy"].dtype == np.float64
        stored = catalog.runs[tem]["primary"].descriptors[0]["data_keys"]["camera_image"]
        assert stored["dims"] == ["y", "x"] and stored["dtype_numpy"] == "<f4"
    finally:
        catalog.close(timeout=60)


def test_the_live_table_shows_tem_and_edx_runs_and_skips_nothing(devices, RE, capsys):
    """BestEffortCallback prints the runs of ``tem_image`` and ``edx_point`` with no
    warning (an array among the hinted fields would be "skipped")."""
    from bluesky.callbacks.best_effort import BestEffortCallback

    from temsims.plans import edx_point, tem_image

    d = devices
    bec = BestEffortCallback()
    bec.disable_plots()
    RE.subscribe(bec)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        RE(tem_image(d.stage, d.tem, d.camera, x_um=0.0, y_um=0.0, fov_um=2.0,
                     exposure_s=0.01))
        RE(edx_point(d.stage, d.tem, d.edx, x_um=0.0, y_um=0.0, live_time_s=0.01))
    from_callbacks = [str(w.message) for w in caught if "bluesky" in w.filename]
    assert from_callbacks == []
    out = capsys.readouterr().out
    assert "camera_dose" in out and "edx_rate" in out


@pytest.fixture(autouse=True)
def _restore_camera(devices):
    size, exposure = devices.camera.size.get(), devices.camera.exposure.get()
    yield
    devices.camera.size.set(size).wait(10)
    devices.camera.exposure.set(exposure).wait(10)
