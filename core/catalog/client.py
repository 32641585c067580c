"""The catalog as an analyst opens it: :func:`open_catalog` and :class:`Catalog` (the
runs, the RunEngine writer, the query helpers).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import logging
import threading
import weakref
from collections.abc import Callable, Mapping
from numbers import Real
from pathlib import Path
from typing import Any

from temsims.catalog.schema import MODES
from temsims.catalog.server import (
    DirectoryServer,
    EmbeddedServer,
    _directory_api_key,
    _directory_lock,
    _is_uri,
    _Lease,
    _running_server,
    _ServerRequest,
    default_catalog_dir,
)
from temsims.catalog.writer import (
    DEFAULT_BATCH_SIZE,
    _runs_node,
    storing_chain,
    tiled_writer_chain,
)

logger = logging.getLogger(__name__)

# =========================================================================== catalog


class Runs:
    """Runs of a catalog as databroker 2 users index and search them.

    ``runs`` is a bluesky-tiled-plugins ``CatalogOfBlueskyRuns`` node (all runs, or
    the result of a search): ``r[-1]`` (the run stored last), ``r[scan_id]`` (the last
    run stored with that ``scan_id``), ``r["3f9a1"]`` (a full uid, or a prefix of at
    least 5 characters that only one run has: ``ValueError`` if several have it,
    ``KeyError`` if none), ``r[-3:]``, ``len(r)``, ``for uid in r``, ``uid in r``,
    ``r.values()``, ``r.search(TimeRange(since="2025-06"))``; every one is the node's
    own (``docs/catalog.md``, "Queries"), but for ``r[-N:]``, which tiled refuses.
    Searches and the query helpers return :class:`Runs` again, so results are indexed,
    sliced and searched further the same way; any other attribute is the node's.
    """

    def __init__(self, runs) -> None:
        self._runs = runs

    @property
    def runs(self):
        """The bluesky-tiled-plugins node these runs are."""
        return self._runs

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.runs, name)

    def __repr__(self) -> str:
        return f"<Runs: {len(self)} runs>"

    # ------------------------------------------------------------ databroker-style access

    def __getitem__(self, key):
        """``runs[key]``: ``-1`` the run stored last, ``-N`` the N-th from the end, a
        positive int the last run stored with that ``scan_id``, a string a full uid
        or a unique uid prefix (>= 5 characters), a list of these a list of runs.
        ``cat[-3:]`` (``cat[-N:-M]``) is a list of the last runs, oldest first: tiled
        slices a container from its end only backwards (``runs[-3:]`` raises), so
        that slice is taken backwards and turned around."""
        if (isinstance(key, slice) and key.step in (None, 1) and key.start is not None
                and key.start < 0 and (key.stop is None or key.stop < 0)):
            if key.stop is not None and key.stop <= key.start:
                return []
            last = -1 if key.stop is None else key.stop - 1
            return list(reversed(self.runs.values()[last:key.start - 1:-1]))
        return self.runs[key]

    def __len__(self) -> int:
        return len(self.runs)

    def __iter__(self):
        """The runs' uids, in the order they were stored."""
        return iter(self.runs)

    def __contains__(self, uid) -> bool:
        """Whether a run has this full uid (no prefix matching, unlike ``cat[uid]``)."""
        from bluesky_tiled_plugins.queries import Key

        return isinstance(uid, str) and len(self.runs.search(Key("start.uid") == uid)) > 0

    def keys(self):
        return self.runs.keys()

    def values(self):
        return self.runs.values()

    def items(self):
        return self.runs.items()

    # ------------------------------------------------------------ queries

    def search(self, *queries, **start_metadata):
        """Runs that match every query and whose start document has each ``key == value``.

        ``queries`` are tiled's and bluesky-tiled-plugins' query objects
        (``bluesky_tiled_plugins.queries``: ``TimeRange``, ``ScanID``, ``PartialUID``,
        ``FullText``, ``Key``, ``Eq``, ``Contains``, ``In``, ...); a key without a
        ``start.`` or ``stop.`` prefix is one of the start document's, in queries and
        keywords alike. Dotted keys address nested metadata (``**{"region.fov_um": 2.0}``).
        """
        from bluesky_tiled_plugins.queries import Key

        node = self.runs
        for query in queries:
            node = node.search(query)
        for key, value in start_metadata.items():
            node = node.search(Key(key) == value)
        return Runs(node)

    def by_sample(self, sample: str):
        """Runs of one sample (``start.sample``)."""
        return self.search(sample=sample)

    def by_mode(self, mode: str):
        """``"TEM"`` or ``"SIMS"`` runs (``start.mode``)."""
        mode = mode.upper()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        return self.search(mode=mode)

    def by_species(self, species: str):
        """SIMS runs with a collector on ``species`` (e.g. ``"6Li"``), exact and case-sensitive.

        Uses ``start.species_index.<species>``, which :func:`normalize_start_metadata`
        derives from ``collectors``: ``Contains("species", ...)`` would be a substring
        match on SQLite (``"Li"`` finds ``["6Li"]``).
        """
        if "." in species or not species:
            raise ValueError(f"species name {species!r} cannot be searched (empty or contains '.')")
        return self.search(**{f"species_index.{species}": True})

    def by_correlation_id(self, correlation_id: str):
        """All runs of one correlative experiment, in the order they were taken."""
        return self.search(correlation_id=correlation_id).sort(("start.time", 1))

    def in_time_range(self, start=None, stop=None):
        """Runs that started in ``[start, stop)``: bluesky-tiled-plugins' ``TimeRange``.

        ``start``/``stop``: POSIX seconds, ``datetime`` or ``date`` (naive = local
        time), or an ISO-8601 string; either may be None (open end). A ``stop`` before
        ``start`` raises ``ValueError`` (``TimeRange``'s check). ``TimeRange`` itself
        (``cat.search(TimeRange(since="2025-06-01 08:00"))``) reads the formats
        ``%Y[-%m[-%d[ %H[:%M[:%S]]]]]`` in a time zone of your choice.
        """
        from bluesky_tiled_plugins.queries import TimeRange

        return self.search(TimeRange(since=None if start is None else _epoch(start),
                                     until=None if stop is None else _epoch(stop),
                                     timezone="UTC"))  # unused: no strings reach it

    def incomplete(self) -> Runs:
        """Runs with no stop document: still being taken, or cut short by a session or
        writer that died (``docs/catalog.md``, "When a process dies").

        tiled's ``KeyPresent("stop.uid", exists=False)``: a stop document always has a
        ``uid``, and a run's ``stop`` metadata exists only once its stop was stored.
        The prefix matters: a bare ``stop`` would be read as ``start.stop``.
        Checked on SQLite and PostgreSQL (``tests/faults/test_storage_faults.py``).
        """
        from tiled.queries import KeyPresent

        return self.search(KeyPresent("stop.uid", exists=False))

    def sort(self, *sorting) -> Runs:
        """These runs in another order: tiled's ``sort`` (``("start.time", 1)``)."""
        return Runs(self.runs.sort(*sorting))

    def latest(self, node=None):
        """The run that started last (of ``node``, default these runs), or None if none.

        ``cat[-1]`` is the run *stored* last: the same run unless several processes
        write to the catalog at once."""
        node = self.runs if node is None else node
        node = node.runs if isinstance(node, Runs) else node
        try:
            return node.sort(("start.time", 1)).values().last()
        except IndexError:
            return None


