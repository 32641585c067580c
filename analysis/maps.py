"""The SIMS map data model: one ``map`` block, one line assembler, one geometry.

A SIMS map run (:func:`temsims.plans.sims.sims_map`, ``depth_profile`` and the plans
built on them) stores its map as line events in ``primary``: ``<imager>_line`` (the
index of the event's first line) and ``<imager>_<species>`` ((lines, nx) counts, the
dtype its descriptor records). Every event holds complete, acquired lines: the flyer
fails the run rather than emit a line it did not collect, so there is no "not
acquired" value in the documents.

The start document's ``map`` block (built by :func:`map_block`) says everything
needed to rebuild the map and place it on the specimen::

    imager, species, pixels [nx, ny], frames, fov_um, dwell_s, data_keys, line_key,
    centre_um [x, y], scan_rotation_deg, incidence_deg, stretch, pixel_to_specimen

:class:`MapLayout` reads it (and nothing else), :class:`LineAssembler` is the only
code that puts lines into maps, and :class:`SimsMapAccumulator` feeds an assembler
from documents: the live views, the exporters, the loaders and the plans that analyse
their own maps (through ``bpp.subs_wrapper``) all use it.

It lives in the analysis layer, below both the plans that write the ``map`` block and
the callbacks and loaders that read it (decision 0024): numpy and the geometry only,
documents taken as plain mappings, nothing that knows a RunEngine, a device or a
catalog. ``temsims.callbacks.maps`` re-exports it under its former name. Pixels no event covered
(an aborted run) are NaN in the float maps of :meth:`LineAssembler.maps` with
``partial=True``; without it an incomplete map is an :class:`IncompleteMapError`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from temsims.analysis.geometry import SimsMapGeometry
from temsims.constants import SIMS_INCIDENCE_DEG

#: Keys every ``map`` block holds (see :func:`map_block`).
MAP_KEYS = ("imager", "species", "pixels", "frames", "fov_um", "dwell_s", "data_keys",
            "line_key", "centre_um", "scan_rotation_deg", "incidence_deg")


class IncompleteMapError(ValueError):
    """A stored map lacks lines (its run was aborted or failed)."""


def map_block(*, imager: str, species: Sequence[str], pixels: Sequence[int], fov_um: float,
              dwell_s: float, frames: int, centre_um: Sequence[float],
              scan_rotation_deg: float = 0.0,
              incidence_deg: float = SIMS_INCIDENCE_DEG) -> dict[str, Any]:
    """The ``map`` block of a SIMS map run's start document.

    Parameters
    ----------
    imager : str
        The imager's name: the prefix of the data keys.
    species : sequence of str
        Mapped species, collector order.
    pixels : (int, int)
        (nx, ny).
    fov_um : float
        Raster width along the map's columns, in the beam-normal plane (um).
    dwell_s : float
        Dwell per pixel and frame (s).
    frames : int
        Frames acquired one after the other.
    centre_um : (float, float)
        Specimen point at the map centre: the stage readback (um).
    scan_rotation_deg, incidence_deg : float
        Scan rotation and ion incidence on the specimen (deg).
    """
    nx, ny = (int(p) for p in pixels)
    geometry = SimsMapGeometry(nx=nx, ny=ny, fov_um=float(fov_um),
                               centre_x_um=float(centre_um[0]), centre_y_um=float(centre_um[1]),
                               rotation_deg=float(scan_rotation_deg),
                               incidence_deg=float(incidence_deg))
    return {"imager": str(imager), "species": [str(s) for s in species], "pixels": [nx, ny],
            "frames": int(frames), "fov_um": float(fov_um), "fov_y_um": float(fov_um) * ny / nx,
            "pixel_nm": 1000.0 * float(fov_um) / nx, "dwell_s": float(dwell_s),
            "data_keys": [f"{imager}_{s}" for s in species], "line_key": f"{imager}_line",
            "events_per_frame": ny, "centre_um": [float(centre_um[0]), float(centre_um[1])],
            "scan_rotation_deg": float(scan_rotation_deg), "incidence_deg": float(incidence_deg),
            "stretch": round(geometry.stretch, 12),
            "pixel_to_specimen": [[round(float(v), 12) for v in row]
                                  for row in geometry.affine_to_specimen()]}


@dataclass(frozen=True)
class MapLayout:
    """What a SIMS map run's ``map`` block says (see the module docstring)."""

    imager: str
    species: tuple[str, ...]
    nx: int
    ny: int
    frames: int
    fov_um: float
    dwell_s: float
    block: Mapping[str, Any]

    @classmethod
    def from_start(cls, start: Mapping[str, Any]) -> MapLayout:
        """The layout of the run whose start document is ``start``.

        Raises
        ------
        ValueError
            If ``start`` has no ``map`` block or the block lacks a key of
            :data:`MAP_KEYS` (not a SIMS map run of these plans).
        """
        block = start.get("map") if isinstance(start, Mapping) else None
        if not isinstance(block, Mapping):
            raise ValueError("the start document has no 'map' block: not a SIMS map run "
                             "(sims_map, depth_profile or a plan built on them)")
        missing = [k for k in MAP_KEYS if block.get(k) is None]
        if missing:
            raise ValueError(f"the start document's 'map' block lacks {missing}")
        nx, ny = (int(p) for p in block["pixels"])
        return cls(imager=str(block["imager"]), species=tuple(str(s) for s in block["species"]),
                   nx=nx, ny=ny, frames=int(block["frames"]), fov_um=float(block["fov_um"]),
                   dwell_s=float(block["dwell_s"]), block=dict(block))

    @property
    def line_key(self) -> str:
        return str(self.block["line_key"])

    def key(self, species: str) -> str:
        """Data key of one collector's lines."""
        return f"{self.imager}_{species}"

    def collector_keys(self, data_keys: Sequence[str]) -> dict[str, str]:
        """``{label: data key}``: the mapped species, then the other collectors the
        stream holds (the imager names unused collectors by their mass)."""
        prefix = self.imager + "_"
        others = [k[len(prefix):] for k in data_keys
                  if k.startswith(prefix) and k != self.line_key]
        labels = list(self.species) + [o for o in others if o not in self.species]
        return {s: self.key(s) for s in labels if self.key(s) in data_keys}

    def geometry(self, *, incidence_deg: float | None = None) -> SimsMapGeometry:
        """Where the map's pixels lie on the specimen."""
        return SimsMapGeometry.from_map_block(self.block, incidence_deg=incidence_deg)


