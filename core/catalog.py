"""The catalog every document streams into: a tiled server holding Bluesky runs.

``open_catalog(location=None, *, api_key=None) -> Catalog``

- a directory (default: ``$TEMSIMS_CATALOG``, else ``<user data dir>/temsims/catalog``)
  -> an **embedded** tiled server on 127.0.0.1 in this process, over files in that
  directory: ``catalog.db`` (SQLite: nodes and metadata), ``tabular.db`` (SQLite:
  event tables), ``data/`` (zarr: images, maps, spectra). Every process that opens
  the same directory runs its own server over the same files, so a second process
  sees the runs of the first (SQLite does the locking).
- ``http://...`` or ``https://...`` -> an existing tiled server (e.g. one backed by
  PostgreSQL); the same client code runs against both.

Runs live in the ``runs`` container (spec ``CatalogOfBlueskyRuns`` 3.1), created if
missing. ``Catalog.writer()`` returns the RunEngine callback
(:class:`temsims.callbacks.storage.BufferedWriter` around bluesky-tiled-plugins'
``TiledWriter``); the query helpers (``by_sample``, ``by_mode``, ``by_species``,
``by_correlation_id``, ``in_time_range``, ``latest``) search the start documents
with the ``start.`` prefix added for you. ``check_start_metadata`` and
``require_metadata(RE)`` enforce the metadata contract of ``docs/catalog.md``.

Nothing runs on import; nothing binds beyond loopback.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import functools
import logging
import os
import secrets
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping
from numbers import Real
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "Catalog",
    "EmbeddedServer",
    "ServerProcess",
    "MetadataError",
    "MODES",
    "REQUIRED_KEYS",
    "SIMS_REQUIRED_KEYS",
    "check_start_metadata",
    "default_catalog_dir",
    "new_correlation_id",
    "normalize_start_metadata",
    "open_catalog",
    "require_metadata",
]

ENV_VAR = "TEMSIMS_CATALOG"
RUNS_KEY = "runs"
RUNS_SPEC_VERSION = "3.1"
#: Events a TiledWriter keeps per stream before appending them to the catalog (see
#: docs/catalog.md "How fresh"). An append costs ~35-45 ms in the server plus client
#: work, whatever its size: measured on 2 vCPU, batches of 10 leave 2000 small events
#: draining for ~7 s after the run (writer ~9 ms/event), batches of 100 for ~0.2 s, and
#: a 256-line map for ~1 s instead of ~10 s. 100 images of 512 x 512 float32 (100 MB)
#: is the most a batch holds in memory.
DEFAULT_BATCH_SIZE = 100

MODES = ("TEM", "SIMS")
REQUIRED_KEYS = (
    "sample", "specimen", "operator", "mode", "plan_name", "plan_args", "correlation_id", "region",
)
REGION_KEYS = ("x_um", "y_um", "z_um", "tilt_deg", "fov_um")
SIMS_REQUIRED_KEYS = ("collectors", "polarity", "bias_kV", "beam_energy_keV", "beam_current_pA")
POLARITIES = ("positive", "negative")


# =========================================================================== location


def default_catalog_dir() -> Path:
    """``$TEMSIMS_CATALOG`` if set, else ``<user data dir>/temsims/catalog`` (platformdirs)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("temsims", appauthor=False)) / "catalog"


def _is_uri(location: str | Path) -> bool:
    return isinstance(location, str) and location.split("://", 1)[0].lower() in ("http", "https")


# =========================================================================== server


