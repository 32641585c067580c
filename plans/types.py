"""What the plans need of their devices, as structural types (``typing.Protocol``).

The plans take their devices as arguments and use only the attributes named here, so
another lab's devices work if they have them (the ``temsims.devices`` classes do);
each plan also checks them at run time before its first message
(:func:`temsims.plans._common.check_device`). The annotations are documentation for
readers, type checkers and the queue server's plan listing, and ``isinstance``
works on them (``typing.runtime_checkable``: attribute presence, not types).

Signals are ophyd-style (``get``/``set``/``read``); "Movable" and the other names are
:mod:`bluesky.protocols`.
"""

from __future__ import annotations

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
    """Electron column: ``fov`` (um) and ``blank`` signals."""

    fov: Any
    blank: Any


@runtime_checkable
class CameraDevice(Readable, Triggerable, Protocol):
    """TEM camera: Triggerable; ``image`` (2-D array), ``exposure`` (s) signals."""

    image: Any
    exposure: Any


@runtime_checkable
class EdxDevice(Readable, Triggerable, Protocol):
    """EDX detector: ``spectrum``, ``line_spectra``, ``mode``, ``live_time`` signals."""

    spectrum: Any
    line_spectra: Any
    mode: Any
    live_time: Any


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
    """SIMS imager: a Flyable collecting map lines; ``collector_labels()``."""

    def collector_labels(self) -> list[str]: ...


@runtime_checkable
class SpectrometerDevice(Protocol):
    """Mass spectrometer: collectors (``collector_list()``), ``focal_plane_range()``,
    ``count_time`` (s) and ``polarity`` signals."""

    count_time: Any
    polarity: Any

    def collector_list(self) -> list: ...

    def focal_plane_range(self) -> tuple[float, float]: ...


@runtime_checkable
class IonColumnDevice(Protocol):
    """Ga+ column: ``scan`` (raster: fov, rotation...), ``blank``, ``interlock``,
    ``current`` (pA) and ``landing`` (keV)."""

    scan: Any
    blank: Any
    interlock: Any
    current: Any
    landing: Any


@runtime_checkable
class BiasDevice(Movable, Protocol):
    """Holder bias supply: Movable (V; the status finishes when the ramp has settled),
    ``readback`` signal."""

    readback: Any


__all__ = [
    "BiasDevice",
    "CameraDevice",
    "EdxDevice",
    "ImagerDevice",
    "IonColumnDevice",
    "ModeDevice",
    "Plan",
    "SpectrometerDevice",
    "StageDevice",
    "TemColumnDevice",
]
