"""Live views of SIMS maps: per-species maps, isotope ratios, fused over a TEM image.

Three bluesky callbacks, subscribed to the RunEngine (``RE.subscribe(cb)`` or
``RE(plan, cb)``), never to the catalog (which lags the run, see docs/catalog.md):

:class:`LiveSimsMap`
    One image per species, filled line by line as the map's events arrive.
:class:`LiveRatioMap`
    The ratio of two species (e.g. 6Li/7Li), optionally binned and dead-time
    corrected, its Poisson error and its significance against a reference ratio
    (natural lithium by default), all computed by :mod:`temsims.analysis.isotopes`.
:class:`LiveFusedOverlay`
    The growing SIMS map warped into the frame of a TEM image taken before (the
    overview of a correlative experiment) and fused with it.

What they read
    The ``primary`` stream of a :func:`temsims.plans.sims.sims_map` run, fly or step
    mode alike, through :class:`temsims.callbacks.maps.SimsMapAccumulator` (the one
    line assembler): one event per ``lines_per_event`` map lines with
    ``<imager>_line`` and ``<imager>_<species>`` ((lines, nx) counts); pixels not
    acquired yet are NaN. The start document's ``map`` block gives the map's size,
    species, imager, field of view and geometry. Step mode's per-pixel stream
    ``pixels`` is not shown: its ``primary`` has the same line events as fly mode,
    so the views update line by line there too. Frames (``frames > 1``):
    ``frames="latest"`` shows the frame being acquired over the previous one,
    ``frames="sum"`` adds the frames up.

Cost and threads
    Each event costs a copy of its lines into preallocated (ny, nx) float arrays
    (:class:`SimsMapAccumulator`, numpy only; :class:`LiveRatioMap` also recomputes
    the block rows the event touched); the figure is redrawn at most ``max_fps``
    times a second (and at the stop document). With a Qt backend the callbacks use
    bluesky's Qt teleporter (:class:`QtAwareCallback`, as ``LivePlot`` does) so that
    drawing happens on the GUI thread. The teleporter is created by the first such
    callback constructed, which must then be on the main thread (as at the IPython
    prompt); to construct one from another thread, first call
    ``bluesky.callbacks.mpl_plotting.initialize_qt_teleporter()`` from the main
    thread. The temsims session (:func:`temsims.app.session.configure_session`) does not
    call it; bluesky's ``RunEngine`` does (its default ``during_task``) when it is
    created with matplotlib already imported and a Qt backend selected. Headless
    (``headless=True``, or a non-interactive backend such as Agg) the figure is a
    plain :class:`matplotlib.figure.Figure` outside pyplot and is written to
    ``png_path`` at the stop document and every ``save_every`` lines. Errors in
    these callbacks are logged and never interrupt the run (``bluesky``'s
    ``make_class_safe``; set ``BLUESKY_DEBUG_CALLBACKS=1`` to see them raised).

Pixel convention (as :mod:`temsims.plans.correlative`): row 0 is the -y edge, column
0 the -x edge; images are shown with ``origin="lower"`` (y up).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from bluesky.callbacks.core import make_class_safe
from bluesky.callbacks.mpl_plotting import QtAwareCallback

from temsims.analysis.geometry import SimsMapGeometry, TemImageGeometry
from temsims.callbacks.maps import SimsMapAccumulator

logger = logging.getLogger(__name__)


def __getattr__(name: str):
    # NATURAL_6LI_7LI: temsims.analysis.isotopes.NATURAL_LI6_LI7, imported when asked
    # for (that module loads scipy.stats, ~1 s, which importing this one should not).
    if name == "NATURAL_6LI_7LI":
        from temsims.analysis.isotopes import NATURAL_LI6_LI7

        return NATURAL_LI6_LI7
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ============================================================================ metadata
def _get(mapping: Any, *path, default=None):
    for key in path:
        if not isinstance(mapping, Mapping) or key not in mapping:
            return default
        mapping = mapping[key]
    return mapping


def sims_affine(start: Mapping) -> np.ndarray:
    """3x3 affine (col, row, 1) -> specimen (x_um, y_um, 1) of a SIMS map run: its
    ``map`` block (:meth:`temsims.analysis.geometry.SimsMapGeometry.from_metadata`)."""
    return np.asarray(SimsMapGeometry.from_metadata(dict(start)).affine_to_specimen(), float)


def tem_affine(start: Mapping, shape: Sequence[int]) -> np.ndarray:
    """3x3 affine (col, row, 1) -> specimen (x_um, y_um, 1) of a TEM image run: its
    ``image`` block (:meth:`temsims.analysis.geometry.TemImageGeometry.from_metadata`),
    the image's side from ``shape`` when the block records none."""
    block = start.get("image") or {}
    size = None if block.get("size") else int(shape[-1])
    return np.asarray(TemImageGeometry.from_metadata(dict(start), size=size)
                      .affine_to_specimen(), float)


