"""One process serves the instrument: five parts on their own loopback ports, each of
which can die, hang and come back alone, as a separate IOC would (decision 0013).

The tests use the session's shared instrument: a part they kill or hang is brought
back Up before they end (and the next ``instruments.get()`` resets everything)."""

import threading
import time

import numpy as np
from caproto.threading.client import Context
from catools import Monitor, caget, caput, caread, put, wait_for

from temsims.channel_access import IOC_PORT_OFFSETS, CALayout

OTHER_PARTS = ("stage", "tem", "column", "bias")


def test_every_ioc_answers_on_its_own_port(instruments):
    procs = instruments.get()
    for ioc in IOC_PORT_OFFSETS:
        uptime = caget(procs.prefix(ioc) + "UPTIME", timeout=2)
        assert uptime >= 0.0
    ports = {procs.layout.server_port(ioc) for ioc in IOC_PORT_OFFSETS}
    ports.add(procs.layout.sim_port)
    assert len(ports) == 6
    assert caget(procs.sim_prefix + "TIME_SCALE") == procs.time_scale
    for part in IOC_PORT_OFFSETS:
        assert caget(procs.sim_prefix + part.upper()) == "Up"


def test_one_ioc_restarts_alone(instruments):
    procs = instruments.get()
    wait_for(lambda: caget(procs.prefix("stage") + "UPTIME") >= 1.0, 5, "the stage's uptime")
    stage_uptime = caget(procs.prefix("stage") + "UPTIME")
    procs.restart("bias")
    # UPTIME is nominal seconds since the part (re)started, published at 1 Hz of wall
    # time: the fresh bias has published its first value only.
    assert caget(procs.prefix("bias") + "UPTIME", timeout=2) < 1.0
    assert caget(procs.prefix("stage") + "UPTIME", timeout=2) >= stage_uptime
    assert caget(procs.sim_prefix + "BIAS") == "Up"


class ConnectionLog:
    """A CA client's view of one PV: its connection states (with the wall time each
    reached this client) and its values."""

    def __init__(self, context: Context, name: str) -> None:
        self.states: list[tuple[float, str]] = []
        self.values: list[float] = []
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        (self.pv,) = context.get_pvs(name, connection_state_callback=self._on_state,
                                     timeout=2.0)
        self.pv.wait_for_connection(timeout=5.0)
        self.sub = self.pv.subscribe()
        # A bound method: caproto holds subscription callbacks by weak reference (a
        # lambda here would be collected at once and never called).
        self.sub.add_callback(self._on_value)

    def _on_value(self, sub, response) -> None:
        self.values.append(response.data[0])

    def _on_state(self, pv, state: str) -> None:
        self.states.append((time.monotonic(), state))
        (self.connected if state == "connected" else self.disconnected).set()


def _start_map(procs, nx: int, ny: int, dwell_s: float) -> None:
    col = procs.prefix("column")
    caput(procs.prefix("spectrometer") + "MODE", "Imaging")
    for suffix, value in (("SCAN:NX", nx), ("SCAN:NY", ny), ("SCAN:DWELL", dwell_s)):
        caput(col + suffix, value)
    put(col + "SCAN:ACQUIRE", "Start", wait=False)  # completes at the end of the frame


