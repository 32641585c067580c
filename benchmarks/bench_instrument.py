"""A benchmark's own instrument: one process on free loopback ports, real time (time
scale 1: the benchmarks measure what a user waits for). Imported by the scripts
beside it; no work on import."""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def start_instrument(letter: str = "B", *, iocs: Sequence[str] | None = None,
                     log_dir: Path | None = None, timeout: float = 60.0,
                     **options: Any) -> Any:
    """Start an instrument on free loopback ports and export its CA client environment
    (before any CA context of this process exists; one instrument per process);
    ``options`` go to :class:`~temsims.ioc.launcher.InstrumentProcesses` (``specimen``,
    ``seed``, ``time_scale``, ``extra_args``); returns the running
    :class:`~temsims.ioc.launcher.InstrumentProcesses` (stop it with ``.stop()``)."""
    from temsims.channel_access import CALayout, find_free_base_port
    from temsims.ioc.launcher import ALL_IOCS, InstrumentProcesses

    layout = CALayout(base_port=find_free_base_port(10))
    os.environ.update(layout.client_environment())
    prefix = f"{letter}{uuid.uuid4().hex[:6].upper()}:"
    procs = InstrumentProcesses(layout=layout, instrument_prefix=prefix,
                                iocs=tuple(iocs or ALL_IOCS), log_dir=log_dir, **options)
    procs.start(timeout=timeout)
    return procs
