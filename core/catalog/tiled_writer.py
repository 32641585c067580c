"""bluesky-tiled-plugins' ``TiledWriter``, keeping the axis names the devices describe.

``TiledWriter`` (2.0.x) stores an array that travels inside events as a zarr array
whose axes it names by their size, shared across the stream: ``("time", "dim_int_1",
"dim_int_1")`` for a square image. The ``dims`` of the descriptor's data key are kept
as metadata only. xarray warns "Duplicate dimension names" at every ``stream.read()``
of such a run, and two arrays whose axes merely have the same size (an image's x and
a spectrum's channels) are aligned as if they were one axis.
:class:`DimsKeepingTiledWriter` names each stored array's axes ``("time", *dims)``.

Imported only when a writer is built: bluesky-tiled-plugins' writer takes ~2 s to
import, which a process that only reads the catalog should not pay.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bluesky_tiled_plugins.writing.tiled_writer import TiledWriter, _RunWriter

__all__ = ["DimsKeepingTiledWriter", "stream_dims"]


def stream_dims(data_keys: Mapping[str, Mapping]) -> dict[str, tuple[str, ...]]:
    """Names of the axes (after ``time``) of each array a stream's events hold.

    Parameters
    ----------
    data_keys
        The stream descriptor's data keys, in its order.

    Returns
    -------
    dict
        Data key -> its ``dims``, for every array stored from the events (not the
        external ones). Axes of an array without usable ``dims`` (missing, of the wrong
        length, repeated, or ``time``) are named ``<key>_<axis>``. An axis whose name
        an array earlier in the descriptor gave an axis of another size is named
        ``<key>_<name>``: xarray builds a stream's Dataset only from arrays whose axes
        of one name have one size.
    """
    sizes: dict[str, int] = {}
    out = {}
    for key, dk in data_keys.items():
        if dk.get("dtype") != "array" or "external" in dk:
            continue
        shape = list(dk.get("shape") or ())
        names = list(dk.get("dims") or ())
        if len(names) != len(shape) or len(set(names)) != len(names) or "time" in names:
            names = [f"{key}_{axis}" for axis in range(len(shape))]
        for axis, (name, size) in enumerate(zip(names, shape, strict=True)):
            # None: an axis of varying length (a ragged array), which nothing can share
            if size is None or sizes.setdefault(name, size) != size:
                names[axis] = f"{key}_{name}"
        out[key] = tuple(names)
    return out


class _DimsNamingNode:
    """A stream's container as ``_RunWriter._write_internal_data`` uses it: the arrays
    it creates get the axis names of :func:`stream_dims`."""

    def __init__(self, node, dims: Mapping[str, tuple[str, ...]]) -> None:
        self._node = node
        self._dims = dims

    def __getattr__(self, name: str) -> Any:
        return getattr(self._node, name)

    def _named(self, key: str, ndim: int, dims):
        names = self._dims.get(key)
        return ("time", *names) if names is not None and len(names) + 1 == ndim else dims

    def write_array(self, array, *, key, dims=None, **kwargs):
        return self._node.write_array(array, key=key, dims=self._named(key, array.ndim, dims),
                                      **kwargs)

    def write_ragged(self, array, *, key, dims=None, **kwargs):
        ndim = len(dims) if dims is not None else 0
        return self._node.write_ragged(array, key=key, dims=self._named(key, ndim, dims),
                                       **kwargs)


class _DimsKeepingRunWriter(_RunWriter):
    def __init__(self, *args, close_streams: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._close_streams = close_streams
        self._stream_dims: dict[str, dict[str, tuple[str, ...]]] = {}
        self.run_uid: str | None = None
        #: Events whose append the server answered (the writer's acknowledgement).
        self.events_stored = 0
        self.finished = False

    def start(self, doc):
        self.run_uid = doc["uid"]
        super().start(doc)

    def stop(self, doc):
        super().stop(doc)
        self.finished = True

    def _close_stream_tree(self) -> None:
        # One DELETE /stream/close per node written (4 of a step scan's 11 requests),
        # which only websocket subscribers of a server's streaming cache hear.
        if self._close_streams:
            super()._close_stream_tree()

    def flush_events(self) -> None:
        """Append every event this writer holds (TiledWriter waits for ``batch_size``)."""
        for desc_name, data_cache in self._internal_data_cache.items():
            if data_cache:
                self._write_internal_data(data_cache, desc_node=self._desc_nodes[desc_name])
                data_cache.clear()

    @property
    def events_held(self) -> int:
        return sum(len(cache) for cache in self._internal_data_cache.values())

    def descriptor(self, doc):
        super().descriptor(doc)
        # the stream's first descriptor has its data keys (later ones update configuration)
        self._stream_dims.setdefault(doc["name"], stream_dims(doc.get("data_keys", {})))

    def _write_internal_data(self, data_cache, desc_node):
        dims = self._stream_dims.get(desc_node.item["id"], {})
        out = super()._write_internal_data(data_cache, desc_node=_DimsNamingNode(desc_node, dims))
        self.events_stored += len(data_cache)  # reached only if the server took them
        return out


class DimsKeepingTiledWriter(TiledWriter):
    """``TiledWriter`` whose stored arrays have the axis names of their data keys'
    ``dims`` (see the module notes). Takes ``TiledWriter``'s arguments except the
    backups, which temsims does not use, and ``close_streams``: False skips the
    ``close_stream`` request TiledWriter sends for every node of a run at its stop
    (for a server without a streaming cache, where nobody hears it)."""

    def __init__(self, client, *, close_streams: bool = True, **kwargs) -> None:
        for option in ("backup_directory", "backup_dictionary"):
            if kwargs.get(option) is not None:
                raise TypeError(f"DimsKeepingTiledWriter does not take {option}")
        super().__init__(client, **kwargs)
        self.close_streams = close_streams
        self._run_writers: list[_DimsKeepingRunWriter] = []

    def flush_events(self) -> None:
        """Append the events every open run's writer holds, now (a writer process calls
        it every ``flush_period_s`` and when its session is gone, which bounds what a
        killed writer loses: decision 0025)."""
        for writer in self._run_writers:
            if writer.root_node is not None and not writer.finished:
                writer.flush_events()

    @property
    def events_held(self) -> int:
        """Events received and not yet appended (at most ``batch_size`` per stream)."""
        return sum(w.events_held for w in self._run_writers if not w.finished)

    def stored_events(self) -> dict[str, int]:
        """Run uid -> events of it the server acknowledged, for the runs still open."""
        return {w.run_uid: w.events_stored for w in self._run_writers if w.run_uid}

    def _factory(self, name, doc):
        # TiledWriter._factory, building the run writer above (and no backups)
        writer = _DimsKeepingRunWriter(self.client, batch_size=self._batch_size,
                                       max_array_size=self._max_array_size,
                                       validate=self._validate, ignore_errors=self.ignore_errors,
                                       close_streams=self.close_streams)
        self._run_writers = [w for w in self._run_writers if not w.finished] + [writer]
        if not self._normalizer:
            return [writer], []
        normalizer = self._normalizer(patches=self.patches, spec_to_mimetype=self.spec_to_mimetype)
        normalizer.subscribe(writer)
        return [normalizer], []
