"""``temsims serve``: a tiled server over a catalog directory or a PostgreSQL database,
for clients in other processes, users or machines, with tiled's own API keys and scopes
(docs/decisions/0020-catalog-serve-and-postgres.md).

- A directory: the layout :func:`temsims.catalog.open_catalog` uses (``catalog.db``,
  ``tabular.db``, ``data/``: :func:`temsims.catalog.server.directory_storage`); the
  directory's own servers may serve it at the same time (SQLite's locking).
- ``postgresql://user[:password]@host:port/database``: nodes, metadata and event tables
  in that database (tiled's SQL catalog through asyncpg, its tabular storage through
  ADBC), arrays (zarr) in ``<data>/data``. Without a password in the URI,
  ``$PGPASSWORD`` is put in (so it need not be on the command line).

Authentication is tiled's multi-user mode: an authentication database (SQLite,
``<state>/auth.db``) holds one service principal per key and the key's hash and scopes;
the server checks every request against it and refuses requests without a key (401).
Keys (hex secrets, one file each, mode 0600, in ``<state>`` = ``<directory>/serve`` or
``<data>/serve``):

- ``write.key``: read:metadata, read:data, write:metadata, write:data, create:node (the
  session's, the demo's);
- ``read-<name>.key`` per ``--reader`` name (default ``analyst``): read:metadata, read:data.

A key whose file is deleted is revoked and replaced at the next start; a reader no
longer named is revoked (its file removed). The only login provider is a
``DictionaryAuthenticator`` with no user: it turns tiled's key database on, and nobody
can log in with a password.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from temsims.catalog.server import (
    _daemon_threaded_server_class,
    _init_database,
    _serialization_registry,
    catalog_adapter,
    default_catalog_dir,
    directory_storage,
    file_log_config,
    in_thread,
    redact_uri,
)
from temsims.catalog.writer import RUNS_KEY, RUNS_SPEC_VERSION
from temsims.stop_signals import StopSignals

WRITE_SCOPES = ("read:metadata", "read:data", "write:metadata", "write:data", "create:node")
READ_SCOPES = ("read:metadata", "read:data")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_READERS = ("analyst",)
STATE_DIR = "serve"
#: The authentication provider that turns tiled's key database on (nobody logs in).
PROVIDER = "temsims"
#: Notes of the keys this module manages: ``temsims serve: <key name>``.
NOTE_PREFIX = "temsims serve: "
_READER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def is_postgres_uri(target: str | Path) -> bool:
    return isinstance(target, str) and target.split("://", 1)[0].lower() in (
        "postgresql", "postgres")


@dataclass(frozen=True)
class Storage:
    """Where a served catalog keeps its nodes, tables, arrays, keys and log."""

    label: str  # what to print (no password)
    catalog_uri: str
    writable_storage: list
    state_dir: Path


def storage_for(target: str | Path | None, data: str | Path | None = None) -> Storage:
    """The storage of ``target``: a catalog directory (None: the default one) or a
    ``postgresql://`` URI, whose arrays and keys go to ``data``."""
    if target is not None and is_postgres_uri(target):
        if data is None:
            raise ValueError("a PostgreSQL catalog needs --data DIR for its arrays and keys")
        data = Path(data).expanduser().resolve()
        (data / "data").mkdir(parents=True, exist_ok=True)
        uri = _with_password("postgresql://" + str(target).split("://", 1)[1])
        return Storage(f"{redact_uri(uri)} (PostgreSQL; arrays in {data / 'data'})", uri,
                       [data / "data", uri], data / STATE_DIR)
    if data is not None:
        raise ValueError("--data is for a PostgreSQL catalog: a directory keeps its arrays")
    directory = Path(target if target is not None else default_catalog_dir()).expanduser().resolve()
    catalog_uri, writable_storage = directory_storage(directory)
    return Storage(f"{directory} (SQLite)", catalog_uri, writable_storage, directory / STATE_DIR)


