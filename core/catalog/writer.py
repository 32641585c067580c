"""Storing documents: the TiledWriter chain every catalog writer runs (in this process
or in a writer process of its own), and the ``runs`` container it writes into.
"""

from __future__ import annotations

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
    that dtype, never a list in the event table.
    """
    from temsims.catalog.tiled_writer import DimsKeepingTiledWriter

    return DimsKeepingTiledWriter(runs, batch_size=batch_size, max_array_size=0,
                                  patches=dict(patches or {}))


def tiled_writer_chain(uri: str, api_key: str | None, *, batch_size: int = DEFAULT_BATCH_SIZE,
                       patches: Mapping[str, Callable] | None = None,
                       lease_directory: str | None = None):
    """:func:`storing_chain` on a client of its own, built from the server's URI: what a
    :class:`~temsims.callbacks.writer_process.ProcessWriter` child runs.

    ``lease_directory``: the catalog directory that server serves; the chain then holds
    a lease on it, so the server keeps serving until this writer is done, even if the
    process that opened the catalog ends first.
    """
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
