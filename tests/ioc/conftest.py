"""The IOC tests kill, hang and restart parts: their instruments are their own."""

from __future__ import annotations

import functools

import pytest


@pytest.fixture(scope="session")
def instruments(instruments):
    """The session's pool, with instruments kept apart from the other packages' ones."""

    class IOCTestPool:
        get = functools.partial(instruments.get, purpose="ioc")

    return IOCTestPool()
