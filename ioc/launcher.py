"""Start and stop an instrument (its five parts in one process) on loopback.

Used by ``temsims demo`` when no instrument answers, by the benchmarks and by the
tests. One process (:mod:`temsims.ioc.server`) serves every part on its own CA port
over one world (decision 0013); it is stopped by PID. A part is killed, hung,
restored or the whole instrument reset through its simulation-control PVs
(``<prefix>SIM:``), over Channel Access like any other client.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from temsims.channel_access import IOC_PORT_OFFSETS, PART_SUFFIXES, CALayout

ALL_IOCS: tuple[str, ...] = tuple(IOC_PORT_OFFSETS)
#: Name of the instrument's process in ``InstrumentProcesses.processes``.
INSTRUMENT = "instrument"


class IOCStartError(RuntimeError):
    """An IOC process exited or did not answer in time."""


@dataclass
class InstrumentProcesses:
    """The process serving one instrument, and its parts' controls.

    Parameters
    ----------
    layout
        CA ports and host.
    instrument_prefix
        PV prefix shared by every part (each adds its part suffix, e.g. ``STAGE:``).
    specimen, seed
        Virtual specimen in the holder.
    iocs
        Which parts to serve (default: all five).
    log_dir
        Where the process writes ``instrument.log`` (default: discard output).
    extra_args
        Extra command-line arguments of :mod:`temsims.ioc.server`, by part (they are
        all given to the one process, e.g. ``{"spectrometer": ["--drift-nm-per-min",
        "0"]}``).
    time_scale
        Simulated seconds per wall second.
    part_prefixes
        Full PV prefix of a part instead of ``instrument_prefix`` + its suffix
        (``{"stage": "LAB2:GONIO:"}``; :mod:`temsims.ioc.server`'s ``--part-prefix``).
    calibration_errors
        ``"typical"`` or ``"none"`` (:mod:`temsims.ioc.server`'s
        ``--calibration-errors``); default the server's own, ``typical``.
    """

    layout: CALayout = field(default_factory=CALayout)
    instrument_prefix: str = "TEMSIMS:"
    specimen: str = "li2co3-particles"
    seed: int = 1
    iocs: Sequence[str] = ALL_IOCS
    log_dir: Path | None = None
    extra_args: dict[str, list[str]] = field(default_factory=dict)
    time_scale: float = 1.0
    part_prefixes: dict[str, str] = field(default_factory=dict)
    calibration_errors: str | None = None
    processes: dict[str, subprocess.Popen] = field(default_factory=dict, init=False)

    def prefix(self, ioc: str) -> str:
        """The PV prefix part ``ioc`` is served under."""
        return self.part_prefixes.get(ioc, self.instrument_prefix + PART_SUFFIXES[ioc])

    @property
    def sim_prefix(self) -> str:
        return self.instrument_prefix + "SIM:"

    def command(self) -> list[str]:
        cmd = [
            sys.executable, "-m", "temsims.ioc.server",
            "--prefix", self.instrument_prefix,
            "--base-port", str(self.layout.base_port),
            "--host", self.layout.host,
            "--seed", str(self.seed),
            "--specimen", self.specimen,
            "--parts", ",".join(self.iocs),
            "--time-scale", repr(float(self.time_scale)),
        ]
        if self.calibration_errors is not None:
            cmd += ["--calibration-errors", self.calibration_errors]
        for ioc, prefix in sorted(self.part_prefixes.items()):
            cmd += ["--part-prefix", f"{ioc}={prefix}"]
        for ioc in self.iocs:
            cmd += list(self.extra_args.get(ioc, []))
        return cmd

    @property
    def process(self) -> subprocess.Popen | None:
        return self.processes.get(INSTRUMENT)

    def start(self, timeout: float = 30.0) -> InstrumentProcesses:
        """Start the instrument's process and wait until every part answers."""
        self.launch()
        return self.finish_start(timeout)

    def finish_start(self, timeout: float = 30.0) -> InstrumentProcesses:
        """Wait until every part of the instrument :meth:`launch` started answers
        (stopped by PID if it does not)."""
        try:
            self.wait_ready(self.iocs, timeout=timeout)
        except Exception:
            self.stop()
            raise
        return self

    def launch(self) -> InstrumentProcesses:
        """Start the instrument's process without waiting for it to answer
        (:meth:`finish_start` waits): several instruments then start side by side."""
        unknown = set(self.iocs) - set(ALL_IOCS)
        if unknown:
            raise ValueError(f"unknown IOC(s) {sorted(unknown)}; expected {ALL_IOCS}")
        env = {**os.environ, **self.layout.server_environment("stage")}
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"{INSTRUMENT}.log", "ab")  # noqa: SIM115 - owned by Popen
        else:
            out = subprocess.DEVNULL
        from temsims.app.lifecycle import die_with_parent

        self.processes[INSTRUMENT] = subprocess.Popen(
            self.command(), env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # never outlive this process, even killed with SIGKILL (it stops on SIGTERM)
            preexec_fn=die_with_parent())
        if out is not subprocess.DEVNULL:
            out.close()
        return self

    # ---- Channel Access from this process, with this instrument's address list ------
    def _with_client_environment(self, action):
        saved = {key: os.environ.get(key) for key in self.layout.client_environment()}
        os.environ.update(self.layout.client_environment())
        try:
            return action()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def wait_ready(self, iocs: Iterable[str], timeout: float = 30.0) -> None:
        """Block until ``<prefix>UPTIME`` of each part answers over CA.

        The caller's environment is left as it was: the search uses this
        instrument's address list only for the duration of the call, and never
        spawns caproto's own repeater (which would bind 0.0.0.0).
        """
        from caproto.sync.client import read

        deadline = time.monotonic() + timeout

        def wait_all() -> None:
            for ioc in iocs:
                self._wait_pv(self.prefix(ioc) + "UPTIME", read, deadline, timeout)

        self._with_client_environment(wait_all)

    def _wait_pv(self, pv: str, read, deadline: float, timeout: float) -> None:
        from caproto import CaprotoError

        while True:
            proc = self.process
            if proc is not None and proc.poll() is not None:
                raise IOCStartError(
                    f"the instrument process exited with code {proc.returncode} before "
                    f"{pv} answered"
                    + (f"; see {self.log_dir / (INSTRUMENT + '.log')}" if self.log_dir else ""))
            try:
                read(pv, timeout=0.5, repeater=False)
                return
            except (TimeoutError, CaprotoError) as exc:
                # A server still starting can also drop the circuit of a first read
                # ("Disconnected during initialization", seen at load 10).
                if time.monotonic() > deadline:
                    raise IOCStartError(f"{pv} did not answer in {timeout} s ({exc})") from None

    def _put_sim(self, suffix: str, value: str, timeout: float) -> None:
        from caproto import CaprotoTimeoutError
        from caproto.sync.client import write

        def put() -> None:
            # One search (sent twice over 30 s) went unanswered in a full test run while
            # another part was hung, 1 run in 4, and never in 60 isolated repeats (cause
            # not found: decision 0013). It is tried again, and said: a test run shows
            # the warning, so how often it happens stays measured.
            for attempt in range(3):
                try:
                    write(self.sim_prefix + suffix, value, notify=True, timeout=timeout,
                          repeater=False)
                    return
                except CaprotoTimeoutError as exc:
                    if "search" not in str(exc) or attempt == 2:
                        raise
                    warnings.warn(f"{self.sim_prefix}{suffix}: search unanswered in "
                                  f"{timeout} s, tried again ({exc})", RuntimeWarning,
                                  stacklevel=2)

        self._with_client_environment(put)

    def set_part(self, ioc: str, state: str, timeout: float = 30.0) -> None:
        """Put a part Up, Dead (as a killed IOC) or Hung (as a stopped one)."""
        if ioc not in ALL_IOCS:
            raise ValueError(f"unknown IOC {ioc!r}; expected one of {ALL_IOCS}")
        self._put_sim(ioc.upper(), state, timeout)
        if state == "Up":
            self.wait_ready([ioc], timeout=timeout)

    def restart(self, ioc: str, timeout: float = 30.0) -> None:
        """Kill one part and bring it back (the others keep running)."""
        self.set_part(ioc, "Dead", timeout)
        self.set_part(ioc, "Up", timeout)

    def stop_one(self, ioc: str, timeout: float = 10.0) -> None:
        """Kill one part: its circuits drop and its PVs stop answering."""
        self.set_part(ioc, "Dead", timeout)

    def reset(self, timeout: float = 60.0) -> None:
        """Every part Up and back to its start-up state, with a pristine specimen."""
        self._put_sim("RESET", "Reset", timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the instrument's process by PID (SIGINT, then SIGKILL)."""
        proc = self.processes.pop(INSTRUMENT, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)

    def __enter__(self) -> InstrumentProcesses:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