class EmbeddedServer:
    """A tiled server on a thread of this process, over a catalog directory.

    Like ``tiled.server.SimpleTiledServer`` but with SQLite (not DuckDB) for the
    event tables, so several processes can serve the same directory at once, and
    with the API key kept in the directory (``api_key``, mode 0600) so every process
    opening it agrees on it. Binds 127.0.0.1 on a free port.
    """

    def __init__(self, directory: str | Path, *, api_key: str | None = None,
                 startup_timeout_s: float = 30.0) -> None:
        import uvicorn
        from tiled.catalog import from_uri as catalog_from_uri
        from tiled.config import Authentication, StreamingCacheConfig
        from tiled.server.app import build_app
        from tiled.server.logging_config import LOGGING_CONFIG
        from tiled.storage import get_storage
        from tiled.utils import ensure_uri

        directory = Path(directory).expanduser().resolve()
        (directory / "data").mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.api_key = api_key or _directory_api_key(directory)
        tabular_uri = f"sqlite:///{directory / 'tabular.db'}"

        log_config = copy.deepcopy(LOGGING_CONFIG)
        for handler in ("access", "default"):
            log_config["handlers"][handler]["class"] = "logging.FileHandler"
            log_config["handlers"][handler].pop("stream", None)
            log_config["handlers"][handler]["filename"] = str(directory / "server.log")

        with _directory_lock(directory):  # one process at a time creates the databases
            self.catalog = catalog_from_uri(
                f"sqlite:///{directory / 'catalog.db'}",
                writable_storage=[directory / "data", tabular_uri],
                init_if_not_exists=True,
                cache_config=StreamingCacheConfig(uri="memory").model_dump(),
            )
        app = build_app(self.catalog, authentication=Authentication(single_user_api_key=self.api_key))
        self._server = _daemon_threaded_server_class()(uvicorn.Config(
            app, host="127.0.0.1", port=0, loop="asyncio", log_config=log_config,
            access_log=False,
        ))
        self._cm = self._server.run_in_thread()
        self.base_url = self._cm.__enter__()
        try:
            self._wait_ready(startup_timeout_s)
        except BaseException:
            self._cm.__exit__(None, None, None)
            raise
        try:
            self._storage = get_storage(ensure_uri(tabular_uri))
        except KeyError:  # registered lazily by some tiled versions
            self._storage = None
        self.uri = f"{self.base_url}/api/v1"

    def _wait_ready(self, timeout_s: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        with httpx.Client(trust_env=False) as client:
            while True:
                try:
                    if client.get(f"{self.base_url}/healthz", timeout=1.0).status_code == 200:
                        return
                except httpx.RequestError:
                    pass
                if not self._server.thread.is_alive():
                    raise RuntimeError(f"the tiled server stopped at start-up; see {self.directory / 'server.log'}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the tiled server was not ready within {timeout_s} s")
                time.sleep(0.05)

    def close(self) -> None:
        if self._storage is not None:
            with contextlib.suppress(Exception):
                self._storage.dispose()
        self._cm.__exit__(None, None, None)

    def __repr__(self) -> str:
        return f"<EmbeddedServer {self.directory} at {self.base_url}>"


class ServerProcess:
    """An :class:`EmbeddedServer` in a child process, tied to this one (the default).

    The server's work (HTTP, SQLite, zarr) then runs outside this interpreter and
    does not compete with the RunEngine for the GIL. The child prints its address on
    stdout and serves until its stdin closes: at :meth:`close`, or when this process
    ends however it ends. Its log is ``<directory>/server.log``.
    """

    def __init__(self, directory: str | Path, *, api_key: str | None = None,
                 startup_timeout_s: float = 60.0) -> None:
        import json
        import select
        import subprocess
        import sys

        self.directory = Path(directory).expanduser().resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        if api_key:
            env["TEMSIMS_CATALOG_API_KEY"] = api_key
        with open(self.directory / "server.log", "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "temsims.catalog", "serve", str(self.directory)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env,
            )
        ready, _, _ = select.select([self.process.stdout], [], [], startup_timeout_s)
        line = self.process.stdout.readline() if ready else b""
        if not line:
            self.close()
            raise RuntimeError(f"the catalog server did not start; see {self.directory / 'server.log'}")
        info = json.loads(line)
        self.base_url, self.uri, self.api_key = info["base_url"], info["uri"], info["api_key"]

    def close(self, timeout: float = 20.0) -> None:
        import subprocess

        if self.process.poll() is None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):
                stream.close()

    def __repr__(self) -> str:
        return f"<ServerProcess {self.directory} pid={self.process.pid} at {self.base_url}>"


