"""Channel Access environment for an instrument served on one host.

Every temsims IOC is its own process with its own CA server port, because several
servers sharing one UDP search port on a host are not all found by a client whose
address list is a unicast address (only one of them receives the unicast search).
The ports of one instrument are laid out from one base port::

    base      stage IOC          base + 1  repeater and beacons
    base + 2  TEM IOC            base + 4  ion column IOC
    base + 6  bias supply IOC    base + 8  mass spectrometer IOC
    base + 9  simulation control (``<instrument>SIM:``, not a part of the microscope)

and a client lists all six server addresses in ``EPICS_CA_ADDR_LIST``. One process
serves them all (decision 0013), each part on its own port so that it can be
killed or hung alone. Everything
is bound to and searched on loopback unless a host is given explicitly, so that no
CA traffic (searches, beacons) ever leaves the machine.

This module is shared by the IOCs, the devices and the tests; it knows PV *ports*,
not PV names, and does no work on import.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

#: IOC names in start order and their port offsets from the base port.
IOC_PORT_OFFSETS: dict[str, int] = {
    "stage": 0,
    "tem": 2,
    "column": 4,
    "bias": 6,
    "spectrometer": 8,
}
#: PV prefix of each IOC after the instrument prefix (``TEMSIMS:`` by default).
PART_SUFFIXES: dict[str, str] = {
    "stage": "STAGE:",
    "tem": "TEM:",
    "column": "FIB:",
    "bias": "BIAS:",
    "spectrometer": "MS:",
}
REPEATER_OFFSET = 1
SIM_CONTROL_OFFSET = 9
DEFAULT_BASE_PORT = 5064
DEFAULT_HOST = "127.0.0.1"
#: Large enough for a 1024 x 1024 float64 waveform plus CA headers.
DEFAULT_MAX_ARRAY_BYTES = 2**24


@dataclass(frozen=True)
class CALayout:
    """Ports and host of one instrument's Channel Access servers.

    Parameters
    ----------
    base_port
        Server port of the stage IOC; the others follow ``IOC_PORT_OFFSETS``.
    host
        Interface the servers bind and clients search (loopback by default).
    """

    base_port: int = DEFAULT_BASE_PORT
    host: str = DEFAULT_HOST

    def __post_init__(self) -> None:
        if not 1024 <= self.base_port <= 65535 - 10:
            raise ValueError(f"base_port must be in 1024..65525, got {self.base_port}")

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> CALayout:
        """The layout named by ``TEMSIMS_CA_BASE_PORT``/``TEMSIMS_CA_HOST``, else defaults."""
        environ = os.environ if environ is None else environ
        return cls(
            base_port=int(environ.get("TEMSIMS_CA_BASE_PORT", DEFAULT_BASE_PORT)),
            host=environ.get("TEMSIMS_CA_HOST", DEFAULT_HOST),
        )

    @property
    def repeater_port(self) -> int:
        return self.base_port + REPEATER_OFFSET

    @property
    def sim_port(self) -> int:
        """CA server port of the simulation control (``SIM:`` PVs)."""
        return self.base_port + SIM_CONTROL_OFFSET

    def server_port(self, ioc: str) -> int:
        """CA server port of the IOC called ``ioc`` (a key of ``IOC_PORT_OFFSETS``)."""
        try:
            return self.base_port + IOC_PORT_OFFSETS[ioc]
        except KeyError:
            raise ValueError(
                f"unknown IOC {ioc!r}; expected one of {sorted(IOC_PORT_OFFSETS)}"
            ) from None

    def address_list(self) -> str:
        """``EPICS_CA_ADDR_LIST`` naming every IOC of the instrument and its SIM control."""
        ports = [self.server_port(name) for name in IOC_PORT_OFFSETS] + [self.sim_port]
        return " ".join(f"{self.host}:{port}" for port in ports)

    def client_environment(self, max_array_bytes: int = DEFAULT_MAX_ARRAY_BYTES) -> dict[str, str]:
        """Variables a CA client (ophyd, an IOC's own links) needs to find the instrument."""
        return {
            "EPICS_CA_ADDR_LIST": self.address_list(),
            "EPICS_CA_AUTO_ADDR_LIST": "NO",
            "EPICS_CA_SERVER_PORT": str(self.base_port),
            "EPICS_CA_REPEATER_PORT": str(self.repeater_port),
            "EPICS_CA_MAX_ARRAY_BYTES": str(max_array_bytes),
            "TEMSIMS_CA_BASE_PORT": str(self.base_port),
            "TEMSIMS_CA_HOST": self.host,
        }

    def server_environment(
        self, ioc: str, max_array_bytes: int = DEFAULT_MAX_ARRAY_BYTES
    ) -> dict[str, str]:
        """Variables for the process serving IOC ``ioc``: its port, loopback beacons."""
        env = self.client_environment(max_array_bytes)
        env.update(
            {
                # caproto's server takes its UDP search port and first-choice TCP port
                # from EPICS_CA_SERVER_PORT (EPICS_CAS_SERVER_PORT is the C server's).
                "EPICS_CA_SERVER_PORT": str(self.server_port(ioc)),
                "EPICS_CAS_SERVER_PORT": str(self.server_port(ioc)),
                # Read by caproto at import: 0 sends each monitor as soon as it is
                # queued instead of waiting up to 1 ms (rounded up by epoll) for more
                # to batch with it; decision 0010.
                "CAPROTO_SERVER_HIGH_LOAD_TIMEOUT_SEC": "0",
                "EPICS_CAS_INTF_ADDR_LIST": self.host,
                "EPICS_CAS_BEACON_PORT": str(self.repeater_port),
                "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
                "EPICS_CAS_BEACON_ADDR_LIST": self.host,
            }
        )
        return env


def _ephemeral_low(default: int = 32768) -> int:
    """First port the kernel hands to outgoing connections (Linux; else ``default``)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def find_free_base_port(span: int = 10, host: str = DEFAULT_HOST,
                        low: int = 20000, high: int | None = None) -> int:
    """A random even base port with ``span`` free TCP and UDP ports on ``host`` above it.

    ``high`` defaults to the start of the kernel's ephemeral range: a port chosen above
    it can be taken, between the check and the server's bind, by any outgoing
    connection of this machine (a CA client's circuit, an HTTP request); one was, in a
    test run, and the instrument could not bind it.

    For benchmarks and tests that run their own instrument beside anything else on
    the machine (the default 5064 may be taken by a real or another simulated IOC).
    """
    import random
    import socket

    if high is None:
        high = _ephemeral_low()
    high = max(high - span, low + 2)
    rng = random.Random(os.getpid() ^ int.from_bytes(os.urandom(4), "little"))
    for _ in range(200):
        base = rng.randrange(low, high, 2)
        if all(port_free(host, port, kind)
               for port in range(base, base + span)
               for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM)):
            return base
    raise RuntimeError(f"no block of {span} free ports on {host}")


def port_free(host: str, port: int, kind: int) -> bool:
    """True when nothing holds ``port`` (``kind``: SOCK_STREAM or SOCK_DGRAM) on ``host``."""
    import socket

    sock = socket.socket(socket.AF_INET, kind)
    try:
        sock.bind((host, port))
    except OSError:
        return False
    finally:
        sock.close()
    return True


def apply_client_environment(layout: CALayout | None = None) -> CALayout:
    """Export the client variables of ``layout`` into ``os.environ`` and return it.

    Must run before the first CA context of the process is created (caproto and
    pyepics read the environment once).
    """
    layout = CALayout.from_environment() if layout is None else layout
    os.environ.update(layout.client_environment())
    return layout
