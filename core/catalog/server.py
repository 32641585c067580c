"""Hosting the catalog: where it lives, the embedded and the directory servers, and the
per-user catalog host that forks a directory server on request (decision 0014).

Nothing runs on import; nothing binds beyond loopback (the host listens on a unix
socket in a 0700 directory of this user).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import os
import secrets
import sys
import threading
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

ENV_VAR = "TEMSIMS_CATALOG"

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
    event tables, so several processes can serve the same directory at once, with
    the API key kept in the directory (``api_key``, mode 0600) so every process
    opening it agrees on it, and with bluesky-tiled-plugins' JSON-seq exporter
    registered for ``BlueskyRun`` (``run.documents()``). Binds 127.0.0.1 on a free
    port. It is what a directory's server process runs (:class:`DirectoryServer`);
    ``open_catalog(DIR, server_process=False)`` runs it in the caller's process.

    ``lock=False``: the caller already holds the directory's lock (``.lock``), as the
    process asking for a directory server does while it starts.
    """

    def __init__(self, directory: str | Path, *, api_key: str | None = None,
                 startup_timeout_s: float = 30.0, lock: bool = True) -> None:
        import uvicorn
        from tiled.config import Authentication
        from tiled.server.app import build_app
        from tiled.storage import get_storage
        from tiled.utils import ensure_uri

        directory = Path(directory).expanduser().resolve()
        self.directory = directory
        catalog_uri, writable_storage = directory_storage(directory)  # creates it
        self.api_key = api_key or _directory_api_key(directory)
        self.pid = os.getpid()
        tabular_uri = writable_storage[1]

        # One process at a time creates the databases. In-process, not tiled's
        # ``init_if_not_exists`` (a ``tiled catalog init`` subprocess: ~5 s of imports
        # at every call): ~0.15 s for a new database, ~0.04 s to check an existing one.
        with _directory_lock(directory) if lock else contextlib.nullcontext():
            _init_database(catalog_uri)
        self.catalog = catalog_adapter(catalog_uri, writable_storage)
        app = build_app(self.catalog,
                        authentication=Authentication(single_user_api_key=self.api_key),
                        serialization_registry=_serialization_registry())
        self._server = _daemon_threaded_server_class()(uvicorn.Config(
            app, host="127.0.0.1", port=0, loop="asyncio",
            log_config=file_log_config(directory / "server.log"), access_log=False,
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

    @property
    def alive(self) -> bool:
        return self._server.thread.is_alive()

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not _healthy(self.base_url, timeout=1.0):
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


def directory_storage(directory: Path) -> tuple[str, list]:
    """A catalog directory's SQL catalog URI and tiled's writable storage for it (the
    arrays' directory ``data/``, created, and the event tables' ``tabular.db``): the
    layout every server of the directory uses, embedded or ``temsims serve``."""
    (directory / "data").mkdir(parents=True, exist_ok=True)
    return (f"sqlite:///{directory / 'catalog.db'}",
            [directory / "data", f"sqlite:///{directory / 'tabular.db'}"])


def catalog_adapter(catalog_uri: str, writable_storage: list):
    """tiled's SQL catalog adapter over ``catalog_uri`` (``sqlite:///...`` or
    ``postgresql://...``) writing to ``writable_storage``; the database must exist
    (:func:`_init_database`).

    No streaming cache (:data:`SERVES_STREAMS` False): nothing of temsims subscribes
    to tiled's websockets (readers poll), and with one every write was also copied
    into an in-memory cache and every node written needed a ``DELETE /stream/close``
    request, 4 of a step-scan run's 11 requests. The writers skip those requests on
    servers that say they are temsims' (:func:`temsims.catalog.writer.storing_chain`).
    """
    from tiled.catalog import from_uri as catalog_from_uri

    return catalog_from_uri(catalog_uri, writable_storage=writable_storage, cache_config=None)


#: Whether temsims' catalog servers (directory servers, ``temsims serve``) keep tiled's
#: streaming cache, i.e. whether a websocket subscriber could be waiting for a node's
#: ``close_stream``. They do not (:func:`catalog_adapter`).
SERVES_STREAMS = False


def file_log_config(path: Path) -> dict:
    """uvicorn's logging configuration (tiled's) with its handlers writing to ``path``."""
    from tiled.server.logging_config import LOGGING_CONFIG

    log_config = copy.deepcopy(LOGGING_CONFIG)
    for handler in ("access", "default"):
        log_config["handlers"][handler]["class"] = "logging.FileHandler"
        log_config["handlers"][handler].pop("stream", None)
        log_config["handlers"][handler]["filename"] = str(path)
    return log_config


def _init_database(catalog_uri: str) -> None:
    """Create (or check) the SQL catalog: the steps of ``tiled catalog init
    --if-not-exists``, called directly. That command's module imports typer, rich and
    tiled's serve command, 0.1-0.2 s of a catalog host's start (decision 0014).

    On a thread of its own: the set-up runs an event loop (``asyncio.run``), which the
    caller's thread may already have (Jupyter).
    """
    import asyncio

    from sqlalchemy.ext.asyncio import create_async_engine
    from tiled.alembic_utils import UninitializedDatabase, check_database, stamp_head
    from tiled.catalog.alembic_constants import ALEMBIC_DIR, ALEMBIC_INI_TEMPLATE_PATH
    from tiled.catalog.core import ALL_REVISIONS, REQUIRED_REVISION, initialize_database
    from tiled.utils import ensure_specified_sql_driver

    database = ensure_specified_sql_driver(catalog_uri)

    async def create_or_check() -> None:
        engine = create_async_engine(database)
        try:
            await check_database(engine, REQUIRED_REVISION, ALL_REVISIONS)
        except UninitializedDatabase:
            print(f"Database {redact_uri(catalog_uri)} is new. Creating tables.", file=sys.stderr)
            await initialize_database(engine)
        finally:
            await engine.dispose()

    def init() -> None:
        asyncio.run(create_or_check())
        with warnings.catch_warnings():  # alembic's about tiled's own ini template
            warnings.simplefilter("ignore", DeprecationWarning)
            stamp_head(ALEMBIC_INI_TEMPLATE_PATH, ALEMBIC_DIR, database)

    try:
        in_thread(init)
    except BaseException as err:  # noqa: BLE001 - re-raised with the database named
        raise RuntimeError(f"could not create or check the catalog database "
                           f"{redact_uri(catalog_uri)}") from err


def in_thread(func, *args):
    """``func(*args)`` on a thread of its own, its result or exception here: tiled's
    set-up runs event loops (``asyncio.run``), which the caller's thread may already
    have (Jupyter, a server)."""
    result: list = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(func(*args))
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller
            errors.append(err)

    thread = threading.Thread(target=run, name=f"temsims-{getattr(func, '__name__', 'setup')}")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


def redact_uri(uri: str) -> str:
    """``uri`` with its password, if any, replaced by ``***`` (for messages and logs)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(str(uri))
    if parts.password is None:
        return str(uri)
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def _serialization_registry():
    """tiled's serializers plus bluesky-tiled-plugins' JSON-seq export of a BlueskyRun
    (what ``run.documents()`` asks for; without it every call fails with 406) and
    temsims' export of a whole event stream in one response
    (:mod:`temsims.catalog.exporters`)."""
    from tiled.media_type_registration import default_serialization_registry as registry

    from temsims.catalog.exporters import STREAM_NPZ, stream_npz_exporter

    registry.register("BlueskyRun", "application/json-seq", _json_seq_exporter)
    registry.register("BlueskyEventStream", STREAM_NPZ, stream_npz_exporter)
    return registry


async def _json_seq_exporter(mimetype, adapter, metadata, filter_for_access):
    """bluesky-tiled-plugins' ``json_seq_exporter``, imported at its first use: its
    package imports the client's run classes (dask, xarray, pandas: ~1 s), which a
    server needs for nothing else. The catalog host imports it once it listens."""
    import inspect

    from bluesky_tiled_plugins.exporters import json_seq_exporter

    content = json_seq_exporter(mimetype, adapter, metadata, filter_for_access)
    return await content if inspect.isawaitable(content) else content  # an async generator


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


def _healthy(base_url: str, timeout: float = 2.0) -> bool:
    """Whether a tiled server answers ``/healthz`` at ``base_url`` (stdlib only: this
    runs before the opener has imported tiled's client)."""
    import http.client
    from urllib.parse import urlsplit

    url = urlsplit(base_url)
    if url.hostname != "127.0.0.1" or url.port is None:
        return False
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


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
    """The directory's creation lock (``.lock``): one process at a time creates the API
    key, creates the databases, or looks for and starts the directory's server."""
    import fcntl

    with open(directory / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ------------------------------------------------------------------ directory servers
#
# The default: one tiled server process per catalog directory, shared by every process
# that opens it, forked on request by a per-user "catalog host" that has the server
# stack imported (docs/decisions/0014-catalog-open.md).
#
# - ``<dir>/.lease``: every open Catalog holds a shared flock on it; the server exits
#   when it can take it exclusively (no client left) for SERVER_LINGER_S.
# - ``<dir>/server.json``: pid and address of the running server, written by the
#   server, read under ``<dir>/.lock`` by openers; removed by the server (holding the
#   lease exclusively, so no opener is between reading it and leasing) when it exits.
# - the host: ``python -m temsims.catalog host HOST_DIR`` on a unix socket in a
#   private (0700) per-user directory named after this installation; it imports what
#   a server needs to start (~1.5 s on a quiet machine), listens, forks a directory
#   server per request (~0.3-0.5 s), imports what reading and writing data needs
#   while idle (pandas, dask, ...: SERVER_WARM_IMPORTS), and exits after HOST_IDLE_S
#   without any request.

SERVER_FILE = "server.json"
LEASE_FILE = ".lease"
#: How long a directory server outlives its last client (s): a script that reopens
#: the directory, or a reader started right after the writer closed, finds it running.
SERVER_LINGER_S = 10.0
#: How long the catalog host waits without any directory server before it exits (s).
HOST_IDLE_S = 600.0
HOST_IDLE_ENV = "TEMSIMS_CATALOG_HOST_IDLE_S"
_HOST_START_TIMEOUT_S = 120.0  # the host's imports on a loaded 2-core machine: 5-15 s
_SERVER_START_TIMEOUT_S = 60.0


class DirectoryServer:
    """This process's share of the tiled server of a catalog directory (the default).

    The server is a process of its own on 127.0.0.1, shared by every process that
    opens the directory (sessions, notebooks, writer processes, readers), so opening
    a directory costs no server start-up when it already serves, and ~0.3-0.5 s (a
    fork of the catalog host) when it does not. Holding this object holds a lease on
    the directory (``.lease``, a shared flock, released by :meth:`close` or when this
    process ends however it ends); the server stops ``SERVER_LINGER_S`` after the
    last lease is gone. Its log is ``<directory>/server.log``.
    """

    def __init__(self, directory: Path, info: Mapping[str, Any], api_key: str,
                 lease: _Lease) -> None:
        self.directory = directory
        self.base_url = info["base_url"]
        self.uri = f"{self.base_url}/api/v1"
        self.pid = info["pid"]
        self.api_key = api_key
        self._lease = lease

    @property
    def alive(self) -> bool:
        return _healthy(self.base_url)

    def close(self) -> None:
        """Release this process's lease (the server stops when no process holds one)."""
        self._lease.release()

    def __repr__(self) -> str:
        return f"<DirectoryServer {self.directory} pid={self.pid} at {self.base_url}>"


class _Lease:
    """A shared flock on ``<directory>/.lease`` while a client uses the directory's server."""

    def __init__(self, directory: Path, timeout_s: float = 60.0) -> None:
        import fcntl

        self._fd: int | None = os.open(directory / LEASE_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + timeout_s
        while True:  # the server holds it exclusively only while it shuts down
            try:
                fcntl.flock(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self.release()
                    raise TimeoutError(f"the catalog server of {directory} did not shut down "
                                       f"within {timeout_s} s (holds {LEASE_FILE})") from None
                time.sleep(0.02)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # releases the flock

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.release()


def _key_digest(api_key: str) -> str:
    import hashlib

    return hashlib.sha256(api_key.encode()).hexdigest()


def _running_server(directory: Path, api_key: str) -> dict | None:
    """The directory's recorded server if it is alive and takes ``api_key``."""
    import json

    try:
        info = json.loads((directory / SERVER_FILE).read_text())
        pid, base_url = int(info["pid"]), str(info["base_url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if info.get("key_sha256") != _key_digest(api_key):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # a pid reused by another user's process
        return None
    return info if _healthy(base_url) else None


def _host_dir() -> Path:
    """The catalog host's private directory: per user and per installation (Python,
    temsims source, tiled), so a host never serves with other code than the caller's."""
    import hashlib
    import importlib.util
    import tempfile

    tiled_spec = importlib.util.find_spec("tiled")
    parts = [os.path.realpath(sys.executable), os.path.realpath(sys.prefix),
             os.path.realpath(__file__)]
    # Every module of this package a server runs (server, exporters, writer, ...).
    package = sorted(str(p) for p in Path(__file__).resolve().parent.glob("*.py"))
    for path in (*package, tiled_spec.origin if tiled_spec else None):
        with contextlib.suppress(TypeError, OSError):
            st = os.stat(path)
            parts.append(f"{st.st_mtime_ns}:{st.st_size}")
    tag = hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) if runtime and os.access(runtime, os.W_OK) else Path(tempfile.gettempdir())
    user_dir = base / f"temsims-{os.getuid()}"
    path = user_dir / f"catalog-host-{tag}"
    for d in (user_dir, path):
        d.mkdir(mode=0o700, exist_ok=True)
        st = d.stat()
        if st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise PermissionError(f"{d} must be owned by this user with mode 0700")
    return path


@contextlib.contextmanager
def _host_lock(host_dir: Path):
    """Held while looking for the host and, if there is none, starting it."""
    import fcntl

    fd = os.open(host_dir / "host.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _host_connect(host_dir: Path):
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(host_dir / "host.sock"))
    except OSError:
        sock.close()
        return None
    return sock


def _spawn_host(host_dir: Path) -> int:
    """Start the catalog host, detached from this process (its own session; double
    fork, so it is nobody's child once it runs); its pid."""
    import subprocess

    (host_dir / "host.pid").unlink(missing_ok=True)
    with open(host_dir / "host.log", "ab") as log:
        subprocess.run(
            [sys.executable, "-m", "temsims.catalog", "host", str(host_dir), "--detach"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=str(host_dir), check=True, timeout=60,
        )
    return int((host_dir / "host.pid").read_text())


def _read_line(sock, timeout_s: float) -> bytes:
    sock.settimeout(timeout_s)
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


class _ServerRequest:
    """A directory server being started by the catalog host (or the host itself first).

    Made and resolved while the opener holds the directory's lock; between the two the
    opener imports tiled's client, which takes about as long as the start.
    """

    def __init__(self, directory: Path, api_key: str, *, record: bool) -> None:
        import json

        self.directory = directory
        self._request = (json.dumps({"op": "serve", "directory": str(directory),
                                     "api_key": api_key, "record": record,
                                     "linger_s": SERVER_LINGER_S}) + "\n").encode()
        self._host_dir = _host_dir()
        self._sock = None
        self._spawned: contextlib.ExitStack | None = None
        self._host_pid: int | None = None
        self._start()

    def _start(self) -> None:
        stack = contextlib.ExitStack()
        stack.enter_context(_host_lock(self._host_dir))
        sock = _host_connect(self._host_dir)
        if sock is None:  # no host: start one, keep the lock until it listens
            try:
                self._host_pid = _spawn_host(self._host_dir)
            except BaseException:
                stack.close()
                raise
            self._spawned = stack
            return
        stack.close()
        try:
            self._send(sock)
        except OSError:  # the host is going away: result() asks again
            sock.close()

    def _send(self, sock) -> None:
        sock.settimeout(10.0)
        sock.sendall(self._request)
        self._sock = sock

    def result(self, timeout_s: float = _SERVER_START_TIMEOUT_S) -> dict:
        import json

        for attempt in range(2):
            reply = b""
            try:
                if self._spawned is not None:
                    try:
                        self._send(self._wait_for_host())
                    finally:
                        self._spawned.close()
                        self._spawned = None
                if self._sock is not None:
                    reply = _read_line(self._sock, timeout_s)
            except TimeoutError:
                raise RuntimeError(f"no catalog server for {self.directory} within {timeout_s} s; "
                                   f"see {self.directory / 'server.log'}") from None
            except OSError:
                reply = b""
            finally:
                if self._sock is not None:
                    self._sock.close()
                    self._sock = None
            if reply:
                break
            if attempt == 0:  # the host was exiting as we asked: ask its successor
                logger.info("catalog host did not answer; asking again")
                self._start()
        else:
            raise RuntimeError(f"the catalog host did not start a server for {self.directory}; "
                               f"see {self._host_dir / 'host.log'}")
        info = json.loads(reply)
        if "error" in info:
            raise RuntimeError(f"the catalog server of {self.directory} did not start "
                               f"(see {self.directory / 'server.log'}):\n{info['error']}")
        return info

    def _wait_for_host(self):
        deadline = time.monotonic() + _HOST_START_TIMEOUT_S
        while True:
            sock = _host_connect(self._host_dir)
            if sock is not None:
                return sock
            try:
                os.kill(self._host_pid, 0)
            except ProcessLookupError:
                raise RuntimeError(f"the catalog host ended at start-up; see "
                                   f"{self._host_dir / 'host.log'}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"the catalog host did not start within {_HOST_START_TIMEOUT_S} s; "
                                   f"see {self._host_dir / 'host.log'}")
            time.sleep(0.05)


def _server_stack() -> None:
    """Import what a directory server needs to start, in the host, before it listens:
    tiled's server stack without the libraries its modules need only once data is read
    or written (:mod:`temsims.catalog.deferred_imports`); :data:`SERVER_WARM_IMPORTS`
    follow while the host waits for requests (:func:`_warm_import`)."""
    from temsims.catalog import deferred_imports

    if "httpx" not in sys.modules:
        # httpx imports its command-line client (rich, pygments: ~0.15 s) where those
        # are installed, and falls back to a stub without it; a host never runs it.
        sys.modules["httpx._main"] = None
    deferred_imports.HOST.import_lean()
    import uvicorn  # noqa: F401
    from tiled.alembic_utils import stamp_head  # noqa: F401
    from tiled.catalog import from_uri  # noqa: F401
    from tiled.catalog.core import initialize_database  # noqa: F401
    from tiled.server.app import build_app  # noqa: F401
    from tiled.server.simple import ThreadedServer  # noqa: F401

    _serialization_registry()
    import importlib

    # What a forked server's start and its first requests imported on top (2026-12).
    for name in SERVER_START_IMPORTS:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


#: Imported by the host before it listens, after tiled's server stack: what a forked
#: server's start-up and its openers' first requests would import otherwise.
SERVER_START_IMPORTS = (
    "alembic.command", "tiled.catalog.alembic_constants", "tiled.server.logging_config",
    "tiled.server.principal_log_filter", "pydantic.v1", "anyio._backends._asyncio",
    "aiosqlite", "sqlite3", "uvicorn.loops.asyncio", "uvicorn.lifespan.on",
    "uvicorn.protocols.http.httptools_impl", "uvicorn.protocols.websockets.auto",
)
#: What a directory server imported on top of :func:`_server_stack` while it stored and
#: served runs (images, map lines, queries, documents()), measured 2026-12, and the
#: packages whose import :mod:`temsims.catalog.deferred_imports` deferred. Imported
#: by the host while idle, one at a time (each 0.1-0.5 s on a quiet machine: a request
#: waits at most that), so the servers it forks later have them. A server forked
#: before the host had them all imports what its requests need when they need it (the
#: first array or table it stores or reads: ~1 s more, once), not in the background,
#: which would repeat the host's imports on the same two cores.
SERVER_WARM_IMPORTS = (
    "numpy", "pyarrow", "pandas", "dask.array", "dask.dataframe", "xarray", "sparse",
    "awkward", "ragged", "bluesky_tiled_plugins.exporters",
    "tiled.adapters.array", "tiled.adapters.zarr", "tiled.adapters.sql",
    "tiled.serialization.array", "tiled.serialization.table", "tiled.serialization.container",
    "adbc_driver_sqlite.dbapi", "obstore.store",
)
_warm = {"next": 0}
#: The host starts (or goes on with) its warm imports after this long without a request
#: and while no server it forked is starting (s): the opener that started it connects
#: ~0.05 s after the listen, and a server starting (0.5-1 s on a quiet machine) is what
#: its opener waits for, which the imports would slow on two cores.
_WARM_AFTER_IDLE_S = 0.25


def _warm_import(step: bool = True) -> bool:
    """Import the next of :data:`SERVER_WARM_IMPORTS` (``step``) or all that are left;
    then bind the deferred packages (``deferred_imports.HOST.finish()``).
    True once everything is imported."""
    import importlib

    from temsims.catalog import deferred_imports

    while _warm["next"] < len(SERVER_WARM_IMPORTS):
        name = SERVER_WARM_IMPORTS[_warm["next"]]
        _warm["next"] += 1
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
        if step:
            return False
    deferred_imports.HOST.finish()
    return True


def _host_main(host_dir: Path, detach: bool = False) -> None:
    """``python -m temsims.catalog host HOST_DIR``: fork a directory server per request."""
    import signal
    import socket
    import struct

    if detach:  # double fork: the host is no child of the process that asked for it
        pid = os.fork()
        if pid > 0:
            (host_dir / "host.pid").write_text(f"{pid}\n")
            os._exit(0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def say(msg: str) -> None:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} host {os.getpid()}: {msg}", flush=True)

    t0 = time.monotonic()
    # The cyclic collector's passes over the objects the imports create were a fifth of
    # the host's start (1.0 vs 1.25 s): it is off until the warm imports are done,
    # then the survivors are frozen (out of later passes, and shared with the servers
    # forked after). A server forked before that turns it on once it answered.
    gc.disable()
    _server_stack()
    idle_s = float(os.environ.get(HOST_IDLE_ENV, HOST_IDLE_S))
    path = host_dir / "host.sock"
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a dead host's (whoever started us holds the host lock)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o600)
    listener.listen(64)
    listener.settimeout(0.5)
    say(f"serving {path} (imports took {time.monotonic() - t0:.1f} s; idle exit {idle_s:.0f} s)")
    children: set[int] = set()
    starting: set[int] = set()  # read ends of the pipes of servers not yet answering
    idle_since = time.monotonic()

    def handle(conn) -> bool:
        """Serve one request; False: stop the host."""
        import json

        with contextlib.suppress(OSError, AttributeError):
            _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
            if uid != os.getuid():
                conn.close()
                return True
        try:
            request = json.loads(_read_line(conn, 10.0))
        except (OSError, ValueError):
            conn.close()
            return True
        if request.get("op") == "stop":
            conn.sendall(b'{"stopping": true}\n')
            conn.close()
            return False
        if request.get("op") != "serve":
            conn.close()
            return True
        started_r, started_w = os.pipe()  # closed by the server once it answered
        pid = os.fork()
        if pid == 0:  # the directory server
            code = 1
            try:
                listener.close()
                os.close(started_r)
                for fd in starting:
                    os.close(fd)
                code = _directory_server_main(conn, request, started_fd=started_w)
            except BaseException:  # noqa: BLE001 - logged; the opener sees the socket close
                import traceback

                traceback.print_exc()
            finally:
                os._exit(code)
        conn.close()
        os.close(started_w)
        starting.add(started_r)
        children.add(pid)
        say(f"pid {pid} serves {request.get('directory')}")
        return True

    def reap() -> None:
        for pid in list(children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done == pid:
                children.discard(pid)

    running = True
    warm = False
    last_request = time.monotonic()
    while running:
        # Until the warm imports are done, one of them between two looks for a request,
        # once none came for _WARM_AFTER_IDLE_S: the opener that started this host
        # connects within ~0.05 s of the listen and must not wait for an import.
        listener.settimeout(0.5 if warm else 0.05)
        try:
            conn, _ = listener.accept()
        except (TimeoutError, BlockingIOError, InterruptedError):
            conn = None
        if conn is not None:
            last_request = time.monotonic()
        if starting:
            import select

            for fd in select.select(list(starting), [], [], 0)[0]:  # EOF: answered or ended
                os.close(fd)
                starting.discard(fd)
        if (conn is None and not warm and not starting
                and time.monotonic() - last_request > _WARM_AFTER_IDLE_S):
            warm = _warm_import()
            if warm:
                gc.collect()
                gc.freeze()
                gc.enable()
                say(f"warm imports done, {time.monotonic() - t0:.1f} s after start")
        if conn is not None:
            conn.settimeout(None)
            try:
                running = handle(conn)
            except Exception as err:  # noqa: BLE001 - one failed request; keep serving
                say(f"request failed: {err!r}")
                conn.close()
        reap()
        if children or conn is not None:
            idle_since = time.monotonic()
        elif running and time.monotonic() - idle_since > idle_s:
            running = not _host_retire(host_dir, listener, handle)
            idle_since = time.monotonic()
    path.unlink(missing_ok=True)
    listener.close()
    say("exit")


def _host_retire(host_dir: Path, listener, handle) -> bool:
    """Stop listening if no opener is connecting (under the host lock); requests
    already queued are served first, and then the host stays. True: stopped."""
    import fcntl

    fd = os.open(host_dir / "host.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # an opener is connecting or starting a host
            return False
        listener.settimeout(0)
        queued = []
        while True:
            try:
                queued.append(listener.accept()[0])
            except (BlockingIOError, InterruptedError):
                break
        listener.settimeout(0.5)
        stop = False
        for conn in queued:
            conn.settimeout(None)
            try:
                stop = not handle(conn) or stop
            except Exception:  # noqa: BLE001 - one failed request
                conn.close()
        if queued and not stop:
            return False
        (host_dir / "host.sock").unlink(missing_ok=True)
        listener.close()
        return True
    finally:
        os.close(fd)


def _directory_server_main(conn, request: Mapping[str, Any], started_fd: int | None = None) -> int:
    """A forked directory server: start, answer the opener on ``conn``, serve while
    any process holds a lease on the directory (and the request's ``linger_s`` longer,
    by default SERVER_LINGER_S of the opener)."""
    import fcntl
    import json
    import traceback

    directory = Path(request["directory"])
    record = bool(request.get("record", True))
    linger_s = float(request.get("linger_s", SERVER_LINGER_S))
    log_fd = os.open(directory / "server.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    try:
        server = EmbeddedServer(directory, api_key=request["api_key"], lock=False)
    except BaseException:  # noqa: BLE001 - reported to the opener
        text = traceback.format_exc()
        sys.stderr.write(text)
        with contextlib.suppress(OSError):
            conn.sendall((json.dumps({"error": text}) + "\n").encode())
        return 1
    _warm_up(server.base_url, server.api_key)
    info = {"pid": os.getpid(), "base_url": server.base_url,
            "key_sha256": _key_digest(server.api_key), "started": time.time()}
    lease = os.open(directory / LEASE_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    server_file = directory / SERVER_FILE
    if record:
        tmp = directory / f".{SERVER_FILE}.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
        os.replace(tmp, server_file)
    with contextlib.suppress(OSError):
        conn.sendall((json.dumps(info) + "\n").encode())
    conn.close()
    if started_fd is not None:  # tells the host this server answered (decision 0014)
        os.close(started_fd)
    if not gc.isenabled():  # forked while the host was still starting (_host_main)
        gc.freeze()  # the start's objects stay; a first pass over them all would fall
        gc.enable()  # on the opener's first requests
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} catalog server {os.getpid()} at "
          f"{server.base_url}", flush=True)
    idle_since = None
    while server.alive:
        time.sleep(0.25)
        try:
            fcntl.flock(lease, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            idle_since = None
            continue
        now = time.monotonic()
        idle_since = idle_since or now
        if now - idle_since < linger_s:
            fcntl.flock(lease, fcntl.LOCK_UN)
            continue
        # No client for linger_s. Holding the lease exclusively, no opener is
        # between reading server.json and leasing: unrecord this server, then let
        # openers in (they start a new one) while this one shuts down.
        if record:
            with contextlib.suppress(OSError, ValueError, KeyError):
                if json.loads(server_file.read_text())["pid"] == os.getpid():
                    server_file.unlink()
        break
    os.close(lease)
    why = f"no client for {linger_s:g} s" if server.alive else "server thread ended"
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} catalog server {os.getpid()}: {why}; stopping",
          flush=True)
    server.close()
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} catalog server {os.getpid()} stopped",
          flush=True)
    return 0


def _warm_up(base_url: str, api_key: str) -> None:
    """The requests every opener makes first, once, by the server itself: their
    first-time costs in the server (~0.3 s) then fall while the opener is still
    importing tiled's client, and its first requests take ~0.15 s instead of ~0.4 s."""
    import http.client
    from urllib.parse import urlsplit

    url = urlsplit(base_url)
    headers = {"Authorization": f"Apikey {api_key}", "Accept": "application/json"}
    for path in ("/api/v1/", "/api/v1/metadata/", "/api/v1/metadata/runs",
                 "/api/v1/search/?page[offset]=0&page[limit]=1"):
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        try:
            conn.request("GET", path, headers=headers)
            conn.getresponse().read()
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()


def stop_catalog_host() -> bool:
    """Ask this installation's catalog host to exit now (directory servers it started
    keep serving their clients). False if none was running."""
    import json

    sock = _host_connect(_host_dir())
    if sock is None:
        return False
    try:
        sock.settimeout(10.0)
        sock.sendall((json.dumps({"op": "stop"}) + "\n").encode())
        return bool(_read_line(sock, 10.0))
    finally:
        sock.close()
