"""Lifecycle and security defaults (issue 14, item 8), with real processes and signals.

- ``temsims demo`` on SIGTERM stops its instrument process as on Ctrl-C, and the
  instrument process never outlives a demo killed with SIGKILL (PR_SET_PDEATHSIG:
  :mod:`temsims.app.lifecycle`).
- Every socket the started servers listen on (TCP) or are bound to (UDP) is on
  loopback: read from ``/proc/net/{tcp,tcp6,udp,udp6}`` and the processes' file
  descriptors, not from what they print. (A CA *client*, such as the demo's devices,
  has caproto's UDP search socket on 0.0.0.0 and an ephemeral port: not a server.)
- The write key of ``temsims serve`` appears in no log and in no stored metadata after
  a session wrote runs with it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

FAULTS = Path(__file__).with_name("faults")
LOOPBACK = {"0100007F", "00000000000000000000000001000000"}  # 127.0.0.1, ::1 in /proc's hex


def descendants(pid: int) -> set[int]:
    """``pid`` and every process below it (from /proc/*/stat's parent pids)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    out, todo = {pid}, [pid]
    while todo:
        parent = todo.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in out:
                out.add(child)
                todo.append(child)
    return out


def bound_sockets(pids: set[int]) -> list[tuple[int, str, str, int]]:
    """``(pid, protocol, local address in /proc's hex, port)`` of every listening TCP
    socket and every bound UDP socket the processes hold."""
    inodes: dict[str, int] = {}
    for pid in pids:
        with_fds = Path(f"/proc/{pid}/fd")
        try:
            for fd in with_fds.iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = pid
        except OSError:
            continue
    out = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path(f"/proc/net/{proto}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            address, port = local.split(":")
            if inode in inodes and (state == "0A" or proto.startswith("udp")) and int(port, 16):
                out.append((inodes[inode], proto, address, int(port, 16)))
    return out


def assert_loopback(sockets) -> None:
    assert sockets, "no socket found"
    wide = [s for s in sockets if s[2] not in LOOPBACK]
    assert not wide, f"bound beyond loopback: {wide}"


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def wait_gone(pids, timeout_s: float) -> float:
    t0 = time.monotonic()
    while any(alive(p) for p in pids):
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"still running after {timeout_s} s: "
                               f"{[p for p in pids if alive(p)]}")
        time.sleep(0.05)
    return time.monotonic() - t0


@pytest.mark.timeout(180)
@pytest.mark.parametrize("stop", ["TERM", "KILL"])
def test_the_demo_binds_loopback_and_its_instrument_ends_with_it(tmp_path, stop):
    """``temsims demo`` (its own instrument process): every socket of the demo and its
    children is on loopback; on SIGTERM the demo stops the instrument and exits 130 as
    on Ctrl-C; on SIGKILL the instrument process ends by itself (SIGTERM from the
    kernel at its parent's death) and frees its ports."""
    from temsims.channel_access import find_free_base_port

    base_port = find_free_base_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "temsims.app.cli", "demo", "--quick", "--base-port",
         str(base_port), "--prefix", f"LC{os.getpid() % 10000}:", "--catalog",
         str(tmp_path / "catalog"), "--out", str(tmp_path / "report"), "--time-scale", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    lines = []
    try:
        deadline = time.monotonic() + 120
        while not any("IOCs up" in line for line in lines):
            line = proc.stdout.readline()
            assert line and time.monotonic() < deadline, "".join(lines)
            lines.append(line)
        children = descendants(proc.pid) - {proc.pid}
        assert children, "the demo started no instrument process"
        # Servers: the instrument process, every socket. The demo itself is a CA client:
        # it listens on nothing beyond loopback; its UDP search socket is caproto's
        # client's, bound to 0.0.0.0 on an ephemeral port (caproto's threading client
        # binds ('', 0); it sends only to the loopback address list): not a server.
        sockets = bound_sockets(children)
        assert_loopback(sockets)
        own = [s for s in bound_sockets({proc.pid}) if s[1].startswith("tcp")]
        assert not [s for s in own if s[2] not in LOOPBACK], own
        assert {port for _, proto, _, port in sockets if proto == "tcp"} >= {base_port}
        proc.send_signal(getattr(signal, f"SIG{stop}"))
        rest, _ = proc.communicate(timeout=60)
        gone_s = wait_gone(children, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
    if stop == "TERM":
        assert proc.returncode == 130, rest
        assert "IOCs stopped" in rest, rest
    else:
        assert proc.returncode == -signal.SIGKILL
    print(f"\nSIG{stop} to temsims demo: {len(sockets)} sockets, all loopback; its "
          f"{len(children)} child process(es) gone {gone_s:.2f} s after the demo")


@pytest.mark.timeout(180)
def test_serve_and_the_writer_bind_loopback_and_no_key_leaks(tmp_path):
    """``temsims serve`` on a directory, a session writing runs to it through its
    writer process with the write key in ``TILED_API_KEY``, and a catalog directory's
    own server: every socket on loopback; the key in no log, no printed line and no
    stored metadata."""
    import importlib.util

    sys.path.insert(0, str(Path(__file__).parent))  # postgres_support, which it imports
    spec = importlib.util.spec_from_file_location(
        "catalog_conftest", Path(__file__).parent / "catalog" / "conftest.py")
    catalog_conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(catalog_conftest)
    ServedCatalog = catalog_conftest.ServedCatalog

    from temsims.catalog import open_catalog

    served = ServedCatalog([str(tmp_path / "served")], stop_signal=signal.SIGTERM)
    try:
        key = served.write_key
        out = tmp_path / "session"
        out.mkdir()
        with open(out / "stderr", "w") as err:
            session = subprocess.run(
                [sys.executable, str(FAULTS / "session_for_faults.py"), served.uri, str(out),
                 "--events", "20", "--delay", "0.01", "--spool", str(tmp_path / "spool")],
                env={**os.environ, "TILED_API_KEY": key}, stdout=subprocess.PIPE,
                stderr=err, text=True, timeout=120)
        assert session.returncode == 0, session.stdout + (out / "stderr").read_text()
        assert_loopback(bound_sockets({served.proc.pid}))
        # a catalog directory's server and a writer process, as a session has them
        with open_catalog(tmp_path / "directory") as cat:
            writer = cat.writer(process=True, spool_dir=tmp_path / "spool")
            time.sleep(0.5)
            assert_loopback(bound_sockets({cat.server.pid}))
            assert not [s for s in bound_sockets({writer.pid}) if s[2] not in LOOPBACK]
            directory_key = cat.server.api_key
        with open_catalog(served.uri, api_key=served.read_key) as cat:
            import json

            metadata = json.dumps([dict(run.metadata) for run in cat.values()], default=str)
            assert len(cat) == 2
    finally:
        code, rest = served.stop()
    assert code == 0, rest
    texts = {"serve's output": served.intro + rest,
             "session's output": session.stdout + (out / "stderr").read_text(),
             "stored metadata": metadata}
    for log in [*tmp_path.rglob("*.log")]:
        texts[str(log)] = log.read_text(errors="replace")
    for where, text in texts.items():
        assert key not in text, f"the write key is in {where}"
        assert served.read_key not in text, f"a read key is in {where}"
        assert directory_key not in text, f"a directory's key is in {where}"
    print(f"\nno key in {len(texts)} logs, outputs and the stored metadata")