# ============================================================================ figures
class _SafeFormat(dict):
    def __missing__(self, key):
        return "{" + key + "}"


def _format_path(template: str | Path, start: Mapping | None) -> Path:
    text = str(template)
    if "{" in text and start:
        text = text.format_map(_SafeFormat({k: v for k, v in start.items()
                                            if isinstance(v, str | int | float)}))
    return Path(text)


def _interactive_backend() -> bool:
    """False for the file-only backends (Agg, PDF, SVG ...) and Jupyter's inline one."""
    import matplotlib

    backend = matplotlib.get_backend().lower()
    return backend not in ("agg", "pdf", "ps", "svg", "pgf", "cairo", "template") \
        and "inline" not in backend


class _LiveFigure(QtAwareCallback):
    """Figure handling shared by the live views (see the module docstring)."""

    n_panels_default = 1

    def __init__(self, *, ax=None, fig=None, headless: bool = False,
                 png_path: str | Path | None = None, save_every: int | None = None,
                 max_fps: float = 5.0, cmap: str = "viridis", dpi: int = 100,
                 use_teleporter: bool | None = None) -> None:
        self.headless = bool(headless) or (ax is None and fig is None
                                           and not _interactive_backend())
        if self.headless:
            use_teleporter = False
        super().__init__(use_teleporter=use_teleporter)
        if max_fps <= 0:
            raise ValueError(f"max_fps must be > 0, got {max_fps!r}")
        if save_every is not None and int(save_every) < 1:
            raise ValueError(f"save_every must be >= 1 lines, got {save_every!r}")
        self._ax_given, self._fig_given = ax, fig
        self.png_path = png_path
        self.save_every = None if save_every is None else int(save_every)
        self.min_interval_s = 1.0 / float(max_fps)
        self.cmap = cmap
        self.dpi = int(dpi)
        self.fig = None
        self.axes: list = []
        self.saved: list[Path] = []
        self.draws = 0
        self._last_draw = -math.inf
        self._last_saved_line = 0
        self._lock = threading.RLock()

    # ---- figure ----------------------------------------------------------------------
    def _make_axes(self, n: int) -> list:
        """``n`` axes: those given, or on the figure given, or on a new figure."""
        ax = self._ax_given
        if ax is not None:
            axes = list(np.ravel(ax)) if isinstance(ax, Sequence | np.ndarray) else [ax]
            if len(axes) < n:
                raise ValueError(f"{type(self).__name__} needs {n} axes, got {len(axes)}")
            for a in axes[:n]:
                a.cla()
            self.fig = axes[0].figure
            return axes[:n]
        cols = min(n, 3)
        rows = math.ceil(n / cols)
        size = (4.2 * cols, 3.8 * rows)
        if self._fig_given is not None:
            fig = self._fig_given
            fig.clear()
        elif self.headless:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure

            fig = Figure(figsize=size, dpi=self.dpi, layout="constrained")
            FigureCanvasAgg(fig)
        else:
            import matplotlib.pyplot as plt

            fig = plt.figure(figsize=size, layout="constrained")
        self.fig = fig
        return [fig.add_subplot(rows, cols, i + 1) for i in range(n)]

    # ---- drawing -----------------------------------------------------------------------
    def _render(self) -> None:  # update the artists from the data
        raise NotImplementedError

    def _lines_done(self) -> int:
        return 0

    def _start_doc(self) -> Mapping | None:
        return None

    def draw(self, force: bool = False) -> bool:
        """Update the artists and redraw, at most ``max_fps`` times a second."""
        now = time.monotonic()
        if self.fig is None or (not force and now - self._last_draw < self.min_interval_s):
            return False
        with self._lock:
            self._last_draw = now
            self._render()
            self.draws += 1
            if not self.headless:
                self.fig.canvas.draw_idle()
                try:
                    self.fig.canvas.flush_events()
                except NotImplementedError:
                    pass
        return True

    def save(self, path: str | Path | None = None) -> Path | None:
        """Render now and write the figure (PNG) to ``path`` (default ``png_path``)."""
        path = path if path is not None else self.png_path
        if path is None or self.fig is None:
            return None
        path = _format_path(path, self._start_doc())
        with self._lock:
            self._render()
            path.parent.mkdir(parents=True, exist_ok=True)
            self.fig.savefig(path, dpi=self.dpi)
        if path not in self.saved:
            self.saved.append(path)
        return path

    def _after_event(self) -> None:
        self.draw()
        if self.save_every and self.png_path is not None:
            done = self._lines_done()
            if done - self._last_saved_line >= self.save_every or done < self._last_saved_line:
                self._last_saved_line = done
                self.save()

    def _finish(self) -> None:
        self.draw(force=True)
        if self.png_path is not None:
            self.save()

    def close(self) -> None:
        """Close the figure if this callback made it through pyplot."""
        if self.fig is not None and not self.headless and self._ax_given is None \
                and self._fig_given is None:
            import matplotlib.pyplot as plt

            plt.close(self.fig)


