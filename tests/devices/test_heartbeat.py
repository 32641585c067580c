"""The part watchdog on a real part: a killed part is seen dead at once, and found
again soon after it is back (caproto's client alone waits out its search back-off)."""

from __future__ import annotations

import time


def _wait_for(watchdog, state: str, after: float, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while True:
        last = watchdog.history[-1] if watchdog.history else None
        if last and last["state"] == state and last["at"] >= after:
            return last["at"] - after
        assert time.monotonic() < deadline, (state, watchdog.history)
        time.sleep(0.01)


def test_a_dead_part_is_found_again_within_a_second_of_its_return(fresh_instrument):
    from temsims.devices.common import use_caproto_control_layer

    use_caproto_control_layer()
    from temsims.devices.heartbeat import PartWatchdog

    procs = fresh_instrument(iocs=("spectrometer",))
    watchdog = PartWatchdog("spectrometer", procs.prefix("spectrometer")).start()
    try:
        for _ in range(2):
            # Down long enough for caproto's back-off to reach seconds between
            # searches (0.03, 0.06, ... 1.9 s after 2 s of searching).
            t_kill = time.monotonic()
            procs.set_part("spectrometer", "Dead")
            detect = _wait_for(watchdog, "dead", t_kill, timeout=5)
            time.sleep(2.5)
            t_up = time.monotonic()
            procs.set_part("spectrometer", "Up")
            back = _wait_for(watchdog, "up", t_up, timeout=15)
            print(f"dead seen after {detect:.3f} s; up seen {back:.2f} s after its return")
            assert detect < 1.0
            # 0.2 s measured; 6.3 s with caproto's own back-off (up to 5 s between
            # searches).
            assert back < 2.0
            assert watchdog.down.get() == 0
    finally:
        watchdog.stop()
