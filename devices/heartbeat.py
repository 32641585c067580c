"""Is a part alive? A watchdog on each part's ``UPTIME`` heartbeat and its CA circuit.

Every part serves ``<part>UPTIME`` and updates it once a wall second
(``docs/pv-reference.md``). A client tells the two ways a part can fail apart by
what it sees of that PV (decision 0013 makes a killed or stopped part look exactly
like a killed or stopped IOC):

- **dead** (killed): the circuit drops; ophyd reports ``connected=False`` in a
  metadata callback at once (detected in milliseconds);
- **hung** (stopped): the circuit stays open and nothing arrives; detected when no
  heartbeat came for ``hung_after_s`` (default :data:`HUNG_AFTER_S`).

:class:`PartWatchdog` turns both into one soft signal, ``down`` (0/1), which a stock
bluesky ``SuspendBoolHigh`` can watch (:mod:`temsims.plans.faults`), and a
``reason``. The part is up again when it is connected and a heartbeat arrived after
it went down.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from ophyd import Signal

from temsims.devices.common import Readback

#: A part is hung when no heartbeat arrived for this long (s, wall). The heartbeat is
#: published at 1 Hz: three missed beats, so a loaded machine that delays one beat
#: does not suspend a run.
HUNG_AFTER_S = 3.0
#: How often the watchdog thread looks at the heartbeat's age (s).
POLL_S = 0.05
#: While a part is down, ``down`` is put again this often (s), for subscribers that
#: missed it.
REASSERT_S = 0.25
#: While a part's circuit is down, the client's searches for lost PVs are sent again
#: this often (s): caproto backs off to one search every 5 s, so a part back after a
#: second was found again only 6-7 s later.
SEARCH_AGAIN_S = 0.5


class PartWatchdog:
    """Watch one part's heartbeat (``<prefix>UPTIME``) and connection.

    Parameters
    ----------
    part
        The part's name (``"spectrometer"``), used in reasons and signal names.
    prefix
        The part's PV prefix (``"TEMSIMS:MS:"``).
    hung_after_s
        Heartbeat silence (wall s) after which a connected part counts as hung.

    Attributes
    ----------
    down : ophyd.Signal
        0 while the part is up, 1 while it is dead or hung.
    reason : str
        Why it is down ("" while up).
    history : list of dict
        Each transition: ``{"state": "dead"|"hung"|"up", "at": monotonic s,
        "silent_s": heartbeat silence at that moment}`` (what the fault benchmark reads).
    """

    def __init__(self, part: str, prefix: str, *, hung_after_s: float = HUNG_AFTER_S) -> None:
        if not hung_after_s > 0:
            raise ValueError(f"hung_after_s must be > 0 s, got {hung_after_s!r}")
        self.part = part
        self.prefix = prefix
        self.hung_after_s = float(hung_after_s)
        self.heartbeat = Readback(prefix + "UPTIME", name=f"{part}_heartbeat")
        self.down = Signal(name=f"{part}_down", value=0)
        self.reason = ""
        self.history: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._connected = False
        self._last_beat = time.monotonic()
        self._beat_since_down = False
        self._asserted_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- callbacks (ophyd's monitor and connection threads) --------------------------
    def _on_beat(self, *, value: Any = None, **kwargs: Any) -> None:
        with self._lock:
            self._last_beat = time.monotonic()
            self._connected = True
            self._beat_since_down = True

    def _on_meta(self, *, connected: bool | None = None, **kwargs: Any) -> None:
        if connected is None:
            return
        with self._lock:
            self._connected = bool(connected)
        if not connected:
            self._evaluate()  # a drop is news now, not at the next poll

    # ---- state ------------------------------------------------------------------------
    def _evaluate(self) -> None:
        with self._lock:
            now = time.monotonic()
            silent = now - self._last_beat
            if not self._connected:
                state, reason = "dead", f"{self.part}: not connected (its circuit dropped)"
            elif silent > self.hung_after_s:
                state, reason = "hung", (f"{self.part}: no heartbeat for {silent:.1f} s "
                                         f"(hung after {self.hung_after_s:g} s)")
            elif self.down.get() and not self._beat_since_down:
                # Still down until a fresh heartbeat proves otherwise.
                state, reason = "held", self.reason
            else:
                state, reason = "up", ""
            was_down = bool(self.down.get())
            last = self.history[-1]["state"] if self.history else "up"
            if was_down and state in ("dead", "hung") and state != last:
                # Down already, now for another reason (a part seen hung on a loaded
                # machine whose circuit then drops): recorded, ``down`` stays 1.
                self.reason = reason
                self.history.append({"state": state, "at": now, "silent_s": silent})
            if state == "held" or (state == "up") == (not was_down):
                repeat = was_down and now - self._asserted_at >= REASSERT_S
                if repeat:
                    self._asserted_at = now
            else:
                repeat = False
        if repeat:
            # Said again while down: a subscriber that could not act (bluesky's
            # suspender gives the RunEngine's loop 0.1 s to make its event, and a
            # plan blocked on a dead PV holds that loop for a second) acts now.
            self.down.put(1)
            return
        if state == "held":
            return
        with self._lock:
            if (state == "up") == (not bool(self.down.get())):
                return
            if state != "up":
                self._beat_since_down = False
            self.reason = reason
            self._asserted_at = now
            self.history.append({"state": state, "at": now, "silent_s": silent})
        # Outside the lock: the suspender subscribed to ``down`` runs in this call.
        self.down.put(0 if state == "up" else 1)

    def _run(self) -> None:
        searched_at = 0.0
        while not self._stop.wait(POLL_S):
            self._evaluate()
            now = time.monotonic()
            if not self._connected and now - searched_at >= SEARCH_AGAIN_S:
                searched_at = now
                self._search_again()

    def _search_again(self) -> None:
        """Have caproto's client resend its unanswered searches now, from its
        shortest interval (what it does by itself when a new PV is asked for)."""
        pv = getattr(getattr(self.heartbeat, "_read_pv", None), "_caproto_pv", None)
        broadcaster = getattr(getattr(pv, "context", None), "broadcaster", None)
        search_now = getattr(broadcaster, "_search_now", None)
        if search_now is not None:  # another control layer: its own back-off applies
            search_now.set()

    def start(self, timeout: float = 5.0) -> PartWatchdog:
        """Subscribe to the heartbeat and start the watchdog thread."""
        self.heartbeat.subscribe(self._on_beat, run=False)
        self.heartbeat.subscribe(self._on_meta, event_type=self.heartbeat.SUB_META, run=False)
        try:
            self.heartbeat.wait_for_connection(timeout=timeout)
            with self._lock:
                self._connected = True
                self._last_beat = time.monotonic()
        except TimeoutError:
            pass  # down from the first evaluation on
        self._thread = threading.Thread(target=self._run, name=f"watchdog-{self.part}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and the subscriptions."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        self.heartbeat.unsubscribe_all()
        self.heartbeat.destroy()

    def last_transition(self, state: str) -> dict[str, Any] | None:
        """The latest transition to ``state`` ("dead", "hung" or "up"), or None."""
        return next((h for h in reversed(self.history) if h["state"] == state), None)


__all__ = ["HUNG_AFTER_S", "PartWatchdog"]
