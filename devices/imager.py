"""SIMS imager: a flyer that rasters the ion column and collects the maps line by line.

``kickoff()`` puts ``FIB:SCAN:ACQUIRE`` = Start (put with completion, not waited on) and
returns a status that finishes when the spectrometer has begun mapping *this* frame
(``MS:IMG:START_TIME`` later than the one it held at the kickoff: the IOC's own clock,
which a client cannot compare with its wall clock at a time scale). While the raster
runs, CA monitors on ``MS:COL{n}:MAP`` and ``MS:IMG:LINES_DONE`` feed a state machine
that cuts each newly published line out of the maps and buffers it; ``complete()``
returns a status that finishes when ``MS:IMG:FRAME`` counts the frame and every line has
been collected (it fails if the raster is aborted). Nothing blocks or polls: all of it
runs in ophyd's monitor-callback thread. A line is taken only once every map update
holding it has arrived: the spectrometer marks pixels not acquired yet with -1, so a
``LINES_DONE`` update that overtakes (or outlives a coalesced) map update waits for the
next one instead of yielding a line of zeros.

Interruptions (a pause, or a suspension when a part dies or hangs: decision 0026):
the RunEngine calls ``pause()``, which stops the raster, hands the lines taken so far to
the next ``collect()``, abandons the frame's statuses (a failed one would end the run) and
sets :attr:`SIMSImager.interrupted`.
It raises bluesky's ``NoReplayAllowed``: replaying the frame's kickoff and collects
would emit its first lines twice. The plan re-acquires the frame by setting
:attr:`SIMSImager.first_line` to ``k`` and kicking off: the whole frame is rastered
again and only lines ``k..NY-1`` are emitted, so a map's line indices never repeat (``callbacks/maps.py``).

Events: one per ``lines_per_event`` map lines (default 1), in stream ``stream_name``
(``"primary"``), with one ``(lines_per_event, NX)`` int32 array per collector named
by its species (``imager_7Li``) and the index of the first line (``imager_line``).
Their timestamps are when the event's last line was acquired on the IOC's clock,
``START_TIME + (line + 1) * FRAME_TIME / NY``, not when its map update arrived: at a
time scale the spectrometer may publish a frame's lines late, all at once, if it was
still preparing the frame when the raster started (decision 0013), and a client's
clock cannot be compared with the IOC's.
"""

from __future__ import annotations

import threading

import numpy as np
from bluesky.utils import NoReplayAllowed
from ophyd import Component as Cpt
from ophyd import Device
from ophyd import FormattedComponent as FCpt
from ophyd.status import DeviceStatus

from temsims.devices.common import (
    Readback,
    Reading,
    SoftSignal,
    ValidatedSignal,
    reads_now,
)

N_COLLECTORS = 4
FRAME_SLACK_S = 30.0
#: Time for the spectrometer to start mapping a frame (it may have to prepare it).
KICKOFF_TIMEOUT_S = 30.0
#: After the frame is counted, how long the last lines' map updates may take to arrive.
LAST_LINES_TIMEOUT_S = 5.0
#: After the column has rastered the frame, how long the spectrometer may go without
#: counting it or publishing a line (its lines can trail the raster on a loaded machine).
FRAME_COUNT_TIMEOUT_S = 30.0
#: A raster seen stopped while an interruption is on its way (a suspender tripped, the
#: RunEngine pausing, the column's SIMS interlock blocked) fails the frame only if no
#: pause() came within this (s): the RunEngine stops the objects a plan moved before it
#: pauses the others, and an IOC that stops the raster on a fault can be heard before
#: the suspender that watches the fault on another part. Any other Stop (an operator,
#: the IOC with nothing wrong) fails the frame at once.
STOP_GRACE_S = 3.0


