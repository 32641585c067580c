"""The live document stream over 0MQ: addresses, the session's publisher, a proxy.

A RunEngine publishes its documents with bluesky's ``Publisher`` to the input of a
0MQ proxy (bluesky's ``Proxy``: a SUB socket in, a PUB socket out); any number of
subscribers (bluesky's ``RemoteDispatcher``: ``temsims view``, the stream writer)
connect to its output, in other processes or on other machines.

Conventions (``docs/remote.md``)
    The proxy binds ``127.0.0.1:5577`` (in) and ``127.0.0.1:5578`` (out) unless told
    otherwise: bluesky's documented port pair, on loopback. A session publishes to
    ``$TEMSIMS_ZMQ_PUBLISH`` (the proxy's input, ``host:port``); a viewer subscribes
    to ``$TEMSIMS_ZMQ_SUBSCRIBE`` (the proxy's output). Documents are pickled
    (bluesky's default serializer): subscribe only to proxies you trust.

PUB/SUB drops what is sent before a subscription reaches the sender (0MQ's "slow
joiner"). :func:`publisher` therefore waits until its connection to the proxy has
completed the 0MQ handshake before it returns, and :class:`ProxyProcess` returns only
once its proxy answers, so a run started right after either loses nothing.

Nothing here runs on import; pyzmq and bluesky are imported by the functions.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

#: Environment variable of the proxy input a session publishes to (``host:port``).
PUBLISH_ENV = "TEMSIMS_ZMQ_PUBLISH"
#: Environment variable of the proxy output a viewer subscribes to (``host:port``).
SUBSCRIBE_ENV = "TEMSIMS_ZMQ_SUBSCRIBE"
#: bluesky's conventional proxy ports (``bluesky-0MQ-proxy 5577 5578``), on loopback.
DEFAULT_IN = "127.0.0.1:5577"
DEFAULT_OUT = "127.0.0.1:5578"
#: What a session waits at most for its publisher's handshake with the proxy (s).
HANDSHAKE_WAIT_S = 2.0
#: After the handshake, the peer's subscription follows within a loopback round trip;
#: this margin lets it arrive before the first document is sent (s).
SUBSCRIPTION_SETTLE_S = 0.05

_ADDRESS = re.compile(r"^(?:tcp://)?(?P<host>\[[0-9a-fA-F:.]+\]|[^:\s/\[\]]+):(?P<port>\d+)$")


class StreamError(RuntimeError):
    """The document stream cannot be set up (no proxy at an address, bad address)."""


def parse_address(text: str | None, *, what: str = "address",
                  allow_zero: bool = False) -> tuple[str, int]:
    """``(host, port)`` of ``"host:port"`` (``tcp://`` accepted), checked.

    Parameters
    ----------
    text
        ``"127.0.0.1:5577"``, ``"tcp://host:5578"``, ``"[::1]:5577"``.
    what
        What the address is, for the error message.
    allow_zero
        Accept port 0 (bind to a free port).

    Raises
    ------
    ValueError
        Naming the address and what is wrong with it.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{what}: expected HOST:PORT (e.g. 127.0.0.1:5577), got {text!r}")
    m = _ADDRESS.match(text.strip())
    if m is None:
        raise ValueError(f"{what} {text!r} is not HOST:PORT (e.g. 127.0.0.1:5577)")
    port = int(m["port"])
    low = 0 if allow_zero else 1
    if not low <= port <= 65535:
        raise ValueError(f"{what} {text!r}: port must be in {low}..65535, got {port}")
    return m["host"].strip("[]"), port


def tcp_url(host: str, port: int) -> str:
    """``tcp://host:port`` (IPv6 hosts bracketed)."""
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def check_reachable(host: str, port: int, *, what: str, timeout_s: float = 2.0) -> None:
    """Raise :class:`StreamError` unless something accepts TCP connections there.

    0MQ's ``connect`` never fails: it retries in the background. A plain TCP connect
    first turns a proxy that is not running into an error at once (the proxy's 0MQ
    socket drops the probe without effect).
    """
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise StreamError(f"no 0MQ proxy answers at {host}:{port} ({what}): {reason}. Start "
                          f"one with `temsims view --start-proxy` (or `bluesky-0MQ-proxy "
                          f"--in-address {DEFAULT_IN} --out-address {DEFAULT_OUT}`)") from None


def wait_for_handshake(sock: Any, url: str, timeout_s: float) -> bool:
    """Reconnect ``sock`` to ``url`` and wait until the 0MQ handshake with it completes.

    The socket's first connection was made before anyone could watch it, so its
    events may be gone: it is dropped and made again under a monitor. Returns False
    if ``timeout_s`` passed first (the socket stays connected and keeps retrying).
    """
    import zmq
    from zmq.utils.monitor import recv_monitor_message

    events = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL \
        | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    monitor = sock.get_monitor_socket(events)
    try:
        try:
            sock.disconnect(url)
        except zmq.ZMQError:  # not connected under this spelling: connect once more
            pass
        sock.connect(url)
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if not monitor.poll(int(left * 1000) + 1):
                break
            event = recv_monitor_message(monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                time.sleep(SUBSCRIPTION_SETTLE_S)
                return True
            logger.warning("0MQ handshake with %s failed (event %s): is it a 0MQ proxy?",
                           url, event)
        return False
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)


async def wait_for_handshake_async(sock: Any, url: str, timeout_s: float) -> bool:
    """:func:`wait_for_handshake` for a ``zmq.asyncio`` socket, on its event loop (a
    0MQ socket must only be used from the thread that uses it)."""
    import zmq
    from zmq.utils.monitor import parse_monitor_message

    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED
                                      | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                      | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
    try:
        try:
            sock.disconnect(url)
        except zmq.ZMQError:
            pass
        sock.connect(url)
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if not await monitor.poll(int(left * 1000) + 1):
                break
            event = parse_monitor_message(await monitor.recv_multipart())["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                return True
            logger.warning("0MQ handshake with %s failed (event %s): is it a 0MQ proxy?",
                           url, event)
        return False
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)


def publisher(address: str, *, wait_s: float = HANDSHAKE_WAIT_S) -> Any:
    """bluesky's ``Publisher`` to the proxy input ``address``, connected.

    Parameters
    ----------
    address
        ``host:port`` of a proxy's input (``$TEMSIMS_ZMQ_PUBLISH``).
    wait_s
        Longest wait for the 0MQ handshake with the proxy (s). A proxy that does not
        answer is logged as a warning and not waited for: the publisher reconnects by
        itself once one listens there, and documents sent meanwhile are dropped (a
        session must not fail to start because a viewer's proxy is down).

    Returns
    -------
    bluesky.callbacks.zmq.Publisher
        A RunEngine callback (``RE.subscribe(pub)``); ``pub.close()`` ends it.

    Raises
    ------
    ValueError
        If ``address`` is not ``host:port``.
    """
    from bluesky.callbacks.zmq import Publisher

    host, port = parse_address(address, what=f"{PUBLISH_ENV} / publish")
    pub = Publisher(f"{host}:{port}" if ":" not in host else (host, port))
    try:
        check_reachable(host, port, what="publish", timeout_s=min(wait_s, 2.0))
    except StreamError as err:
        logger.warning("%s; the session publishes once a proxy listens there", err)
        return pub
    if not wait_for_handshake(pub._socket, tcp_url(host, port), wait_s):  # noqa: SLF001
        logger.warning("no 0MQ handshake with the proxy at %s:%d within %.1f s; the first "
                       "documents may be lost", host, port, wait_s)
    return pub


def publish_address(publish: str | None) -> str | None:
    """The address a session publishes to: ``publish``, else ``$TEMSIMS_ZMQ_PUBLISH``;
    None (off) when that is unset, empty or ``"none"``."""
    value = publish if publish is not None else os.environ.get(PUBLISH_ENV)
    if value is None or not value.strip() or value.strip().lower() == "none":
        return None
    return value.strip()


# ============================================================================ proxy
def serve_proxy(in_address: str = DEFAULT_IN, out_address: str = DEFAULT_OUT, *,
                announce: Callable[[str, str], None] | None = None) -> int:
    """Run bluesky's ``Proxy`` in this process until Ctrl-C or SIGTERM.

    Parameters
    ----------
    in_address, out_address
        ``host:port`` to bind (port 0: a free one).
    announce
        Called with the bound ``tcp://`` URLs of input and output, once bound.

    Returns
    -------
    int
        Exit code: 0 when stopped, 1 when an address cannot be bound.
    """
    import zmq
    from bluesky.callbacks.zmq import Proxy

    (ih, ip), (oh, op) = (parse_address(in_address, what="proxy input", allow_zero=True),
                          parse_address(out_address, what="proxy output", allow_zero=True))
    # bluesky binds a tcp:// address without a port to a free port of that interface.
    in_url = tcp_url(ih, ip) if ip else tcp_url(ih, 0)[:-2]
    out_url = tcp_url(oh, op) if op else tcp_url(oh, 0)[:-2]
    try:
        proxy = Proxy(in_url, out_url)
    except zmq.ZMQError as err:
        print(f"temsims view: cannot bind the proxy on {in_address} / {out_address}: {err}",
              file=sys.stderr)
        return 1

    def stop(signum, frame):  # zmq.device returns to Python on signals: end it there
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        if announce is not None:
            announce(str(proxy.in_port), str(proxy.out_port))
        proxy.start()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


_ANNOUNCE = re.compile(r"proxy receiving on (?P<inp>tcp://\S+), publishing on (?P<out>tcp://\S+)")


@dataclass
class ProxyProcess:
    """A proxy in a child process (``temsims view --start-proxy``), stopped by PID.

    Attributes
    ----------
    process
        The child.
    in_address, out_address
        ``host:port`` of its input (publishers) and output (subscribers).
    """

    process: subprocess.Popen
    in_address: str
    out_address: str

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the proxy (by PID), SIGKILL after ``timeout_s``; idempotent."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> ProxyProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_proxy(in_address: str = "127.0.0.1:0", out_address: str = "127.0.0.1:0", *,
                timeout_s: float = 30.0) -> ProxyProcess:
    """Start a proxy in a child process; return once both its ports are bound.

    Parameters
    ----------
    in_address, out_address
        ``host:port`` to bind; port 0 (default) takes a free one, so there is no
        race between finding a port and binding it.
    timeout_s
        Longest wait for the child to report its ports (its imports included).

    Raises
    ------
    StreamError
        If the child exits or says nothing within ``timeout_s`` (its output quoted).
    """
    for text, what in ((in_address, "proxy input"), (out_address, "proxy output")):
        parse_address(text, what=what, allow_zero=True)
    cmd = [sys.executable, "-m", "temsims.app.cli", "view", "--start-proxy",
           "--proxy-in", in_address, "--connect", out_address]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + timeout_s
    seen: list[str] = []
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(max(deadline - time.monotonic(), 0.0)):
                break
            line = proc.stdout.readline()
            if not line:  # the child ended
                break
            seen.append(line.rstrip())
            m = _ANNOUNCE.search(line)
            if m:
                ih, ip = parse_address(m["inp"], what="proxy input")
                oh, op = parse_address(m["out"], what="proxy output")
                return ProxyProcess(proc, f"{ih}:{ip}", f"{oh}:{op}")
    ProxyProcess(proc, in_address, out_address).stop()
    raise StreamError(f"the proxy did not start (exit code {proc.returncode}); its output:\n"
                      + "\n".join(seen[-20:]))
