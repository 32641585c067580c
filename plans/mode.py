"""Plans that switch the instrument between the TEM and the SIMS geometry.

They open no run (like ``bps.mv``): a geometry change is configuration, recorded by
the runs that follow (their ``mode`` and ``region.tilt_deg``). The safe sequences
themselves are :class:`temsims.devices.mode.InstrumentMode`'s.
"""

from __future__ import annotations

from typing import Any

import bluesky.plan_stubs as bps

from temsims.plans._common import check_device, check_number, with_safe_state
from temsims.plans.types import ModeDevice, Plan

MIN_SIMS_BIAS_V = 100.0
MAX_BIAS_V = 4500.0


def _check_mode_device(mode) -> None:
    check_device("mode", mode, "set", "sims_voltage", "ion_blank", "bias", "infer")


def to_sims_mode(mode: ModeDevice, *, voltage_v: float = 4500.0) -> Plan[Any]:
    """Go to the SIMS geometry and ramp the holder bias to ``voltage_v``.

    Sequence (the device's): blank the ion beam, bias to 0 V and off, objective lens
    off, alpha to -68 deg, check the geometry, bias on and ramp. On failure or
    abort the ion beam is blanked and the bias ramped to 0 V.

    Parameters
    ----------
    mode : temsims.devices.mode.InstrumentMode
    voltage_v : float
        Holder bias in SIMS (V): 100..4500 in magnitude, positive to extract
        positive secondary ions, negative for negative ions.

    Yields
    ------
    msg : Msg
        ``set`` of ``mode.sims_voltage`` then of ``mode`` to "SIMS" (waited for).
    """
    _check_mode_device(mode)
    voltage_v = check_number("voltage_v", voltage_v, low=-MAX_BIAS_V, high=MAX_BIAS_V, unit="V")
    if abs(voltage_v) < MIN_SIMS_BIAS_V:
        raise ValueError(f"voltage_v = {voltage_v!r} V: SIMS needs |voltage_v| in "
                         f"[{MIN_SIMS_BIAS_V:g}, {MAX_BIAS_V:g}] V")

    def inner():
        yield from bps.mv(mode.sims_voltage, voltage_v)
        yield from bps.mv(mode, "SIMS")

    return (yield from with_safe_state(inner(), _BlankOf(mode), mode.bias,
                                       ramp_bias_on_success=False))


def to_tem_mode(mode: ModeDevice) -> Plan[Any]:
    """Go to the TEM geometry: beam blanked, bias to 0 V and off, alpha 0, lens on.

    Parameters
    ----------
    mode : temsims.devices.mode.InstrumentMode

    Yields
    ------
    msg : Msg
        ``set`` of ``mode`` to "TEM" (waited for); on failure or abort the ion beam
        is blanked and the bias ramped to 0 V.
    """
    _check_mode_device(mode)

    def inner():
        yield from bps.mv(mode, "TEM")

    return (yield from with_safe_state(inner(), _BlankOf(mode), mode.bias,
                                       ramp_bias_on_success=False))


class _BlankOf:
    """Adapter: the ion-beam blanker of an ``InstrumentMode`` as ``safe_state`` wants it."""

    def __init__(self, mode) -> None:
        self.blank = mode.ion_blank


__all__ = ["to_sims_mode", "to_tem_mode"]
