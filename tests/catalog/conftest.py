"""Fixtures: real embedded tiled catalogs on loopback, RunEngines with inline-array detectors.

Each catalog lives in a pytest temporary directory; its server is the directory's
shared server process (``open_catalog``'s default; 127.0.0.1, free port), which stops
shortly after the test's catalog and every other process using it closed. Readers in
other processes open the same directory and use the same server
(``tests/catalog/read_back.py``).
"""

from __future__ import annotations

import pytest
from bluesky import RunEngine

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
