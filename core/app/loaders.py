"""One correlative experiment from the catalog, on common specimen coordinates.

:func:`load_correlative` reads every run of one ``correlation_id`` (the runs of
:func:`temsims.plans.correlative_tem_sims` or
:func:`temsims.plans.find_labelled_particles`) and returns a
:class:`CorrelativeExperiment`:

- the TEM overview and the TEM zooms as :class:`xarray.DataArray` ``(y, x)`` with the
  specimen coordinates ``x_um`` (along ``x``) and ``y_um`` (along ``y``) from
  :class:`~temsims.analysis.geometry.TemImageGeometry`;
- each SIMS map as an :class:`xarray.Dataset`, one variable per species (counts,
  dims ``(y, x)`` in map pixels, or ``(frame, y, x)``; float with NaN where an
  aborted run stopped) with the
  2-D coordinates ``x_um``, ``y_um`` of the recorded geometry
  (:class:`~temsims.analysis.geometry.SimsMapGeometry`) and, once registered,
  ``x_um_registered``, ``y_um_registered``;
- the registration of each map onto the overview
  (:func:`~temsims.analysis.registration.register_sims_to_tem` on the total counts of
  the mapped species, e.g. 6Li + 7Li), and the maps warped onto the overview grid
  (:func:`~temsims.analysis.registration.warp_sims_to_tem`);
- the start documents, the regions of interest and the particle table (the
  overview's ``rois`` and the particle search's ``particles`` streams).

Its methods fuse a map with the overview or the region's zoom
(:meth:`~CorrelativeExperiment.fuse`, IHS or Laplacian pyramid,
:mod:`temsims.analysis.fusion`), score the fusion
(:meth:`~CorrelativeExperiment.fusion_metrics`) and quantify isotopes
(:meth:`~CorrelativeExperiment.ratio_map`,
:meth:`~CorrelativeExperiment.atom_fraction`, :mod:`temsims.analysis.isotopes`).

Map assembly from the line events (``<imager>_line``, ``<imager>_<species>``) is
:func:`temsims.analysis.maps.assemble`, the one line assembler.
Coordinates are in um; pixel ``(row, col)`` 0 is the -y, -x corner.

Example
-------
>>> from temsims.catalog import open_catalog
>>> from temsims.app.loaders import load_correlative
>>> cat = open_catalog()
>>> exp = load_correlative(cat, cid)                 # doctest: +SKIP
>>> exp.sims[0]["6Li"].plot(x="x_um", y="y_um")      # doctest: +SKIP
>>> rgb = exp.fuse(0, method="laplacian")            # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

logger = logging.getLogger(__name__)

#: ``correlative.role`` of the runs the loader knows (plans/correlative.py, particles.py).
OVERVIEW_ROLES = ("overview",)
SIMS_ROLES = ("sims_map", "particle_search")
ZOOM_ROLES = ("tem_zoom", "particle_zoom")


# ============================================================================ results
@dataclass
class SimsMap:
    """One SIMS map run of an experiment.

    Attributes
    ----------
    uid : str
        The run's uid.
    start : dict
        Its start document.
    data : xarray.Dataset
        One variable per species (counts; NaN where an aborted run stopped), dims ``(y, x)`` (or
        ``(frame, y, x)``), 2-D coords ``x_um``, ``y_um`` (recorded geometry) and, when
        registered, ``x_um_registered``, ``y_um_registered``.
    geometry : temsims.analysis.geometry.SimsMapGeometry
        The recorded geometry.
    roi_index : int or None
        Index of its region of interest (``correlative.roi_index``).
    registration : temsims.analysis.registration.RegistrationResult or None
        The map registered onto the overview (None without an overview, or if it
        failed: see ``registration_error``).
    warped : xarray.Dataset or None
        The species maps on the overview grid (float32 counts, NaN outside the map).
    registration_error : str or None
        Why there is no registration.
    """

    uid: str
    start: dict
    data: Any
    geometry: Any
    roi_index: int | None = None
    registration: Any = None
    warped: Any = None
    registration_error: str | None = None

    @property
    def species(self) -> list[str]:
        """The mapped species (``map.species``), in collector order."""
        return [str(v) for v in self.data.attrs.get("species", list(self.data.data_vars))]

    def counts(self, species: Sequence[str] | None = None) -> np.ndarray:
        """Total counts of ``species`` (default: the mapped species) per pixel, frames
        summed (float; NaN where a pixel was not acquired in one of them)."""
        species = list(species or self.species)
        missing = [s for s in species if s not in self.data]
        if missing:
            raise KeyError(f"species {missing} not in the map (it has {list(self.data)})")
        return sum(_frames_summed(self.data[s].values) for s in species)

    def pixel_size_um(self) -> float:
        """Pixel pitch of the map in the beam-normal plane (um)."""
        return float(self.geometry.pixel_size_um)


@dataclass
class CorrelativeExperiment:
    """TEM and SIMS data of one correlative experiment (see the module docstring).

    Attributes
    ----------
    correlation_id : str
    overview : xarray.DataArray or None
        The TEM overview (counts), dims ``(y, x)``, coords ``x_um``, ``y_um``.
    overview_geometry : temsims.analysis.geometry.TemImageGeometry or None
    zooms : list of xarray.DataArray
        TEM zooms in the order taken; ``attrs["roi_index"]`` pairs them with the maps.
    zoom_geometries : list of TemImageGeometry
    sims : list of SimsMap
        The SIMS maps in the order taken.
    starts : list of dict
        Start documents of every run, oldest first.
    rois : list of dict
        Regions of interest of the overview (``rois`` stream, else the start metadata).
    particles : list of dict
        Particle table of the particle search (``particles`` stream): ``x_um``,
        ``y_um``, ``n6``, ``n7``, ``ratio``, ``z``, ``area_px``, ``labelled``.
    """

    correlation_id: str
    overview: Any = None
    overview_geometry: Any = None
    zooms: list = field(default_factory=list)
    zoom_geometries: list = field(default_factory=list)
    sims: list[SimsMap] = field(default_factory=list)
    starts: list[dict] = field(default_factory=list)
    rois: list[dict] = field(default_factory=list)
    particles: list[dict] = field(default_factory=list)

    # ------------------------------------------------------------ look-ups
    @property
    def registrations(self) -> list:
        """The registration of each SIMS map (None where there is none)."""
        return [m.registration for m in self.sims]

    @property
    def warped(self) -> list:
        """Each SIMS map on the overview grid (None where not registered)."""
        return [m.warped for m in self.sims]

    def zoom_of(self, index: int):
        """The TEM zoom of SIMS map ``index`` (same ``roi_index``), or None."""
        roi = self.sims[index].roi_index
        for z in self.zooms:
            if roi is not None and z.attrs.get("roi_index") == roi:
                return z
        return None

    def registration_error_um(self, index: int, true_affine: np.ndarray) -> float:
        """Distance (um) between where the registration and ``true_affine`` (SIMS
        ``(col, row, 1)`` -> specimen um, e.g. from the simulator's truth) put the
        map's centre pixel."""
        m = self.sims[index]
        if m.registration is None:
            raise ValueError(f"SIMS map {index} is not registered: {m.registration_error}")
        ny, nx = m.geometry.shape
        c = np.array([(nx - 1) / 2.0, (ny - 1) / 2.0, 1.0])
        found = self.overview_geometry.affine_to_specimen() @ m.registration.transform.params @ c
        truth = np.asarray(true_affine, float) @ c
        return float(math.hypot(found[0] - truth[0], found[1] - truth[1]))

    # ------------------------------------------------------------ fusion
    def _pan(self, image: np.ndarray, index: int, pan: str) -> np.ndarray:
        """Bright = material: the bright-field image inverted (auto: if the
        registration found TEM contrast opposite to SIMS; bright field otherwise)."""
        img = np.asarray(image, np.float32)
        if pan == "haadf":
            return img
        if pan == "bf":
            return -img
        if pan != "auto":
            raise ValueError(f"pan must be 'auto', 'bf' or 'haadf', got {pan!r}")
        reg = self.sims[index].registration
        inverted = True if reg is None else bool(reg.quality.get("tem_inverted", True))
        return -img if inverted else img

    def _grid(self, index: int, grid: str):
        """(TEM DataArray, its geometry, SIMS px -> grid px matrix) of ``grid``."""
        m = self.sims[index]
        if m.registration is None:
            raise ValueError(f"SIMS map {index} is not registered ({m.registration_error}): "
                             "nothing to fuse it with")
        to_overview = np.asarray(m.registration.transform.params, float)
        if grid == "overview":
            return self.overview, self.overview_geometry, to_overview
        if grid == "zoom":
            zoom = self.zoom_of(index)
            if zoom is None:
                raise ValueError(f"SIMS map {index} has no TEM zoom")
            geo = self.zoom_geometries[next(k for k, z in enumerate(self.zooms)
                                            if z is zoom)]
            matrix = (geo.affine_from_specimen() @ self.overview_geometry.affine_to_specimen()
                      @ to_overview)
            return zoom, geo, matrix
        raise ValueError(f"grid must be 'overview' or 'zoom', got {grid!r}")

    def fusion_inputs(self, index: int = 0, *, species: Sequence[str] | None = None,
                      grid: Literal["overview", "zoom"] = "overview", crop: bool = True,
                      pan: Literal["auto", "bf", "haadf"] = "auto"):
        """What :meth:`fuse` fuses: ``(pan, colours, window)``.

        ``pan`` (H, W) float32, bright = material; ``colours`` (H, W, 3) the species
        maps warped on the grid and coloured (:func:`~temsims.analysis.fusion.species_to_rgb`)
        on one scale for all species (their joint 99.5th percentile is full colour),
        so that the hue shows their proportions (6Li red, 7Li green: a labelled
        particle is red, a natural one green);
        ``window`` the ``(row slice, col slice)`` of the grid they cover (the whole
        grid if ``crop`` is False, else the largest rectangle fully inside the map).
        """
        from temsims.analysis.fusion import species_to_rgb
        from temsims.analysis.registration import warp_sims_to_tem

        m = self.sims[index]
        species = list(species or m.species)
        image, _geo, matrix = self._grid(index, grid)
        channels = np.stack([_frames_summed(m.data[s].values) for s in species])
        warped = warp_sims_to_tem(channels, matrix, image.shape)
        window = (slice(0, image.shape[0]), slice(0, image.shape[1]))
        if crop:
            window = _inner_window(np.isfinite(warped).all(axis=0))
        inside = warped[(slice(None), *window)]
        finite = inside[np.isfinite(inside)]
        scale = float(np.percentile(finite, 99.5)) if finite.size else 1.0
        colours = species_to_rgb(inside / np.float32(scale if scale > 0 else 1.0),
                                 normalise="none")
        return self._pan(image.values[window], index, pan), colours, window

    def fuse(self, index: int = 0, *, method: Literal["ihs", "laplacian"] = "ihs",
             species: Sequence[str] | None = None,
             grid: Literal["overview", "zoom"] = "overview", crop: bool = True,
             pan: Literal["auto", "bf", "haadf"] = "auto"):
        """SIMS map ``index`` fused with a TEM image: an RGB :class:`xarray.DataArray`
        ``(y, x, rgb)`` in [0, 1] on the TEM grid, coords ``x_um``, ``y_um``.

        Parameters
        ----------
        index : int
            Which SIMS map.
        method : "ihs" or "laplacian"
            :func:`~temsims.analysis.fusion.ihs_fuse` or
            :func:`~temsims.analysis.fusion.laplacian_pyramid_fuse`.
        species : sequence of str, optional
            Species shown (up to 6 colours; default the mapped species).
        grid : "overview" or "zoom"
            The overview's pixel grid, or that of the region's TEM zoom (finer than the
            map: true pan-sharpening); the map reaches it through the registration
            onto the overview.
        crop : bool
            Only the part of the grid inside the map (else the whole image, the map
            black outside).
        pan : "auto", "bf" or "haadf"
            How to make the pan bright where there is material: "bf" inverts the
            image, "haadf" keeps it, "auto" follows the registration's contrast sign.
        """
        from temsims.analysis.fusion import ihs_fuse, laplacian_pyramid_fuse

        p, colours, window = self.fusion_inputs(index, species=species, grid=grid, crop=crop,
                                                pan=pan)
        if method == "ihs":
            rgb = ihs_fuse(p, colours)
        elif method == "laplacian":
            levels = max(1, min(3, int(math.log2(max(2, min(p.shape)))) - 2))
            rgb = laplacian_pyramid_fuse(p, colours, levels=levels)
        else:
            raise ValueError(f"method must be 'ihs' or 'laplacian', got {method!r}")
        image, _geo, _ = self._grid(index, grid)
        return _rgb_array(rgb, image, window, method=method, index=index, grid=grid)

    def fusion_metrics(self, index: int = 0, *, method: Literal["ihs", "laplacian"] = "ihs",
                       species: Sequence[str] | None = None,
                       grid: Literal["overview", "zoom"] = "overview",
                       fused=None) -> dict[str, Any]:
        """:func:`temsims.analysis.metrics.fusion_metrics` of :meth:`fuse` (cropped):
        the colours on the same grid are the spectral reference; ``ratio`` is the SIMS
        pixel over the grid's pixel (for ERGAS)."""
        from temsims.analysis.metrics import fusion_metrics

        p, colours, _ = self.fusion_inputs(index, species=species, grid=grid, crop=True)
        if fused is None:
            fused = self.fuse(index, method=method, species=species, grid=grid, crop=True)
        _, geo, _ = self._grid(index, grid)
        ratio = self.sims[index].pixel_size_um() / float(geo.pixel_size_um)
        out = fusion_metrics(np.asarray(fused), colours, p, ratio=ratio)
        return {k: (float(v) if isinstance(v, int | float | np.floating) else v)
                for k, v in out.items()}

    # ------------------------------------------------------------ isotopes
    def ratio_map(self, index: int = 0, numerator: str = "6Li", denominator: str = "7Li",
                  **kwargs):
        """:func:`temsims.analysis.isotopes.ratio_map` of two species of map ``index``
        (frames summed); keywords (``binning``, ``min_counts``, ``dwell_s``,
        ``dead_time_s``) are passed on. ``dwell_s`` defaults to the map's."""
        from temsims.analysis.isotopes import ratio_map

        m = self.sims[index]
        if kwargs.get("dead_time_s") and "dwell_s" not in kwargs:
            kwargs["dwell_s"] = (m.start.get("map") or {}).get("dwell_s")
        return ratio_map(_frames_summed(m.data[numerator].values),
                         _frames_summed(m.data[denominator].values), **kwargs)

    def atom_fraction(self, index: int = 0, numerator: str = "6Li",
                      denominator: str = "7Li", *, binning: int = 1,
                      min_counts: float = 10.0, **kwargs):
        """Atom fraction ``x = N_num / (N_num + N_den)`` (e.g. x(6Li)) of map ``index``
        with its Poisson standard error, as an :class:`xarray.Dataset`.

        Computed from :meth:`ratio_map` (``R`` and ``sigma_R``): ``x = R / (1 + R)``,
        ``sigma_x = sigma_R / (1 + R)^2`` (= ``sqrt(x (1 - x) / n)`` for raw counts).
        Variables ``fraction``, ``sigma``, ``counts`` (N_num + N_den), ``valid``;
        dims ``(y, x)`` of the binned map with 2-D ``x_um``, ``y_um`` of the bin
        centres (recorded geometry).
        """
        import xarray as xr

        rm = self.ratio_map(index, numerator, denominator, binning=binning,
                            min_counts=min_counts, **kwargs)
        r = rm.ratio
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = r / (1.0 + r)
            sigma = rm.sigma / (1.0 + r) ** 2
        counts = np.where(rm.acquired, rm.numerator + rm.denominator, np.nan)
        ny, nx = r.shape
        b = rm.binning
        rows = (np.arange(ny) * b + (b - 1) / 2.0)[:, None]
        cols = (np.arange(nx) * b + (b - 1) / 2.0)[None, :]
        x_um, y_um = self.sims[index].geometry.pixel_to_specimen_um(rows, cols)
        coords = {"x_um": (("y", "x"), x_um), "y_um": (("y", "x"), y_um)}
        name = f"x({numerator})"
        return xr.Dataset(
            {"fraction": (("y", "x"), frac.astype(np.float64), {"long_name": name}),
             "sigma": (("y", "x"), sigma.astype(np.float64),
                       {"long_name": f"Poisson standard error of {name}"}),
             "counts": (("y", "x"), counts, {"units": "counts"}),
             "valid": (("y", "x"), rm.valid)},
            coords=coords, attrs={"numerator": numerator, "denominator": denominator,
                                  "binning": b, "min_counts": rm.min_counts,
                                  "uid": self.sims[index].uid})


# ============================================================================ helpers
def _frames_summed(values) -> np.ndarray:
    """(y, x) float: frames added up (NaN where a frame did not acquire a pixel)."""
    arr = np.asarray(values, np.float64)
    return arr.sum(axis=0) if arr.ndim == 3 else arr


def _inner_window(valid: np.ndarray) -> tuple[slice, slice]:
    """Rows and columns of the largest axis-aligned block whose pixels are all valid,
    grown from the bounding box of ``valid`` inwards (exact for rectangles)."""
    if not valid.any():
        raise ValueError("the SIMS map does not overlap the TEM image")
    rows = np.flatnonzero(valid.any(axis=1))
    cols = np.flatnonzero(valid.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    while r1 - r0 > 1 and c1 - c0 > 1 and not valid[r0:r1, c0:c1].all():
        block = valid[r0:r1, c0:c1]
        edges = {"top": block[0].mean(), "bottom": block[-1].mean(),
                 "left": block[:, 0].mean(), "right": block[:, -1].mean()}
        worst = min(edges, key=edges.get)
        if worst == "top":
            r0 += 1
        elif worst == "bottom":
            r1 -= 1
        elif worst == "left":
            c0 += 1
        else:
            c1 -= 1
    return slice(int(r0), int(r1)), slice(int(c0), int(c1))


def _rgb_array(rgb: np.ndarray, image, window, **attrs):
    import xarray as xr

    sub = image[window]
    return xr.DataArray(np.asarray(rgb, np.float32), dims=("y", "x", "rgb"),
                        coords={"x_um": ("x", sub.x_um.values), "y_um": ("y", sub.y_um.values),
                                "rgb": ["R", "G", "B"]},
                        attrs={**attrs, "long_name": "fused SIMS colours x TEM detail"})


def tem_dataarray(image: np.ndarray, geometry, *, name: str = "tem", start=None,
                  **attrs):
    """A TEM image as an :class:`xarray.DataArray` ``(y, x)`` with ``x_um``, ``y_um``."""
    import xarray as xr

    ny, nx = image.shape
    x_um, _ = geometry.pixel_to_specimen_um(np.zeros(nx), np.arange(nx))
    _, y_um = geometry.pixel_to_specimen_um(np.arange(ny), np.zeros(ny))
    out = xr.DataArray(np.asarray(image), dims=("y", "x"),
                       coords={"x_um": ("x", x_um), "y_um": ("y", y_um)}, name=name,
                       attrs={"units": "counts", "pixel_size_um": float(geometry.pixel_size_um),
                              "fov_um": float(geometry.fov_um), **attrs})
    if start is not None:
        out.attrs["uid"] = str(start.get("uid", ""))
    out.x_um.attrs["units"] = "um"
    out.y_um.attrs["units"] = "um"
    return out


def sims_dataset(maps: Mapping[str, np.ndarray], geometry, *, start=None, units="counts",
                 **attrs):
    """SIMS maps as an :class:`xarray.Dataset` (one variable per species, ``(y, x)`` or
    ``(frame, y, x)``) with the 2-D ``x_um``, ``y_um`` of ``geometry``."""
    import xarray as xr

    ny, nx = geometry.shape
    rows, cols = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    x_um, y_um = geometry.pixel_to_specimen_um(rows, cols)
    data = {}
    for s, arr in maps.items():
        arr = np.asarray(arr)
        dims = ("frame", "y", "x") if arr.ndim == 3 else ("y", "x")
        data[s] = (dims, arr, {"units": units, "long_name": f"{s} counts"})
    ds = xr.Dataset(data, coords={"x_um": (("y", "x"), x_um, {"units": "um"}),
                                  "y_um": (("y", "x"), y_um, {"units": "um"})})
    ds.attrs.update({"pixel_size_um": float(geometry.pixel_size_um),
                     "fov_um": float(geometry.fov_um), **attrs})
    if start is not None:
        ds.attrs["uid"] = str(start.get("uid", ""))
        m = start.get("map") or {}
        if m.get("dwell_s") is not None:
            ds.attrs["dwell_s"] = float(m["dwell_s"])
    return ds


def _role(start: Mapping) -> str | None:
    return (start.get("correlative") or {}).get("role")


def _tem_image(run) -> np.ndarray | None:
    images = run.images()
    if not images:
        return None
    dets = run.start.get("detectors") or []
    key = f"{dets[0]}_image" if dets and f"{dets[0]}_image" in images else next(iter(images))
    img = np.asarray(images[key])
    while img.ndim > 2:
        img = img[-1]  # the last event's image
    return img


def _tem_geometry(start: Mapping, image: np.ndarray):
    """TemImageGeometry from the start document; the image's own side when the
    document does not record the camera size (or records another)."""
    from temsims.analysis.geometry import TemImageGeometry

    if image.ndim != 2 or image.shape[0] != image.shape[1]:
        raise ValueError(f"TEM image of shape {image.shape}: a square camera image expected")
    try:
        geo = TemImageGeometry.from_metadata(dict(start))
    except ValueError:
        geo = None
    if geo is None or geo.shape != image.shape:
        geo = TemImageGeometry.from_metadata(dict(start), size=int(image.shape[0]))
    return geo


def _stream_table(run, stream: str, prefix: str) -> list[dict]:
    cols = {k: np.asarray(v) for k, v in run.streams.get(stream, {}).items()
            if k not in ("time", "seq_num", "uid") and not k.startswith("ts_")}
    if not cols:
        return []
    n = min(len(v) for v in cols.values())
    out = []
    for i in range(n):
        row = {}
        for k, v in cols.items():
            name = k[len(prefix) + 1:] if k.startswith(prefix + "_") else k
            val = v[i]
            row[name] = val.item() if isinstance(val, np.generic) else val
        out.append(row)
    return out


#: Streams the loader reads besides ``primary`` (tables of the correlative plans).
TABLE_STREAMS = ("rois", "particles")
#: Concurrent reads of one run's arrays from a tiled server (latency-bound requests).
READ_THREADS = 4


def _wanted_keys(start: Mapping, stream: str, keys: Sequence[str]) -> list[str]:
    """The keys of ``stream`` the loader needs: a SIMS map's line index and collector
    lines, a TEM run's image, every column of a table stream; and ``time``."""
    from temsims.analysis.maps import MapLayout

    data = [k for k in keys if not k.startswith("ts_") and k not in ("seq_num", "uid")]
    if stream != "primary":
        return data
    if "map" in start:
        prefix = MapLayout.from_start(start).imager
        return [k for k in data if k.startswith(prefix + "_") or k == "time"]
    dets = start.get("detectors") or []
    images = [f"{d}_image" for d in dets if f"{d}_image" in data] or \
        [k for k in data if k.endswith("_image")]
    return images


def _read_tiled_run(run):
    """A :class:`temsims.callbacks.export.RunData` with only what the loader needs
    (:func:`_wanted_keys`), each stream in one request where the server exports whole
    streams (:func:`_read_stream`), else column by column, concurrently."""
    from concurrent.futures import ThreadPoolExecutor

    from temsims.callbacks.export import RunData

    md = run.metadata
    start = dict(md["start"])
    # The stop document counts the events of each stream: no request to list them.
    counted = (md.get("stop") or {}).get("num_events")
    names = [name for name in (counted if counted else list(run))
             if name == "primary" or name in TABLE_STREAMS]
    # Streams on threads of their own: a stream read by its columns waits on ``columns``.
    with ThreadPoolExecutor(READ_THREADS) as columns, \
            ThreadPoolExecutor(max(1, len(names))) as pool:
        jobs = {name: pool.submit(_read_stream, run, start, name, columns) for name in names}
        streams = {name: job.result() for name, job in jobs.items()}
    stop = md.get("stop")
    return RunData(start=start, stop=None if stop is None else dict(stop), streams=streams)


def _read_stream(run, start: Mapping, name: str, pool) -> dict[str, np.ndarray]:
    """The wanted columns of one stream of ``run``.

    From a temsims catalog server, in one request: the stream exported whole as an
    ``.npz`` (:mod:`temsims.catalog.exporters`), ~0.1 s for a 512 x 512 map of four
    species. tiled's client would list the stream and ask for each column's node,
    each request ~30-50 ms of the server's path look-ups on a loaded 2-core machine
    (1.0-1.7 s through the nodes). From another tiled server (the export refused),
    :func:`_read_stream_columns`.
    """
    import httpx

    from temsims.catalog.exporters import STREAM_NPZ, TABLE_PREFIX, read_stream_npz

    context = run.context
    path = "/".join([*run.path_parts, name])
    response = context.http_client.get(f"{str(context.api_uri).rstrip('/')}/container/full/{path}",
                                       headers={"Accept": STREAM_NPZ})
    if response.status_code != httpx.codes.OK:
        logger.debug("stream %s not exported whole (%s); read by its columns", name,
                     response.status_code)
        return _read_stream_columns(run[name], start, name, pool)
    metadata, members = read_stream_npz(response.content)
    data = {key[len(TABLE_PREFIX):] if key.startswith(TABLE_PREFIX) else key: values
            for key, values in members.items()}
    keys = _wanted_keys(start, name, [*(metadata.get("data_keys") or {}), "time"])
    return {key: data[key] for key in keys if key in data}


def _read_stream_columns(stream, start: Mapping, name: str, pool) -> dict[str, np.ndarray]:
    """The wanted columns of one stream: its scalar columns in one request for the
    stream's table and each array in one request for its data, all concurrently on
    ``pool``, the columns known from the descriptors' data keys.

    That is the layout bluesky-tiled-plugins' TiledWriter stores (an ``internal``
    table beside one array node per array key); a stream the server does not hold
    that way (a request refused) is read column by column through the client.
    """
    import httpx

    data_keys = (stream.metadata or {}).get("data_keys") or {}
    keys = _wanted_keys(start, name, [*data_keys, "time"])
    arrays = [k for k in keys if data_keys.get(k, {}).get("dtype") == "array"]
    columns = [k for k in keys if k not in arrays]
    client = stream.context.http_client
    api = str(stream.context.api_uri).rstrip("/")
    path = "/".join(stream.path_parts)

    def table():
        import pyarrow as pa

        response = client.get(f"{api}/table/full/{path}/internal", params={"column": columns},
                              headers={"Accept": "application/vnd.apache.arrow.file"})
        response.raise_for_status()
        read = pa.ipc.open_file(pa.py_buffer(response.content)).read_all()
        return {k: read.column(k).to_numpy(zero_copy_only=False) for k in columns}

    def array(key):
        response = client.get(f"{api}/array/full/{path}/{key}",
                              headers={"Accept": "application/octet-stream"})
        response.raise_for_status()
        entry = data_keys[key]
        values = np.frombuffer(response.content, dtype=np.dtype(entry["dtype_numpy"]))
        return values.reshape(-1, *entry["shape"])

    if all("dtype_numpy" in data_keys[k] for k in arrays):
        jobs = [pool.submit(array, key) for key in arrays]
        if columns:
            jobs.append(pool.submit(table))
        try:
            results = [job.result() for job in jobs]
        except (httpx.HTTPStatusError, KeyError):
            logger.debug("stream %s not in the TiledWriter's layout; read by its nodes", name,
                         exc_info=True)
        else:
            out = dict(results.pop()) if columns else {}
            out.update(zip(arrays, results, strict=True))
            return out
    present = set(stream)
    keys = [k for k in keys if k in present]
    return dict(zip(keys, pool.map(lambda key: np.asarray(stream[key].read()), keys),
                    strict=True))


def _as_run(run):
    """RunData of a tiled run (selective, :func:`_read_tiled_run`) or of anything
    :func:`temsims.callbacks.export.load_run` reads."""
    from temsims.callbacks.export import RunData, load_run

    if not isinstance(run, RunData | dict) and "start" in (getattr(run, "metadata", None)
                                                           or {}):
        return _read_tiled_run(run)
    return load_run(run)


def _start_of(run) -> Mapping:
    from temsims.callbacks.export import RunData

    if isinstance(run, RunData):
        return run.start
    md = getattr(run, "metadata", None)
    if md is not None and "start" in md:
        return md["start"]
    return run.get("start", {}) if isinstance(run, Mapping) else {}


def _runs_of(catalog, correlation_id: str) -> list:
    """The runs of one correlation id: a temsims Catalog, a tiled container of runs,
    or an iterable of runs."""
    if hasattr(catalog, "by_correlation_id"):
        node = catalog.by_correlation_id(correlation_id)
    elif hasattr(catalog, "search"):
        from tiled.queries import Key

        node = catalog.search(Key("start.correlation_id") == correlation_id)
    else:
        node = None
    runs = list(node.values()) if node is not None else [
        r for r in catalog if _start_of(r).get("correlation_id") == correlation_id]
    if not runs:
        raise LookupError(f"no run with correlation_id {correlation_id!r}")
    return runs


# ============================================================================ API
def load_correlative(catalog, correlation_id: str, *, register: bool = True,
                     species: Sequence[str] | None = None,
                     registration_options: Mapping[str, Any] | None = None,
                     roles: Sequence[str] | None = None) -> CorrelativeExperiment:
    """TEM and SIMS data of one correlative experiment, registered, ready to fuse.

    Parameters
    ----------
    catalog : temsims.catalog.Catalog, tiled container of BlueskyRuns, or iterable
        Where the runs are (:func:`temsims.catalog.open_catalog`, ``cat.runs``), or
        the runs themselves (tiled runs, in-memory runs, :class:`RunData`).
    correlation_id : str
        The experiment's ``correlation_id``.
    register : bool
        Register each SIMS map onto the TEM overview and warp it onto the overview grid.
    species : sequence of str, optional
        Species whose total counts are registered (default: every mapped species of
        the map, e.g. 6Li + 7Li).
    registration_options : dict, optional
        Keywords of :func:`temsims.analysis.registration.register_sims_to_tem`
        (``invert_tem`` is "auto": bright field or HAADF).
    roles : sequence of str, optional
        Read only the runs whose ``correlative.role`` is one of these (e.g.
        ``("particle_search",)`` for the map and particle table of a particle search
        without its zooms); decided on the metadata, before any array is read.

    Returns
    -------
    CorrelativeExperiment

    Raises
    ------
    LookupError
        If no run has that correlation id.
    """
    import xarray as xr

    from temsims.analysis.geometry import SimsMapGeometry
    from temsims.analysis.maps import IncompleteMapError
    from temsims.analysis.registration import register_sims_to_tem, warp_sims_to_tem
    found = _runs_of(catalog, correlation_id)
    if roles is not None:
        found = [r for r in found if _role(_start_of(r)) in set(roles)]
    runs = [_as_run(r) for r in found]
    runs.sort(key=lambda r: float(r.start.get("time", 0.0)))
    exp = CorrelativeExperiment(correlation_id=correlation_id,
                                starts=[dict(r.start) for r in runs])
    tem_runs = []
    for run in runs:
        start = run.start
        if run.is_sims_map() or _role(start) in SIMS_ROLES:
            try:
                maps = run.maps()
            except IncompleteMapError as err:
                logger.warning("SIMS run %s: %s", run.uid, err)
                maps = run.maps(partial=True)
            if not maps:
                logger.warning("SIMS run %s holds no map; skipped", run.uid)
                continue
            geo = SimsMapGeometry.from_metadata(start)
            mapped = [s for s in (start.get("map") or {}).get("species", []) if s in maps] \
                or list(maps)
            ds = sims_dataset(maps, geo, start=start, species=mapped,
                              role=_role(start) or "sims_map")
            times = np.asarray(run.primary.get("time", []), float)
            if times.size:  # when the map's lines were read (epoch s)
                ds.attrs["time_first"], ds.attrs["time_last"] = float(times.min()), \
                    float(times.max())
            roi = (start.get("correlative") or {}).get("roi_index")
            exp.sims.append(SimsMap(uid=run.uid, start=dict(start), data=ds, geometry=geo,
                                    roi_index=roi))
            exp.particles.extend(_stream_table(run, "particles", "particle"))
        elif start.get("mode") == "TEM" or run.images():
            img = _tem_image(run)
            if img is None:
                logger.warning("TEM run %s holds no image; skipped", run.uid)
                continue
            tem_runs.append((run, img, _tem_geometry(start, img)))
    # The overview: its role, else the TEM image of the largest field of view.
    overview = next((t for t in tem_runs if _role(t[0].start) in OVERVIEW_ROLES), None)
    if overview is None and tem_runs and not any(_role(t[0].start) in ZOOM_ROLES
                                                 for t in tem_runs):
        overview = max(tem_runs, key=lambda t: t[2].fov_um)
    for run, img, geo in tem_runs:
        roi = (run.start.get("correlative") or {}).get("roi_index")
        if overview is not None and run is overview[0]:
            exp.overview = tem_dataarray(img, geo, name="overview", start=run.start,
                                         role="overview")
            exp.overview_geometry = geo
            exp.rois = _stream_table(run, "rois", "rois") or list(
                (run.start.get("correlative") or {}).get("rois") or [])
        else:
            exp.zooms.append(tem_dataarray(img, geo, name="zoom", start=run.start,
                                           role=_role(run.start) or "tem_zoom",
                                           roi_index=-1 if roi is None else int(roi)))
            exp.zoom_geometries.append(geo)
    if not register:
        return exp
    if exp.overview is None:
        for m in exp.sims:
            m.registration_error = "no TEM overview in this experiment"
        return exp
    options = {"invert_tem": "auto", **dict(registration_options or {})}
    tem = np.asarray(exp.overview.values, np.float32)
    for m in exp.sims:
        try:
            total = m.counts(species or [s for s in m.species if s in m.data])
            reg = register_sims_to_tem(total, tem, m.geometry, exp.overview_geometry,
                                       **options)
        except (ValueError, KeyError) as err:
            m.registration_error = str(err)
            logger.warning("SIMS map %s not registered: %s", m.uid, err)
            continue
        m.registration = reg
        ny, nx = m.geometry.shape
        rows, cols = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        trow, tcol = reg.sims_to_tem_px(rows, cols)
        x_um, y_um = exp.overview_geometry.pixel_to_specimen_um(trow, tcol)
        m.data = m.data.assign_coords(x_um_registered=(("y", "x"), x_um, {"units": "um"}),
                                      y_um_registered=(("y", "x"), y_um, {"units": "um"}))
        names = list(m.data.data_vars)
        warped = warp_sims_to_tem(np.stack([_frames_summed(m.data[s].values)
                                            for s in names]), reg, tem.shape)
        m.warped = xr.Dataset(
            {s: (("y", "x"), warped[k], {"units": "counts", "long_name": f"{s} counts"})
             for k, s in enumerate(names)},
            coords={"x_um": ("x", exp.overview.x_um.values),
                    "y_um": ("y", exp.overview.y_um.values)},
            attrs={"uid": m.uid, "grid": "overview"})
    return exp


__all__ = [
    "CorrelativeExperiment",
    "SimsMap",
    "load_correlative",
    "sims_dataset",
    "tem_dataarray",
]