def test_killing_the_spectrometer_mid_map_looks_like_a_dead_ioc(instruments, monkeypatch):
    # A CA client re-searches a restarted server's PVs when its beacons show the
    # restart; caproto's threading client only retries on its search back-off (up to
    # 5 s between searches). Bound that back-off here, as a client tuned for a quick
    # reconnection would, so that the reconnection shows in well under a second.
    import caproto.client.common as client_common

    monkeypatch.setattr(client_common, "MAX_RETRY_SEARCHES_INTERVAL", 0.25)
    procs = instruments.get()
    ms, col = procs.prefix("spectrometer"), procs.prefix("column")
    scale = float(caget(procs.sim_prefix + "TIME_SCALE"))
    context = Context()
    try:
        lines = ConnectionLog(context, ms + "IMG:LINES_DONE")
        nx = ny = 64
        # 16 s of wall time (stopped below): the raster must still run after the first
        # lines, the kill and up to 5 s for the client to see it (4 s had ended under
        # load before the check: 'Stop' == 'Start').
        _start_map(procs, nx, ny, dwell_s=16.0 * scale / (nx * ny))
        wait_for(lambda: lines.values and lines.values[-1] >= 4, 10, "the first map lines")
        t_kill = time.monotonic()
        procs.set_part("spectrometer", "Dead")
        assert lines.disconnected.wait(5.0), "the client never saw the circuit drop"
        t_seen = next(t for t, state in lines.states if state != "connected")
        detected_s = t_seen - t_kill
        print(f"\nspectrometer killed mid-map (line {lines.values[-1]} of {ny}): the "
              f"client saw its circuit drop {1000 * detected_s:.1f} ms after the kill "
              f"(SIM:SPECTROMETER = Dead put, wall clock of this client)")
        assert detected_s < 2.0
        # Everything else still answers, and the raster goes on without its detector.
        for part in OTHER_PARTS:
            assert caget(procs.prefix(part) + "UPTIME", timeout=2) > 0.0
        assert caget(col + "SCAN:ACQUIRE_RBV") == "Start"
        assert caget(procs.sim_prefix + "SPECTROMETER") == "Dead"
        caput(col + "SCAN:ACQUIRE", "Stop")
        lines.connected.clear()
        t_up = time.monotonic()
        procs.set_part("spectrometer", "Up")
        assert lines.connected.wait(10.0), "the client did not reconnect"
        print(f"reconnected {1000 * (time.monotonic() - t_up):.1f} ms after the Up put")
        assert caget(ms + "UPTIME", timeout=2) < caget(procs.prefix("stage") + "UPTIME")
        # The restarted part maps the next frame: the world kept the specimen.
        caput(ms + "MODE", "Imaging")
        caput(col + "SCAN:NY", 8)
        caput(col + "SCAN:DWELL", 1e-4)
        frames = Monitor(ms + "IMG:FRAME")
        try:
            caput(col + "SCAN:ACQUIRE", "Start", timeout=30)
            frames.wait_for(lambda u: int(u[-1][1]) == 1)  # a fresh part's first frame
        finally:
            frames.clear()
        counts = np.asarray(caread(ms + "COL1:MAP").data)
        assert counts.size == nx * 8 and (counts >= 0).all()
    finally:
        context.disconnect()


def test_a_hung_spectrometer_keeps_its_circuits_but_answers_nothing(instruments):
    procs = instruments.get()
    ms = procs.prefix("spectrometer")
    context = Context()
    try:
        log = ConnectionLog(context, ms + "UPTIME")
        procs.set_part("spectrometer", "Hung")
        try:
            t0 = time.monotonic()
            try:
                log.pv.read(timeout=1.0)
                answered = True
            except TimeoutError:
                answered = False
            assert not answered and time.monotonic() - t0 >= 0.9
            assert not log.disconnected.is_set()  # a stopped process: circuits stay up
            assert caget(procs.sim_prefix + "SPECTROMETER") == "Hung"
            for part in OTHER_PARTS:  # the other parts answer
                assert caget(procs.prefix(part) + "UPTIME", timeout=2) > 0.0
        finally:
            procs.set_part("spectrometer", "Up")
        assert log.pv.read(timeout=2.0).data[0] > 0.0
        assert not log.disconnected.is_set()
    finally:
        context.disconnect()


def test_reset_returns_the_start_up_state(instruments):
    procs = instruments.get()
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
    caput(procs.prefix("column") + "BLANK", "Unblanked")
    procs.set_part("tem", "Hung")
    procs.reset()  # brings the hung part back first
    assert caget(bias + "ENABLE_RBV") == "Off" and caget(bias + "VOLTAGE_RBV") == 0.0
    assert caget(stage + "A.RBV") == 0.0 and caget(stage + "X.RBV") == 0.0
    assert caget(stage + "A.VELO") == 5.0
    assert caget(procs.prefix("tem") + "OBJ_RBV") == "On"
    assert caget(procs.prefix("column") + "BLANK_RBV") == "Blanked"
    assert caget(procs.sim_prefix + "TEM") == "Up"


def test_layout_lists_only_loopback():
    env = CALayout(base_port=30000).server_environment("tem")
    assert env["EPICS_CA_ADDR_LIST"].split() == [
        f"127.0.0.1:{30000 + off}" for off in (*IOC_PORT_OFFSETS.values(), 9)
    ]
    assert env["EPICS_CAS_BEACON_ADDR_LIST"] == "127.0.0.1"
    assert env["EPICS_CA_SERVER_PORT"] == "30002"
    assert env["EPICS_CA_AUTO_ADDR_LIST"] == "NO"
