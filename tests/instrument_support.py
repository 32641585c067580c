"""Helpers for tests that start their own instruments (imported by name, not via conftest,
because several ``conftest.py`` files exist and ``from conftest import`` is ambiguous)."""

from __future__ import annotations

from typing import Any


def stop_instrument(procs: Any, pool: Any) -> None:
    """Stop an instrument's processes by PID and free its slot (idempotent)."""
    procs.stop()
    slot = getattr(procs, "_slot", None)
    if slot is not None:
        pool.give_back(slot)
        procs._slot = None  # type: ignore[attr-defined]




def connect_fast(procs: Any, *, camera_size: int | None = None) -> Any:
    """``temsims.devices.connect`` on ``procs``' IOCs, with the slow defaults sped up
    for tests: alpha at 30 deg/s, x and y at 200 um/s, bias ramps at 10 kV/s, and the
    camera at ``camera_size`` pixels when given."""
    from temsims.devices import connect

    d = connect(procs.instrument_prefix, timeout=15.0)
    settings = {d.stage.alpha.velocity: 30.0, d.stage.x.velocity: 200.0,
                d.stage.y.velocity: 200.0, d.bias.ramp_rate: 10000.0,
                d.mode.bias.ramp_rate: 10000.0}
    if camera_size is not None:
        settings[d.camera.size] = camera_size
    for sig, value in settings.items():
        sig.set(value).wait(10)
    return d