class SIMSImager(Device):
    """Flyer over the ion column's raster and the spectrometer's maps.

    Parameters
    ----------
    prefix
        Unused (the imager spans two IOCs); kept for ophyd's signature.
    column_prefix, spectrometer_prefix
        PV prefixes of the ion column (``TEMSIMS:FIB:``) and spectrometer
        (``TEMSIMS:MS:``) IOCs.
    label_source
        Optional callable returning the four collector labels (e.g.
        ``MassSpectrometer.labels``); by default each collector is named by the
        isotope its mass is set to.
    """

    # Column: raster control and the setup recorded as configuration.
    acquire = FCpt(ValidatedSignal, "{self.column_prefix}SCAN:ACQUIRE", string=True,
                   kind="omitted")
    acquire_rbv = FCpt(Readback, "{self.column_prefix}SCAN:ACQUIRE_RBV", string=True,
                       kind="omitted")
    column_frame = FCpt(Readback, "{self.column_prefix}SCAN:FRAME", kind="omitted")
    interlock = FCpt(Readback, "{self.column_prefix}INTERLOCK_RBV", string=True,
                     kind="omitted")
    nx = FCpt(Reading, "{self.column_prefix}SCAN:NX", kind="config")
    ny = FCpt(Reading, "{self.column_prefix}SCAN:NY", kind="config")
    dwell = FCpt(Reading, "{self.column_prefix}SCAN:DWELL", kind="config")
    fov = FCpt(Reading, "{self.column_prefix}SCAN:FOV", kind="config")
    rotation = FCpt(Reading, "{self.column_prefix}SCAN:ROTATION", kind="config")
    frame_time = FCpt(Reading, "{self.column_prefix}SCAN:FRAME_TIME", kind="config")
    current = FCpt(Reading, "{self.column_prefix}CURRENT_RBV", kind="config")
    probe = FCpt(Reading, "{self.column_prefix}PROBE_RBV", kind="config")
    landing = FCpt(Reading, "{self.column_prefix}LANDING_RBV", kind="config")
    beam_blank = FCpt(Reading, "{self.column_prefix}BLANK_RBV", string=True,
                      kind="config")
    # Spectrometer: imaging progress, maps, collector masses.
    lines_done = FCpt(Readback, "{self.spectrometer_prefix}IMG:LINES_DONE", kind="omitted")
    img_frame = FCpt(Readback, "{self.spectrometer_prefix}IMG:FRAME", kind="omitted")
    img_start_time = FCpt(Readback, "{self.spectrometer_prefix}IMG:START_TIME",
                          kind="omitted")
    img_nx = FCpt(Readback, "{self.spectrometer_prefix}IMG:NX", kind="omitted")
    map1 = FCpt(Reading, "{self.spectrometer_prefix}COL1:MAP", kind="omitted")
    map2 = FCpt(Reading, "{self.spectrometer_prefix}COL2:MAP", kind="omitted")
    map3 = FCpt(Reading, "{self.spectrometer_prefix}COL3:MAP", kind="omitted")
    map4 = FCpt(Reading, "{self.spectrometer_prefix}COL4:MAP", kind="omitted")
    mass1 = FCpt(Reading, "{self.spectrometer_prefix}COL1:MASS_RBV", kind="config")
    mass2 = FCpt(Reading, "{self.spectrometer_prefix}COL2:MASS_RBV", kind="config")
    mass3 = FCpt(Reading, "{self.spectrometer_prefix}COL3:MASS_RBV", kind="config")
    mass4 = FCpt(Reading, "{self.spectrometer_prefix}COL4:MASS_RBV", kind="config")
    sims_ready = FCpt(Reading, "{self.spectrometer_prefix}SIMS_READY", string=True,
                      kind="config")
    lines_per_event = Cpt(SoftSignal, value=1, kind="config", doc="Map lines per event")
    first_line = Cpt(SoftSignal, value=0, kind="omitted",
                     doc="First line the next kickoff emits (a frame re-acquired after an "
                         "interruption); the kickoff puts it back to 0")
    species = Cpt(SoftSignal, value="", kind="config", doc="Collector labels, comma-separated")

    stream_name = "primary"

    def __init__(self, prefix="", *, column_prefix: str, spectrometer_prefix: str,
                 label_source=None, **kwargs):
        self.column_prefix = column_prefix
        self.spectrometer_prefix = spectrometer_prefix
        self.label_source = label_source
        super().__init__(prefix, **kwargs)
        self._lock = threading.RLock()
        self._subscribed = False
        self._active = False
        self._labels: list[str] | None = None
        self._events: list[dict] = []
        self._kickoff_status: DeviceStatus | None = None
        self._complete_status: DeviceStatus | None = None
        self.last_frame: dict | None = None
        self._maps: list = [None] * N_COLLECTORS
        self._armed = False
        self._raster_started = False
        self._lines_seen = 0
        self._lines_target = 0
        self._line_period = 0.0
        self._frame_start = 0.0
        self._frame_ended = False
        self._pending: list = []
        self._first_line = 0
        self._config_snapshot: tuple[dict, dict] | None = None
        #: True once ``pause()`` interrupted the frame in flight (reset by ``kickoff``).
        self.interrupted = False
        # A frame was kicked off (cleared by unstage()): the plan may not have collected
        # all of it, and a replay from a checkpoint before its kickoff would store it
        # twice (a suspension just after a frame's last line: 18 lines duplicated).
        # Without a replay the plan goes on from where it was paused.
        self._flown = False
        #: Optional callable, True while a pause or suspension of the run is on its way
        #: (:func:`temsims.app.faults.install_suspenders` sets it): a raster stopped
        #: then is the interruption's, and pause() follows. None: no suspenders.
        self.interruption_pending = None

    # ---- configuration ------------------------------------------------------------
    def _map_signals(self):
        return [self.map1, self.map2, self.map3, self.map4]

    def _mass_signals(self):
        return [self.mass1, self.mass2, self.mass3, self.mass4]

    def collector_labels(self) -> list[str]:
        """Data-key labels of the four collectors (unique)."""
        if self.label_source is not None:
            labels = [str(x) for x in self.label_source()]
        else:
            from temsims.devices.spectrometer import mass_label

            labels = [mass_label(float(s.get())) for s in self._mass_signals()]
        out = []
        for n, label in enumerate(labels, start=1):
            out.append(label if labels.count(label) == 1 else f"{label}_col{n}")
        return out

    def _keys(self) -> list[str]:
        labels = self._labels if self._labels is not None else self.collector_labels()
        return [f"{self.name}_{label}" for label in labels]

    # ---- monitors -------------------------------------------------------------------
    def _ensure_subscriptions(self) -> None:
        if self._subscribed:
            return
        for i, sig in enumerate(self._map_signals()):
            sig.subscribe(lambda *a, i=i, **kw: self._on_map(i, **kw), run=False)
        self.img_start_time.subscribe(self._on_start_time, run=False)
        self.lines_done.subscribe(self._on_lines, run=False)
        self.img_frame.subscribe(self._on_img_frame, run=False)
        self.acquire_rbv.subscribe(self._on_acquire_rbv, run=False)
        self._subscribed = True

    def _on_map(self, index, *, value, **kwargs) -> None:
        with self._lock:
            if self._active:
                self._maps[index] = np.asarray(value)
                if self._armed:
                    self._advance()

    def _on_start_time(self, *, value, **kwargs) -> None:
        with self._lock:
            if not self._active or self._armed:
                return
            if float(value) <= self._start_time0:
                return  # an older frame's map
            self._armed = True
            self._frame_start = float(value)
            st = self._kickoff_status
        if st is not None and not st.done:
            st.set_finished()

    def _on_lines(self, *, value, **kwargs) -> None:
        with self._lock:
            if not (self._active and self._armed):
                return
            self._lines_target = max(self._lines_target, min(int(value), self._ny))
            self._advance()

    def _advance(self) -> None:
        """Take, in order, every announced line that every map already holds.

        The spectrometer marks pixels not acquired yet with -1: a line is taken only
        when no map has -1 in it, so a map update that arrives after the line count
        (or replaces a coalesced one) can never yield a line of zeros.
        """
        nx = self._nx
        while self._lines_seen < self._lines_target:
            row = self._lines_seen
            line = []
            for m in self._maps:
                if m is None or m.size < (row + 1) * nx:
                    return
                values = np.asarray(m[row * nx:(row + 1) * nx], np.int32)
                if (values < 0).any():
                    return
                line.append(values)
            # Acquired (on the IOC's clock) when the raster finished this line.
            t_line = self._frame_start + (row + 1) * self._line_period
            if row >= self._first_line:  # lines before it were collected before a pause
                self._pending.append((row, t_line, line))
            self._lines_seen = row + 1
        self._emit(final=False)
        if self._frame_ended:
            self._finish_frame()

    def _emit(self, *, final: bool) -> None:
        lpe = self._lpe
        while len(self._pending) >= lpe or (final and self._pending):
            chunk, self._pending = self._pending[:lpe], self._pending[lpe:]
            row0, t = chunk[0][0], chunk[-1][1]
            data = {f"{self.name}_line": row0}
            for k, key in enumerate(self._keys()):
                data[key] = np.stack([c[2][k] for c in chunk])
            self._events.append({"time": t, "data": data,
                                 "timestamps": {key: t for key in data}})

    def _on_img_frame(self, *, value, **kwargs) -> None:
        with self._lock:
            if not (self._active and self._armed) or int(value) <= self._frame0:
                return
            self._frame_ended = True
            self._advance()
            if self._active:  # lines still in flight: give their map updates a moment
                timer = threading.Timer(LAST_LINES_TIMEOUT_S, self._give_up,
                                        args=(self._complete_status,))
                timer.daemon = True
                timer.start()

    def _finish_frame(self) -> None:
        """The frame is counted and every line taken (called with the lock held)."""
        if not self._active or self._lines_seen < self._ny:
            return
        self._emit(final=True)
        self._active = False
        self.last_frame = {"lines": self._lines_seen, "nx": self._nx, "ny": self._ny,
                           "start_time": self._frame_start}
        st = self._complete_status
        if st is not None and not st.done:
            st.set_finished()

    def _watch_frame_count(self, frame, lines_before: int) -> None:
        """After the column has rastered ``frame``: fail it if the spectrometer neither
        counts it nor publishes a line for FRAME_COUNT_TIMEOUT_S (a map it aborted or
        failed), instead of the plan waiting for it for ever. Lines still arriving (a
        spectrometer trailing the raster on a loaded machine) keep it going."""
        with self._lock:
            if not self._active or self._complete_status is not frame or self._frame_ended:
                return
            lines = self._lines_seen
        if lines > lines_before:
            timer = threading.Timer(FRAME_COUNT_TIMEOUT_S, self._watch_frame_count,
                                    args=(frame, lines))
            timer.daemon = True
            timer.start()
            return
        self._fail_frame(frame, lambda lines: (
            f"{self.name}: the ion column has rastered the frame but the spectrometer has "
            f"neither counted it nor sent a line for {FRAME_COUNT_TIMEOUT_S:g} s ({lines} "
            f"of {self._ny} lines collected, IMG:FRAME = {self.img_frame.get()})"),
            unless_counted=True)

    def _give_up(self, frame) -> None:
        # This frame's timer only: a frame kicked off meanwhile is not failed by it.
        self._fail_frame(frame, lambda lines: (
            f"{self.name}: frame ended with {lines} of {self._ny} lines collected"))

    def _fail_frame(self, frame, reason, *, kickoff_too: bool = False,
                    unless_counted: bool = False) -> None:
        """End ``frame`` (its complete status; ``kickoff_too``: its kickoff's as well)
        with ``RuntimeError(reason(lines taken))``, the lines taken going to the next
        collect and the flyer freed. Nothing when it is no longer the frame in flight
        (pause() took it, it ended, another was kicked off) or, ``unless_counted``, once
        the spectrometer has counted it.
        """
        with self._lock:
            if not self._active or self._complete_status is not frame or (
                    unless_counted and self._frame_ended):
                return
            self._emit(final=True)
            self._active = False
            lines = self._lines_seen
            statuses = (self._kickoff_status, frame) if kickoff_too else (frame,)
        exc = RuntimeError(reason(lines))
        for st in statuses:
            if st is not None and not st.done:
                st.set_exception(exc)

    def _on_acquire_rbv(self, *, value, old_value=None, **kwargs) -> None:
        """The column's raster went back to Stop without counting a frame: stopped
        (by a stop(), an operator or an interlock), whether or not the map had begun.
        The lines taken so far go out; kickoff and complete fail; the flyer is free.
        A Stop that belongs to a pause or suspension on its way waits for its pause()."""
        with self._lock:
            if not self._active:
                return
            if str(value) not in ("Stop", "0"):
                self._raster_started = True
                return
            # A Stop before this frame's Start is the previous frame's, arriving late.
            if not self._raster_started or int(self.column_frame.get()) > self._column_frame0:
                return
            frame = self._complete_status
        if not self._interruption_coming():
            self._raster_stopped(frame)
            return
        timer = threading.Timer(STOP_GRACE_S, self._raster_stopped, args=(frame,))
        timer.daemon = True
        timer.start()

    def _interruption_coming(self) -> bool:
        """Whether a raster Stop seen now is a pause's or a fault's, pause() to follow.

        Waiting for a pause() that never comes held an operator's Stop for the whole
        grace (3.5-4.2 s, load 6-8, for a map that fails in < 1 s); these answer from
        what is known now, without waiting.
        """
        pending = self.interruption_pending
        if pending is not None:
            try:
                if pending():
                    return True
            except Exception:  # noqa: BLE001 - unknown: wait, as before the hook
                return True
        # The column's own view: the SIMS geometry lost (a bias trip or arc) is a fault
        # whose suspension may not have been heard yet; the monitored value holds what
        # the column published before this Stop (same circuit, in order).
        try:
            if not self.interlock.connected:
                return True
            return str(self.interlock.get()) not in ("Permit", "1")
        except Exception:  # noqa: BLE001 - a column going away: its suspension follows
            return True

    def _raster_stopped(self, frame) -> None:
        # Nothing if pause() took the frame, or it ended, meanwhile.
        self._fail_frame(frame, lambda lines: (
            f"{self.name}: raster stopped after {lines} of {self._ny} lines"),
            kickoff_too=True)

    # ---- flyer interface ------------------------------------------------------------
    def kickoff(self, first_line: int | None = None) -> DeviceStatus:
        """Start one raster frame; the status finishes when its map has begun.

        ``first_line`` (default: :attr:`first_line`, which a plan sets before the
        kickoff, and which this puts back to 0): emit lines from this index on (a frame
        re-acquired after an interruption; the lines before it were collected already).
        The whole frame is rastered: the column has no partial raster.
        """
        if self._active:
            raise RuntimeError(f"{self.name}: already flying; complete() first")
        if reads_now(self.acquire_rbv, "Start"):
            raise RuntimeError(f"{self.name}: the ion column is already rastering a frame")
        nx, ny = int(self.nx.get()), int(self.ny.get())
        lpe = int(self.lines_per_event.get())
        if lpe < 1 or ny % lpe:
            raise ValueError(f"{self.name}: lines_per_event ({lpe}) must divide NY ({ny})")
        if first_line is None:
            first_line = self.first_line.get()
        first_line = int(first_line)
        self.first_line.put(0)  # for this kickoff only
        if not 0 <= first_line < ny:
            raise ValueError(f"{self.name}: first_line {first_line} outside 0..{ny - 1}")
        labels = self.collector_labels()
        self._ensure_subscriptions()
        # The frame's configuration as it is now: what bluesky records with its lines
        # (read at the first collect), never read from a part that died meanwhile.
        self._config_snapshot = None
        self._config_snapshot = (self.read_configuration(), self.describe_configuration())
        frame_time = float(self.frame_time.get())
        with self._lock:
            self._labels = labels
            self.species.put(",".join(labels))
            self._nx, self._ny, self._lpe = nx, ny, lpe
            self._maps = [None] * N_COLLECTORS
            self._pending = []
            self._events = []
            self._lines_seen = 0
            self._lines_target = 0
            self._first_line = first_line
            self.interrupted = False
            self._line_period = frame_time / max(ny, 1)
            self._frame_ended = False
            self._armed = False
            self._raster_started = False
            self._frame0 = int(self.img_frame.get())
            self._column_frame0 = int(self.column_frame.get())
            self._start_time0 = float(self.img_start_time.get())
            self._kickoff_status = DeviceStatus(self, timeout=KICKOFF_TIMEOUT_S)
            self._complete_status = DeviceStatus(self)
            self._active = True
            self._flown = True
        kickoff_status = self._kickoff_status
        put = self.acquire.set("Start", timeout=frame_time + FRAME_SLACK_S + KICKOFF_TIMEOUT_S)

        # This frame's statuses: a late completion of an interrupted frame's put must
        # not fail the frame that re-acquires it.
        frame_statuses = (self._kickoff_status, self._complete_status)

        def put_done(s) -> None:
            if s.success:
                # The column has rastered the frame: the spectrometer must count it.
                self._watch_frame_count(frame_statuses[1], -1)
                return
            exc = RuntimeError(f"{self.name}: the raster frame did not run to its end "
                               f"({s.exception()!r})")
            for st in frame_statuses:
                if st is not None and not st.done:
                    st.set_exception(exc)

        put.add_callback(put_done)

        def kickoff_done(s) -> None:
            # A failed kickoff (timeout, refused raster) must not leave the flyer armed:
            # the next kickoff would refuse with "already flying".
            if s.success or self.interrupted:  # pause() has cleaned up already
                return
            with self._lock:
                # An interrupted frame's abandoned status times out KICKOFF_TIMEOUT_S
                # later, during whatever frame runs then: it stopped that raster
                # (a fault scenario 30 s after a dead column failed 'raster stopped').
                if self._kickoff_status is not s:
                    return
                self._active = False
                st = self._complete_status
            if st is not None and not st.done:
                st.set_exception(RuntimeError(f"{self.name}: kickoff failed ({s.exception()!r})"))
            # The monitored value only: this runs in a status callback, where a CA read
            # would wait on the client's own threads. A stale "Start" costs a no-op Stop.
            if str(self.acquire_rbv.get()) == "Start":
                self.acquire.put("Stop", use_complete=False)

        kickoff_status.add_callback(kickoff_done)
        return kickoff_status

    def complete(self) -> DeviceStatus:
        """Status that finishes when the whole map has been collected."""
        if self._complete_status is None:
            raise RuntimeError(f"{self.name}: complete() before kickoff()")
        return self._complete_status

    def read_configuration(self) -> dict:
        """The configuration read at the last kickoff (live before the first one)."""
        if self._config_snapshot is not None:
            return dict(self._config_snapshot[0])
        return super().read_configuration()

    def describe_configuration(self) -> dict:
        if self._config_snapshot is not None:
            return dict(self._config_snapshot[1])
        return super().describe_configuration()

    def describe_collect(self) -> dict:
        with self._lock:
            nx = self._nx if self._labels is not None else int(self.nx.get())
            lpe = self._lpe if self._labels is not None else int(self.lines_per_event.get())
            keys = self._keys()
        desc = {f"{self.name}_line": {"source": "SIM:imager line index", "dtype": "integer",
                                      "shape": [], "dtype_numpy": np.dtype(np.int64).str}}
        for n, key in enumerate(keys, start=1):
            desc[key] = {"source": f"PV:{self.spectrometer_prefix}COL{n}:MAP",
                         "dtype": "array", "shape": [lpe, nx], "dims": ["line", "x"],
                         "dtype_numpy": np.dtype(np.int32).str, "units": "counts"}
        return {self.stream_name: desc}

    def collect(self):
        """Yield the events buffered so far (each once)."""
        with self._lock:
            events, self._events = self._events, []
        yield from events

    def pause(self) -> None:
        """The RunEngine pauses or suspends: interrupt the frame in flight.

        The raster is stopped (if the column answers), the lines taken so far go to
        the next ``collect()``, :attr:`interrupted` is set (the frame's statuses never
        finish)
        and ``NoReplayAllowed`` tells the RunEngine not to replay the frame's
        messages: the plan re-acquires from the first line it did not collect.
        Nothing happens when no frame is in flight.
        """
        with self._lock:
            if not self._active:
                if self._flown:  # ended, maybe not all collected: no replay
                    raise NoReplayAllowed()
                return
            self._emit(final=True)
            self._active = False
            self.interrupted = True
            lines = self._lines_seen
            statuses = (self._kickoff_status, self._complete_status)
        try:
            self.acquire.put("Stop", use_complete=False)
        except Exception:  # noqa: BLE001 - a dead column rasters nothing anyway
            pass
        # The frame's statuses are left unfinished, not failed: the RunEngine throws a
        # failed status into whatever plan runs next, which during a suspension is its
        # own helper (it would end the run). The plan reads ``interrupted`` instead.
        del statuses, lines
        raise NoReplayAllowed()

    def resume(self) -> None:
        """Nothing to do: the plan kicks the interrupted frame off again."""

    def unstage(self):
        self._flown = False
        return super().unstage()

    def stop(self, *, success: bool = False) -> None:
        """Abort the frame (the complete status then fails)."""
        # The monitored value: a stale Start costs a no-op Stop, and an abort does not
        # wait on a CA read (of a part that may be gone).
        if str(self.acquire_rbv.get()) == "Start":
            self.acquire.put("Stop", use_complete=False)
