"""What the plans need of their devices, as structural types (``typing.Protocol``).

The plans take their devices as arguments and use only the attributes named here, so
another lab's devices work if they have them (the ``temsims.devices`` classes do);
each plan checks them against these protocols before its first message
(:func:`temsims.plans._common.check_device`, :func:`check_microscope`): the one list
of what a device must have. The annotations are documentation for readers, type
checkers and the queue server's plan listing, and ``isinstance`` works on them
(``typing.runtime_checkable``: attribute presence, not types).

The multi-device plans take one composite, a :class:`Microscope`: any object whose
attributes are the parts (``temsims.devices.connect()`` returns one, the
``temsims.devices.Instrument`` dataclass, which another lab can fill with its own
devices).

Signals are ophyd-style (``get``/``set``/``read``); "Movable" and the other names are
:mod:`bluesky.protocols`.
"""

from __future__ import annotations

import typing
from collections.abc import Generator
from typing import Any, Protocol, TypeVar, runtime_checkable

from bluesky.protocols import Flyable, Movable, Readable, Triggerable
from bluesky.utils import Msg

T = TypeVar("T")
#: What every plan is: a generator of messages returning ``T`` (bluesky's MsgGenerator).
Plan = Generator[Msg, Any, T]


@runtime_checkable
class StageDevice(Protocol):
    """Specimen stage: ``x``, ``y``, ``z`` (um) and ``alpha`` (deg), each Movable."""

    x: Movable
    y: Movable
    z: Movable
    alpha: Movable


@runtime_checkable
class TemColumnDevice(Protocol):
    """Electron column: ``fov`` (um), ``blank``, ``ht`` (kV) and ``beam_current`` (nA)
    signals."""

    fov: Any
    blank: Any
    ht: Any
    beam_current: Any


@runtime_checkable
class CameraDevice(Readable, Triggerable, Protocol):
    """TEM camera: Triggerable; ``image`` (2-D array), ``exposure`` (s) and ``size``
    (pixels per side) signals."""

    image: Any
    exposure: Any
    size: Any


@runtime_checkable
class EdxDevice(Readable, Triggerable, Protocol):
    """EDX detector: ``spectrum``, ``line_spectra``, ``mode``, ``live_time`` and the
    energy axis (``nchan``, ``ev_per_chan``, ``offset_ev``) signals."""

    spectrum: Any
    line_spectra: Any
    mode: Any
    live_time: Any
    nchan: Any
    ev_per_chan: Any
    offset_ev: Any


@runtime_checkable
class ModeDevice(Readable, Protocol):
    """Instrument mode: ``infer()`` ("TEM", "SIMS", "intermediate") and the devices the
    mode-change plans move: ``alpha`` (a motor), ``objective`` and ``ion_blank``
    (Off/On and Blanked/Unblanked signals whose ``set`` ends at the readback),
    ``raster`` (the column's raster state) and ``bias`` (the supply: ``set(volts)``,
    ``enable``, ``fault``)."""

    alpha: Any
    objective: Any
    ion_blank: Any
    raster: Any
    bias: Any

    def infer(self) -> str: ...


@runtime_checkable
class ImagerDevice(Flyable, Protocol):
    """SIMS imager: a Flyable collecting map lines (``collect()``), ``lines_per_event``,
    ``first_line`` (a settable signal: the first line the next kickoff emits, for a
    frame re-acquired after an interruption; the kickoff puts it back to 0) and
    ``collector_labels()``."""

    lines_per_event: Any
    first_line: Any

    def collect(self) -> Any: ...

    def collector_labels(self) -> list[str]: ...


@runtime_checkable
class SpectrometerDevice(Protocol):
    """Mass spectrometer: collectors (``collector_list()``), ``focal_plane_range()``,
    the magnet (``field``, ``field_rbv``, calibration ``cal_a``, ``cal_b0``), the mass
    scan (``mass_scan``), ``count_time`` (s), ``polarity``, ``dead_time`` (s) and
    ``dark_rate`` (1/s) signals."""

    count_time: Any
    polarity: Any
    field: Any
    field_rbv: Any
    cal_a: Any
    cal_b0: Any
    mass_scan: Any
    dead_time: Any
    dark_rate: Any

    def collector_list(self) -> list: ...

    def focal_plane_range(self) -> tuple[float, float]: ...


@runtime_checkable
class IonColumnDevice(Protocol):
    """Ga+ column: ``scan`` (raster: fov, rotation...), ``blank``, ``interlock``,
    ``current`` (pA), ``landing`` (keV), ``aperture`` and ``probe`` (nm)."""

    scan: Any
    blank: Any
    interlock: Any
    current: Any
    landing: Any
    aperture: Any
    probe: Any


@runtime_checkable
class BiasDevice(Movable, Protocol):
    """Holder bias supply: Movable (V; the status finishes when the ramp has settled),
    ``readback`` signal."""

    readback: Any


@runtime_checkable
class Microscope(Protocol):
    """The instrument as one object: the parts a correlative experiment moves and reads
    (``edx`` only for :func:`temsims.plans.edx_sims_calibration`)."""

    stage: StageDevice
    tem: TemColumnDevice
    camera: CameraDevice
    mode: ModeDevice
    imager: ImagerDevice
    spectrometer: SpectrometerDevice
    column: IonColumnDevice
    bias: BiasDevice


#: The protocol of each part of a :class:`Microscope`.
MICROSCOPE_PARTS: dict[str, type] = {
    "stage": StageDevice, "tem": TemColumnDevice, "camera": CameraDevice, "mode": ModeDevice,
    "imager": ImagerDevice, "spectrometer": SpectrometerDevice, "column": IonColumnDevice,
    "bias": BiasDevice, "edx": EdxDevice}


def required_attributes(protocol: type) -> list[str]:
    """The attributes and methods ``protocol`` asks of a device, sorted."""
    return sorted(typing._get_protocol_attrs(protocol))


__all__ = [
    "MICROSCOPE_PARTS",
    "BiasDevice",
    "CameraDevice",
    "EdxDevice",
    "ImagerDevice",
    "IonColumnDevice",
    "Microscope",
    "ModeDevice",
    "Plan",
    "SpectrometerDevice",
    "StageDevice",
    "TemColumnDevice",
    "required_attributes",
]
