"""Exporters: runs (and correlative experiments) to OME-TIFF and NeXus-style HDF5.

Input
    :func:`load_run` accepts, and every exporter with it:

    - a run of the catalog: a tiled ``BlueskyRun`` (``cat.runs[uid]``; its start
      metadata, and each stream's arrays read with ``stream[key].read()``);
    - a run in memory: a dict ``{"start": {...}, "stop": {...} (optional),
      "streams": {"primary": {key: array, ...}, ...}, "data_keys": {"primary":
      {key: {...}}} (optional)}``; ``{"start", "primary": {...}}`` and ``{"start",
      "data": {...}}`` are read as the primary stream;
    - the documents of one run as ``(name, doc)`` pairs (what a RunEngine emits);
    - a :class:`RunData`.

    Arrays have the events first (``(n_events, ...)``). The SIMS maps of a
    :func:`temsims.plans.sims.sims_map` run are assembled from the line events
    (``<imager>_line``, ``<imager>_<species>``) by :func:`temsims.analysis.maps.assemble`
    into ``(ny, nx)`` per species (``(frames, ny, nx)`` for several frames), in the
    dtype recorded (int32); the map of an aborted run is float, NaN where it stopped. Other arrays of two or more dimensions per event
    (``camera_image``) are images.

:func:`export_tiff`
    One OME-TIFF per image group (tifffile): the species of a SIMS map as channels of
    one file (``CYX`` / ``TCYX``, channel names = species), each camera image key as
    its own file (``YX`` / ``TYX``). Physical pixel size in um (OME
    ``PhysicalSizeX/Y``; and the TIFF resolution tags in pixels per cm), the start
    document as JSON in the OME ``Description``, a few keys as a ``MapAnnotation``.

:func:`export_hdf5`
    One HDF5 file (h5py), laid out after NeXus NXem where it fits: ``/entryN``
    (NXentry, ``definition = "NXem"``) per run with ``NXuser``, ``NXsample``,
    ``NXinstrument`` (``ibeam_column``/``ebeam_column``, collectors or camera as
    ``NXdetector``, ``stage`` as ``NXstage_lab``), one ``NXdata`` per map or image
    (``signal = "data"``, ``axes`` ``[("frame"), "y", "x"]`` with x, y in um on the
    specimen), the raw streams under ``measurement`` (NXcollection) and the documents
    as JSON strings under ``bluesky`` (NXcollection; scalar start keys also as its
    attributes). Every quantity with a unit has a ``units`` attribute.

:class:`Exporter`
    A RunEngine callback that writes those files for each run at its stop document
    (in a background thread by default, so the RunEngine does not wait on disk).
"""

from __future__ import annotations

import concurrent.futures
import datetime as _dt
import json
import logging
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from temsims.analysis.maps import MapLayout, assemble
from temsims.callbacks.live import sims_affine, tem_affine

logger = logging.getLogger(__name__)

#: Keys of a stream that are bookkeeping, not data.
_NOT_DATA = {"time", "seq_num", "uid", "internal"}


