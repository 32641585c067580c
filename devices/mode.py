"""Instrument mode: the safe sequences between the TEM and the SIMS geometry.

``mode.set("SIMS")`` / ``mode.set("TEM")`` returns one status for the whole sequence,
each step started from the previous step's status callback (no sleeps, no thread):

TEM -> SIMS
    blank the ion beam; bias to 0 V and output off; objective lens off; alpha to
    -68 deg; check the geometry ourselves (alpha within 1 deg, lens off) and wait for
    the bias supply to agree; output on and ramp to ``sims_voltage`` (+4500 V by
    default; negative for negative secondary ions).
SIMS -> TEM
    blank the ion beam; ramp the bias to 0 V and switch the output off; alpha to
    0 deg; check the bias is off ourselves; objective lens on.

The device orders the steps and checks each precondition itself before the put
that needs it; the IOC interlocks stay the last line of defence and are never
relied upon. An unknown target raises ``ValueError`` before anything moves, and so
does a precondition that cannot be met (a latched arc fault, a raster running, a
tilt outside the soft limits).
"""

from __future__ import annotations

import math

from ophyd import Component as Cpt
from ophyd import Device, Signal, SignalRO
from ophyd import FormattedComponent as FCpt

from temsims.devices.bias import BiasSupply
from temsims.devices.common import Readback, ValidatedSignal, chain, is_state, wait_until
from temsims.devices.stage import SIMS_TILT_DEG, SIMS_TILT_TOLERANCE_DEG, StageMotor

MODES = ("TEM", "SIMS")
TEM_TILT_DEG = 0.0
#: |V| below which the objective lens may come on (the TEM IOC's threshold).
BIAS_OFF_V = 10.0
#: SIMS needs the bias above this (the spectrometer's SIMS_READY threshold).
MIN_SIMS_BIAS_V = 100.0
MAX_BIAS_V = 4500.0
#: How long the peer IOCs may take to see a state change over CA (s).
PEER_LATENCY_TIMEOUT_S = 5.0


class ModeState(SignalRO):
    """Present geometry, inferred from the readbacks: "TEM", "SIMS" or "intermediate"."""

    def get(self, **kwargs):
        return self.parent.infer()

    def describe(self):
        desc = super().describe()
        desc[self.name].update(dtype="string", shape=[])
        return desc