class _MapView(_LiveFigure):
    """A live figure fed by a :class:`SimsMapAccumulator`."""

    def __init__(self, species, *, stream_name: str = "primary", frames: str = "latest",
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.acc = SimsMapAccumulator(species, stream_name=stream_name, frames=frames)

    def _lines_done(self) -> int:
        return self.acc.lines_done

    def _start_doc(self):
        return self.acc.start_doc

    def start(self, doc):
        self.acc.start(doc)
        self.fig = None
        self.axes = []
        self._last_draw = -math.inf
        self._last_saved_line = 0

    def descriptor(self, doc):
        if self.acc.descriptor(doc) is None:
            return
        if not self.axes:
            self._setup()
            self.draw(force=True)

    def _setup(self) -> None:
        raise NotImplementedError

    def event(self, doc):
        if self.acc.event(doc) is not None:
            self._after_event()

    def event_page(self, doc):
        from event_model import unpack_event_page

        changed = False
        for ev in unpack_event_page(doc):
            changed = self.acc.event(ev) is not None or changed
        if changed:
            self._after_event()

    def stop(self, doc):
        if self.axes:
            self._finish()

    def _extent(self):
        acc = self.acc
        fov = acc.layout.fov_um
        p = fov / acc.nx
        return [0.0, fov, 0.0, p * acc.ny], "x (um, beam plane)", "y (um, beam plane)"

    def _title_prefix(self) -> str:
        start = self.acc.start_doc or {}
        bits = [str(start[k]) for k in ("scan_id",) if k in start]
        return (f"#{bits[0]} " if bits else "")


@make_class_safe(logger=logger)
class LiveSimsMap(_MapView):
    """Live SIMS maps, one panel per species, filled line by line.

    Parameters
    ----------
    species : str or sequence of str, optional
        Species to show (default: those of the start document's ``map.species``).
    ax : Axes or sequence of Axes, optional
        Axes to draw in (one per species); ``fig``: a figure to fill instead.
    cmap : str
        Matplotlib colour map.
    shared_scale : bool
        One colour scale for all species (default: one per species, from 0 to the
        largest count seen so far in the run, kept across frames).
    headless : bool
        Draw into a figure outside pyplot (implied by a non-interactive backend).
    png_path : str or Path, optional
        Where to write the figure: at the stop document and every ``save_every``
        lines. ``{scan_id}``, ``{uid}``, ``{plan_name}`` ... are filled in from the
        start document.
    save_every : int, optional
        Also save after every this many lines.
    max_fps : float
        Redraws per second at most.
    stream_name, frames
        See :class:`SimsMapAccumulator`.

    Examples
    --------
    >>> RE(sims_map(...), LiveSimsMap(("6Li", "7Li")))                  # IPython
    >>> RE(sims_map(...), LiveSimsMap(png_path="maps/{scan_id}.png", headless=True))
    """

    def __init__(self, species: str | Sequence[str] | None = None, *, ax=None, fig=None,
                 cmap: str = "viridis", shared_scale: bool = False, headless: bool = False,
                 png_path: str | Path | None = None, save_every: int | None = None,
                 max_fps: float = 5.0, stream_name: str = "primary", frames: str = "latest",
                 **kwargs) -> None:
        super().__init__(species, stream_name=stream_name, frames=frames, ax=ax, fig=fig,
                         cmap=cmap, headless=headless, png_path=png_path,
                         save_every=save_every, max_fps=max_fps, **kwargs)
        self.shared_scale = bool(shared_scale)
        self.images: dict[str, Any] = {}

    @property
    def maps(self) -> dict[str, np.ndarray]:
        """(ny, nx) float maps per species (NaN: not acquired)."""
        return self.acc.maps

    def _setup(self) -> None:
        species = self.acc.species
        self.axes = self._make_axes(len(species))
        extent, xl, yl = self._extent()
        self.images = {}
        for ax, s in zip(self.axes, species, strict=True):
            cmap = _cmap_with_bad(self.cmap)
            im = ax.imshow(np.ma.masked_invalid(self.acc.maps[s]), origin="lower", cmap=cmap,
                           extent=extent, interpolation="nearest", aspect="equal",
                           vmin=0.0, vmax=1.0)
            self.fig.colorbar(im, ax=ax, label=f"{s} (counts)")
            ax.set_xlabel(xl)
            ax.set_ylabel(yl)
            self.images[s] = im

    def _render(self) -> None:
        top = max(self.acc.vmax.values(), default=0.0)
        for ax, s in zip(self.axes, self.acc.species, strict=True):
            im = self.images[s]
            im.set_data(np.ma.masked_invalid(self.acc.maps[s]))
            vmax = top if self.shared_scale else self.acc.vmax[s]
            im.set_clim(0.0, max(vmax, 1.0))
            ax.set_title(f"{self._title_prefix()}{s}: {self.acc.progress()}")


def _cmap_with_bad(name: str, bad=(0.85, 0.85, 0.85, 1.0)):
    import matplotlib

    return matplotlib.colormaps[name].with_extremes(bad=bad)


# ============================================================================ ratio
def _real(name: str, value, *, positive: bool = False) -> float:
    """``value`` as a float, finite and >= 0 (> 0 with ``positive``)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} = {value!r} must be finite and {'> 0' if positive else '>= 0'}")
    return value


def _partial_blocks_as_zero(a: np.ndarray, binning: int) -> np.ndarray:
    """The complete ``binning x binning`` blocks of ``a``, with the unacquired (NaN)
    pixels of a block that has some acquired ones set to 0 counts: a block the map is
    still filling shows the pixels it has; a block with none stays NaN."""
    h, w = a.shape[0] // binning, a.shape[1] // binning
    blocks = a[:h * binning, :w * binning].reshape(h, binning, w, binning)
    missing = np.isnan(blocks)
    some = ~missing.all(axis=(1, 3))
    return np.where(missing & some[:, None, :, None], 0.0, blocks).reshape(
        h * binning, w * binning)


@make_class_safe(logger=logger)
class LiveRatioMap(_MapView):
    """Live isotope-ratio map (``numerator / denominator``), growing line by line.

    Ratio, Poisson error and significance are those of
    :func:`temsims.analysis.isotopes.ratio_map` and
    :func:`~temsims.analysis.isotopes.significance_map` on the counts received so far
    (each pixel dead-time corrected, then ``binning x binning`` blocks summed).

    Parameters
    ----------
    numerator, denominator : str
        Species of the ratio (default 6Li/7Li).
    binning : int
        Sum ``binning x binning`` pixels of each species before dividing (only
        complete blocks are shown; a block the map is still filling shows the pixels
        acquired so far).
    reference_ratio : float, "natural" or None
        Ratio of the null hypothesis of the significance, > 0 (default ``"natural"``:
        :data:`temsims.analysis.isotopes.NATURAL_LI6_LI7`, 0.08215); None: no
        significance.
    significance : bool
        Show a second panel with the significance (sigma) of the ratio above
        ``reference_ratio``: the test of the numerator fraction of
        :func:`~temsims.analysis.isotopes.significance_map`, Poisson and
        ``systematic_rel`` in quadrature.
    systematic_rel : float, optional
        Relative systematic error of the ratio in the significance, >= 0 (default
        :data:`temsims.analysis.isotopes.DEFAULT_SYSTEMATIC_REL`, 3 %; 0: Poisson
        only).
    dead_time_s : float, optional
        Detector dead time (s), finite and >= 0; 0 applies no correction. Default:
        the start document's ``dead_time_s`` (the plans record the spectrometer's
        DEAD_TIME), else 0.
        Counts are corrected as non-paralysable (``N = M / (1 - M tau)`` on rates)
        with the dwell per pixel of the start document (``map.dwell_s``) times the
        frames summed; a pixel at or beyond saturation is an error (logged).
    min_counts : float
        Blocks with fewer (corrected) counts, numerator + denominator, are NaN, >= 0
        (default 0: every block with denominator counts is shown).
    correction : (float, float) or "recorded" or None
        ``(K, sigma_K)`` of standard bracketing (decision 0035): ratios scaled by K,
        its error propagated and added to the significance's systematic term. Default
        ``"recorded"``: the one the run's start document records
        (``correlative.particle_analysis.correction_factor``/``correction_sigma``, a
        bracketed particle search), else none. None: the ratios as measured.
    ratio_range : (float, float), optional
        Colour limits of the ratio (default: 0 .. 2 x reference, else the data's 99th
        percentile).
    sigma_range : float
        Significance colour limits +-this (default 5).
    frames : {"sum", "latest"}
        Frames are added up by default (the ratio gets more precise). While frame
        k > 1 crosses a block (``binning > 1``) whose rows then hold k and k - 1
        frames, the block keeps its value of frame k - 1.
    Others as :class:`LiveSimsMap`.

    Attributes
    ----------
    ratio, sigma, significance : ndarray
        The present (binned) maps: ratio, its Poisson standard error (variances
        propagated through the dead-time correction) and the significance (None
        without a reference ratio); NaN where there are no denominator counts or
        fewer than ``min_counts``.
    dwell_s : float or None
        Dwell per pixel and frame from the start document.
    """

    def __init__(self, numerator: str = "6Li", denominator: str = "7Li", *,
                 binning: int = 1, reference_ratio: float | str | None = "natural",
                 significance: bool = False, systematic_rel: float | None = None,
                 dead_time_s: float | None = None, min_counts: float = 0.0,
                 correction: tuple | str | None = "recorded",
                 ratio_range: tuple | None = None,
                 sigma_range: float = 5.0, ax=None, fig=None, cmap: str = "viridis",
                 headless: bool = False, png_path: str | Path | None = None,
                 save_every: int | None = None, max_fps: float = 5.0,
                 stream_name: str = "primary", frames: str = "sum", **kwargs) -> None:
        from temsims.analysis import isotopes

        binning = int(binning)
        if binning < 1:
            raise ValueError(f"binning must be >= 1, got {binning}")
        if isinstance(reference_ratio, str):
            if reference_ratio != "natural":
                raise ValueError(f"reference_ratio must be a number, 'natural' or None, "
                                 f"got {reference_ratio!r}")
            reference_ratio = isotopes.NATURAL_LI6_LI7
        if significance and reference_ratio is None:
            raise ValueError("significance needs a reference_ratio")
        super().__init__((numerator, denominator), stream_name=stream_name, frames=frames,
                         ax=ax, fig=fig, cmap=cmap, headless=headless, png_path=png_path,
                         save_every=save_every, max_fps=max_fps, **kwargs)
        self._isotopes = isotopes
        self.numerator, self.denominator = str(numerator), str(denominator)
        self.binning = binning
        self.reference_ratio = None if reference_ratio is None else _real(
            "reference_ratio", reference_ratio, positive=True)
        self.systematic_rel = _real("systematic_rel", isotopes.DEFAULT_SYSTEMATIC_REL
                                    if systematic_rel is None else systematic_rel)
        self._dead_time_given = dead_time_s is not None
        self.dead_time_s = 0.0 if dead_time_s is None else _real("dead_time_s", dead_time_s)
        self.min_counts = _real("min_counts", min_counts)
        if isinstance(correction, str):
            if correction != "recorded":
                raise ValueError(f"correction must be (K, sigma_K), 'recorded' or None, "
                                 f"got {correction!r}")
            self._correction_given, self.correction = False, None
        else:
            self._correction_given = True
            self.correction = isotopes.check_correction(correction)
        self.show_significance = bool(significance)
        self.ratio_range = ratio_range
        self.sigma_range = float(sigma_range)
        self.dwell_s: float | None = None
        self.ratio = np.zeros((0, 0))
        self.sigma = np.zeros((0, 0))
        self.significance = None
        self._images: list = []

    def _setup(self) -> None:
        missing = {self.numerator, self.denominator} - set(self.acc.species)
        if missing:
            raise ValueError(f"LiveRatioMap: the run maps {self.acc.species}, not "
                             f"{sorted(missing)}")
        self.dwell_s = self.acc.layout.dwell_s
        if not self._dead_time_given:
            recorded = _get(self._start_doc() or {}, "dead_time_s")
            self.dead_time_s = 0.0 if recorded is None else _real("start dead_time_s",
                                                                  recorded)
        if not self._correction_given:
            analysis = _get(self._start_doc() or {}, "correlative", "particle_analysis")
            k = _get(analysis, "correction_factor")
            if k is not None:
                self.correction = self._isotopes.check_correction(
                    (k, _get(analysis, "correction_sigma", default=0.0) or 0.0))
        if self.dead_time_s > 0 and not (self.dwell_s and self.dwell_s > 0):
            raise ValueError(f"LiveRatioMap: dead_time_s = {self.dead_time_s:g} s needs the "
                             f"dwell per pixel, which the start document does not give "
                             f"(map.dwell_s: {self.dwell_s!r})")
        b = self.binning
        shape = (self.acc.ny // b, self.acc.nx // b)
        self.ratio = np.full(shape, np.nan)
        self.sigma = np.full(shape, np.nan)
        self.significance = np.full(shape, np.nan) if self.reference_ratio is not None \
            else None
        n = 2 if self.show_significance else 1
        self.axes = self._make_axes(n)
        extent, xl, yl = self._extent()
        if extent is not None:  # complete blocks only
            p = (extent[1] - extent[0]) / self.acc.nx
            extent = [0.0, p * shape[1] * b, 0.0, p * shape[0] * b]
        hi = self.ratio_range[1] if self.ratio_range else (
            2.0 * self.reference_ratio if self.reference_ratio else 1.0)
        lo = self.ratio_range[0] if self.ratio_range else 0.0
        im = self.axes[0].imshow(np.ma.masked_invalid(self.ratio), origin="lower",
                                 cmap=_cmap_with_bad(self.cmap), extent=extent,
                                 interpolation="nearest", vmin=lo, vmax=hi)
        self.fig.colorbar(im, ax=self.axes[0],
                          label=f"{self.numerator}/{self.denominator}")
        self._images = [im]
        if self.show_significance:
            s = self.sigma_range
            im2 = self.axes[1].imshow(np.ma.masked_invalid(self.significance), origin="lower",
                                      cmap=_cmap_with_bad("RdBu_r"), extent=extent,
                                      interpolation="nearest", vmin=-s, vmax=s)
            self.fig.colorbar(im2, ax=self.axes[1], label="significance (sigma)")
            self._images.append(im2)
        for ax in self.axes:
            ax.set_xlabel(xl)
            ax.set_ylabel(yl)

    def event(self, doc):
        rows = self.acc.event(doc)
        if rows is not None:
            self._update_rows(*rows)
            self._after_event()

    def event_page(self, doc):
        from event_model import unpack_event_page

        for ev in unpack_event_page(doc):
            rows = self.acc.event(ev)
            if rows is not None:
                self._update_rows(*rows)
        self._after_event()

    def _update_rows(self, first: int, stop: int) -> None:
        """Recompute the block rows that map rows [first, stop) touch."""
        if not self._images:
            return
        acc, b = self.acc, self.binning
        b0, b1 = first // b, min(-(-stop // b), self.ratio.shape[0])
        frames = 1
        if acc.mode == "sum":
            frames = acc.frame + 1  # in the rows below lines_done
            if acc.frame > 0:  # above them one frame fewer: complete blocks only
                b1 = min(b1, acc.lines_done // b)
        if b1 <= b0 or self.ratio.shape[1] == 0:
            return
        num = acc.maps[self.numerator][b0 * b:b1 * b]
        den = acc.maps[self.denominator][b0 * b:b1 * b]
        if b > 1:
            num, den = _partial_blocks_as_zero(num, b), _partial_blocks_as_zero(den, b)
        iso = self._isotopes
        result = iso.ratio_map(num, den, binning=b, min_counts=self.min_counts,
                               dwell_s=None if self.dwell_s is None else self.dwell_s * frames,
                               dead_time_s=self.dead_time_s, correction=self.correction)
        self.ratio[b0:b1] = result.ratio
        self.sigma[b0:b1] = result.sigma
        if self.significance is not None:
            self.significance[b0:b1] = iso.significance_map(
                result, self.reference_ratio,
                iso.corrected_systematic(self.systematic_rel, self.correction))

    def _render(self) -> None:
        self._images[0].set_data(np.ma.masked_invalid(self.ratio))
        if self.ratio_range is None and self.reference_ratio is None:
            finite = self.ratio[np.isfinite(self.ratio)]
            if finite.size:
                self._images[0].set_clim(0.0, float(np.percentile(finite, 99)) or 1.0)
        title = f"{self._title_prefix()}{self.numerator}/{self.denominator}"
        if self.binning > 1:
            title += f" (bin {self.binning})"
        if self.dead_time_s > 0:
            title += f" (dead time {self.dead_time_s:g} s)"
        self.axes[0].set_title(f"{title}: {self.acc.progress()}")
        if self.show_significance:
            self._images[1].set_data(np.ma.masked_invalid(self.significance))
            self.axes[1].set_title(f"vs {self.reference_ratio:g}: {self.acc.progress()}")


# ============================================================================ fusion
def _normalise(a: np.ndarray, lo_pct: float = 1.0, hi_pct: float = 99.5) -> np.ndarray:
    a = np.asarray(a, float)
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return np.zeros_like(a)
    lo, hi = np.percentile(finite, [lo_pct, hi_pct])
    out = (a - lo) / (hi - lo if hi > lo else 1.0)
    return np.clip(np.nan_to_num(out, nan=0.0), 0.0, 1.0)


#: Colours of up to four species in the fallback false-colour composite.
_SPECIES_COLOURS = np.array([[1.0, 0.2, 0.1], [0.1, 0.9, 0.2], [0.2, 0.4, 1.0],
                             [1.0, 0.9, 0.1]])


def _species_to_rgb(channels: np.ndarray) -> np.ndarray:
    try:
        from temsims.analysis.fusion import species_to_rgb
    except ImportError:
        pass
    else:
        return np.asarray(species_to_rgb(channels), float)
    k = channels.shape[0]
    norm = np.stack([_normalise(c) for c in channels])
    rgb = np.tensordot(norm.transpose(1, 2, 0), _SPECIES_COLOURS[:k], axes=1)
    return np.clip(rgb, 0.0, 1.0)


def _fuse(pan: np.ndarray, rgb: np.ndarray, method: str) -> np.ndarray:
    """Fuse a (H, W) panchromatic image in [0, 1] with an (H, W, 3) colour image.

    While a map grows, the acquired box may be only a few lines high: the Laplacian
    pyramid then takes as many levels (up to 3) as keep its coarsest level >= 2 pixels,
    and a box under 3 pixels high or wide (no level fits) is fused by IHS.
    """
    from temsims.analysis import fusion

    if method == "laplacian":
        levels = fusion.pyramid_levels_that_fit(pan.shape, 3)
        if levels >= 1:
            return np.clip(np.asarray(fusion.laplacian_pyramid_fuse(pan, rgb, levels=levels),
                                      float), 0.0, 1.0)
        method = "ihs"
    if method == "ihs":
        return np.clip(np.asarray(fusion.ihs_fuse(pan, rgb), float), 0.0, 1.0)
    if method == "alpha":
        return np.clip(0.5 * pan[..., None] + 0.5 * rgb, 0.0, 1.0)
    raise ValueError(f"method must be 'ihs', 'laplacian' or 'alpha', got {method!r}")


def _geometry_affine(geometry, start_fn) -> np.ndarray:
    """A 3x3 affine from an affine, a geometry object or a start document
    (``start_fn(start)``)."""
    if geometry is None:
        raise ValueError("no geometry given")
    if hasattr(geometry, "affine_to_specimen"):
        return np.asarray(geometry.affine_to_specimen(), float)
    if isinstance(geometry, Mapping):
        return start_fn(geometry)
    a = np.asarray(geometry, float)
    if a.shape != (3, 3):
        raise ValueError(f"a geometry must be a 3x3 affine, a geometry object or a start "
                         f"document, got an array of shape {a.shape}")
    return a


@make_class_safe(logger=logger)
class LiveFusedOverlay(_MapView):
    """The growing SIMS map warped onto a TEM image and fused with it.

    Parameters
    ----------
    tem_image : (H, W) array
        The TEM image (e.g. the overview of a correlative experiment).
    tem_geometry : TemImageGeometry, start document or (3, 3) array
        Its pixel -> specimen affine (``affine_to_specimen()``), or the start document
        of its run, or the 3x3 matrix (col, row, 1) -> (x_um, y_um, 1).
    sims_geometry_from_start : bool
        Take the SIMS map's geometry from the run's start document (``correlative``
        block, else ``region`` and ``map``); False: give ``sims_geometry``.
    species : sequence of str
        Up to four species composed into the colour image (default: the run's
        first three).
    method : {"ihs", "laplacian", "alpha"}
        Fusion: intensity substitution (TEM as intensity, SIMS as hue), Laplacian
        pyramid (``temsims.analysis.fusion``), or a 50 % blend.
    sims_geometry : SimsMapGeometry or (3, 3) array, optional
        With ``sims_geometry_from_start=False``.
    registration : object, optional
        A registration result for ``temsims.analysis.registration.warp_sims_to_tem``
        (refines the geometry); default: geometry only.
    max_fps : float
        Redraws per second at most (each redraw warps and fuses; default 2).
    Others as :class:`LiveSimsMap`.

    Notes
    -----
    Geometry-only warp: every TEM pixel inside the map's footprint takes the value of
    the SIMS pixel it falls in (nearest neighbour through
    ``inv(A_sims) @ A_tem``, computed once per run), so a redraw costs one gather per
    species plus the fusion. Outside the footprint the TEM image is shown in grey.
    """

    def __init__(self, tem_image, tem_geometry, sims_geometry_from_start: bool = True,
                 species: Sequence[str] | None = None, method: str = "ihs", *,
                 sims_geometry=None, registration=None, ax=None, fig=None,
                 headless: bool = False, png_path: str | Path | None = None,
                 save_every: int | None = None, max_fps: float = 2.0,
                 stream_name: str = "primary", frames: str = "latest", **kwargs) -> None:
        if method not in ("ihs", "laplacian", "alpha"):
            raise ValueError(f"method must be 'ihs', 'laplacian' or 'alpha', got {method!r}")
        if not sims_geometry_from_start and sims_geometry is None:
            raise ValueError("give sims_geometry, or sims_geometry_from_start=True")
        img = np.asarray(tem_image, float)
        if img.ndim == 3 and img.shape[0] == 1:
            img = img[0]
        if img.ndim != 2:
            raise ValueError(f"tem_image must be 2-D, got shape {img.shape}")
        if species is not None and not 1 <= len(species) <= 4:
            raise ValueError("species: 1..4 species")
        super().__init__(species, stream_name=stream_name, frames=frames, ax=ax, fig=fig,
                         headless=headless, png_path=png_path, save_every=save_every,
                         max_fps=max_fps, **kwargs)
        self.tem_image = img
        self.pan = _normalise(img)
        self.tem_affine = _geometry_affine(tem_geometry, lambda st: tem_affine(st, img.shape))
        self.sims_geometry = None if sims_geometry_from_start else sims_geometry
        self.registration = registration
        self.method = method
        self.fused = np.repeat(self.pan[..., None], 3, axis=2)
        self._index = None
        self._image = None

    @classmethod
    def from_run(cls, tem_run, **kwargs) -> LiveFusedOverlay:
        """Overlay on the image of a TEM run (a tiled BlueskyRun or an in-memory run,
        see :func:`temsims.callbacks.export.load_run`), geometry from its start."""
        from temsims.callbacks.export import load_run

        run = load_run(tem_run)
        image = run.images()
        if not image:
            raise ValueError("the run holds no image")
        key, arr = next(iter(image.items()))
        return cls(np.asarray(arr)[-1] if np.ndim(arr) == 3 else arr, run.start, **kwargs)

    def _setup(self) -> None:
        self.shown = self.acc.species if self.acc.requested is not None \
            else self.acc.species[:3]
        self.axes = self._make_axes(1)
        start = self.acc.start_doc or {}
        a_sims = _geometry_affine(self.sims_geometry if self.sims_geometry is not None
                                  else start, sims_affine)
        self.sims_affine = a_sims
        # TEM pixel (col, row) -> SIMS pixel (col, row): inv(A_sims) @ A_tem.
        m = np.linalg.inv(a_sims) @ self.tem_affine
        h, w = self.pan.shape
        rows, cols = np.mgrid[0:h, 0:w]
        sc = m[0, 0] * cols + m[0, 1] * rows + m[0, 2]
        sr = m[1, 0] * cols + m[1, 1] * rows + m[1, 2]
        ic, ir = np.rint(sc).astype(np.intp), np.rint(sr).astype(np.intp)
        inside = (ic >= 0) & (ic < self.acc.nx) & (ir >= 0) & (ir < self.acc.ny)
        self._index = (ir[inside], ic[inside])
        self._inside = inside
        self.footprint = inside
        ax = self.axes[0]
        tem_extent = self._tem_extent()
        self._image = ax.imshow(self.fused, origin="lower", extent=tem_extent,
                                interpolation="nearest")
        ax.set_xlabel("x (um, specimen)")
        ax.set_ylabel("y (um, specimen)")
        # Outline of the SIMS map on the specimen.
        nx, ny = self.acc.nx, self.acc.ny
        corners = np.array([[-0.5, -0.5, 1], [nx - 0.5, -0.5, 1], [nx - 0.5, ny - 0.5, 1],
                            [-0.5, ny - 0.5, 1], [-0.5, -0.5, 1]]).T
        xy = a_sims @ corners
        ax.plot(xy[0], xy[1], color="white", lw=0.8, alpha=0.8)
        ax.set_xlim(tem_extent[0], tem_extent[1])
        ax.set_ylim(tem_extent[2], tem_extent[3])

    def _tem_extent(self) -> list[float]:
        h, w = self.pan.shape
        a = self.tem_affine
        x0, y0 = (a @ np.array([-0.5, -0.5, 1.0]))[:2]
        x1, y1 = (a @ np.array([w - 0.5, h - 0.5, 1.0]))[:2]
        return [float(x0), float(x1), float(y0), float(y1)]

    def warped_channels(self) -> np.ndarray:
        """(k, H, W) species maps in the TEM frame (NaN outside the map / unacquired)."""
        channels = self.acc.stack(self.shown)
        if self.registration is not None:
            from temsims.analysis.registration import warp_sims_to_tem

            return np.asarray(warp_sims_to_tem(np.nan_to_num(channels, nan=-1.0),
                                               self.registration, self.pan.shape, order=0),
                              float)
        out = np.full((channels.shape[0],) + self.pan.shape, np.nan)
        out[:, self._inside] = channels[:, self._index[0], self._index[1]]
        return out

    def _render(self) -> None:
        warped = self.warped_channels()
        acquired = np.isfinite(warped).any(axis=0)
        fused = np.repeat(self.pan[..., None], 3, axis=2)
        if acquired.any():
            # Fuse over the bounding box of what is acquired (the fusion matches the
            # TEM's histogram to the colours': the rest of the image must not count).
            rows = np.nonzero(acquired.any(axis=1))[0]
            cols = np.nonzero(acquired.any(axis=0))[0]
            box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
            rgb = _species_to_rgb(warped[(slice(None),) + box])
            both = _fuse(self.pan[box], rgb, self.method)
            sub = fused[box]
            sub[acquired[box]] = both[acquired[box]]
        self.fused = fused
        self._image.set_data(fused)
        names = "+".join(self.shown)
        self.axes[0].set_title(f"{self._title_prefix()}{names} on TEM ({self.method}): "
                               f"{self.acc.progress()}")


__all__ = [
    "NATURAL_6LI_7LI",  # noqa: F822 - provided by the module __getattr__
    "LiveFusedOverlay",
    "LiveRatioMap",
    "LiveSimsMap",
    "SimsMapAccumulator",
    "sims_affine",
    "tem_affine",
]