def _with_password(uri: str) -> str:
    """``uri`` with ``$PGPASSWORD`` as its password if it has none (keeps the password
    off the command line, where ``ps`` shows it)."""
    from urllib.parse import quote, urlsplit, urlunsplit

    parts = urlsplit(uri)
    password = os.environ.get("PGPASSWORD")
    if parts.password is not None or not password or "@" not in parts.netloc:
        return uri
    user, host = parts.netloc.rsplit("@", 1)
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}"))


# =========================================================================== keys


@dataclass(frozen=True)
class Key:
    name: str  # "write" or "read-<reader>"
    path: Path
    scopes: tuple[str, ...]

    def read(self) -> str:
        return self.path.read_text().strip()


def wanted_keys(state_dir: Path, readers) -> dict[str, Key]:
    keys = {"write": Key("write", state_dir / "write.key", WRITE_SCOPES)}
    for reader in readers:
        if not _READER_NAME.fullmatch(reader):
            raise ValueError(f"reader name {reader!r}: letters, digits, '_', '.', '-' only")
        name = f"read-{reader}"
        keys[name] = Key(name, state_dir / f"{name}.key", READ_SCOPES)
    return keys


def ensure_keys(state_dir: Path, readers=DEFAULT_READERS) -> tuple[str, dict[str, Key]]:
    """Create or check the authentication database and the keys' files (see the module
    docstring); the database's URI and the keys."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    auth_uri = f"sqlite:///{state_dir / 'auth.db'}"
    _init_auth_database(auth_uri)
    os.chmod(state_dir / "auth.db", 0o600)
    keys = wanted_keys(state_dir, readers)
    secrets_now = {}
    for key in keys.values():
        with contextlib.suppress(OSError):
            secrets_now[key.name] = key.read()
    minted = in_thread(_sync_keys, auth_uri, {k.name: k.scopes for k in keys.values()},
                        secrets_now)
    for name, secret in minted.items():
        _write_private(keys[name].path, secret)
    for path in state_dir.glob("read-*.key"):  # readers no longer named: revoked above
        if path.stem not in keys:
            path.unlink()
    return auth_uri, keys


def _init_auth_database(auth_uri: str) -> None:
    """``tiled admin initialize-database`` in-process, if the database is new."""
    import io

    import typer
    from tiled.commandline._admin import initialize_database

    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # alembic's, of tiled's ini
            in_thread(initialize_database, auth_uri)
    except typer.Abort:  # already initialized
        pass
    except Exception as err:
        raise RuntimeError(f"could not create the authentication database {auth_uri}:\n"
                           f"{said.getvalue()}") from err


def _sync_keys(auth_uri: str, wanted: dict[str, tuple[str, ...]],
               known: dict[str, str]) -> dict[str, str]:
    """Keep each wanted key whose secret is known and valid with its scopes; mint the
    others (a service principal with tiled's ``user`` role each); revoke keys of
    names no longer wanted. Returns the newly minted secrets by name."""
    import asyncio

    from sqlalchemy import delete, select
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
    from tiled.authn_database import orm
    from tiled.authn_database.core import create_service
    from tiled.utils import ensure_specified_sql_driver

    def matches(row, secret: str | None, scopes) -> bool:
        try:
            raw = bytes.fromhex(secret or "")
        except ValueError:
            return False
        return (bool(raw) and row.first_eight == raw.hex()[:8]
                and row.hashed_secret == hashlib.sha256(raw).digest()
                and sorted(row.scopes) == sorted(scopes) and row.expiration_time is None)

    async def drop(db, rows) -> None:
        principals = {row.principal_id for row in rows}
        for row in rows:
            await db.delete(row)
        await db.flush()
        for pid in principals:
            left = (await db.execute(select(orm.APIKey).filter(orm.APIKey.principal_id == pid)))
            if not left.scalars().first():
                roles = orm.principal_role_association_table
                await db.execute(delete(roles).where(roles.c.principal_id == pid))
                await db.execute(delete(orm.Principal).where(orm.Principal.id == pid))

    async def sync() -> dict[str, str]:
        engine = create_async_engine(ensure_specified_sql_driver(auth_uri))
        minted = {}
        try:
            async with AsyncSession(engine, expire_on_commit=False) as db:
                rows = (await db.execute(select(orm.APIKey).filter(
                    orm.APIKey.note.like(NOTE_PREFIX + "%")))).scalars().unique().all()
                by_name: dict[str, list] = {}
                for row in rows:
                    by_name.setdefault(row.note[len(NOTE_PREFIX):], []).append(row)
                for name in set(by_name) - set(wanted):
                    await drop(db, by_name[name])
                for name, scopes in wanted.items():
                    mine = by_name.get(name, [])
                    keep = [r for r in mine if matches(r, known.get(name), scopes)]
                    await drop(db, [r for r in mine if r not in keep[:1]])
                    if keep:
                        continue
                    principal = await create_service(db, "user")
                    secret = secrets.token_bytes(4 + 32)  # as tiled's generate_apikey
                    db.add(orm.APIKey(principal_id=principal.id, note=NOTE_PREFIX + name,
                                      scopes=list(scopes), first_eight=secret.hex()[:8],
                                      hashed_secret=hashlib.sha256(secret).digest()))
                    minted[name] = secret.hex()
                await db.commit()
        finally:
            await engine.dispose()
        return minted

    return asyncio.run(sync())


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, path)


# =========================================================================== server


class CatalogService:
    """A tiled server over ``target`` on ``host:port`` with API keys (module docstring).

    :meth:`start` creates what is missing (the catalog database, the authentication
    database, the keys, the ``runs`` container) and serves on a thread of this process;
    :meth:`close` stops it. ``port=0``: a free port.
    """

    def __init__(self, target: str | Path | None = None, *, data: str | Path | None = None,
                 host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 readers=DEFAULT_READERS) -> None:
        self.storage = storage_for(target, data)
        self.host = host
        self.port = port
        self.readers = tuple(readers)
        self.keys: dict[str, Key] = {}
        self.base_url: str | None = None
        self.uri: str | None = None
        self.log = self.storage.state_dir / "server.log"
        self._server = None
        self._cm = None

    def start(self) -> CatalogService:
        _check_free(self.host, self.port)
        import uvicorn
        from tiled.config import Authentication, AuthenticationProviderSpec, Database
        from tiled.server.app import build_app

        storage = self.storage
        _init_database(storage.catalog_uri)
        auth_uri, self.keys = ensure_keys(storage.state_dir, self.readers)
        authentication = Authentication(
            providers=[AuthenticationProviderSpec(
                provider=PROVIDER, authenticator="tiled.authenticators:DictionaryAuthenticator",
                args={"users_to_passwords": {}})],
            allow_anonymous_access=False,
        )
        app = build_app(catalog_adapter(storage.catalog_uri, storage.writable_storage),
                        authentication=authentication,
                        server_settings={"database": Database(uri=auth_uri)},
                        serialization_registry=_serialization_registry())
        self._server = _daemon_threaded_server_class()(uvicorn.Config(
            app, host=self.host, port=self.port, loop="asyncio",
            log_config=file_log_config(self.log), access_log=False,
            timeout_graceful_shutdown=10,
        ))
        self._cm = self._server.run_in_thread()
        try:
            self.base_url = self._cm.__enter__()
        except BaseException as err:
            self._cm = None
            raise RuntimeError(f"the server did not start on {self.host}:{self.port} "
                               f"(see {self.log})") from err
        host, port = self.base_url.rsplit("//", 1)[1].rsplit(":", 1)
        self.port = int(port)
        if host in ("0.0.0.0", "::"):
            import socket

            self.base_url = f"http://{socket.getfqdn()}:{port}"
        self.uri = f"{self.base_url}/api/v1"
        try:
            self._ensure_runs()
            self._record()
        except BaseException:
            self.close()
            raise
        return self

    @property
    def alive(self) -> bool:
        return self._server is not None and self._server.thread.is_alive()

    def _ensure_runs(self) -> None:
        """The ``runs`` container (so read-only clients find it on a new catalog)."""
        import httpx

        headers = {"Authorization": f"Apikey {self.keys['write'].read()}"}
        local = f"http://127.0.0.1:{self.port}" if self.host in ("0.0.0.0", "::") else self.base_url
        with httpx.Client(base_url=f"{local}/api/v1", headers=headers, timeout=30) as http:
            found = http.get(f"/metadata/{RUNS_KEY}")
            if found.status_code == 404:
                made = http.post("/metadata/", json={
                    "id": RUNS_KEY, "structure_family": "container", "metadata": {},
                    "specs": [{"name": "CatalogOfBlueskyRuns", "version": RUNS_SPEC_VERSION}],
                    "data_sources": []})
                if made.status_code != 409:  # made by a writer meanwhile
                    made.raise_for_status()
            else:
                found.raise_for_status()

    def _record(self) -> None:
        """``<state>/server.json``: where this server answers (no secret in it)."""
        info = {"pid": os.getpid(), "uri": self.uri, "catalog": self.storage.label,
                "keys": {k.name: str(k.path) for k in self.keys.values()},
                "started": time.time()}
        _write_private(self.storage.state_dir / "server.json", json.dumps(info))

    def describe(self) -> str:
        """What a client needs: the URI and where the keys are (not the keys)."""
        write = self.keys["write"]
        lines = [f"temsims serve: {self.storage.label}",
                 f"  URI        {self.uri}",
                 f"  write key  {write.path}  ({' '.join(write.scopes)})"]
        for key in self.keys.values():
            if key.name != "write":
                lines.append(f"  read key   {key.path}  ({' '.join(key.scopes)})")
        lines += ["  without a key: refused (401)",
                  f"  log        {self.log}",
                  "  write:  temsims demo --catalog " + self.uri
                  + f' --api-key "$(cat {write.path})"',
                  f"  read:   open_catalog({self.uri!r}, api_key=<a read key>)",
                  "Ctrl-C or SIGTERM stops it."]
        return "\n".join(lines)

    def close(self) -> None:
        cm, self._cm = self._cm, None
        if cm is not None:
            cm.__exit__(None, None, None)
        with contextlib.suppress(OSError, ValueError, KeyError):
            path = self.storage.state_dir / "server.json"
            if json.loads(path.read_text())["pid"] == os.getpid():
                path.unlink()

    def __enter__(self) -> CatalogService:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def _check_free(host: str, port: int) -> None:
    """Fail at once, and plainly, if ``host:port`` cannot be bound (uvicorn would fail
    later, on its thread, with a traceback)."""
    import socket

    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise RuntimeError(f"cannot listen on {host}:{port}: {err}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as err:
            raise RuntimeError(f"cannot listen on {host}:{port}: {err.strerror}") from None


def serve(target: str | Path | None = None, *, data=None, host: str = DEFAULT_HOST,
          port: int = DEFAULT_PORT, readers=DEFAULT_READERS) -> int:
    """Serve until SIGINT or SIGTERM (``temsims serve``); the exit code."""
    t0 = time.monotonic()
    service = CatalogService(target, data=data, host=host, port=port, readers=readers)
    stop = StopSignals()
    try:
        service.start()
        print(f"temsims serve: ready in {time.monotonic() - t0:.1f} s\n{service.describe()}",
              flush=True)
        while not stop.wait(0.5):
            if not service.alive:
                print(f"temsims serve: the server stopped; see {service.log}", file=sys.stderr)
                return 1
        print("temsims serve: stopping", flush=True)
    finally:
        service.close()
        stop.restore()
    print("temsims serve: stopped", flush=True)
    return 0