class LineAssembler:
    """Puts line blocks into (ny, nx) maps, frame by frame: the one place it is done.

    Parameters
    ----------
    species : sequence of str
        The maps to build.
    ny, nx : int
        Map size.
    keep : {"all", "latest", "sum"}
        Keep every frame (stored maps), only the frame being acquired over the
        previous one (live view), or the frames added up.
    """

    def __init__(self, species: Sequence[str], ny: int, nx: int, *,
                 keep: str = "all") -> None:
        if keep not in ("all", "latest", "sum"):
            raise ValueError(f"keep must be 'all', 'latest' or 'sum', got {keep!r}")
        self.species = [str(s) for s in species]
        self.ny, self.nx, self.keep = int(ny), int(nx), keep
        self.frames: list[dict[str, np.ndarray]] = [self._blank()]
        self.acquired: list[np.ndarray] = [np.zeros(self.ny, bool)]
        self.dtype: np.dtype | None = None
        self.lines_done = 0
        self._frame_index = 0
        self._last_line: int | None = None

    def _blank(self) -> dict[str, np.ndarray]:
        return {s: np.full((self.ny, self.nx), np.nan) for s in self.species}

    @property
    def frame(self) -> int:
        """Index of the frame being filled (0-based)."""
        return self._frame_index

    @property
    def current(self) -> dict[str, np.ndarray]:
        """The maps being filled: the present frame, or the sum (``keep="sum"``)."""
        return self.frames[-1]

    def add(self, line0: int, blocks: Mapping[str, Any]) -> tuple[int, int]:
        """Put ``blocks`` ({species: (lines, nx)}) at row ``line0``; a line index that
        does not increase starts a new frame. Returns the rows (first, stop) filled."""
        line0 = int(line0)
        if not 0 <= line0 < self.ny:
            raise ValueError(f"line {line0} outside the map's {self.ny} lines")
        if self._last_line is not None and line0 <= self._last_line:
            self._new_frame()
        self._last_line = line0
        stop = line0
        for s in self.species:
            if s not in blocks:
                continue
            raw = np.asarray(blocks[s])
            if raw.ndim == 1:
                raw = raw[None, :]
            if raw.shape[1] != self.nx:
                raise ValueError(f"{s}: lines of {raw.shape[1]} pixels in a map of {self.nx}")
            if self.dtype is None:
                self.dtype = raw.dtype
            stop = min(line0 + raw.shape[0], self.ny)
            target = self.frames[-1][s][line0:stop]
            values = raw[:stop - line0].astype(np.float64)
            if self.keep == "sum":
                target[...] = np.where(np.isnan(target), values, target + values)
            else:
                target[...] = values
        self.acquired[-1][line0:stop] = True
        self.lines_done = stop
        return line0, stop

    def _new_frame(self) -> None:
        self._frame_index += 1
        self.lines_done = 0
        if self.keep == "all":
            self.frames.append(self._blank())
            self.acquired.append(np.zeros(self.ny, bool))
        elif self.keep == "latest":
            self.acquired[-1][:] = False
        # "sum": the lines of the next frame add onto the same arrays.

    def missing_lines(self) -> list[tuple[int, list[int]]]:
        """``[(frame, [rows])]`` of the kept frames that lack lines."""
        return [(f, np.flatnonzero(~a).tolist()) for f, a in enumerate(self.acquired)
                if not a.all()]

    def maps(self, *, partial: bool = False) -> dict[str, np.ndarray]:
        """The maps: (ny, nx), or (frames, ny, nx) with ``keep="all"`` and several frames.

        Complete maps have the dtype of the lines (int32 counts); with ``partial`` they
        are float64 with NaN where no line was acquired.

        Raises
        ------
        IncompleteMapError
            If a frame lacks lines and ``partial`` is False.
        """
        missing = self.missing_lines()
        if missing and not partial:
            frame, rows = missing[0]
            raise IncompleteMapError(
                f"the map lacks {sum(len(r) for _, r in missing)} lines (frame {frame}: rows "
                f"{rows[:5]}{'...' if len(rows) > 5 else ''}); its run did not end well: "
                "read it with partial=True for NaN where nothing was acquired")
        dtype = self.dtype if (self.dtype is not None and not missing) else np.float64
        out = {}
        for s in self.species:
            stack = [f[s] for f in self.frames]
            arr = stack[0] if len(stack) == 1 else np.stack(stack)
            out[s] = arr.astype(dtype) if dtype != np.float64 else arr.copy()
        return out


