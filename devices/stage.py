"""Specimen stage (``STAGE:``): five EPICS motor records as ophyd ``EpicsMotor`` axes.

``x``, ``y`` (um), ``z`` (um), ``alpha`` (PV ``A``, deg) and ``beta`` (PV ``B``, deg)
in a ``MotorBundle``. Alpha = 0 deg is the TEM geometry, -68 deg the SIMS geometry
(``docs/interlocks.md``).
"""

from __future__ import annotations

import math
import numbers

from ophyd import Component as Cpt
from ophyd import EpicsMotor, MotorBundle
from ophyd.utils.errors import LimitError

#: Alpha tilt of the SIMS geometry (deg) and the tolerance the IOCs accept.
SIMS_TILT_DEG = -68.0
SIMS_TILT_TOLERANCE_DEG = 1.0


class StageMotor(EpicsMotor):
    """``EpicsMotor`` that refuses non-numbers, NaN and moves beyond the soft limits.

    ``EpicsMotor`` already checks the ctrl limits (the IOC publishes LLM/HLM there);
    this adds a clear message for NaN/inf, which the record would refuse silently
    over caproto's client (the move status would then never finish).
    """

    def check_value(self, pos):
        if isinstance(pos, bool) or not isinstance(pos, numbers.Real) or not math.isfinite(pos):
            raise ValueError(f"{self.name}: position must be a finite number, got {pos!r}")
        low, high = self.limits
        if low < high and not low <= pos <= high:
            raise LimitError(
                f"{self.name}: {pos} {self.egu} outside the soft limits [{low}, {high}]")


class Stage(MotorBundle):
    """The specimen stage: x, y, z (um), alpha and beta tilt (deg).

    Each axis reads back (hinted) and sets like any ``EpicsMotor``: ``set()`` returns
    a status that finishes when the record reports DMOV = 1 at the target.
    """

    x = Cpt(StageMotor, "X", doc="Stage x (um)")
    y = Cpt(StageMotor, "Y", doc="Stage y (um)")
    z = Cpt(StageMotor, "Z", doc="Stage height z (um)")
    alpha = Cpt(StageMotor, "A", doc="Alpha tilt (deg): 0 TEM, -68 SIMS")
    beta = Cpt(StageMotor, "B", doc="Beta tilt (deg)")