# ============================================================================ run data
@dataclass
class RunData:
    """One run in memory: start/stop documents and each stream's arrays.

    Attributes
    ----------
    start, stop : dict
        The documents (``stop`` None if the run has not ended).
    streams : dict
        ``{stream: {key: array (events first)}}``.
    data_keys : dict
        ``{stream: {key: data-key description (dtype, shape, units, source)}}``.
    """

    start: dict
    stop: dict | None = None
    streams: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    data_keys: dict[str, dict[str, dict]] = field(default_factory=dict)

    @property
    def uid(self) -> str:
        return str(self.start.get("uid", ""))

    @property
    def primary(self) -> dict[str, np.ndarray]:
        return self.streams.get("primary", {})

    def is_sims_map(self) -> bool:
        """A SIMS map run: its start document has a ``map`` block."""
        return isinstance(self.start.get("map"), Mapping)

    def map_keys(self) -> dict[str, str]:
        """``{label: data key}`` of the SIMS map lines in ``primary``: the mapped species
        (``map.species``) first, then the other collectors (named by their mass)."""
        if not self.is_sims_map():
            return {}
        layout = MapLayout.from_start(self.start)
        if layout.line_key not in self.primary:
            return {}
        return layout.collector_keys([k for k in self.primary if np.ndim(self.primary[k]) == 3])

    def maps(self, *, partial: bool = False) -> dict[str, np.ndarray]:
        """SIMS maps per label: (ny, nx), or (frames, ny, nx), in the recorded dtype
        (:func:`temsims.analysis.maps.assemble`; ``partial``: float, NaN where a line
        is missing, instead of :class:`~temsims.analysis.maps.IncompleteMapError`)."""
        keys = self.map_keys()
        if not keys:
            return {}
        layout = MapLayout.from_start(self.start)
        return assemble(layout, self.primary[layout.line_key],
                        {s: self.primary[key] for s, key in keys.items()}, partial=partial)

    def images(self) -> dict[str, np.ndarray]:
        """Image arrays of ``primary`` that are not SIMS map lines: ``(n, h, w)``."""
        skip = set(self.map_keys().values())
        return {k: np.asarray(v) for k, v in self.primary.items()
                if k not in skip and np.ndim(v) >= 3}

    def units(self, key: str, stream: str = "primary") -> str | None:
        return (self.data_keys.get(stream, {}).get(key) or {}).get("units") or None


def _stack(values: list, dtype: str | None = None):
    arrays = [np.asarray(v) for v in values]
    try:
        out = np.stack(arrays)
    except ValueError:  # ragged
        return None
    if dtype and out.dtype.kind in "iufb" and out.dtype != np.dtype(dtype):
        out = out.astype(dtype)
    return out


def documents_to_run(documents: Iterable[tuple[str, dict]]) -> RunData:
    """A :class:`RunData` from the ``(name, doc)`` pairs of one run."""
    from event_model import unpack_event_page

    start = stop = None
    names: dict[str, str] = {}
    data_keys: dict[str, dict] = {}
    events: dict[str, list] = {}
    for name, doc in documents:
        if name == "start":
            start = dict(doc)
        elif name == "stop":
            stop = dict(doc)
        elif name == "descriptor":
            names[doc["uid"]] = doc.get("name", "primary")
            data_keys.setdefault(names[doc["uid"]], {}).update(doc.get("data_keys", {}))
        elif name in ("event", "event_page"):
            for ev in (unpack_event_page(doc) if name == "event_page" else [doc]):
                stream = names.get(ev["descriptor"])
                if stream is not None:
                    events.setdefault(stream, []).append(ev)
    if start is None:
        raise ValueError("no start document among the documents")
    streams: dict[str, dict[str, np.ndarray]] = {}
    for stream, evs in events.items():
        evs.sort(key=lambda e: e.get("seq_num", 0))
        cols: dict[str, np.ndarray] = {}
        for key, desc in data_keys.get(stream, {}).items():
            vals = [e["data"][key] for e in evs if key in e["data"]]
            if len(vals) != len(evs) or desc.get("external"):
                continue
            arr = _stack(vals, desc.get("dtype_numpy"))
            if arr is None:
                logger.warning("%s/%s: arrays of different shapes; not exported", stream, key)
                continue
            cols[key] = arr
        cols["time"] = np.array([e["time"] for e in evs], float)
        streams[stream] = cols
    return RunData(start=start, stop=stop, streams=streams, data_keys=data_keys)


