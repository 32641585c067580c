"""Start and stop the instrument's IOCs as subprocesses on loopback.

Used by ``temsims ioc all``, by ``temsims demo`` when no IOC is running, and by
the tests. Each IOC is its own process with its own CA port (see
:mod:`temsims.channel_access`), preceded by a CA repeater bound to loopback; all
are stopped by PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from temsims.channel_access import IOC_PORT_OFFSETS, PART_SUFFIXES, CALayout
from temsims.ioc.common import repeater_running

ALL_IOCS: tuple[str, ...] = tuple(IOC_PORT_OFFSETS)
#: IOCs that render the virtual specimen and so take ``--specimen``/``--seed``.
SPECIMEN_IOCS = frozenset({"tem", "spectrometer"})


class IOCStartError(RuntimeError):
    """An IOC process exited or did not answer in time."""


@dataclass
class InstrumentProcesses:
    """The IOC processes of one instrument.

    Parameters
    ----------
    layout
        CA ports and host.
    instrument_prefix
        PV prefix shared by every IOC (each adds its part suffix, e.g. ``STAGE:``).
    specimen, seed
        Virtual specimen for the IOCs that render it.
    iocs
        Which IOCs to run (default: all five).
    log_dir
        Where each process writes ``<name>.log`` (default: discard output).
    extra_args
        Per-IOC extra command-line arguments.
    """

    layout: CALayout = field(default_factory=CALayout)
    instrument_prefix: str = "TEMSIMS:"
    specimen: str = "li2co3-particles"
    seed: int = 1
    iocs: Sequence[str] = ALL_IOCS
    log_dir: Path | None = None
    extra_args: dict[str, list[str]] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict, init=False)

    def prefix(self, ioc: str) -> str:
        return self.instrument_prefix + PART_SUFFIXES[ioc]

    def command(self, ioc: str) -> list[str]:
        cmd = [
            sys.executable, "-m", f"temsims.ioc.{ioc}",
            "--prefix", self.prefix(ioc),
            "--instrument-prefix", self.instrument_prefix,
            "--seed", str(self.seed),
            "--specimen", self.specimen,
        ]
        return cmd + list(self.extra_args.get(ioc, []))

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by Popen
        else:
            out = subprocess.DEVNULL
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        if out is not subprocess.DEVNULL:
            out.close()
        return proc

    def start(self, timeout: float = 30.0) -> InstrumentProcesses:
        """Start the repeater and every IOC, and wait until each one answers."""
        unknown = set(self.iocs) - set(ALL_IOCS)
        if unknown:
            raise ValueError(f"unknown IOC(s) {sorted(unknown)}; expected {ALL_IOCS}")
        base_env = {**os.environ, **self.layout.client_environment()}
        self._start_repeater(base_env)
        for ioc in self.iocs:
            env = {**base_env, **self.layout.server_environment(ioc)}
            self.processes[ioc] = self._spawn(ioc, self.command(ioc), env)
        try:
            self.wait_ready(self.iocs, timeout=timeout)
        except Exception:
            self.stop()
            raise
        return self

    def _start_repeater(self, env: dict[str, str]) -> None:
        """A CA repeater bound to loopback (exits at once if one already listens)."""
        self.processes["repeater"] = self._spawn(
            "repeater",
            [sys.executable, "-c",
             f"from caproto.sync.repeater import run; run(host={self.layout.host!r})"],
            env,
        )

    def wait_ready(self, iocs: Iterable[str], timeout: float = 30.0) -> None:
        """Block until ``<prefix>UPTIME`` of each IOC answers over CA.

        The caller's environment is left as it was: the search uses this
        instrument's address list only for the duration of the call, and never
        spawns caproto's own repeater (which would bind 0.0.0.0).
        """
        from caproto.sync.client import read

        deadline = time.monotonic() + timeout
        while not repeater_running(self.layout.host, self.layout.repeater_port):
            if time.monotonic() > deadline:
                raise IOCStartError("the CA repeater did not start")
            time.sleep(0.02)
        saved = {key: os.environ.get(key) for key in self.layout.client_environment()}
        os.environ.update(self.layout.client_environment())
        try:
            for ioc in iocs:
                self._wait_one(ioc, read, deadline, timeout)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def _wait_one(self, ioc: str, read, deadline: float, timeout: float) -> None:
        pv = self.prefix(ioc) + "UPTIME"
        while True:
            proc = self.processes.get(ioc)
            if proc is not None and proc.poll() is not None:
                raise IOCStartError(
                    f"IOC {ioc!r} exited with code {proc.returncode} before answering"
                    + (f"; see {self.log_dir / (ioc + '.log')}" if self.log_dir else "")
                )
            try:
                read(pv, timeout=0.5, repeater=False)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise IOCStartError(
                        f"IOC {ioc!r}: {pv} did not answer in {timeout} s"
                    ) from None

    def restart(self, ioc: str, timeout: float = 30.0) -> None:
        """Stop one IOC and start it again (the others keep running)."""
        self.stop_one(ioc)
        env = {**os.environ, **self.layout.server_environment(ioc)}
        self.processes[ioc] = self._spawn(ioc, self.command(ioc), env)
        if self.processes.get("repeater") is None or self.processes["repeater"].poll() is not None:
            if not repeater_running(self.layout.host, self.layout.repeater_port):
                self._start_repeater({**os.environ, **self.layout.client_environment()})
        self.wait_ready([ioc], timeout=timeout)

    def stop_one(self, ioc: str, timeout: float = 5.0) -> None:
        proc = self.processes.pop(ioc, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)

    def stop(self) -> None:
        """Stop every process, IOCs first, by PID."""
        for name in [n for n in self.processes if n != "repeater"] + ["repeater"]:
            self.stop_one(name)

    def __enter__(self) -> InstrumentProcesses:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
