"""Helpers for tests that start their own instruments (imported by name, not via conftest,
because several ``conftest.py`` files exist and ``from conftest import`` is ambiguous)."""

from __future__ import annotations

from typing import Any


def stop_instrument(procs: Any, pool: Any) -> None:
    """Stop an instrument's processes by PID and free its slot (idempotent)."""
    procs.stop()
    slot = getattr(procs, "_slot", None)
    if slot is not None:
        pool.give_back(slot)
        procs._slot = None  # type: ignore[attr-defined]