def _from_mapping(obj: Mapping) -> RunData:
    start = dict(obj["start"])
    if "streams" in obj:
        streams = {s: dict(v) for s, v in obj["streams"].items()}
    else:
        prim = obj.get("primary", obj.get("data"))
        streams = {} if prim is None else {"primary": dict(prim)}
    streams = {s: {k: np.asarray(v) for k, v in cols.items()} for s, cols in streams.items()}
    return RunData(start=start, stop=None if obj.get("stop") is None else dict(obj["stop"]),
                   streams=streams, data_keys={s: dict(v) for s, v in
                                               (obj.get("data_keys") or {}).items()})


def _from_tiled(run) -> RunData:
    md = run.metadata
    start = dict(md["start"])
    stop = md.get("stop")
    streams: dict[str, dict[str, np.ndarray]] = {}
    data_keys: dict[str, dict] = {}
    for name in list(run):
        stream = run[name]
        try:
            descriptors = list(getattr(stream, "descriptors", None)
                               or stream.metadata.get("descriptors", []))
        except Exception:  # not an event stream
            descriptors = []
        dks: dict[str, dict] = {}
        for d in descriptors:
            dks.update(d.get("data_keys", {}))
        cols = {}
        for key in list(stream):
            if key in _NOT_DATA and key != "time":
                continue
            try:
                cols[key] = np.asarray(stream[key].read())
            except Exception:
                logger.warning("%s/%s: could not be read; not exported", name, key,
                               exc_info=True)
        streams[name] = cols
        data_keys[name] = dks
    return RunData(start=start, stop=None if stop is None else dict(stop), streams=streams,
                   data_keys=data_keys)


def load_run(run) -> RunData:
    """A :class:`RunData` from a tiled BlueskyRun, a dict, documents or a RunData."""
    if isinstance(run, RunData):
        return run
    if not isinstance(run, dict) and "start" in (getattr(run, "metadata", None) or {}):
        return _from_tiled(run)  # a tiled node (itself a Mapping of its streams)
    if isinstance(run, Mapping):
        if "start" not in run:
            raise ValueError("an in-memory run needs a 'start' document")
        return _from_mapping(run)
    if isinstance(run, Iterable) and not isinstance(run, str | bytes):
        return documents_to_run(run)
    raise TypeError(f"cannot read a run from {type(run).__name__}")


def _as_runs(runs_or_run) -> list[RunData]:
    if isinstance(runs_or_run, RunData | Mapping) or "start" in (
            getattr(runs_or_run, "metadata", None) or {}):
        return [load_run(runs_or_run)]
    items = list(runs_or_run)
    if items and isinstance(items[0], tuple) and len(items[0]) == 2 \
            and isinstance(items[0][0], str):
        return [documents_to_run(items)]  # the documents of one run
    return [load_run(r) for r in items]


# ============================================================================ geometry
def _affine(run: RunData, shape: Sequence[int], kind: str) -> np.ndarray | None:
    try:
        if kind == "sims":
            return sims_affine(run.start)
        return tem_affine(run.start, shape)
    except (ValueError, KeyError, TypeError):
        logger.debug("no geometry for run %s", run.uid, exc_info=True)
        return None


def _axes_um(affine: np.ndarray | None, shape: Sequence[int]):
    """(x of columns, y of rows) in um, and whether they are exact (no rotation)."""
    ny, nx = int(shape[-2]), int(shape[-1])
    if affine is None:
        return None, None, False
    x = affine[0, 0] * np.arange(nx) + affine[0, 2]
    y = affine[1, 1] * np.arange(ny) + affine[1, 2]
    exact = abs(affine[0, 1]) < 1e-12 and abs(affine[1, 0]) < 1e-12
    return x, y, exact


def _pixel_um(affine: np.ndarray | None) -> tuple[float, float] | None:
    if affine is None:
        return None
    return (float(np.hypot(affine[0, 0], affine[1, 0])),
            float(np.hypot(affine[0, 1], affine[1, 1])))


def _json(obj) -> str:
    return json.dumps(obj, default=_json_default, sort_keys=True)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


