"""The ``temsims`` command: ``ioc all`` serves every IOC and stops them on Ctrl-C or
SIGTERM (one process: nothing is left behind, decision 0013)."""

import signal
import subprocess
import sys
import time

import pytest
from caproto import CaprotoTimeoutError
from caproto.sync.client import read

from temsims.channel_access import IOC_PORT_OFFSETS, PART_SUFFIXES


@pytest.mark.parametrize(
    "stop_signal", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)],
    ids=["INT", "TERM"])
def test_ioc_all_serves_five_iocs_and_stops_them(slot_pool, tmp_path, stop_signal):
    slot, layout = slot_pool.take()
    prefix = f"CLI{time.time_ns() % 100000}:"
    proc = subprocess.Popen(
        [sys.executable, "-m", "temsims.app.cli", "ioc", "all", "--prefix", prefix,
         "--base-port", str(layout.base_port), "--log-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "Ctrl-C" in line or not line:
                break
        text = "".join(lines)
        assert "Ctrl-C" in text, text
        for ioc in IOC_PORT_OFFSETS:
            assert f"127.0.0.1:{layout.server_port(ioc)}" in text
            assert read(prefix + PART_SUFFIXES[ioc] + "UPTIME", timeout=3).data[0] >= 0
    finally:
        proc.send_signal(stop_signal)
        assert proc.wait(timeout=20) == 0
        slot_pool.give_back(slot)
    # Every IOC process is gone: nothing answers any more.
    with pytest.raises(CaprotoTimeoutError):
        read(prefix + "STAGE:UPTIME", timeout=1)