class Catalog(Runs):
    """Bluesky runs in tiled: the writer callback and the queries analysts need.

    Made by :func:`open_catalog`. Indexed and searched as :class:`Runs` (all the
    catalog's runs; ``runs`` is their bluesky-tiled-plugins node, resolved at first
    use); query helpers return :class:`Runs` except :meth:`latest`, which returns one
    run.
    """

    def __init__(self, client, runs=None, *,
                 server: EmbeddedServer | DirectoryServer | None = None,
                 location: str | Path | None = None, uri: str | None = None,
                 api_key: str | None = None) -> None:
        self.client = client
        self.uri = uri
        self._api_key = api_key
        super().__init__(runs)
        self._runs_lock = threading.Lock()
        self.server = server
        self.location = location
        self._writers: list[Any] = []
        self._closed = False
        from temsims.callbacks.storage import register_exit_hook

        # Closed at exit after the writers drained (their hooks, registered later, run first).
        ref = weakref.ref(self)
        register_exit_hook(lambda: (c := ref()) is not None and c._close_at_exit())

    @property
    def runs(self):
        """The ``runs`` container (bluesky-tiled-plugins' ``CatalogOfBlueskyRuns``).

        Resolved at first use, not at open (``docs/decisions/0021-open-and-read-fast.md``),
        with the client classes imported lean (an opener of a directory did that
        already, on a thread): a first read imports xarray, pandas and dask
        (decision 0014's amendments).
        """
        if self._runs is None:
            with self._runs_lock:
                if self._runs is None:
                    from temsims.catalog.deferred_imports import READER

                    READER.import_lean(READER_IMPORTS)  # imported already: nothing to do
                    self._runs = _runs_node(self.client)
        return self._runs

    def prefetch(self) -> threading.Thread:
        """Resolve :attr:`runs` on a daemon thread now, so the first query does not wait
        for its imports (what ``temsims shell`` does once its namespace is ready), then
        import what the opener deferred (xarray, pandas, dask's arrays and tables: the
        first read's, ~1 s; :data:`~temsims.catalog.deferred_imports.READER`). A
        failure is logged; the first use of :attr:`runs` then raises it again."""

        def resolve() -> None:
            from temsims.catalog.deferred_imports import READER

            try:
                self.runs  # noqa: B018 - resolving is the point
                READER.finish()
            except Exception:  # noqa: BLE001 - raised again at first use
                # Not when the interpreter left (or this catalog closed) under it.
                if not self._closed and threading.main_thread().is_alive():
                    logger.warning("resolving the catalog's runs in the background failed",
                                   exc_info=True)

        # dask imports it, and it registers an exit hook, which fails once the
        # interpreter is leaving: imported here, a quick `exit` is not an error.
        import concurrent.futures.process  # noqa: F401

        thread = threading.Thread(target=resolve, name="temsims-catalog-prefetch", daemon=True)
        thread.start()
        return thread

    # ------------------------------------------------------------ writing

    def writer(self, *, buffered: bool = True, batch_size: int = DEFAULT_BATCH_SIZE,
               validate: bool = True, patches: Mapping[str, Callable] | None = None,
               process: bool = False, spool_dir: str | Path | bool | None = None,
               **buffer_options):
        """The RunEngine callback that stores documents here: ``RE.subscribe(cat.writer())``.

        Parameters
        ----------
        buffered
            Wrap in :class:`~temsims.callbacks.storage.BufferedWriter` (queue + thread,
            default) so the RunEngine never waits on storage. ``False`` returns the
            synchronous chain (validation, TiledWriter).
        batch_size
            Events per stream the TiledWriter gathers before an append (see
            ``docs/catalog.md``); the rest is written at the stop document.
        validate
            Check documents against event-model's schemas before storing them.
        patches
            Extra TiledWriter patches (document name -> function).
        process
            Write from a child process (:class:`~temsims.callbacks.writer_process.ProcessWriter`)
            instead of a thread of this one: the RunEngine's interpreter then only checks
            and pickles each document (``docs/decisions/0009-writer-process.md``). The
            child needs the catalog's URI: patches must be importable functions.
        spool_dir
            Process writers only: where every document is spooled before it is sent
            (None: ``$TEMSIMS_SPOOL`` or the user state directory; False: no spool).
            With a spool, a storage process or server that dies mid-run is not an
            error: the documents wait in the spool and the writer delivers the runs
            again when storage is back (``temsims catalog replay`` by hand;
            ``docs/decisions/0025-spool-and-replay.md``).
        buffer_options
            Passed to ``BufferedWriter`` (``maxsize``, ``exit_timeout_s``).

        Raises
        ------
        StorageError
            A catalog directory that cannot be written or is (nearly) full
            (:func:`~temsims.catalog.writer.check_writable`), here and again before
            every run starts.
        """
        from temsims.callbacks.storage import BufferedWriter, validate_document
        from temsims.callbacks.writer_process import ProcessWriter
        from temsims.catalog.writer import check_writable

        check = None
        if isinstance(self.server, DirectoryServer | EmbeddedServer):
            directory = self.server.directory
            check_writable(directory)

            def check() -> None:
                check_writable(directory)

        if process:
            if not buffered:
                raise ValueError("writer(process=True) is buffered by nature; drop buffered=False")
            if self.uri is None:
                raise ValueError("this catalog has no URI a writer process could reach")
            lease_directory = (str(self.server.directory)
                               if isinstance(self.server, DirectoryServer) else None)
            own_key = (lease_directory is not None
                        and self._api_key == _directory_api_key(Path(lease_directory)))
            factory = functools.partial(tiled_writer_chain, self.uri,
                                        None if own_key else self._api_key,
                                        batch_size=batch_size, patches=dict(patches or {}),
                                        lease_directory=lease_directory, reopen=own_key)
            spool = None
            if spool_dir is not False:
                from temsims.callbacks.spool import Spool, default_spool_dir

                spool = Spool(default_spool_dir() if spool_dir in (None, True) else spool_dir,
                              catalog=str(self.location if lease_directory is None
                                          else lease_directory))
            writer = ProcessWriter(factory, validate=validate, spool=spool, check_start=check,
                                   **buffer_options)
            self._writers.append(writer)
            return writer

        chain = storing_chain(self.runs, batch_size=batch_size, patches=patches)
        if buffered:
            # TiledWriter's RunNormalizer validates every document against
            # event-model's schemas before it is stored: no second check in the thread.
            writer = BufferedWriter(chain, validate=validate, thread_validation=False,
                                    check_start=check, **buffer_options)
            self._writers.append(writer)
            return writer

        def synchronous(name, doc):
            name = getattr(name, "value", name)
            if name == "start" and check is not None:
                check()
            if validate:
                validate_document(name, doc)
            return chain(name, doc)

        return synchronous

    # ------------------------------------------------------------ lifetime

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every writer of this catalog stored what it was given."""
        return all([w.flush(timeout) for w in self._writers if not w.closed])

    def close(self, timeout: float | None = None) -> None:
        """Drain and close the writers, then let go of the server: release this
        process's lease on the directory's server (it stops ``SERVER_LINGER_S`` after
        its last client), or stop the thread-served one (``server_process=False``)."""
        if self._closed:
            return
        self._closed = True
        errors = []
        for w in self._writers:
            try:
                w.close(timeout)
            except Exception as err:  # noqa: BLE001 - closing the rest first
                errors.append(err)
        with contextlib.suppress(Exception):
            self.client.context.close()
        if self.server is not None:
            self.server.close()
        if errors:
            raise errors[0]

    def _close_at_exit(self) -> None:
        if self._closed:
            return
        try:
            self.close(timeout=max([getattr(w, "exit_timeout_s", 0) for w in self._writers] or [0]) or None)
        except Exception:
            logger.exception("closing the catalog at interpreter exit")

    def __bool__(self) -> bool:
        # An open catalog is true even when it holds no run (``__len__`` would make
        # an empty one false, and ``cat or open_catalog()`` open a second one).
        return True

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self.server.directory if self.server else self.location
        return f"<Catalog {where}>"


def open_catalog(location: str | Path | None = None, *, api_key: str | None = None,
                 server_process: bool = True) -> Catalog:
    """Open the catalog at ``location`` (see the module docstring).

    Parameters
    ----------
    location
        Directory of an embedded catalog (created if needed), or the ``http(s)://``
        URI of a tiled server (its root, or the runs container itself). None:
        ``$TEMSIMS_CATALOG`` or the user data directory.
    api_key
        For a remote server; for a directory, overrides the key stored in it (the
        directory's shared server is then not used: one is started for this key).
    server_process
        For a directory: use the directory's server process, shared with every other
        process that opens it and started if none runs (default; ~1-2 s to open, and
        the server's CPU time stays out of the RunEngine's interpreter), or serve it
        from a thread of this process (imports the server stack here: ~5-10 s).
    """
    from temsims.catalog.locations import check_location

    if location is None:
        location = default_catalog_dir()
    location = check_location(location)  # refused at once, naming it (catalog.locations)
    if _is_uri(location):
        from tiled.client import from_uri

        client = from_uri(str(location), api_key=api_key)
        return Catalog(client, location=location, uri=str(location), api_key=api_key)
    if not server_process:
        server = EmbeddedServer(location, api_key=api_key)
    else:
        server = _open_directory_server(Path(location).expanduser().resolve(), api_key)
    try:
        from tiled.client import from_uri

        client = from_uri(server.uri, api_key=server.api_key)
        # Nodes share their client's context: a ``runs`` kept after its Catalog was
        # dropped (not closed) keeps the directory's server serving.
        client.context.temsims_server = server
    except BaseException:
        server.close()
        raise
    return Catalog(client, server=server, location=server.directory, uri=server.uri,
                   api_key=server.api_key)


#: What a reader's first look at the runs imports: tiled's client and
#: bluesky-tiled-plugins' run classes (the ``runs`` node's spec loads them). An opener
#: imports them on a thread while it waits for the directory's server, without what
#: only reading data needs (xarray, pandas, dask's arrays and tables, SQLAlchemy:
#: :data:`~temsims.catalog.deferred_imports.READER`; decision 0014).
READER_IMPORTS = ("tiled.client", "bluesky_tiled_plugins")


class _ReaderImports:
    """:data:`READER_IMPORTS` on a thread of their own, started now, lean
    (:data:`~temsims.catalog.deferred_imports.READER`: a first read imports the rest).

    The opening thread meanwhile imports only standard-library modules it has imported
    before starting this (:func:`_open_directory_server`), so the two never wait on
    each other's module locks; it joins before it touches tiled. An import that fails
    here fails again, with its own traceback, where the opener imports it."""

    def __init__(self) -> None:
        self._thread = threading.Thread(target=self._run, name="temsims-reader-imports",
                                        daemon=True)
        self._thread.start()

    @staticmethod
    def _run() -> None:
        from temsims.catalog.deferred_imports import READER

        try:
            READER.import_lean(READER_IMPORTS)
        except Exception:  # noqa: BLE001 - raised again at the opener's own import
            return
        # tiled's client scans every installed distribution's entry points once per
        # process, at its first node (~0.04 s): done here too, while the opener waits.
        with contextlib.suppress(Exception):
            from tiled.client.container import Container

            Container.discover_clients_from_entrypoints()

    def join(self) -> None:
        self._thread.join()


def _open_directory_server(directory: Path, api_key: str | None) -> DirectoryServer:
    """A lease on the directory's running server, or on one started for it now."""
    # The standard library the opening path imports, before the reader's imports start
    # on their thread (see _ReaderImports).
    import fcntl  # noqa: F401
    import hashlib  # noqa: F401
    import http.client  # noqa: F401
    import json  # noqa: F401
    import socket  # noqa: F401
    import subprocess  # noqa: F401
    import urllib.parse  # noqa: F401

    imports = _ReaderImports()
    directory.mkdir(parents=True, exist_ok=True)
    key = api_key or _directory_api_key(directory)
    lease = _Lease(directory)
    try:
        with _directory_lock(directory):
            info = _running_server(directory, key)
            if info is None:
                info = _ServerRequest(directory, key, record=api_key is None).result()
    except BaseException:
        lease.release()
        raise
    finally:
        imports.join()
    return DirectoryServer(directory, info, key, lease)


def _epoch(t) -> float:
    if isinstance(t, Real):
        return float(t)
    if isinstance(t, str):
        t = _dt.datetime.fromisoformat(t)
    if isinstance(t, _dt.datetime):
        return t.timestamp()
    if isinstance(t, _dt.date):
        return _dt.datetime(t.year, t.month, t.day).timestamp()
    raise TypeError(f"cannot read a time from {t!r}")