# ============================================================================ groups
@dataclass
class _Group:
    name: str           # file / NXdata suffix
    data: np.ndarray    # (..., y, x)
    axes: str           # OME axes of data
    channels: list[str]
    kind: str           # "sims" or "tem"
    units: str | None
    affine: np.ndarray | None


def _groups(run: RunData, per_array: bool = False) -> list[_Group]:
    out: list[_Group] = []
    maps = run.maps(partial=True)  # an aborted run's map too, NaN where it stopped
    if maps:
        species = list(maps)
        first = maps[species[0]]
        affine = _affine(run, first.shape, "sims")
        units = run.units(run.map_keys()[species[0]]) or "counts"
        if per_array:
            for s in species:
                out.append(_Group(f"map_{s}", maps[s], "TYX" if maps[s].ndim == 3 else "YX",
                                  [s], "sims", units, affine))
        else:
            stack = np.stack([maps[s] for s in species], axis=-3)
            out.append(_Group("maps", stack, "TCYX" if stack.ndim == 4 else "CYX", species,
                              "sims", units, affine))
    for key, arr in run.images().items():
        img = arr
        if img.ndim == 4 and img.shape[-1] in (3, 4):  # colour images: keep as samples
            continue
        if img.ndim > 3:
            img = img.reshape((-1,) + img.shape[-2:])
        if img.shape[0] == 1:
            img = img[0]
        affine = _affine(run, img.shape, "tem")
        out.append(_Group(key, img, "TYX" if img.ndim == 3 else "YX", [key], "tem",
                          run.units(key), affine))
    return out


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "run"


def _default_stem(run: RunData) -> str:
    start = run.start
    bits = [str(start["scan_id"])] if "scan_id" in start else [run.uid[:8]]
    if start.get("plan_name"):
        bits.append(str(start["plan_name"]))
    return _safe("_".join(bits))


# ============================================================================ TIFF
def export_tiff(run, path: str | Path, *, per_array: bool = False,
                compression: str | None = "zlib") -> list[Path]:
    """Write the maps and images of one run as OME-TIFF files.

    Parameters
    ----------
    run
        A run (see :func:`load_run`).
    path : str or Path
        The file (``.ome.tif`` added if it has no suffix). When the run has several
        image groups (maps and images, or ``per_array``), one file per group named
        ``<stem>_<group>.ome.tif`` next to it. An existing directory: files named
        ``<scan_id>_<plan_name>[_<group>].ome.tif`` in it.
    per_array : bool
        One file per species instead of one multi-channel file.
    compression : str or None
        tifffile compression (``"zlib"``, None).

    Returns
    -------
    list of Path
        The files written.

    Notes
    -----
    OME metadata: ``axes`` (``CYX``, ``TCYX``, ``YX``, ``TYX``), channel names (the
    species, or the data key), ``PhysicalSizeX/Y`` in um on the specimen (SIMS:
    ``fov / nx`` along x, times 1/cos(incidence) along y; TEM: ``fov / size``,
    divided by cos(tilt) along y), ``Description``: the start document as JSON;
    ``MapAnnotation``: uid, plan_name, sample, specimen, correlation_id, units. The
    TIFF resolution tags carry the same pixel size (pixels per cm).
    """
    import tifffile

    data = load_run(run)
    groups = _groups(data, per_array=per_array)
    if not groups:
        raise ValueError(f"run {data.uid}: nothing to export as TIFF (no map or image)")
    path = Path(path)
    if path.is_dir():
        base, stem = path, _default_stem(data)
    else:
        base = path.parent
        name = path.name
        for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
                break
        stem = name
    base.mkdir(parents=True, exist_ok=True)
    written = []
    for g in groups:
        if len(groups) == 1 and not path.is_dir() and path.suffix:
            target = path
        else:
            target = base / (f"{stem}.ome.tif" if len(groups) == 1
                             else f"{stem}_{_safe(g.name)}.ome.tif")
        written.append(_write_ome(tifffile, target, g, data, compression))
    return written


