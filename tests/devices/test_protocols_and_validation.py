"""Device interfaces (bluesky protocols, kinds) and client-side refusals, on the real IOCs."""

from __future__ import annotations

import math

import pytest
from bluesky import protocols as bp
from ophyd.utils.errors import LimitError


def test_every_device_satisfies_the_bluesky_protocols(devices):
    d = devices
    for name, dev in d.all_devices().items():
        assert isinstance(dev, bp.Configurable), name
        assert isinstance(dev, bp.HasName), name
    for dev in (d.stage, d.tem, d.camera, d.edx, d.column, d.bias, d.spectrometer,
                d.spectrometer.mass_scan, d.mode):
        assert isinstance(dev, bp.Readable), dev.name
    for dev in (d.camera, d.edx, d.spectrometer, d.spectrometer.mass_scan):
        assert isinstance(dev, bp.Triggerable), dev.name
    for dev in (d.stage.x, d.stage.alpha, d.bias, d.bias.enable, d.tem.objective,
                d.column.blank, d.spectrometer.collectors.col1):
        assert isinstance(dev, bp.Movable), dev.name
    # The mode is read, not moved: changing it is a plan (to_sims_mode, to_tem_mode).
    assert isinstance(d.mode, bp.Readable) and not isinstance(d.mode, bp.Movable)
    assert isinstance(d.imager, bp.Flyable)
    assert isinstance(d.imager, bp.EventCollectable)
    assert set(d.all_devices()) == {"stage", "tem", "camera", "edx", "column", "bias",
                                    "spectrometer", "imager", "mode"}


def test_kinds_make_read_configuration_and_hints_meaningful(devices):
    d = devices
    assert d.camera.hints["fields"] == ["camera_dose"]  # arrays are not hinted
    assert "camera_exposure" in d.camera.read_configuration()
    assert "camera_exposure" not in d.camera.read()
    assert d.bias.hints["fields"] == ["bias_readback"]
    assert d.stage.x.hints["fields"] == ["stage_x"]
    assert d.column.hints["fields"] == ["column_current"]
    assert "column_scan_dwell" in d.column.read_configuration()
    assert "column_aperture" in d.column.read_configuration()
    assert set(d.spectrometer.hints["fields"]) == {
        f"spectrometer_collectors_col{n}_counts" for n in range(1, 5)}
    assert "spectrometer_collectors_col2_mass" in d.spectrometer.read_configuration()
    # Internals are omitted.
    assert not any("acquire" in k for k in d.camera.read())
    assert not any("acquire" in k for k in d.imager.read_configuration())
    desc = d.camera.describe()["camera_image"]
    size = int(d.camera.size.get())
    assert desc["shape"] == [size, size] and desc["dtype_numpy"] == "<f4"


@pytest.mark.parametrize("attr, value", [
    ("camera.exposure", 0.0), ("camera.exposure", math.nan), ("camera.exposure", 100.0),
    ("camera.size", 32), ("camera.size", 100.5), ("camera.acquire", "Bogus"),
    ("tem.ht", 300.0), ("tem.mode", "SEM"), ("tem.objective", "Maybe"),
    ("edx.npts", 0), ("edx.mode", "Area"), ("column.aperture", "2 pA"),
    ("column.scan.dwell", 1.0), ("column.scan.nx", 0), ("column.hv", math.inf),
    ("bias.setpoint", 5000.0), ("bias.ramp_rate", 0.0),
    ("spectrometer.mode", "Bogus"), ("spectrometer.count_time", -1.0),
])
def test_bad_puts_refused_client_side_before_anything_is_sent(devices, attr, value):
    obj = devices
    for part in attr.split("."):
        obj = getattr(obj, part)
    before = obj.get()
    with pytest.raises(ValueError, match=obj.setpoint_pvname.split(":")[-1].split(".")[0]):
        obj.set(value)
    assert obj.get() == before or (isinstance(before, float) and math.isnan(before))


def test_stage_limits_and_nan_refused(devices):
    alpha = devices.stage.alpha
    with pytest.raises(LimitError):
        alpha.set(-75.0)
    with pytest.raises(ValueError, match="finite"):
        alpha.set(math.nan)


def test_bias_refuses_a_voltage_it_would_only_store(devices):
    bias = devices.bias
    assert not bias.output_on()
    with pytest.raises(ValueError, match="output is off"):
        bias.set(1000.0)
    with pytest.raises(TimeoutError, match="SIMS geometry"):
        bias.enable_output().wait(10)  # the TEM geometry: the interlock blocks
    assert not bias.output_on()
    assert bias.set(0.0).wait(10) is None


def test_species_and_focal_plane_checked(devices):
    from temsims.devices.spectrometer import species_for_mass, species_label, species_mass

    assert species_mass("7Li") == pytest.approx(7.016003, abs=1e-5)
    assert species_mass("Li-6") == pytest.approx(6.015123, abs=1e-5)
    assert species_label("Li7") == "7Li"
    assert species_for_mass(12.0) == "12C"
    for bad in ("8Qq", "Li", "99Li", "lithium"):
        with pytest.raises(ValueError):
            species_mass(bad)
    col4 = devices.spectrometer.collectors.col4
    before = [c.mass.get() for c in devices.spectrometer.collector_list()]
    low, high = devices.spectrometer.focal_plane_range()
    assert low < 7.0 < high
    with pytest.raises(ValueError, match="focal plane"):
        col4.set(40.0)
    with pytest.raises(ValueError, match="focal plane"):
        devices.spectrometer.set_species(["6Li", "7Li", "12C", "40Ca"])
    assert [c.mass.get() for c in devices.spectrometer.collector_list()] == pytest.approx(
        before, abs=2e-3)  # nothing moved
