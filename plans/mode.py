"""Plans that switch the instrument between the TEM and the SIMS geometry.

Each step is a ``bps.mv`` of one device (the ion blanker, the bias supply, its
output, the objective lens, the alpha axis), with a checkpoint before each stage of
the sequence: the RunEngine sees every step, and a pause resumes from the last
checkpoint (every step is idempotent). Preconditions are read through the RunEngine
(``bps.rd``) before anything moves, and the geometry is confirmed before the bias
comes on or the lens comes back; the IOC interlocks stay the last line of defence,
never relied upon. The plans open no run (like ``bps.mv``): a geometry change is
configuration, recorded by the runs that follow (their ``mode`` and
``region.tilt_deg``).

TEM -> SIMS
    blank the ion beam; bias to 0 V and output off; objective lens off; alpha to
    -68 deg; confirm the geometry (alpha within 1 deg, lens off); output on and ramp
    to ``voltage_v``.
SIMS -> TEM
    blank the ion beam; bias to 0 V and output off; alpha to 0 deg; confirm the bias
    is off; objective lens on.

On failure or abort the ion beam is blanked and the bias ramped to 0 V.
"""

from __future__ import annotations

import math
from typing import Any

import bluesky.plan_stubs as bps

from temsims.constants import (
    BIAS_OFF_V,
    MAX_BIAS_V,
    MIN_SIMS_BIAS_V,
    SIMS_TILT_DEG,
    TEM_TILT_DEG,
    TILT_TOLERANCE_DEG,
)
from temsims.plans._common import check_device, check_number, check_within, with_safe_state
from temsims.plans.types import ModeDevice, Plan


def _check_mode_device(mode) -> None:
    check_device("mode", mode, ModeDevice)


def _preflight(mode, tilt_deg: float):
    """Refuse, before anything moves, what the sequence could not finish."""
    raster = yield from bps.rd(mode.raster, default_value=None)
    if raster == "Start":
        raise RuntimeError(f"{mode.name}: an ion-beam raster is running; stop it first")
    low = yield from bps.rd(mode.alpha.low_limit_travel, default_value=None)
    high = yield from bps.rd(mode.alpha.high_limit_travel, default_value=None)
    check_within(f"{mode.name}: alpha tilt", tilt_deg,
                 None if low is None or high is None else (low, high), "deg")


def _to_zero_bias(mode):
    yield from bps.checkpoint()
    yield from bps.mv(mode.ion_blank, "Blanked")
    yield from bps.mv(mode.bias, 0.0)
    yield from bps.mv(mode.bias.enable, "Off")


def to_sims_mode(mode: ModeDevice, *, voltage_v: float = 4500.0) -> Plan[Any]:
    """Go to the SIMS geometry and ramp the holder bias to ``voltage_v``.

    Parameters
    ----------
    mode : temsims.devices.mode.InstrumentMode
        Gives the alpha axis, objective lens, ion blanker and bias supply to move.
    voltage_v : float
        Holder bias in SIMS (V): 100..4500 in magnitude, positive to extract
        positive secondary ions, negative for negative ions. The bias's immersion
        lens moves the ion probe's focus: the column's focus table follows the bias,
        and the lab's focus offset (FIB:FOCUS) holds only for the bias it was found
        at: run :func:`temsims.plans.focus_probe` after changing it (decision 0044).

    Yields
    ------
    msg : Msg
        Reads of the preconditions, then checkpoints and ``set``s of the blanker,
        the bias, its output, the lens and alpha, each waited for.

    Raises
    ------
    ValueError
        A bad ``voltage_v``, or a tilt outside the stage's soft limits, before
        anything moves.
    RuntimeError
        A raster running or an arc fault latched (before anything moves), or the
        geometry not reached after the tilt (the bias is left off).
    """
    _check_mode_device(mode)
    voltage_v = check_number("voltage_v", voltage_v, low=-MAX_BIAS_V, high=MAX_BIAS_V, unit="V")
    if abs(voltage_v) < MIN_SIMS_BIAS_V:
        raise ValueError(f"voltage_v = {voltage_v!r} V: SIMS needs |voltage_v| in "
                         f"[{MIN_SIMS_BIAS_V:g}, {MAX_BIAS_V:g}] V")

    def inner():
        yield from _preflight(mode, SIMS_TILT_DEG)
        fault = yield from bps.rd(mode.bias.fault, default_value=None)
        if fault == "Arc":
            raise RuntimeError(f"{mode.bias.name}: arc fault latched; reset it "
                               "(bias.reset_fault()) before going to SIMS")
        yield from _to_zero_bias(mode)
        yield from bps.checkpoint()
        yield from bps.mv(mode.objective, "Off")
        yield from bps.mv(mode.alpha, SIMS_TILT_DEG)
        yield from bps.checkpoint()
        alpha = yield from bps.rd(mode.alpha, default_value=SIMS_TILT_DEG)
        lens = yield from bps.rd(mode.objective, default_value="Off")
        if abs(alpha - SIMS_TILT_DEG) > TILT_TOLERANCE_DEG or lens == "On":
            raise RuntimeError(f"{mode.name}: not in SIMS geometry after the tilt (alpha "
                               f"{alpha:.3f} deg, objective {lens}); bias left off")
        yield from bps.mv(mode.bias.enable, "On")
        yield from bps.mv(mode.bias, voltage_v)

    return (yield from with_safe_state(inner(), _BlankOf(mode), mode.bias,
                                       ramp_bias_on_success=False))


def to_tem_mode(mode: ModeDevice) -> Plan[Any]:
    """Go to the TEM geometry: beam blanked, bias to 0 V and off, alpha 0, lens on.

    Parameters
    ----------
    mode : temsims.devices.mode.InstrumentMode
        Gives the alpha axis, objective lens, ion blanker and bias supply to move.

    Yields
    ------
    msg : Msg
        Reads of the preconditions, then checkpoints and ``set``s of the blanker,
        the bias, its output, alpha and the lens, each waited for.

    Raises
    ------
    RuntimeError
        A raster running (before anything moves), or the bias not off after the
        tilt (the lens is left off).
    """
    _check_mode_device(mode)

    def inner():
        yield from _preflight(mode, TEM_TILT_DEG)
        yield from _to_zero_bias(mode)
        yield from bps.checkpoint()
        yield from bps.mv(mode.alpha, TEM_TILT_DEG)
        yield from bps.checkpoint()
        output = yield from bps.rd(mode.bias.enable, default_value="Off")
        volts = yield from bps.rd(mode.bias, default_value=0.0)
        if output == "On" or not math.isfinite(volts) or abs(volts) > BIAS_OFF_V:
            raise RuntimeError(f"{mode.bias.name}: still on ({volts:.1f} V, output "
                               f"{output}); objective lens left off")
        yield from bps.mv(mode.objective, "On")

    return (yield from with_safe_state(inner(), _BlankOf(mode), mode.bias,
                                       ramp_bias_on_success=False))


class _BlankOf:
    """Adapter: the ion-beam blanker of an ``InstrumentMode`` as ``safe_state`` wants it."""

    def __init__(self, mode) -> None:
        self.blank = mode.ion_blank


__all__ = ["to_sims_mode", "to_tem_mode"]