def _write_ome(tifffile, target: Path, g: _Group, run: RunData, compression) -> Path:
    px = _pixel_um(g.affine)
    md: dict[str, Any] = {"axes": g.axes, "Name": f"{_default_stem(run)} {g.name}",
                          "Description": _json({"start": run.start, "group": g.name,
                                                "units": g.units, "kind": g.kind})}
    if "C" in g.axes:
        md["Channel"] = {"Name": list(g.channels)}
    kwargs: dict[str, Any] = {}
    if px is not None:
        md.update({"PhysicalSizeX": px[0], "PhysicalSizeXUnit": "µm",
                   "PhysicalSizeY": px[1], "PhysicalSizeYUnit": "µm"})
        kwargs["resolution"] = (1e4 / px[0], 1e4 / px[1])
        kwargs["resolutionunit"] = "CENTIMETER"
    ann = {k: str(run.start[k]) for k in ("uid", "plan_name", "sample", "specimen",
                                           "correlation_id", "mode", "scan_id")
           if k in run.start}
    ann["channels"] = ",".join(g.channels)
    if g.units:
        ann["units"] = g.units
    md["MapAnnotation"] = {"Namespace": "temsims", "Value": ann}
    tifffile.imwrite(target, g.data, ome=True, metadata=md, photometric="minisblack",
                     compression=compression, software="temsims", **kwargs)
    return target


# ============================================================================ HDF5
def _iso(t) -> str | None:
    if t is None:
        return None
    return _dt.datetime.fromtimestamp(float(t), tz=_dt.UTC).isoformat()


def _attrs_safe(value):
    """An HDF5 attribute value (scalars, strings, lists of either), else JSON text."""
    if isinstance(value, str | bool | int | float | np.generic):
        return value
    if isinstance(value, Sequence) and value and all(isinstance(v, int | float) and
                                                     not isinstance(v, bool) for v in value):
        return np.asarray(value)
    if isinstance(value, Sequence) and value and all(isinstance(v, str) for v in value):
        return [str(v) for v in value]
    return _json(value)


def _group(parent, name: str, nx_class: str):
    g = parent.require_group(name)
    g.attrs["NX_class"] = nx_class
    return g


def _field(group, name: str, value, units: str | None = None, **attrs):
    if value is None:
        return None
    if isinstance(value, str):
        ds = group.create_dataset(name, data=value)
    else:
        ds = group.create_dataset(name, data=np.asarray(value))
    if units:
        ds.attrs["units"] = units
    for k, v in attrs.items():
        ds.attrs[k] = v
    return ds


def _entry_names(runs: list[RunData]) -> list[str]:
    return [f"entry{i + 1}" for i in range(len(runs))]


