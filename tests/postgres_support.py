"""A PostgreSQL server of the tests' own: ``initdb`` into a temporary directory, started on a
free loopback port with ``pg_ctl``, one database created, stopped by its PID at the end.

``postgres_server`` is the session-scoped fixture (tests/catalog/conftest.py imports it);
:class:`PostgresServer` can be used alone. The binaries are PostgreSQL's own (``initdb``,
``pg_ctl``, ``postgres``): on ``PATH`` or in Debian's ``/usr/lib/postgresql/<version>/bin``
(``.ci/run`` installs Debian's ``postgresql`` package where they are missing). Without
them the tests that need PostgreSQL are skipped, or fail under CI (``CI`` set).

PostgreSQL refuses to run as root: as root, the cluster belongs to (and the server runs
as) the ``postgres`` user if there is one, else ``nobody``. The superuser ``temsims``
logs in with a password (scram-sha-256) over 127.0.0.1 only; the unix socket is in the
cluster's own directory, not ``/var/run/postgresql``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

SUPERUSER = "temsims"
DATABASE = "temsims"


def find_binaries() -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``, or None."""
    names = ("initdb", "pg_ctl", "postgres")
    found = shutil.which("initdb")
    candidates = [Path(found).resolve().parent] if found else []
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for directory in candidates:
        if all((directory / n).is_file() for n in names):
            return directory
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory, serving 127.0.0.1:``port``."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.password = secrets.token_hex(12)
        self.port = free_port()
        self.pid: int | None = None
        self.start_s = None
        self._user = None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    self._user = pwd.getpwnam(name)
                    break
                except KeyError:
                    continue
            else:
                raise RuntimeError("running as root, and neither user postgres nor nobody exists")
        # /tmp, not pytest's 0700 directory of root: the server's user must reach it.
        self.root = Path(tempfile.mkdtemp(prefix="temsims-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"

    @property
    def uri(self) -> str:
        """The ``temsims`` database's ``postgresql://`` URI (with its password)."""
        return self.database_uri(DATABASE)

    def _run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        kwargs = {}
        if self._user is not None:
            kwargs = {"user": self._user.pw_uid, "group": self._user.pw_gid,
                      "extra_groups": []}
        return subprocess.run([str(self.bindir / argv[0]), *argv[1:]], cwd=self.root,
                              capture_output=True, text=True, timeout=timeout, check=False,
                              **kwargs)

    def start(self) -> PostgresServer:
        t0 = time.monotonic()
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        os.chmod(self.root, 0o700)
        if self._user is not None:
            for path in (self.root, pwfile):
                os.chown(path, self._user.pw_uid, self._user.pw_gid)
        done = self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--pwfile", str(pwfile),
                         "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C",
                         "--no-sync")
        pwfile.unlink()
        if done.returncode:
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        options = f"-p {self.port} -k {self.root} -h 127.0.0.1 -c fsync=off"
        done = self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log),
                         "-w", "-t", "60", "start", timeout=90)
        if done.returncode:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed ({done.returncode}):\n{done.stdout}"
                               f"{done.stderr}\n{log}")
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        self._create_database()
        self.start_s = time.monotonic() - t0
        return self

    def _create_database(self) -> None:
        self.new_database(DATABASE)

    def database_uri(self, name: str) -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{name}"

    def new_database(self, name: str) -> str:
        """Create the (empty) database ``name``; its URI."""
        if not name.isidentifier():
            raise ValueError(f"database name {name!r}: letters, digits and '_' only")
        self.execute("postgres", f'CREATE DATABASE "{name}"')
        return self.database_uri(name)

    def execute(self, database: str, sql: str, *args):
        """``sql`` in ``database`` as the superuser (asyncpg); its rows."""
        import asyncio

        import asyncpg

        async def run():
            conn = await asyncpg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER,
                                         password=self.password, database=database)
            try:
                return await conn.fetch(sql, *args)
            finally:
                await conn.close()

        return asyncio.run(run())

    def stop(self, timeout: float = 30) -> None:
        """Fast shutdown (SIGINT to the postmaster's PID), then the directory goes."""
        pid, self.pid = self.pid, None
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
            deadline = time.monotonic() + timeout
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):  # immediate shutdown
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGQUIT)
                while _alive(pid) and time.monotonic() < deadline + 10:
                    time.sleep(0.05)
        shutil.rmtree(self.root, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie child of this process counts as gone)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True



@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL 15 server of this test session (per xdist worker) with one empty
    database (``.uri``); skipped where the binaries are missing, unless under CI."""
    bindir = find_binaries()
    if bindir is None:
        message = ("PostgreSQL's initdb/pg_ctl/postgres not found (Debian: apt-get install "
                   "postgresql; .ci/run does)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    server = PostgresServer(bindir)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    try:
        yield server
    finally:
        server.stop()