def assemble(layout: MapLayout, lines: Any, blocks: Mapping[str, Any], *,
             partial: bool = False) -> dict[str, np.ndarray]:
    """Maps of a stored run from its line column and collector columns (events first).

    Parameters
    ----------
    layout : MapLayout
    lines : array of int, (n_events,)
        ``<imager>_line`` of each event.
    blocks : dict of str -> array (n_events, lines, nx)
        Per label, the collector's column.
    partial : bool
        See :meth:`LineAssembler.maps`.
    """
    lines = np.asarray(lines).astype(int).ravel()
    assembler = LineAssembler(list(blocks), layout.ny, layout.nx, keep="all")
    columns = {s: np.asarray(v) for s, v in blocks.items()}
    for i, line0 in enumerate(lines):
        assembler.add(int(line0), {s: v[i] for s, v in columns.items()})
    return assembler.maps(partial=partial)


class SimsMapAccumulator:
    """Maps of one SIMS map run, filled from its documents (``acc(name, doc)``).

    Parameters
    ----------
    species : sequence of str, optional
        Species to keep (default: the ``map`` block's).
    stream_name : str
        The stream with the line events.
    frames : {"latest", "sum", "all"}
        Several frames: the frame being acquired over the previous one, the frames
        added up, or every frame kept.

    Attributes
    ----------
    layout : MapLayout
        From the start document.
    maps : dict of str -> ndarray
        (ny, nx) float64 per species, NaN where nothing is acquired yet.
    vmax : dict of str -> float
        Largest value seen per species over the run (a stable colour scale).
    """

    def __init__(self, species: Sequence[str] | str | None = None, *,
                 stream_name: str = "primary", frames: str = "latest") -> None:
        if frames not in ("latest", "sum", "all"):
            raise ValueError(f"frames must be 'latest', 'sum' or 'all', got {frames!r}")
        self.requested = None if species is None else [str(s) for s in (
            [species] if isinstance(species, str) else species)]
        self.stream_name = stream_name
        self.mode = frames
        self.reset()

    def reset(self) -> None:
        self.start_doc: dict | None = None
        self.layout: MapLayout | None = None
        self.assembler: LineAssembler | None = None
        self.species: list[str] = []
        self.keys: dict[str, str] = {}
        self.descriptor_uids: set[str] = set()
        self.vmax: dict[str, float] = {}
        self.events = 0

    # ---- what the views read ------------------------------------------------------------
    @property
    def nx(self) -> int | None:
        return None if self.layout is None else self.layout.nx

    @property
    def ny(self) -> int | None:
        return None if self.layout is None else self.layout.ny

    @property
    def n_frames(self) -> int:
        return 1 if self.layout is None else self.layout.frames

    @property
    def maps(self) -> dict[str, np.ndarray]:
        return {} if self.assembler is None else self.assembler.current

    @property
    def lines_done(self) -> int:
        return 0 if self.assembler is None else self.assembler.lines_done

    @property
    def frame(self) -> int:
        return 0 if self.assembler is None else self.assembler.frame

    def stack(self, species: Sequence[str] | None = None) -> np.ndarray:
        """(k, ny, nx) maps of ``species`` (default all)."""
        return np.stack([self.maps[s] for s in (species or self.species)])

    def progress(self) -> str:
        text = f"line {self.lines_done}/{self.ny}"
        if self.n_frames > 1:
            text = f"frame {self.frame + 1}/{self.n_frames}, " + text
        return text

    # ---- documents ----------------------------------------------------------------------
    def __call__(self, name: str, doc: dict):
        method = getattr(self, name, None)
        return method(doc) if method is not None else None

    def start(self, doc: Mapping) -> None:
        self.reset()
        self.start_doc = dict(doc)
        self.layout = MapLayout.from_start(doc)

    def descriptor(self, doc: Mapping) -> list[str] | None:
        """Find the map keys of the map stream; allocate the maps."""
        if self.layout is None or doc.get("name") != self.stream_name:
            return None
        data_keys = doc.get("data_keys", {})
        if self.layout.line_key not in data_keys:
            return None
        available = self.layout.collector_keys(list(data_keys))
        wanted = self.requested or list(self.layout.species)
        unknown = [s for s in wanted if s not in available]
        if unknown:
            raise ValueError(f"stream {self.stream_name!r} has no map of {unknown} "
                             f"(it has {sorted(available)})")
        self.keys = {s: available[s] for s in wanted}
        self.species = list(self.keys)
        if self.assembler is None:
            self.assembler = LineAssembler(self.species, self.layout.ny, self.layout.nx,
                                           keep=self.mode)
            self.vmax = dict.fromkeys(self.species, 0.0)
        self.descriptor_uids.add(doc["uid"])
        return self.species

    def event(self, doc: Mapping) -> tuple[int, int] | None:
        """Copy the event's lines in; returns the rows (first, stop) it filled."""
        if doc.get("descriptor") not in self.descriptor_uids:
            return None
        return self._add(doc["data"])

    def event_page(self, doc: Mapping) -> tuple[int, int] | None:
        """Copy the page's lines in, event by event (its columns read row by row: no
        event documents are made); returns the rows the last event filled."""
        if doc.get("descriptor") not in self.descriptor_uids:
            return None
        columns = doc["data"]
        out = None
        for i in range(len(doc["seq_num"])):
            out = self._add({key: column[i] for key, column in columns.items()}) or out
        return out

    def _add(self, data: Mapping) -> tuple[int, int]:
        blocks = {s: data[key] for s, key in self.keys.items() if key in data}
        rows = self.assembler.add(int(np.asarray(data[self.layout.line_key]).ravel()[0]),
                                  blocks)
        for s, block in blocks.items():
            peak = float(np.max(block)) if np.size(block) else 0.0
            if math.isfinite(peak):
                self.vmax[s] = max(self.vmax[s], peak)
        self.events += 1
        return rows

    def result(self, *, partial: bool = False) -> dict[str, np.ndarray]:
        """The maps assembled so far (see :meth:`LineAssembler.maps`)."""
        if self.assembler is None:
            raise IncompleteMapError("no line of the map has arrived")
        return self.assembler.maps(partial=partial)


__all__ = [
    "IncompleteMapError",
    "LineAssembler",
    "MAP_KEYS",
    "MapLayout",
    "SimsMapAccumulator",
    "assemble",
    "map_block",
]
