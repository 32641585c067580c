"""ophyd devices of the TEM-SIMS instrument, one module per part, and :func:`connect`.

Devices know the instrument only by PV names (``docs/pv-reference.md``); nothing here
imports the IOCs, and no module does work on import. :func:`connect` selects ophyd's
caproto control layer, builds the devices and waits for them, naming the PVs that
did not connect.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

PARTS = ("stage", "tem", "camera", "edx", "column", "bias", "spectrometer", "imager", "mode")
#: Which IOCs each device needs (keys of ``temsims.channel_access.PART_SUFFIXES``).
PART_IOCS: dict[str, tuple[str, ...]] = {
    "stage": ("stage",),
    "tem": ("tem",),
    "camera": ("tem",),
    "edx": ("tem",),
    "column": ("column",),
    "bias": ("bias",),
    "spectrometer": ("spectrometer",),
    "imager": ("column", "spectrometer"),
    "mode": ("stage", "tem", "column", "bias"),
}
#: The devices :class:`~temsims.devices.mode.InstrumentMode` is built on.
MODE_DEVICES = ("stage", "tem", "column", "bias")


@dataclass
class Instrument:
    """The connected devices (``None`` for a part that was not asked for)."""

    stage: Any = None
    tem: Any = None
    camera: Any = None
    edx: Any = None
    column: Any = None
    bias: Any = None
    spectrometer: Any = None
    imager: Any = None
    mode: Any = None
    prefixes: dict[str, str] = field(default_factory=dict)
    connect_time_s: float = 0.0

    def all_devices(self) -> dict[str, Any]:
        """Name -> device of every part that was built."""
        return {name: getattr(self, name) for name in PARTS if getattr(self, name) is not None}


def connect(prefix: str = "TEMSIMS:", *, timeout: float | None = 5.0, parts=None,
            **per_part_prefix: str) -> Instrument:
    """Build the instrument's devices and wait until every PV is connected.

    Parameters
    ----------
    prefix
        Instrument PV prefix; each IOC adds its part suffix (``STAGE:``, ``TEM:``,
        ``FIB:``, ``BIAS:``, ``MS:``).
    timeout
        Seconds to wait for all PVs together; ``None`` builds the devices without
        waiting (they connect when their IOCs answer: enough to list and summarise
        plans on them, e.g. with no IOC running).
    parts
        Names of the devices to build (default all: ``PARTS``).
    **per_part_prefix
        Full PV prefix of an IOC, overriding ``prefix + suffix``: keywords ``stage``,
        ``tem``, ``column``, ``bias``, ``spectrometer``.

    Returns
    -------
    Instrument
        With attributes ``stage, tem, camera, edx, column, bias, spectrometer,
        imager, mode`` and ``all_devices()``. The stage axes carry the ophyd label
        ``motors`` and the camera, EDX and spectrometer ``detectors``, so the
        session's ``%wa`` and ``%ct`` find them.

    Raises
    ------
    TimeoutError
        Within about ``timeout`` seconds if some PVs do not connect (an IOC down),
        naming the IOCs and PVs missing.
    ValueError
        For an unknown part or prefix keyword.
    """
    from temsims.channel_access import PART_SUFFIXES
    from temsims.devices.common import use_caproto_control_layer, wait_connected

    unknown = set(per_part_prefix) - set(PART_SUFFIXES)
    if unknown:
        raise ValueError(f"unknown IOC prefix keyword(s) {sorted(unknown)}; "
                         f"expected {sorted(PART_SUFFIXES)}")
    wanted = PARTS if parts is None else tuple(parts)
    bad = [p for p in wanted if p not in PARTS]
    if bad:
        raise ValueError(f"unknown part(s) {bad}; expected some of {PARTS}")
    if "mode" in wanted:  # it reads the geometry from these devices (no copies of them)
        wanted = tuple(p for p in PARTS if p in wanted or p in MODE_DEVICES)
    prefixes = {ioc: per_part_prefix.get(ioc, prefix + suffix)
                for ioc, suffix in PART_SUFFIXES.items()}

    use_caproto_control_layer()  # before the first signal exists
    from temsims.devices.bias import BiasSupply
    from temsims.devices.camera import TEMCamera
    from temsims.devices.column import IonColumn
    from temsims.devices.edx import EDXDetector
    from temsims.devices.imager import SIMSImager
    from temsims.devices.mode import InstrumentMode
    from temsims.devices.spectrometer import MassSpectrometer
    from temsims.devices.stage import Stage
    from temsims.devices.tem import TEMColumn

    t0 = time.monotonic()
    inst = Instrument(prefixes=prefixes)
    builders = {
        "stage": lambda: Stage(prefixes["stage"], name="stage"),
        "tem": lambda: TEMColumn(prefixes["tem"], name="tem"),
        "camera": lambda: TEMCamera(prefixes["tem"], name="camera", labels={"detectors"}),
        "edx": lambda: EDXDetector(prefixes["tem"], name="edx", labels={"detectors"}),
        "column": lambda: IonColumn(prefixes["column"], name="column"),
        "bias": lambda: BiasSupply(prefixes["bias"], name="bias"),
        "spectrometer": lambda: MassSpectrometer(prefixes["spectrometer"], name="spectrometer",
                                                 labels={"detectors"}),
        "imager": lambda: SIMSImager(
            column_prefix=prefixes["column"], spectrometer_prefix=prefixes["spectrometer"],
            label_source=inst.spectrometer.labels if inst.spectrometer is not None else None,
            name="imager"),
        "mode": lambda: InstrumentMode(stage=inst.stage, tem=inst.tem, column=inst.column,
                                       bias=inst.bias, name="mode"),
    }
    for name in PARTS:  # spectrometer before imager (label source)
        if name in wanted:
            setattr(inst, name, builders[name]())
    if timeout is not None:
        needed = {ioc for name in wanted for ioc in PART_IOCS[name]}
        wait_connected(inst.all_devices().values(), timeout,
                       part_prefixes={ioc: prefixes[ioc] for ioc in needed})
    inst.connect_time_s = time.monotonic() - t0
    return inst


__all__ = ["PARTS", "Instrument", "connect"]