def export_hdf5(runs_or_run, path: str | Path, *, compression: str | None = "gzip",
                raw: bool = True) -> Path:
    """Write one run, or the runs of a correlative experiment, to one HDF5 file.

    Parameters
    ----------
    runs_or_run
        A run or a sequence of runs (see :func:`load_run`), e.g.
        ``[cat.runs[u] for u in cat.by_correlation_id(cid)]``.
    path : str or Path
        The file (overwritten).
    compression : str or None
        h5py compression of the arrays (``"gzip"``, None).
    raw : bool
        Also store every stream's arrays as recorded under ``entryN/measurement``.

    Returns
    -------
    Path

    Notes
    -----
    Layout (NeXus classes in brackets; NXem names where NXem has one)::

        / [NXroot]  @default=entry1 @creator @file_time @correlation_id (if shared)
          entryN [NXentry]  @default=<first NXdata>
            definition = "NXem"; title; experiment_identifier (run uid);
            start_time, end_time (ISO 8601); correlation_id; program (NXprogram)
            user [NXuser]: name (operator)
            sample [NXsample]: name, description (specimen), x, y, z (um), tilt (deg)
            instrument [NXinstrument]
              ibeam_column [NXibeam_column] (SIMS): energy (keV), current (pA),
                bias (kV), polarity; collectorK [NXdetector]: species, mass (u)
              ebeam_column [NXebeam_column], camera [NXdetector] (TEM)
              stage [NXstage_lab]: x, y, z (um), tilt (deg)
            map_<species> / <image key> [NXdata] @signal="data" @axes=[("frame"), "y", "x"]
              data (counts, dtype as recorded; -1: not acquired), x, y (um)
              @x_indices, @y_indices; transformation: the 3x3 affine (col,row,1)->(x,y,1)
            measurement [NXcollection] / <stream> [NXcollection] / <key> (raw arrays)
            bluesky [NXcollection]: start, stop, data_keys (JSON); scalar start keys as
              attributes
    """
    import h5py

    runs = _as_runs(runs_or_run)
    if not runs:
        raise ValueError("no run to export")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    comp = {"compression": compression} if compression else {}
    names = _entry_names(runs)
    with h5py.File(path, "w") as f:
        f.attrs["NX_class"] = "NXroot"
        f.attrs["default"] = names[0]
        f.attrs["creator"] = "temsims.callbacks.export"
        f.attrs["file_name"] = path.name
        f.attrs["file_time"] = _dt.datetime.now(tz=_dt.UTC).isoformat()
        f.attrs["HDF5_Version"] = h5py.version.hdf5_version
        f.attrs["h5py_version"] = h5py.version.version
        cids = {r.start.get("correlation_id") for r in runs}
        if len(cids) == 1 and None not in cids:
            f.attrs["correlation_id"] = str(next(iter(cids)))
        for name, run in zip(names, runs, strict=True):
            _write_entry(f, name, run, comp, raw)
    return path


def _write_entry(f, name: str, run: RunData, comp: dict, raw: bool) -> None:
    import h5py

    start = run.start
    e = _group(f, name, "NXentry")
    _field(e, "definition", "NXem")
    title = " ".join(str(start[k]) for k in ("plan_name", "sample") if k in start)
    if "scan_id" in start:
        title += f" (scan {start['scan_id']})"
    _field(e, "title", title or run.uid)
    _field(e, "experiment_identifier", run.uid)
    _field(e, "start_time", _iso(start.get("time")))
    if run.stop is not None:
        _field(e, "end_time", _iso(run.stop.get("time")))
        _field(e, "exit_status", str(run.stop.get("exit_status", "")))
    if start.get("correlation_id"):
        _field(e, "correlation_id", str(start["correlation_id"]))
    role = (start.get("correlative") or {}).get("role")
    if role:
        e.attrs["role"] = str(role)
    prog = _group(e, "program1", "NXprogram")
    _field(prog, "program", "temsims (bluesky)")
    if start.get("operator"):
        _field(_group(e, "user", "NXuser"), "name", str(start["operator"]))
    sample = _group(e, "sample", "NXsample")
    _field(sample, "name", str(start.get("sample", "")))
    if start.get("specimen"):
        _field(sample, "description", str(start["specimen"]))
    region = start.get("region") or {}
    _write_instrument(e, run, region)
    for key, unit in (("x_um", "um"), ("y_um", "um"), ("z_um", "um"), ("tilt_deg", "deg"),
                      ("fov_um", "um")):
        if key in region:
            _field(sample, key.rsplit("_", 1)[0], float(region[key]), unit)

    first_data = None
    for g in _groups(run):
        if g.kind == "sims":
            for c, s in enumerate(g.channels):
                arr = g.data[..., c, :, :]
                nm = _write_nxdata(e, f"map_{_safe(s)}", arr, g, f"{s} counts", comp)
                first_data = first_data or nm
        else:
            nm = _write_nxdata(e, _safe(g.name), g.data, g, g.name, comp)
            first_data = first_data or nm
    if first_data:
        e.attrs["default"] = first_data

    if raw:
        meas = _group(e, "measurement", "NXcollection")
        for stream, cols in run.streams.items():
            sg = _group(meas, _safe(stream), "NXcollection")
            for key, arr in cols.items():
                arr = np.asarray(arr)
                if arr.dtype.kind in "OUS":
                    arr = np.asarray([str(v) for v in arr.ravel()], dtype=object)
                    ds = sg.create_dataset(_safe(key), data=arr,
                                           dtype=h5py.string_dtype())
                else:
                    ds = sg.create_dataset(_safe(key), data=arr,
                                           **(comp if arr.ndim >= 2 else {}))
                units = "s" if key == "time" else run.units(key, stream)
                if units:
                    ds.attrs["units"] = units
                src = (run.data_keys.get(stream, {}).get(key) or {}).get("source")
                if src:
                    ds.attrs["source"] = str(src)
    bl = _group(e, "bluesky", "NXcollection")
    _field(bl, "start", _json(start))
    if run.stop is not None:
        _field(bl, "stop", _json(run.stop))
    _field(bl, "data_keys", _json(run.data_keys))
    for k, v in start.items():
        if isinstance(v, str | bool | int | float) or (
                isinstance(v, list) and v and all(isinstance(x, str) for x in v)):
            bl.attrs[k] = v
        elif isinstance(v, Mapping):
            bl.attrs[k] = _json(v)


