"""Fixtures: real embedded tiled catalogs on loopback, RunEngines with inline-array detectors.

Each catalog lives in a pytest temporary directory; its server is the directory's
shared server process (``open_catalog``'s default; 127.0.0.1, free port), which stops
shortly after the test's catalog and every other process using it closed. Readers in
other processes open the same directory and use the same server
(``tests/catalog/read_back.py``).

``served_sqlite``, ``served_postgres`` and ``served`` (both in turn): ``temsims serve``
subprocesses with their URI and key files (:class:`ServedCatalog`), over a new directory
and over a new database of the tests' PostgreSQL server (``tests/postgres_support.py``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from bluesky import RunEngine
from postgres_support import postgres_server  # noqa: F401 - a fixture (served_postgres)

from temsims.catalog import open_catalog


@pytest.fixture
def RE() -> RunEngine:
    return RunEngine({}, call_returns_result=False)


@pytest.fixture
def catalog(tmp_path):
    """A fresh embedded catalog for one test."""
    cat = open_catalog(tmp_path / "catalog")
    yield cat
    cat.close(timeout=60)


@pytest.fixture(scope="module")
def module_catalog(tmp_path_factory):
    """One catalog for the tests of a module that read back only the runs they wrote
    (by uid): a new directory's catalog costs ~1.2-1.6 s to open. Tests that count the
    runs or the requests of a catalog keep ``catalog``."""
    cat = open_catalog(tmp_path_factory.mktemp("module-catalog") / "catalog")
    yield cat
    cat.close(timeout=60)


# ------------------------------------------------------------------ temsims serve


class ServedCatalog:
    """A ``temsims serve`` subprocess: its URI and key files, parsed from what it printed."""

    def __init__(self, argv: list[str], *, stop_signal: int, timeout_s: float = 90,
                 env: dict[str, str] | None = None) -> None:
        self.stop_signal = stop_signal
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "temsims.app.cli", "serve", "--port", "0", *argv],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**_env_without_api_key(), **(env or {})})
        lines = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            lines.append(line)
            if not line or "Ctrl-C" in line:
                break
        self.start_s = time.monotonic() - t0
        self.intro = "".join(lines)
        if "Ctrl-C" not in self.intro:
            self.stop()
            raise RuntimeError(f"temsims serve did not start:\n{self.intro}")
        self.uri = self._field("URI")[0]
        self.write_key_file = self._field("write key")[0]
        self.read_key_files = self._field("read key")
        self.ready_s = float(self.intro.split("ready in ", 1)[1].split()[0])

    def _field(self, label: str) -> list[str]:
        return [line.split(label, 1)[1].split()[0] for line in self.intro.splitlines()
                if line.strip().startswith(label)]

    @property
    def write_key(self) -> str:
        return open(self.write_key_file).read().strip()

    @property
    def read_key(self) -> str:
        return open(self.read_key_files[0]).read().strip()

    def stop(self, timeout_s: float = 30) -> tuple[int, str]:
        """Signal it (SIGINT or SIGTERM) and wait: its exit code and the rest it printed."""
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
        try:
            rest, _ = self.proc.communicate(timeout=timeout_s)
        except Exception:
            self.proc.kill()
            rest, _ = self.proc.communicate()
        return self.proc.returncode, rest


def _env_without_api_key() -> dict:
    return {k: v for k, v in os.environ.items() if k != "TILED_API_KEY"}


@pytest.fixture(scope="module")
def served_sqlite(tmp_path_factory):
    """``temsims serve DIR`` on a new catalog directory (stopped by SIGINT)."""
    directory = tmp_path_factory.mktemp("served") / "catalog"
    served = ServedCatalog([str(directory)], stop_signal=signal.SIGINT)
    served.backend, served.directory = "sqlite", directory
    yield served
    code, rest = served.stop()
    assert code == 0 and "stopped" in rest, rest


@pytest.fixture(scope="module")
def served_postgres(request, tmp_path_factory):
    """``temsims serve postgresql://USER@HOST:PORT/DB --data DIR`` on a new database of
    the tests' PostgreSQL server, the password in ``PGPASSWORD`` (stopped by SIGTERM)."""
    postgres = request.getfixturevalue("postgres_server")
    name = f"served_{uuid.uuid4().hex[:8]}"
    uri = postgres.new_database(name).replace(f":{postgres.password}@", "@")
    data = tmp_path_factory.mktemp("served-pg")
    served = ServedCatalog([uri, "--data", str(data)], stop_signal=signal.SIGTERM,
                           env={"PGPASSWORD": postgres.password})
    served.backend, served.directory, served.database = "postgres", data, name
    served.postgres = postgres
    yield served
    code, rest = served.stop()
    assert code == 0 and "stopped" in rest, rest


@pytest.fixture(params=["sqlite", "postgres"])
def served(request):
    """Each of ``served_sqlite`` and ``served_postgres`` in turn."""
    return request.getfixturevalue(f"served_{request.param}")
