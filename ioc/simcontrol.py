"""Simulation control (``<instrument>SIM:``): the parts' states, reset and time scale.

Not part of the real instrument: this is the handle tests and operators use to kill,
hang and restore a part, and to put the whole instrument back to its start-up state
between experiments. The PVs are listed in :mod:`temsims.ioc.server`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from caproto import ChannelType
from caproto.server import PVGroup, pvproperty

from temsims.ioc.server import ALL_PARTS, PART_STATES


def _part_pv(part: str) -> pvproperty:
    """``SIM:<PART>``: a put makes the part Up, Dead or Hung."""
    prop = pvproperty(name=part.upper(), value="Dead", dtype=ChannelType.ENUM,
                      enum_strings=PART_STATES, alarm_group=part,
                      doc=f"State of the {part} part (put Up, Dead or Hung)")

    @prop.putter
    async def prop(group, instance, value):
        return await group._set_part(part, value)

    return prop


class SimControlIOC(PVGroup):
    """Simulation control of one instrument (PVs: :mod:`temsims.ioc.server`)."""

    time_scale = pvproperty(name="TIME_SCALE", value=1.0, read_only=True, precision=3,
                            doc="Simulated seconds per wall second")
    now = pvproperty(name="NOW", value=0.0, read_only=True, precision=3, units="s",
                     doc="Nominal clock of the instrument (epoch s)")
    reset = pvproperty(name="RESET", value="Idle", dtype=ChannelType.ENUM,
                       enum_strings=("Idle", "Reset"),
                       doc="Put Reset: start-up state and a pristine specimen")
    stage = _part_pv("stage")
    tem = _part_pv("tem")
    column = _part_pv("column")
    bias = _part_pv("bias")
    spectrometer = _part_pv("spectrometer")

    def __init__(self, *args: Any, instrument: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.instrument = instrument

    async def _publish_states(self) -> None:
        for part in ALL_PARTS:
            server = self.instrument.parts.get(part)
            state = server.state if server is not None else "Dead"
            pv = getattr(self, part)
            if pv.value != state:
                await pv.write(state, verify_value=False)

    @time_scale.startup
    async def time_scale(self, instance, async_lib):
        await instance.write(self.instrument.world.clock.scale, verify_value=False)
        await self._publish_states()

    @now.scan(period=1.0)
    async def now(self, instance, async_lib):
        await instance.write(self.instrument.world.clock.now(), verify_value=False)

    @reset.putter
    async def reset(self, instance, value):
        if value in ("Reset", 1):
            await asyncio.get_running_loop().run_in_executor(None, self.instrument.reset)
            await self._publish_states()
        return "Idle"

    async def _set_part(self, part: str, value: Any) -> str:
        if value not in PART_STATES:
            raise ValueError(f"SIM:{part.upper()}: {value!r} is not one of {PART_STATES}")
        server = self.instrument.parts.get(part)
        if server is None:
            raise ValueError(f"SIM:{part.upper()}: this instrument does not serve {part}")
        await asyncio.get_running_loop().run_in_executor(None, server.set_state, value)
        return value
