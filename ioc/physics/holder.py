"""The specimen holder's load: the virtual specimen, the depth sputtered into it and
the electron dose it has taken.

The physical state every imaging part of an instrument acts on (the stage's position
and tilt, the bias on the holder are the parts' own quantities in the world). The
specimen module (its recipes, scipy and periodictable) is imported on first use, so
that the servers' shared modules stay light to import.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from temsims.ioc.physics.specimen import Specimen


class Holder:
    """What the holder carries: the virtual specimen, the depth sputtered into it and
    the electron dose it has received.

    One per instrument (:class:`temsims.ioc.world.World`), shared by the parts that
    image the specimen, each in its own thread.

    Parameters
    ----------
    name, seed
        The specimen (:func:`~temsims.ioc.physics.specimen.build_specimen`); it is
        built once, on first use.
    """

    def __init__(self, name: str = "li2co3-particles", seed: int = 1) -> None:
        self.name = name
        self.seed = seed
        self._lock = threading.RLock()
        self._specimen: Specimen | None = None
        self._depth: np.ndarray | None = None
        self._dose: np.ndarray | None = None
        #: Counts every change to the depth or the dose (:meth:`changed`), so that
        #: what is derived from them (the TEM's mass-thickness) is made again.
        self.version = 0
        #: Held by :meth:`restore` while it zeroes the depth map.
        self.depth_lock = threading.Lock()

    @property
    def specimen(self) -> Specimen:
        """The virtual specimen (one object shared by every part that images it)."""
        with self._lock:
            if self._specimen is None:
                from temsims.ioc.physics.specimen import build_specimen

                self._specimen = build_specimen(self.name, self.seed)
            return self._specimen

    @property
    def depth(self) -> np.ndarray:
        """Sputtered depth (nm) on the specimen grid, float32, written in place."""
        with self._lock:
            if self._depth is None:
                self._depth = np.zeros(self.specimen.shape, np.float32)
            return self._depth

    @property
    def electron_dose(self) -> np.ndarray:
        """Electron dose received (electrons/nm^2) on the specimen grid, float32."""
        with self._lock:
            if self._dose is None:
                self._dose = np.zeros(self.specimen.shape, np.float32)
            return self._dose

    def changed(self) -> None:
        """Say that the depth or the dose changed (after writing them)."""
        with self._lock:
            self.version += 1

    def expose(self, rows: slice, cols: slice, electrons_per_nm2: float) -> None:
        """Add an electron dose over a block of the specimen grid."""
        if electrons_per_nm2 <= 0:
            return
        dose = self.electron_dose
        with self._lock:
            dose[rows, cols] += np.float32(electrons_per_nm2)
            self.version += 1

    def restore(self) -> None:
        """A pristine specimen again (nothing sputtered, no dose)."""
        with self.depth_lock:
            if self._depth is not None:
                self._depth[...] = 0.0
            if self._dose is not None:
                self._dose[...] = 0.0
            self.changed()


__all__ = ["Holder"]
