"""Helpers for tests that use instruments (imported by name, not via conftest, because
several ``conftest.py`` files exist and ``from conftest import`` is ambiguous)."""

from __future__ import annotations

import os
from operator import attrgetter
from typing import Any

#: Simulated seconds per wall second of the tests' instruments (decision 0013).
TEST_TIME_SCALE = float(os.environ.get("TEMSIMS_TEST_TIME_SCALE", "20"))

#: Connected devices by instrument prefix: connecting costs ~0.3-1 s, and a pooled
#: instrument (``instruments.get``) is handed to many modules over a session.
_CONNECTED: dict[str, Any] = {}

#: Speeds that ``connect_fast`` sets: alpha at 30 deg/s (VMAX), x and y at 200 um/s
#: (VMAX), bias ramps at 10 kV/s. Still worth it at the tests' time scale 20: at the
#: defaults (5 deg/s, 1 kV/s; 68 deg of tilt is 14 s nominal) TEM -> SIMS took 0.98 s of
#: wall time and SIMS -> TEM 0.96 s, at these 0.21 s and 0.19 s, and every correlative
#: plan changes mode twice.
FAST_SETTINGS = {"stage.alpha.velocity": 30.0, "stage.x.velocity": 200.0,
                 "stage.y.velocity": 200.0, "bias.ramp_rate": 10000.0}


def stop_instrument(procs: Any, pool: Any) -> None:
    """Stop an instrument's processes by PID and free its slot (idempotent)."""
    _CONNECTED.pop(procs.instrument_prefix, None)
    _ALIGNED.pop(procs.instrument_prefix, None)
    procs.stop()
    slot = getattr(procs, "_slot", None)
    if slot is not None:
        pool.give_back(slot)
        procs._slot = None  # type: ignore[attr-defined]


def connected(procs: Any) -> Any:
    """``temsims.devices.connect`` on ``procs``' instrument, once per instrument.

    The devices follow the IOCs through monitors, so a reset instrument
    (``instruments.get``) needs no new connection; settings a test changed are the
    IOCs' and go with the reset.
    """
    d = _CONNECTED.get(procs.instrument_prefix)
    if d is None:
        from temsims.devices import connect

        d = _CONNECTED[procs.instrument_prefix] = connect(procs.instrument_prefix,
                                                          timeout=15.0)
    return d


def connect_fast(procs: Any, *, camera_size: int | None = None) -> Any:
    """:func:`connected` devices of ``procs``, with the slow defaults sped up
    (:data:`FAST_SETTINGS`) and the camera at ``camera_size`` pixels when given.

    Call it again after every ``instruments.get``: the reset restores the defaults.
    """
    d = connected(procs)
    settings = {attrgetter(name)(d): value for name, value in FAST_SETTINGS.items()}
    if camera_size is not None:
        settings[d.camera.size] = camera_size
    for sig, value in settings.items():
        sig.set(value).wait(10)
    return d


#: The session alignment of the tests' instruments with geometry errors (what the
#: demo does, ``temsims.app.demo.ALIGNMENT``: 0.1 ms at 100 pA, one raster pass).
ALIGNMENT = {"center": (0.0, 0.0), "voltage_v": 4500.0, "species": ("6Li", "7Li"),
             "sims_dwell_s": 1e-4, "raster_passes": 1}
_ALIGNED: dict[str, dict[str, float]] = {}
#: Wall seconds each alignment took (printed by the modules that align).
ALIGNMENT_WALL_S: dict[str, float] = {}
_ALIGNED_SIGNALS = ("coincidence_x", "coincidence_y", "coincidence_bias", "fov_cal",
                    "rot_cal")


def aligned(procs: Any, d: Any) -> dict[str, float]:
    """Align ``procs``' ion beam on its TEM once (``temsims.plans.align_ion_beam`` on
    the particle field at +4.5 kV, 100 pA, a 512 px TEM image) and write what it
    found back after every reset, as a lab reloads its alignment: the errors are the
    instrument's and do not change with ``SIM:RESET``, which zeroes the column's
    settings. Returns the settings (column signal name -> value); the aperture and
    camera size are restored.
    """
    import time

    settings = _ALIGNED.get(procs.instrument_prefix)
    if settings is None:
        from bluesky import RunEngine

        from temsims.plans import align_ion_beam

        before = {d.column.aperture: d.column.aperture.get(), d.camera.size: d.camera.size.get()}
        d.column.aperture.set("100 pA").wait(10)
        d.camera.size.set(512).wait(10)
        t0 = time.monotonic()
        try:
            RunEngine({}, call_returns_result=True)(align_ion_beam(d, **ALIGNMENT))
        finally:
            for sig, value in before.items():
                sig.set(value).wait(10)
        ALIGNMENT_WALL_S[procs.instrument_prefix] = time.monotonic() - t0
        settings = _ALIGNED[procs.instrument_prefix] = {
            name: float(getattr(d.column, name).get()) for name in _ALIGNED_SIGNALS}
    else:
        for name, value in settings.items():
            getattr(d.column, name).set(value).wait(10)
    return settings
