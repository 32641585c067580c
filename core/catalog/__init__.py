"""The catalog every document streams into: a tiled server holding Bluesky runs.

``open_catalog(location=None, *, api_key=None) -> Catalog``

- a directory (default: ``$TEMSIMS_CATALOG``, else ``<user data dir>/temsims/catalog``)
  -> an **embedded** catalog over files in that directory: ``catalog.db`` (SQLite:
  nodes and metadata), ``tabular.db`` (SQLite: event tables), ``data/`` (zarr: images,
  maps, spectra). It is served on 127.0.0.1 by one tiled server process per
  directory, shared by every process that opens it (:class:`DirectoryServer`): the
  first opener has it started (forked in ~0.3-0.5 s by a per-user *catalog host* that
  keeps the server stack imported), the others find it running (``server.json``), and
  it stops ``SERVER_LINGER_S`` after the last of them closed or ended. Opening thus
  costs tiled's client imports plus a few requests, not a server start-up; see
  ``docs/decisions/0014-catalog-open.md``.
- ``http://...`` or ``https://...`` -> an existing tiled server (e.g. one backed by
  PostgreSQL); the same client code runs against both.

Runs live in the ``runs`` container (spec ``CatalogOfBlueskyRuns`` 3.1), created if
missing; ``run.documents()`` replays a stored run (the embedded server exports
``BlueskyRun`` as JSON-seq). ``Catalog.writer()`` returns the RunEngine callback
(:class:`temsims.callbacks.storage.BufferedWriter` around bluesky-tiled-plugins'
``TiledWriter``); the query helpers (``by_sample``, ``by_mode``, ``by_species``,
``by_correlation_id``, ``in_time_range``, ``latest``) search the start documents
with the ``start.`` prefix added for you. ``check_start_metadata`` and
``require_metadata(RE)`` enforce the metadata contract of ``docs/catalog.md``.

Nothing runs on import; nothing binds beyond loopback (the host listens on a unix
socket in a 0700 directory of this user).
"""

from temsims.catalog.client import Catalog, Runs, open_catalog
from temsims.catalog.schema import (
    MODES,
    REQUIRED_KEYS,
    SIMS_REQUIRED_KEYS,
    MetadataError,
    check_start_metadata,
    new_correlation_id,
    normalize_start_metadata,
    require_metadata,
)
from temsims.catalog.server import (
    DirectoryServer,
    EmbeddedServer,
    default_catalog_dir,
    stop_catalog_host,
)
from temsims.catalog.writer import DEFAULT_BATCH_SIZE, storing_chain, tiled_writer_chain

__all__ = [
    "Runs",
    "Catalog",
    "EmbeddedServer",
    "DirectoryServer",
    "MetadataError",
    "MODES",
    "REQUIRED_KEYS",
    "SIMS_REQUIRED_KEYS",
    "check_start_metadata",
    "DEFAULT_BATCH_SIZE",
    "default_catalog_dir",
    "new_correlation_id",
    "normalize_start_metadata",
    "open_catalog",
    "require_metadata",
    "stop_catalog_host",
    "storing_chain",
    "tiled_writer_chain",
]