def _serve(directory: str) -> None:
    """Child side of :class:`ServerProcess`."""
    import json
    import sys

    server = EmbeddedServer(directory, api_key=os.environ.get("TEMSIMS_CATALOG_API_KEY"))
    try:
        sys.stdout.write(json.dumps({"base_url": server.base_url, "uri": server.uri,
                                     "api_key": server.api_key}) + "\n")
        sys.stdout.flush()
        sys.stdin.buffer.read()  # until the parent closes the pipe or ends
    finally:
        server.close()


def _daemon_threaded_server_class():
    from tiled.server.simple import ThreadedServer

    class DaemonThreadedServer(ThreadedServer):
        """tiled's ThreadedServer on a daemon thread.

        A non-daemon server thread would be joined before ``atexit`` handlers run,
        so an interpreter that exits without ``Catalog.close()`` would hang; as a
        daemon it keeps serving while the atexit handlers drain the writers and
        then close it.
        """

        @contextlib.contextmanager
        def run_in_thread(self):
            self.thread = threading.Thread(target=self.run, name="temsims-tiled-server", daemon=True)
            self.thread.start()
            try:
                deadline = time.monotonic() + 30
                while not self.started:
                    if not self.thread.is_alive() or time.monotonic() > deadline:
                        raise RuntimeError("the tiled server did not start listening")
                    time.sleep(0.02)
                host, port = self.servers[0].sockets[0].getsockname()
                yield f"http://{host}:{port}"
            finally:
                self.should_exit = True
                self.thread.join()

    return DaemonThreadedServer


def _directory_api_key(directory: Path) -> str:
    path = directory / "api_key"
    with _directory_lock(directory):
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(16))
        return path.read_text().strip()


