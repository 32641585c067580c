"""connect(): the whole instrument, and a clear, fast failure when an IOC is down."""

from __future__ import annotations

import time

import pytest

from temsims.devices import PARTS, connect


def test_connect_builds_every_part(instrument):
    inst = connect(instrument.instrument_prefix, timeout=10.0)
    assert set(inst.all_devices()) == set(PARTS)
    assert inst.stage.x.connected and inst.imager.connected
    print(f"connect: {inst.connect_time_s:.2f} s")
    only = connect(instrument.instrument_prefix, parts=["camera"], timeout=10.0)
    assert list(only.all_devices()) == ["camera"] and only.stage is None


def test_per_part_prefixes_override_the_instrument_prefix(instrument):
    """Each IOC's own prefix, with an instrument prefix that names no IOC at all."""
    from temsims.channel_access import PART_SUFFIXES

    real = {part: instrument.instrument_prefix + suffix for part, suffix in PART_SUFFIXES.items()}
    inst = connect("NO-SUCH-INSTRUMENT:", timeout=10.0, **real)
    assert inst.bias.readback.pvname == f"{real['bias']}VOLTAGE_RBV"
    # The mode reads the geometry from the same devices, not copies on the same PVs.
    assert inst.mode.bias is inst.bias and inst.mode.alpha is inst.stage.alpha
    assert inst.camera.connected and inst.imager.connected and inst.mode.connected
    # one part left on the (wrong) instrument prefix: only its PVs are reported missing
    del real["spectrometer"]
    with pytest.raises(TimeoutError) as info:
        connect("NO-SUCH-INSTRUMENT:", timeout=2.0, **real)
    assert "NO-SUCH-INSTRUMENT:MS:" in str(info.value)
    assert "NO-SUCH-INSTRUMENT:STAGE:" not in str(info.value)


def test_connect_rejects_unknown_parts_and_prefix_keywords():
    with pytest.raises(ValueError, match="unknown part"):
        connect("X:", parts=["laser"])
    with pytest.raises(ValueError, match="prefix keyword"):
        connect("X:", laser="X:LASER:")


def test_connect_with_the_bias_ioc_down_fails_fast_naming_the_pvs(fresh_instrument):
    procs = fresh_instrument(iocs=("stage", "tem", "column", "spectrometer"))
    t0 = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        connect(procs.instrument_prefix, timeout=3.0)
    elapsed = time.monotonic() - t0
    message = str(info.value)
    print(f"connect with the bias IOC down failed after {elapsed:.2f} s: {message[:200]}")
    assert elapsed < 8.0
    assert f"{procs.instrument_prefix}BIAS:VOLTAGE" in message
    assert "bias IOC" in message
    assert f"{procs.instrument_prefix}STAGE:" not in message  # only what is missing
    # The parts that do not need the bias IOC still connect.
    inst = connect(procs.instrument_prefix, parts=["stage", "camera", "imager"], timeout=5.0)
    assert inst.imager.connected