def _write_instrument(e, run: RunData, region: Mapping) -> None:
    start = run.start
    inst = _group(e, "instrument", "NXinstrument")
    _field(inst, "name", "temsims correlative TEM-SIMS (simulated)")
    if start.get("mode") == "SIMS" or start.get("collectors"):
        col = _group(inst, "ibeam_column", "NXibeam_column")
        _field(col, "energy", start.get("beam_energy_keV"), "keV")
        _field(col, "current", start.get("beam_current_pA"), "pA")
        _field(col, "bias", start.get("bias_kV"), "kV")
        if start.get("polarity"):
            _field(col, "polarity", str(start["polarity"]))
        m = start.get("map") or {}
        _field(col, "dwell_time", m.get("dwell_s"), "s")
        for i, c in enumerate(start.get("collectors") or [], start=1):
            det = _group(inst, f"collector{i}", "NXdetector")
            _field(det, "name", str(c.get("name", f"col{i}")))
            if c.get("species"):
                _field(det, "species", str(c["species"]))
            _field(det, "mass", c.get("mass_u"), "u")
    if start.get("mode") == "TEM":
        _group(inst, "ebeam_column", "NXebeam_column")
        cam = _group(inst, "camera", "NXdetector")
        for d in start.get("detectors") or []:
            _field(cam, "name", str(d))
            break
        _field(cam, "exposure_time", (start.get("plan_args") or {}).get("exposure_s"), "s")
    if region:
        st = _group(inst, "stage", "NXstage_lab")
        for key, unit in (("x_um", "um"), ("y_um", "um"), ("z_um", "um"),
                          ("tilt_deg", "deg")):
            if key in region:
                _field(st, key.rsplit("_", 1)[0], float(region[key]), unit)


def _write_nxdata(e, name: str, arr: np.ndarray, g: _Group, long_name: str,
                  comp: dict) -> str:
    d = _group(e, name, "NXdata")
    d.attrs["signal"] = "data"
    ds = d.create_dataset("data", data=arr, **comp)
    if g.units:
        ds.attrs["units"] = g.units
    ds.attrs["long_name"] = long_name
    if g.kind == "sims" and ds.dtype.kind == "f":
        ds.attrs["fill_value"] = np.nan  # lines an aborted run did not acquire
    x, y, exact = _axes_um(g.affine, arr.shape)
    axes = ["frame"] if arr.ndim == 3 else []
    if x is not None:
        axes += ["y", "x"]
        xs = _field(d, "x", x, "um", long_name="x on the specimen (um)")
        ys = _field(d, "y", y, "um", long_name="y on the specimen (um)")
        if not exact:  # rotated raster: these are the map's own axes, see transformation
            xs.attrs["long_name"] = "x along the map rows (um, rotated raster)"
            ys.attrs["long_name"] = "y along the map columns (um, rotated raster)"
        d.attrs["x_indices"] = arr.ndim - 1
        d.attrs["y_indices"] = arr.ndim - 2
        _field(d, "transformation", g.affine, None,
               description="(col, row, 1) -> specimen (x_um, y_um, 1)")
    else:
        axes += [".", "."]
    if arr.ndim == 3:
        _field(d, "frame", np.arange(arr.shape[0]))
        d.attrs["frame_indices"] = 0
    d.attrs["axes"] = axes
    return name