@contextlib.contextmanager
def _directory_lock(directory: Path):
    import fcntl

    with open(directory / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# =========================================================================== catalog


class Catalog:
    """Bluesky runs in tiled: the writer callback and the queries analysts need.

    Made by :func:`open_catalog`. ``runs`` is the ``CatalogOfBlueskyRuns`` client
    node (``runs[-1]``, ``runs[scan_id]``, ``runs[uid]``, ``runs.search(...)``).
    Query helpers return search results (nodes of the same kind, which can be
    searched further) except :meth:`latest`, which returns one run.
    """

    def __init__(self, client, runs, *, server: EmbeddedServer | ServerProcess | None = None,
                 location: str | Path | None = None, uri: str | None = None,
                 api_key: str | None = None) -> None:
        self.client = client
        self.uri = uri
        self._api_key = api_key
        self.runs = runs
        self.server = server
        self.location = location
        self._writers: list[Any] = []
        self._closed = False
        from temsims.callbacks.storage import register_exit_hook

        # Closed at exit after the writers drained (their hooks, registered later, run first).
        ref = weakref.ref(self)
        register_exit_hook(lambda: (c := ref()) is not None and c._close_at_exit())

    # ------------------------------------------------------------ writing

    def writer(self, *, buffered: bool = True, batch_size: int = DEFAULT_BATCH_SIZE,
               validate: bool = True, patches: Mapping[str, Callable] | None = None,
               process: bool = False, **buffer_options):
        """The RunEngine callback that stores documents here: ``RE.subscribe(cat.writer())``.

        Parameters
        ----------
        buffered
            Wrap in :class:`~temsims.callbacks.storage.BufferedWriter` (queue + thread,
            default) so the RunEngine never waits on storage. ``False`` returns the
            synchronous chain (validation, dtype patch, TiledWriter).
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
        buffer_options
            Passed to ``BufferedWriter`` (``maxsize``, ``exit_timeout_s``).
        """
        from temsims.callbacks.storage import BufferedWriter, validate_document
        from temsims.callbacks.writer_process import ProcessWriter

        if process:
            if not buffered:
                raise ValueError("writer(process=True) is buffered by nature; drop buffered=False")
            if self.uri is None:
                raise ValueError("this catalog has no URI a writer process could reach")
            factory = functools.partial(tiled_writer_chain, self.uri, self._api_key,
                                        batch_size=batch_size, patches=dict(patches or {}))
            writer = ProcessWriter(factory, validate=validate, **buffer_options)
            self._writers.append(writer)
            return writer

        chain = storing_chain(self.runs, batch_size=batch_size, patches=patches)
        if buffered:
            # TiledWriter's RunNormalizer validates every document against
            # event-model's schemas before it is stored: no second check in the thread.
            writer = BufferedWriter(chain, validate=validate, thread_validation=False,
                                    **buffer_options)
            self._writers.append(writer)
            return writer

        def synchronous(name, doc):
            name = getattr(name, "value", name)
            if validate:
                validate_document(name, doc)
            return chain(name, doc)

        return synchronous

    # ------------------------------------------------------------ queries

    def search(self, **start_metadata):
        """Runs whose start document has each ``key == value`` (dotted keys allowed)."""
        from tiled.queries import Key

        node = self.runs
        for key, value in start_metadata.items():
            node = node.search(Key(_start_key(key)) == value)
        return node

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
        derives from ``collectors``.
        """
        from tiled.queries import Key

        if "." in species or not species:
            raise ValueError(f"species name {species!r} cannot be searched (empty or contains '.')")
        return self.runs.search(Key(f"start.species_index.{species}") == True)  # noqa: E712 - a query

    def by_correlation_id(self, correlation_id: str):
        """All runs of one correlative experiment, in the order they were taken."""
        return self.search(correlation_id=correlation_id).sort(("start.time", 1))

    def in_time_range(self, start=None, stop=None):
        """Runs that started in ``[start, stop)``.

        ``start``/``stop``: POSIX seconds, ``datetime`` (naive = local time), or an
        ISO-8601 string; either may be None (open end).
        """
        from tiled.queries import Comparison

        node = self.runs
        if start is not None:
            node = node.search(Comparison("ge", "start.time", _epoch(start)))
        if stop is not None:
            node = node.search(Comparison("lt", "start.time", _epoch(stop)))
        return node

    def latest(self, node=None):
        """The run that started last (of ``node``, default all runs), or None if none."""
        node = self.runs if node is None else node
        values = node.sort(("start.time", -1)).values()
        try:
            return values.first()
        except (IndexError, StopIteration):
            return None

    # ------------------------------------------------------------ lifetime

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every writer of this catalog stored what it was given."""
        return all([w.flush(timeout) for w in self._writers if not w.closed])

    def close(self, timeout: float | None = None) -> None:
        """Drain and close the writers, then stop the embedded server (if any)."""
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

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self.server.directory if self.server else self.location
        return f"<Catalog {where}>"


def storing_chain(runs, *, batch_size: int = DEFAULT_BATCH_SIZE,
                  patches: Mapping[str, Callable] | None = None):
    """The callback that stores documents in ``runs``: ``DtypeFromData(TiledWriter)``.

    ``max_array_size=0``: every array (image, map line, spectrum, even a short one)
    is a zarr array with its dtype, never a list in the event table.
    """
    from bluesky_tiled_plugins import TiledWriter

    from temsims.callbacks.storage import DtypeFromData

    return DtypeFromData(TiledWriter(runs, batch_size=batch_size, max_array_size=0,
                                     patches=dict(patches or {})))


def tiled_writer_chain(uri: str, api_key: str | None, *, batch_size: int = DEFAULT_BATCH_SIZE,
                       patches: Mapping[str, Callable] | None = None):
    """:func:`storing_chain` on a client of its own, built from the server's URI: what a
    :class:`~temsims.callbacks.writer_process.ProcessWriter` child runs."""
    from tiled.client import from_uri

    return storing_chain(_runs_node(from_uri(uri, api_key=api_key)), batch_size=batch_size,
                         patches=patches)


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
        For a remote server; for a directory, overrides the key stored in it.
    server_process
        For a directory: serve it from a child process (default; keeps the server's
        CPU time out of the RunEngine's interpreter) or from a thread of this one.
    """
    from tiled.client import from_uri

    if location is None:
        location = default_catalog_dir()
    if _is_uri(location):
        client = from_uri(str(location), api_key=api_key)
        return Catalog(client, _runs_node(client), location=location, uri=str(location),
                       api_key=api_key)
    server = (ServerProcess if server_process else EmbeddedServer)(location, api_key=api_key)
    try:
        client = from_uri(server.uri, api_key=server.api_key)
        runs = _runs_node(client)
    except BaseException:
        server.close()
        raise
    return Catalog(client, runs, server=server, location=server.directory, uri=server.uri,
                   api_key=server.api_key)


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


def _start_key(key: str) -> str:
    return key if key.startswith(("start.", "stop.")) else f"start.{key}"


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


# =========================================================================== metadata


class MetadataError(ValueError):
    """The start metadata break the contract of docs/catalog.md; the run did not start."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("run metadata incomplete or invalid:\n  - " + "\n  - ".join(problems))


def new_correlation_id() -> str:
    """A fresh id for one correlative experiment (put the same one in all its runs)."""
    return str(uuid.uuid4())


def _is_number(x) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool)


def _nonempty_str(x) -> bool:
    return isinstance(x, str) and bool(x.strip())


def check_start_metadata(doc: Mapping[str, Any]) -> list[str]:
    """Problems with the start metadata ``doc`` (empty list: it follows the contract).

    The contract (docs/catalog.md): ``sample``, ``specimen``, ``operator`` (strings),
    ``mode`` ("TEM" or "SIMS"), ``plan_name`` (string), ``plan_args`` (dict),
    ``correlation_id`` (string), ``region`` (dict of ``x_um``, ``y_um``, ``z_um``,
    ``tilt_deg``, ``fov_um``, numbers, fov > 0); for SIMS also ``collectors`` (list of
    dicts, each with ``name`` and ``species`` and/or ``mass_u``), ``polarity``
    ("positive"/"negative"), ``bias_kV``, ``beam_energy_keV``, ``beam_current_pA``
    (numbers; energy and current > 0; bias sign matching the polarity).
    """
    problems: list[str] = []
    if not isinstance(doc, Mapping):
        return [f"metadata must be a mapping, not {type(doc).__name__}"]
    for key in REQUIRED_KEYS:
        if key not in doc:
            problems.append(f"missing {key!r}")
    for key in ("sample", "specimen", "operator", "plan_name", "correlation_id"):
        if key in doc and not _nonempty_str(doc[key]):
            problems.append(f"{key!r} must be a non-empty string, got {doc[key]!r}")
    if "plan_args" in doc and not isinstance(doc["plan_args"], Mapping):
        problems.append(f"'plan_args' must be a dict, got {type(doc['plan_args']).__name__}")
    mode = doc.get("mode")
    if "mode" in doc and mode not in MODES:
        problems.append(f"'mode' must be one of {MODES}, got {mode!r}")
    if "region" in doc:
        region = doc["region"]
        if not isinstance(region, Mapping):
            problems.append(f"'region' must be a dict with {REGION_KEYS}, got {region!r}")
        else:
            for key in REGION_KEYS:
                if key not in region:
                    problems.append(f"'region' misses {key!r}")
                elif not _is_number(region[key]):
                    problems.append(f"'region.{key}' must be a number, got {region[key]!r}")
            if _is_number(region.get("fov_um")) and region["fov_um"] <= 0:
                problems.append(f"'region.fov_um' must be > 0, got {region['fov_um']!r}")
    if mode == "SIMS":
        problems.extend(_check_sims(doc))
    return problems


def _check_sims(doc: Mapping[str, Any]) -> list[str]:
    problems = [f"SIMS run missing {key!r}" for key in SIMS_REQUIRED_KEYS if key not in doc]
    collectors = doc.get("collectors")
    if "collectors" in doc:
        if not isinstance(collectors, list | tuple) or not collectors:
            problems.append(f"'collectors' must be a non-empty list of dicts, got {collectors!r}")
        else:
            for i, c in enumerate(collectors):
                if not isinstance(c, Mapping):
                    problems.append(f"collectors[{i}] must be a dict, got {c!r}")
                    continue
                if not _nonempty_str(c.get("name")):
                    problems.append(f"collectors[{i}] needs a 'name'")
                has_species = _nonempty_str(c.get("species"))
                has_mass = _is_number(c.get("mass_u"))
                if not (has_species or has_mass):
                    problems.append(f"collectors[{i}] needs 'species' (e.g. '7Li') or 'mass_u'")
                if "species" in c and not has_species:
                    problems.append(f"collectors[{i}].species must be a non-empty string")
                if has_species and "." in c["species"]:
                    problems.append(f"collectors[{i}].species {c['species']!r} must not contain '.'")
                if "mass_u" in c and not (has_mass and c["mass_u"] > 0):
                    problems.append(f"collectors[{i}].mass_u must be a positive number")
    polarity = doc.get("polarity")
    if "polarity" in doc and polarity not in POLARITIES:
        problems.append(f"'polarity' must be one of {POLARITIES}, got {polarity!r}")
    for key in ("bias_kV", "beam_energy_keV", "beam_current_pA"):
        if key in doc and not _is_number(doc[key]):
            problems.append(f"{key!r} must be a number, got {doc[key]!r}")
    for key in ("beam_energy_keV", "beam_current_pA"):
        if _is_number(doc.get(key)) and doc[key] <= 0:
            problems.append(f"{key!r} must be > 0, got {doc[key]!r}")
    bias = doc.get("bias_kV")
    if polarity in POLARITIES and _is_number(bias) and bias != 0:
        if (bias > 0) != (polarity == "positive"):
            problems.append(f"bias_kV {bias} does not extract {polarity} ions (sign mismatch)")
    return problems


def normalize_start_metadata(md: Mapping[str, Any]) -> dict[str, Any]:
    """Derived, searchable fields: ``species`` (list) and ``species_index`` from ``collectors``.

    ``species_index`` is ``{species: True}`` so that :meth:`Catalog.by_species` is an
    exact, case-sensitive equality query on SQLite and PostgreSQL alike.
    """
    md = dict(md)
    collectors = md.get("collectors")
    if isinstance(collectors, list | tuple):
        species = [c["species"] for c in collectors
                   if isinstance(c, Mapping) and _nonempty_str(c.get("species"))]
        md.setdefault("species", species)
        md["species_index"] = {s: True for s in md["species"] if isinstance(s, str) and "." not in s}
    return md


def require_metadata(RE, *, extra_check: Callable[[Mapping], Iterable[str]] | None = None) -> None:
    """Make ``RE`` refuse to open a run whose metadata break the contract.

    Installs ``RE.md_validator`` (runs bluesky's default check, then
    :func:`check_start_metadata` on the final metadata of each ``open_run``: RE.md,
    the call's metadata and the plan's) raising :class:`MetadataError`, and
    ``RE.md_normalizer`` (:func:`normalize_start_metadata`, chained after the
    previous normalizer). A run refused this way emits no document.
    """
    from bluesky.run_engine import _default_md_validator

    previous_validator = RE.md_validator
    previous_normalizer = RE.md_normalizer

    def validator(md):
        (previous_validator or _default_md_validator)(md)
        problems = check_start_metadata(md)
        if extra_check is not None:
            problems.extend(extra_check(md))
        if problems:
            raise MetadataError(problems)

    def normalizer(md):
        if previous_normalizer is not None:
            md = previous_normalizer(md)
        return normalize_start_metadata(md)

    validator.temsims_metadata = True  # type: ignore[attr-defined]
    RE.md_validator = validator
    RE.md_normalizer = normalizer


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        _serve(sys.argv[2])
    else:
        sys.exit("usage: python -m temsims.catalog serve DIRECTORY")