class InstrumentMode(Device):
    """Switch the instrument between the TEM and the SIMS geometry (``set("SIMS")``).

    Parameters
    ----------
    stage_prefix, tem_prefix, column_prefix, bias_prefix
        PV prefixes of the IOCs involved (``TEMSIMS:STAGE:`` etc.).
    """

    state = Cpt(ModeState, kind="hinted")
    sims_voltage = Cpt(Signal, value=MAX_BIAS_V, kind="config",
                       doc="Bias in SIMS mode (V); negative for negative ions")
    alpha = FCpt(StageMotor, "{self.stage_prefix}A", kind="omitted")
    objective = FCpt(ValidatedSignal, "{self.tem_prefix}OBJ", string=True, kind="omitted")
    objective_rbv = FCpt(Readback, "{self.tem_prefix}OBJ_RBV", string=True, kind="omitted")
    ion_blank = FCpt(ValidatedSignal, "{self.column_prefix}BLANK", string=True, kind="omitted")
    ion_blank_rbv = FCpt(Readback, "{self.column_prefix}BLANK_RBV", string=True,
                         kind="omitted")
    raster = FCpt(Readback, "{self.column_prefix}SCAN:ACQUIRE_RBV", string=True,
                  kind="omitted")
    bias = FCpt(BiasSupply, "{self.bias_prefix}", kind="omitted")

    def __init__(self, prefix="", *, stage_prefix: str, tem_prefix: str, column_prefix: str,
                 bias_prefix: str, **kwargs):
        self.stage_prefix, self.tem_prefix = stage_prefix, tem_prefix
        self.column_prefix, self.bias_prefix = column_prefix, bias_prefix
        super().__init__(prefix, **kwargs)
        self.last_status = None

    # ---- state --------------------------------------------------------------------
    def _alpha(self) -> float:
        return float(self.alpha.user_readback.get())

    def _objective_on(self) -> bool:
        return is_state(self.objective_rbv.get(), "On", ("Off", "On"))

    def _bias_v(self) -> float:
        return float(self.bias.readback.get())

    def infer(self) -> str:
        alpha, lens, bias_on = self._alpha(), self._objective_on(), self.bias.output_on()
        if (abs(alpha - SIMS_TILT_DEG) <= SIMS_TILT_TOLERANCE_DEG and not lens and bias_on
                and abs(self._bias_v()) >= MIN_SIMS_BIAS_V):
            return "SIMS"
        if abs(alpha - TEM_TILT_DEG) <= SIMS_TILT_TOLERANCE_DEG and lens and not bias_on \
                and abs(self._bias_v()) <= BIAS_OFF_V:
            return "TEM"
        return "intermediate"

    @property
    def position(self) -> str:
        return self.infer()

    # ---- checks -------------------------------------------------------------------
    def _check_common(self, tilt: float) -> None:
        missing = [s.name for s in (self.objective, self.objective_rbv, self.ion_blank,
                                    self.raster, self.bias.enable, self.bias.readback)
                   if not s.connected]
        if missing or not self.alpha.connected:
            raise RuntimeError(f"{self.name}: not connected: {missing or [self.alpha.name]}")
        if str(self.raster.get()) == "Start":
            raise RuntimeError(f"{self.name}: an ion-beam raster is running; stop it first")
        self.alpha.check_value(tilt)

    def _check_sims(self, volts: float) -> None:
        self._check_common(SIMS_TILT_DEG)
        if not math.isfinite(volts) or not MIN_SIMS_BIAS_V <= abs(volts) <= MAX_BIAS_V:
            raise ValueError(f"{self.name}: sims_voltage {volts!r} V must be within "
                             f"{MIN_SIMS_BIAS_V:g}..{MAX_BIAS_V:g} V in magnitude")
        self.bias.setpoint.check_value(volts)
        if is_state(self.bias.fault.get(), "Arc", ("OK", "Arc")):
            raise RuntimeError(f"{self.name}: bias arc fault latched; bias.reset_fault() first")

    # ---- steps --------------------------------------------------------------------
    def _blank_ion_beam(self):
        st = self.ion_blank.set("Blanked")
        return st

    def _bias_to_zero(self):
        return self.bias.set(0.0)

    def _bias_off(self):
        return self.bias.disable_output()

    def _objective(self, state: str):
        def step():
            self.objective.set(state)
            return wait_until(self.objective_rbv, lambda v: is_state(v, state, ("Off", "On")),
                              timeout=PEER_LATENCY_TIMEOUT_S,
                              what=f"objective lens {state} (if refused, "
                                   f"{self.tem_prefix}OBJ_STATUS says why)")
        step.__name__ = f"objective_{state.lower()}"
        return step

    def _tilt(self, degrees: float):
        def step():
            return self.alpha.set(degrees)
        step.__name__ = f"tilt_to_{degrees:g}"
        return step

    def _confirm_sims_geometry(self):
        alpha = self._alpha()
        if abs(alpha - SIMS_TILT_DEG) > SIMS_TILT_TOLERANCE_DEG or self._objective_on():
            raise RuntimeError(f"{self.name}: not in SIMS geometry after the tilt "
                               f"(alpha {alpha:.3f} deg, objective "
                               f"{self.objective_rbv.get()}); bias left off")
        # The bias IOC follows the stage and TEM over CA: wait until it has seen it too.
        return wait_until(self.bias.interlock, lambda v: is_state(v, "Permit",
                                                                  ("Blocked", "Permit")),
                          timeout=PEER_LATENCY_TIMEOUT_S, what="bias interlock Permit",
                          explain=lambda: f"the bias IOC says: {self.bias.interlock_reason.get()}")

    def _bias_on(self):
        return self.bias.enable_output()

    def _ramp_to(self, volts: float):
        def step():
            return self.bias.set(volts)
        step.__name__ = f"ramp_to_{volts:g}V"
        return step

    def _confirm_bias_off(self):
        if self.bias.output_on() or abs(self._bias_v()) > BIAS_OFF_V:
            raise RuntimeError(f"{self.name}: bias still on ({self._bias_v():.1f} V); "
                               "objective lens left off")

    # ---- Movable ------------------------------------------------------------------
    def set(self, target, *, timeout: float | None = None):
        """Change to ``"SIMS"`` or ``"TEM"``; one status for the whole safe sequence.

        Raises ``ValueError`` for an unknown target (or an impossible precondition)
        before anything moves.
        """
        key = str(target).strip().upper() if isinstance(target, str) else None
        if key not in MODES:
            raise ValueError(f"{self.name}: unknown mode {target!r}; expected one of {MODES}")
        if key == "SIMS":
            volts = float(self.sims_voltage.get())
            self._check_sims(volts)
            steps = [self._blank_ion_beam, self._bias_to_zero, self._bias_off,
                     self._objective("Off"), self._tilt(SIMS_TILT_DEG),
                     self._confirm_sims_geometry, self._bias_on, self._ramp_to(volts)]
        else:
            self._check_common(TEM_TILT_DEG)
            steps = [self._blank_ion_beam, self._bias_to_zero, self._bias_off,
                     self._tilt(TEM_TILT_DEG), self._confirm_bias_off,
                     self._objective("On")]
        status = chain(self, steps, timeout=timeout)
        self.last_status = status
        return status

    def stop(self, *, success: bool = False) -> None:
        self.alpha.stop(success=success)