# ============================================================================ callback
class Exporter:
    """RunEngine callback: export each run to files at its stop document.

    Parameters
    ----------
    directory : str or Path
        Where the files go.
    formats : sequence of {"hdf5", "tiff"}
        What to write.
    name : str
        File stem, formatted with the start document (``{scan_id}``, ``{uid}``,
        ``{plan_name}``, ``{sample}``...).
    background : bool
        Write in a background thread (the RunEngine does not wait); :meth:`flush`
        waits for the files.

    Attributes
    ----------
    written : list of Path
        Files written so far. ``errors``: exceptions of failed exports (also logged).
    """

    def __init__(self, directory: str | Path, *, formats: Sequence[str] = ("hdf5",),
                 name: str = "{scan_id}_{plan_name}", background: bool = True) -> None:
        bad = set(formats) - {"hdf5", "tiff"}
        if bad or not formats:
            raise ValueError(f"formats must be among 'hdf5', 'tiff', got {list(formats)}")
        self.directory = Path(directory)
        self.formats = tuple(formats)
        self.name = name
        self.written: list[Path] = []
        self.errors: list[BaseException] = []
        self._docs: list[tuple[str, dict]] | None = None
        self._lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="temsims-export") if background else None
        self._futures: list[concurrent.futures.Future] = []

    def __call__(self, name: str, doc: dict) -> None:
        if name == "start":
            self._docs = [(name, doc)]
            return
        if self._docs is None:
            return
        self._docs.append((name, doc))
        if name == "stop":
            docs, self._docs = self._docs, None
            if self._pool is not None:
                self._futures.append(self._pool.submit(self._write, docs))
            else:
                self._write(docs)

    def _stem(self, start: Mapping) -> str:
        class _D(dict):
            def __missing__(self, key):
                return "x"

        return _safe(self.name.format_map(_D({k: v for k, v in start.items()
                                               if isinstance(v, str | int | float)})))

    def _write(self, docs) -> list[Path]:
        out = []
        try:
            run = documents_to_run(docs)
            stem = self._stem(run.start)
            self.directory.mkdir(parents=True, exist_ok=True)
            if "hdf5" in self.formats:
                out.append(export_hdf5(run, self.directory / f"{stem}.h5"))
            if "tiff" in self.formats and (run.map_keys() or run.images()):
                out.extend(export_tiff(run, self.directory / f"{stem}.ome.tif"))
        except Exception as exc:
            logger.exception("export of a run to %s failed", self.directory)
            with self._lock:
                self.errors.append(exc)
            if self._pool is None:
                raise
        with self._lock:
            self.written.extend(out)
        return out

    def flush(self, timeout: float | None = None) -> bool:
        """Wait for the exports started so far; False on timeout."""
        futures, self._futures = self._futures, []
        done, pending = concurrent.futures.wait(futures, timeout=timeout)
        self._futures.extend(pending)
        return not pending

    def close(self) -> None:
        self.flush()
        if self._pool is not None:
            self._pool.shutdown(wait=True)


__all__ = [
    "Exporter",
    "RunData",
    "documents_to_run",
    "export_hdf5",
    "export_tiff",
    "load_run",
]

