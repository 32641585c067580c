"""One process serves the instrument: five parts on their own loopback ports, each of
which can die, hang and come back alone, as a separate IOC would (decision 0013)."""

import threading
import time

import numpy as np
from caproto.threading.client import Context
from catools import caget, caput, wait_for

from temsims.channel_access import IOC_PORT_OFFSETS, CALayout

OTHER_PARTS = ("stage", "tem", "column", "bias")


def test_every_ioc_answers_on_its_own_port(instrument):
    for ioc in IOC_PORT_OFFSETS:
        uptime = caget(instrument.prefix(ioc) + "UPTIME", timeout=2)
        assert uptime >= 0.0
    ports = {instrument.layout.server_port(ioc) for ioc in IOC_PORT_OFFSETS}
    ports.add(instrument.layout.sim_port)
    assert len(ports) == 6
    assert caget(instrument.sim_prefix + "TIME_SCALE") == instrument.time_scale


def test_one_ioc_restarts_alone(fresh_instrument):
    procs = fresh_instrument(iocs=("stage", "bias"))
    wait_for(lambda: caget(procs.prefix("stage") + "UPTIME") >= 1.0, 5, "the stage's uptime")
    procs.restart("bias")
    assert caget(procs.prefix("bias") + "UPTIME", timeout=2) < 1.0
    assert caget(procs.prefix("stage") + "UPTIME", timeout=2) >= 1.0


class ConnectionLog:
    """A CA client's view of one PV: its connection states and its values."""

    def __init__(self, context: Context, name: str) -> None:
        self.states: list[str] = []
        self.values: list[float] = []
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        (self.pv,) = context.get_pvs(name, connection_state_callback=self._on_state,
                                     timeout=2.0)
        self.pv.wait_for_connection(timeout=5.0)
        self.sub = self.pv.subscribe()
        self.sub.add_callback(lambda sub, response: self.values.append(response.data[0]))

    def _on_state(self, pv, state: str) -> None:
        self.states.append(state)
        (self.connected if state == "connected" else self.disconnected).set()


def _start_map(procs, nx: int, ny: int, dwell_s: float) -> None:
    col = procs.prefix("column")
    caput(procs.prefix("spectrometer") + "MODE", "Imaging")
    for suffix, value in (("SCAN:NX", nx), ("SCAN:NY", ny), ("SCAN:DWELL", dwell_s)):
        caput(col + suffix, value)
    # Not waited on: the put completes at the end of the frame.
    from catools import put

    put(col + "SCAN:ACQUIRE", "Start", wait=False)


def test_killing_the_spectrometer_mid_map_looks_like_a_dead_ioc(fresh_instrument):
    procs = fresh_instrument(time_scale=4.0)
    ms = procs.prefix("spectrometer")
    context = Context()
    try:
        lines = ConnectionLog(context, ms + "IMG:LINES_DONE")
        _start_map(procs, nx=64, ny=64, dwell_s=2e-3)  # 8.2 s nominal, ~2 s of wall
        wait_for(lambda: lines.values and lines.values[-1] >= 8, 10, "the first map lines")
        t_kill = time.monotonic()
        procs.set_part("spectrometer", "Dead")
        assert lines.disconnected.wait(5.0), "the client never saw the circuit drop"
        detected_s = time.monotonic() - t_kill
        assert detected_s < 2.0
        # Everything else still answers, and the raster goes on without its detector.
        for part in OTHER_PARTS:
            assert caget(procs.prefix(part) + "UPTIME", timeout=2) > 0.0
        assert caget(procs.prefix("column") + "SCAN:ACQUIRE_RBV") == "Start"
        assert caget(procs.sim_prefix + "SPECTROMETER") == "Dead"
        lines.connected.clear()
        procs.set_part("spectrometer", "Up")
        assert lines.connected.wait(10.0), "the client did not reconnect"
        assert caget(ms + "UPTIME", timeout=2) < caget(procs.prefix("stage") + "UPTIME")
        # The restarted part maps the next frame: the world kept the specimen.
        wait_for(lambda: caget(procs.prefix("column") + "SCAN:ACQUIRE_RBV") == "Stop", 10,
                 "the column's frame to end")
        caput(ms + "MODE", "Imaging")
        caput(procs.prefix("column") + "SCAN:NY", 8)
        caput(procs.prefix("column") + "SCAN:ACQUIRE", "Start", timeout=30)
        wait_for(lambda: caget(ms + "IMG:FRAME") == 1, 10, "the restarted part's frame")
        assert np.asarray(caget(ms + "COL1:MAP")).size == 64 * 8
    finally:
        context.disconnect()


def test_a_hung_spectrometer_keeps_its_circuits_but_answers_nothing(fresh_instrument):
    procs = fresh_instrument(iocs=("stage", "spectrometer"))
    ms = procs.prefix("spectrometer")
    context = Context()
    try:
        log = ConnectionLog(context, ms + "UPTIME")
        procs.set_part("spectrometer", "Hung")
        (status,) = context.get_pvs(ms + "STATUS")
        t0 = time.monotonic()
        try:
            log.pv.read(timeout=1.0)
            answered = True
        except TimeoutError:
            answered = False
        assert not answered and time.monotonic() - t0 >= 0.9
        assert not log.disconnected.is_set()  # a stopped process: circuits stay up
        assert caget(procs.prefix("stage") + "UPTIME", timeout=2) > 0.0
        procs.set_part("spectrometer", "Up")
        assert log.pv.read(timeout=2.0).data[0] > 0.0
        assert not log.disconnected.is_set()
        del status
    finally:
        context.disconnect()


def test_reset_returns_the_start_up_state(fresh_instrument):
    procs = fresh_instrument(iocs=("stage", "tem", "column", "bias"), time_scale=50.0)
    stage, bias = procs.prefix("stage"), procs.prefix("bias")
    caput(stage + "A.VELO", 30.0)
    caput(stage + "A", -68.0)
    caput(stage + "X", 12.5)
    wait_for(lambda: caget(stage + "A.DMOV") == 1 and caget(stage + "X.DMOV") == 1, 10,
             "the moves")
    caput(procs.prefix("tem") + "OBJ", "Off")
    caput(bias + "VOLTAGE", 1000.0)
    caput(bias + "ENABLE", "On", timeout=10)
    assert caget(bias + "VOLTAGE_RBV") == 1000.0
    procs.reset()
    assert caget(bias + "ENABLE_RBV") == "Off" and caget(bias + "VOLTAGE_RBV") == 0.0
    assert caget(stage + "A.RBV") == 0.0 and caget(stage + "X.RBV") == 0.0
    assert caget(stage + "A.VELO") == 5.0
    assert caget(procs.prefix("tem") + "OBJ_RBV") == "On"
    assert caget(procs.prefix("column") + "BLANK_RBV") == "Blanked"


def test_layout_lists_only_loopback():
    env = CALayout(base_port=30000).server_environment("tem")
    assert env["EPICS_CA_ADDR_LIST"].split() == [
        f"127.0.0.1:{30000 + off}" for off in (*IOC_PORT_OFFSETS.values(), 9)
    ]
    assert env["EPICS_CAS_BEACON_ADDR_LIST"] == "127.0.0.1"
    assert env["EPICS_CA_SERVER_PORT"] == "30002"
    assert env["EPICS_CA_AUTO_ADDR_LIST"] == "NO"
