"""Storing documents: the TiledWriter chain every catalog writer runs (in this process
or in a writer process of its own), and the ``runs`` container it writes into.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from temsims.catalog.server import _Lease

RUNS_KEY = "runs"
RUNS_SPEC_VERSION = "3.1"
#: Events a TiledWriter keeps per stream before appending them to the catalog (see
#: docs/catalog.md "How fresh"). An append costs ~35-45 ms in the server plus client
#: work, whatever its size: measured on 2 vCPU, batches of 10 leave 2000 small events
#: draining for ~7 s after the run (writer ~9 ms/event), batches of 100 for ~0.2 s, and
#: a 256-line map for ~1 s instead of ~10 s. 100 images of 512 x 512 float32 (100 MB)
#: is the most a batch holds in memory.
DEFAULT_BATCH_SIZE = 100


def storing_chain(runs, *, batch_size: int = DEFAULT_BATCH_SIZE,
                  patches: Mapping[str, Callable] | None = None):
    """The callback that stores documents in ``runs``: bluesky-tiled-plugins'
    ``TiledWriter``, keeping the axis names of the descriptors' ``dims``
    (:class:`~temsims.catalog.tiled_writer.DimsKeepingTiledWriter`).

    Documents are stored as they come: the devices describe every data key's
    ``dtype_numpy`` (and ``shape`` and ``dims`` of an array) themselves
    (``docs/decisions/0016-devices-describe-their-data.md``). ``max_array_size=0``:
    every array (image, map line, spectrum, even a short one) is a zarr array with
    that dtype, never a list in the event table. On a temsims server
    (:func:`is_temsims_server`: no streaming cache) the run's nodes' streams are not
    closed at its stop: 7 requests per step-scan run instead of 11.
    """
    from temsims.catalog.tiled_writer import DimsKeepingTiledWriter

    return DimsKeepingTiledWriter(runs, batch_size=batch_size, max_array_size=0,
                                  patches=dict(patches or {}),
                                  close_streams=not is_temsims_server(runs))


def is_temsims_server(node) -> bool:
    """Whether the server of a tiled client ``node`` is one of temsims' catalog
    servers (a directory's, or ``temsims serve``): they export a ``BlueskyEventStream``
    as :data:`~temsims.catalog.exporters.STREAM_NPZ`, which no other server does, and
    run without tiled's streaming cache (``SERVES_STREAMS`` in
    :mod:`temsims.catalog.server`), so no websocket subscriber waits for a
    ``close_stream``. Any other server (another lab's tiled) is written to as
    TiledWriter does."""
    from temsims.catalog.exporters import STREAM_NPZ
    from temsims.catalog.server import SERVES_STREAMS

    try:
        info = node.context.server_info
        formats = info.get("formats") if isinstance(info, Mapping) else info.formats
        ours = STREAM_NPZ in (formats or {}).get("BlueskyEventStream", ())
    except Exception:  # noqa: BLE001 - an unknown server: write as TiledWriter does
        return False
    return ours and not SERVES_STREAMS


#: The least free space a catalog directory must have for a run to start (MB);
#: ``$TEMSIMS_CATALOG_MIN_FREE_MB`` overrides it.
MIN_FREE_MB = 64.0
MIN_FREE_ENV = "TEMSIMS_CATALOG_MIN_FREE_MB"


def check_writable(directory: str | Path, min_free_mb: float | None = None) -> None:
    """Refuse, with a message naming the directory, a catalog directory that a run
    could not be stored in: one that cannot be written (a file is created, written,
    fsynced and removed in it and in its ``data/``: ``os.access`` says yes to root
    even on an immutable directory) or that has less than ``min_free_mb`` free.

    Called when a writer is made and before every run starts (the start document),
    so a read-only or full disk stops the run before any data is taken.

    Raises
    ------
    temsims.callbacks.storage.StorageError
    """
    from temsims.callbacks.storage import StorageError

    directory = Path(directory)
    if min_free_mb is None:
        min_free_mb = float(os.environ.get(MIN_FREE_ENV, MIN_FREE_MB))
    for where in (directory, directory / "data"):
        if not where.is_dir():
            continue
        probe = where / f".temsims-probe-{os.getpid()}-{threading.get_ident()}"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"probe")
                os.fsync(fd)
            finally:
                os.close(fd)
                probe.unlink(missing_ok=True)
        except OSError as err:
            raise StorageError(f"catalog directory {where} cannot be written "
                               f"({err.strerror or err}): no run can be stored there") from None
    st = os.statvfs(directory)
    free_mb = st.f_bavail * st.f_frsize / 1e6
    if free_mb < min_free_mb:
        raise StorageError(f"catalog directory {directory} has {free_mb:.1f} MB free, less than "
                           f"the {min_free_mb:g} MB a run needs (${MIN_FREE_ENV}): free space "
                           "first")


def tiled_writer_chain(uri: str, api_key: str | None, *, batch_size: int = DEFAULT_BATCH_SIZE,
                       patches: Mapping[str, Callable] | None = None,
                       lease_directory: str | None = None, reopen: bool = False):
    """:func:`storing_chain` on a client of its own, built from the server's URI: what a
    :class:`~temsims.callbacks.writer_process.ProcessWriter` child runs.

    ``lease_directory``: the catalog directory that server serves; the chain then holds
    a lease on it, so the server keeps serving until this writer is done, even if the
    process that opened the catalog ends first. ``reopen``: connect to the directory's
    server as :func:`~temsims.catalog.open_catalog` does, starting one if it is gone
    (``uri`` is then unused; ``api_key`` None means the directory's key), which is how
    a writer process started again after a server died reaches the new one.
    """
    if lease_directory and reopen:
        # the directory's server as any opener finds it: started again if it died
        from temsims.catalog.client import _open_directory_server

        server = _open_directory_server(Path(lease_directory), api_key)
        uri, lease = server.uri, server
        api_key = server.api_key
    else:
        lease = _Lease(Path(lease_directory)) if lease_directory else None
    from tiled.client import from_uri

    chain = storing_chain(_runs_node(from_uri(uri, api_key=api_key)), batch_size=batch_size,
                          patches=patches)
    chain.lease = lease  # released with the chain (or when the process ends)
    return chain


_RUNS_LOCK = threading.Lock()


def _runs_node(client):
    """``client`` itself if it is a catalog of runs, else its ``runs`` child (created)."""
    from tiled.structures.core import Spec

    if any(s.name == "CatalogOfBlueskyRuns" for s in client.specs):
        return client
    with _RUNS_LOCK:
        try:
            return client[RUNS_KEY]
        except KeyError:
            pass
        try:
            return client.create_container(
                RUNS_KEY, specs=[Spec("CatalogOfBlueskyRuns", version=RUNS_SPEC_VERSION)],
            )
        except Exception:
            # Another process created it between our look-up and our create.
            return client[RUNS_KEY]
