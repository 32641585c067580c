"""Instrument mode: which geometry (TEM or SIMS) the instrument is in.

:class:`InstrumentMode` reads the geometry from the devices that make it (the stage's
alpha axis, the objective lens, the bias supply), which it is given, not copies of
them on the same PVs. Changing the geometry is a procedure, so it is a plan:
:func:`temsims.plans.to_sims_mode` and :func:`temsims.plans.to_tem_mode` (each step a
``bps.mv`` with checkpoints between them, visible to the RunEngine, pausable and
resumable). The geometry's numbers, which those plans share, are in
:mod:`temsims.constants`.
"""

from __future__ import annotations

from typing import Any

from ophyd import Component as Cpt
from ophyd import Device, SignalRO

# The geometry's numbers (tilts, bias thresholds) are shared with the mode-change plans.
from temsims.constants import (
    BIAS_OFF_V,
    MIN_SIMS_BIAS_V,
    SIMS_TILT_DEG,
    STRING_DTYPE,
    TEM_TILT_DEG,
    TILT_TOLERANCE_DEG,
)
from temsims.devices.common import is_state


class ModeState(SignalRO):
    """Present geometry, inferred from the readbacks: "TEM", "SIMS" or "intermediate"."""

    def get(self, **kwargs):
        return self.parent.infer()

    def describe(self):
        # Not from the value ophyd looks at: a SignalRO's is its initial 0.0.
        desc = super().describe()
        desc[self.name].update(dtype="string", shape=[], dtype_numpy=STRING_DTYPE)
        return desc


class InstrumentMode(Device):
    """The instrument's geometry, inferred from its devices: ``state`` (hinted) reads
    "TEM", "SIMS" or "intermediate".

    Parameters
    ----------
    stage, tem, column, bias
        The connected stage (its ``alpha`` axis), TEM column (``objective``), ion
        column (``blank``, ``scan.acquire_rbv``) and bias supply: the same objects the
        session uses, so one monitor feeds both.
    """

    state = Cpt(ModeState, kind="hinted")

    def __init__(self, prefix: str = "", *, stage: Any, tem: Any, column: Any, bias: Any,
                 **kwargs: Any) -> None:
        super().__init__(prefix, **kwargs)
        # Not ``self.stage``: that is the bluesky staging method of every Device.
        self.bias = bias
        self.alpha = stage.alpha
        self.objective = tem.objective
        self.ion_blank = column.blank
        self.raster = column.scan.acquire_rbv

    def infer(self) -> str:
        """"TEM", "SIMS" or "intermediate", from the devices' last readbacks."""
        alpha = float(self.alpha.user_readback.get())
        lens = is_state(self.objective.get(), "On", ("Off", "On"))
        bias_on, bias_v = self.bias.output_on(), float(self.bias.readback.get())
        return geometry_of(alpha, lens, bias_on, bias_v)

    @property
    def position(self) -> str:
        return self.infer()


def geometry_of(alpha_deg: float, lens_on: bool, bias_on: bool, bias_v: float) -> str:
    """"TEM", "SIMS" or "intermediate" for a tilt, lens state and bias output."""
    if (abs(alpha_deg - SIMS_TILT_DEG) <= TILT_TOLERANCE_DEG and not lens_on
            and bias_on and abs(bias_v) >= MIN_SIMS_BIAS_V):
        return "SIMS"
    if (abs(alpha_deg - TEM_TILT_DEG) <= TILT_TOLERANCE_DEG and lens_on
            and not bias_on and abs(bias_v) <= BIAS_OFF_V):
        return "TEM"
    return "intermediate"
