"""``temsims queue``: the queue server (Redis and bluesky-queueserver's RE Manager)
against a running instrument.

It starts ``redis-server`` (loopback, nothing saved) and ``start-re-manager`` with
the worker's start-up module :mod:`temsims.app.queue_startup` (the session's
RunEngine, catalog writer, devices and plans; :mod:`temsims.app.queue_worker`),
temsims' user-group permissions and plan list, its ZMQ control and info sockets on
loopback; prints the addresses and serves until Ctrl-C or SIGTERM, then stops both
by PID. :class:`QueueServer` does the same for a program or a test. ``docs/queue.md``
says how to use it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import IO, Any

from temsims.channel_access import CALayout
from temsims.stop_signals import StopSignals

#: What ``temsims queue --help`` says first.
DESCRIPTION = """Serve a queue of plans for the running instrument: Redis (the queue's store) and
bluesky-queueserver's RE Manager, whose worker has the session's RunEngine, catalog
writer, devices and plans. Clients (bluesky-queueserver-api's REManagerAPI, the qserver
command, queue GUIs) connect to the ZMQ control address it prints. Everything binds
127.0.0.1; Ctrl-C or SIGTERM stops both processes (by PID).

User groups (docs/queue.md): primary (operators) may run every plan; guest may run TEM
imaging, EDX and the plans that make the instrument safe, never one that unblanks the
ion beam or applies the bias."""

LOOPBACK = "127.0.0.1"
#: The package data that configures the RE Manager.
CONFIG_PACKAGE = "temsims.app.queue_config"
PERMISSIONS_FILE = "user_group_permissions.yaml"
PLANS_AND_DEVICES_FILE = "existing_plans_and_devices.yaml"
STARTUP_MODULE = "temsims.app.queue_startup"
#: Seconds to wait for Redis to answer and for the RE Manager's first status.
REDIS_START_TIMEOUT_S = 10.0
MANAGER_START_TIMEOUT_S = 60.0


class QueueError(RuntimeError):
    """The queue server could not start; the message says what to do next."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nobody listens on at ``host`` now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port_free(port: int, what: str, option: str, host: str = LOOPBACK) -> None:
    """Raise :class:`QueueError` naming ``option`` if ``host:port`` cannot be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as err:
            raise QueueError(f"the {what} port {host}:{port} is taken ({err.strerror}): choose "
                             f"another with {option} (0: a free one)") from None


def _pick(port: int, what: str, option: str) -> int:
    if port == 0:
        return free_port()
    check_port_free(port, what, option)
    return port


def config_file(name: str) -> Path:
    """A file of the queue server's package data (:data:`CONFIG_PACKAGE`)."""
    return Path(str(resources.files(CONFIG_PACKAGE).joinpath(name)))


def redis_command(port: int, state_dir: Path) -> list[str]:
    """``redis-server`` on loopback at ``port``, saving nothing to disk.

    Raises
    ------
    QueueError
        If ``redis-server`` is not on ``PATH``.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise QueueError("redis-server is not installed: install Debian's redis-server package "
                         "(apt-get install redis-server) or put redis-server on PATH")
    return [binary, "--bind", LOOPBACK, "--port", str(port), "--save", "",
            "--appendonly", "no", "--dir", str(state_dir)]


def wait_for_redis(port: int, process: subprocess.Popen, timeout: float) -> None:
    """Until Redis on ``127.0.0.1:port`` answers PING (``QueueError`` if it exits or
    does not answer within ``timeout`` s)."""
    import redis

    client = redis.Redis(host=LOOPBACK, port=port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if process.poll() is not None:
                raise QueueError(f"redis-server exited (code {process.returncode}) before "
                                 f"answering on {LOOPBACK}:{port}")
            try:
                if client.ping():
                    return
            except redis.exceptions.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise QueueError(f"redis-server did not answer on {LOOPBACK}:{port} within "
                                 f"{timeout:.0f} s")
            time.sleep(0.05)
    finally:
        client.close()


def instrument_answers(prefix: str, layout: CALayout) -> bool:
    """True when the instrument's stage IOC answers (``temsims demo``'s check), searched
    for with ``layout``'s CA client environment (this process's is restored after)."""
    from temsims.app.demo import iocs_running

    client_env = layout.client_environment()
    saved = {name: os.environ.get(name) for name in client_env}
    os.environ.update(client_env)
    try:
        return iocs_running(layout, prefix)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass
class QueueServer:
    """Redis and the RE Manager for one instrument, started by :meth:`start`, stopped
    by PID with :meth:`stop` (also a context manager).

    Parameters
    ----------
    prefix, base_port, host
        The instrument (PV prefix, CA port layout) the worker connects to.
    catalog
        Catalog directory or tiled URI for the worker (``None``: ``$TEMSIMS_CATALOG``
        or the user data directory).
    api_key
        tiled API key for a URI (``None``: ``$TILED_API_KEY``).
    redis_port, control_port, info_port
        Loopback ports (0: free ones, picked at start).
    state_dir
        Where the RE Manager's permissions and plan list, Redis' directory and the
        logs go (``None``: a temporary directory, removed by :meth:`stop`).
    log_dir
        Where both processes write their output (``redis.log``, ``re-manager.log``;
        ``None``: ``state_dir``), unless ``log`` is given.
    log
        A stream both processes write their output to instead (a terminal).
    zmq_publish
        ``host:port`` of a 0MQ proxy the worker publishes documents to (``None``:
        ``$TEMSIMS_ZMQ_PUBLISH``, unset: none).
    check_instrument
        Refuse to start when the instrument does not answer.
    extra_env
        More environment variables for the RE Manager and its worker.
    """

    prefix: str = "TEMSIMS:"
    base_port: int = CALayout().base_port
    host: str = LOOPBACK
    catalog: str | None = None
    api_key: str | None = None
    redis_port: int = 0
    control_port: int = 0
    info_port: int = 0
    state_dir: Path | None = None
    log_dir: Path | None = None
    log: IO[str] | None = None
    zmq_publish: str | None = None
    check_instrument: bool = True
    extra_env: dict[str, str] = field(default_factory=dict)
    redis: subprocess.Popen | None = field(default=None, init=False)
    manager: subprocess.Popen | None = field(default=None, init=False)
    _own_state_dir: bool = field(default=False, init=False)
    _logs: list[IO] = field(default_factory=list, init=False)

    @property
    def control_address(self) -> str:
        """The RE Manager's ZMQ control address (REManagerAPI's ``zmq_control_addr``)."""
        return f"tcp://{LOOPBACK}:{self.control_port}"

    @property
    def info_address(self) -> str:
        """The RE Manager's ZMQ info address (console output; ``zmq_info_addr``)."""
        return f"tcp://{LOOPBACK}:{self.info_port}"

    @property
    def redis_address(self) -> str:
        return f"{LOOPBACK}:{self.redis_port}"

    def worker_environment(self) -> dict[str, str]:
        """The RE Manager's (and its worker's) environment: this one, the instrument's
        CA client variables, ``TEMSIMS_PREFIX``, ``TEMSIMS_CATALOG``,
        ``TILED_API_KEY``, ``TEMSIMS_ZMQ_PUBLISH``."""
        env = dict(os.environ)
        env.update(CALayout(base_port=self.base_port, host=self.host).client_environment())
        env["TEMSIMS_PREFIX"] = self.prefix
        env.pop("TEMSIMS_QUEUE_OFFLINE", None)
        if self.catalog is not None:
            env["TEMSIMS_CATALOG"] = str(self.catalog)
        if self.api_key:
            env["TILED_API_KEY"] = self.api_key
        if self.zmq_publish is not None:
            env["TEMSIMS_ZMQ_PUBLISH"] = self.zmq_publish
        env.update(self.extra_env)
        return env

    def manager_command(self) -> list[str]:
        """``start-re-manager`` with temsims' start-up module and files, on loopback."""
        assert self.state_dir is not None
        return [
            sys.executable, "-c",
            "from bluesky_queueserver.manager.start_manager import start_manager; start_manager()",
            "--startup-module", STARTUP_MODULE,
            "--existing-plans-devices", str(self.state_dir / PLANS_AND_DEVICES_FILE),
            "--update-existing-plans-devices", "ENVIRONMENT_OPEN",
            "--user-group-permissions", str(self.state_dir / PERMISSIONS_FILE),
            "--redis-addr", self.redis_address,
            "--zmq-control-addr", self.control_address,
            "--zmq-info-addr", self.info_address,
            "--zmq-publish-console", "ON",
        ]

    def start(self, timeout: float = MANAGER_START_TIMEOUT_S) -> QueueServer:
        """Start Redis, then the RE Manager, and wait until it answers its status.

        Raises
        ------
        QueueError
            No ``redis-server``, a port taken, the instrument not answering, or a
            process that exited or did not answer; the message says what to do.
        """
        layout = CALayout(base_port=self.base_port, host=self.host)
        if self.check_instrument and not instrument_answers(self.prefix, layout):
            raise QueueError(
                f"no instrument answers at prefix {self.prefix!r} on {layout.host}, CA ports "
                f"{layout.base_port}..{layout.sim_port}: start one (temsims ioc all "
                f"--prefix {self.prefix} --base-port {layout.base_port}) or give the running "
                "one's --prefix and --base-port")
        if self.state_dir is None:
            self.state_dir = Path(tempfile.mkdtemp(prefix="temsims-queue-"))
            self._own_state_dir = True
        self.state_dir.mkdir(parents=True, exist_ok=True)
        redis_cmd = redis_command(0, self.state_dir)  # before any process: is it installed?
        self.redis_port = _pick(self.redis_port, "Redis", "--redis-port")
        self.control_port = _pick(self.control_port, "ZMQ control", "--control-port")
        self.info_port = _pick(self.info_port, "ZMQ info", "--info-port")
        redis_cmd[redis_cmd.index("--port") + 1] = str(self.redis_port)
        for name in (PERMISSIONS_FILE, PLANS_AND_DEVICES_FILE):
            # The RE Manager rewrites its plan list when the environment opens: a copy,
            # never the package's own file.
            shutil.copyfile(config_file(name), self.state_dir / name)
        try:
            self.redis = subprocess.Popen(redis_cmd, stdin=subprocess.DEVNULL,
                                          **self._output("redis.log"))
            wait_for_redis(self.redis_port, self.redis, REDIS_START_TIMEOUT_S)
            # A session of its own: the worker it forks can be stopped with it.
            self.manager = subprocess.Popen(self.manager_command(), stdin=subprocess.DEVNULL,
                                            env=self.worker_environment(),
                                            start_new_session=True,
                                            **self._output("re-manager.log"))
            self._wait_for_manager(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _output(self, name: str) -> dict[str, Any]:
        if self.log is not None:
            return {"stdout": self.log, "stderr": subprocess.STDOUT}
        directory = self.log_dir or self.state_dir
        assert directory is not None
        directory.mkdir(parents=True, exist_ok=True)
        out = open(directory / name, "wb")  # noqa: SIM115 - closed by stop()
        self._logs.append(out)
        return {"stdout": out, "stderr": subprocess.STDOUT}

    def _wait_for_manager(self, timeout: float) -> None:
        from bluesky_queueserver_api.zmq import REManagerAPI

        api = REManagerAPI(zmq_control_addr=self.control_address, timeout_recv=2.0)
        deadline = time.monotonic() + timeout
        try:
            while True:
                assert self.manager is not None
                if self.manager.poll() is not None:
                    raise QueueError(f"the RE Manager exited (code {self.manager.returncode}) "
                                     f"before answering; its log: {self._log_hint()}")
                try:
                    api.status()
                    return
                except Exception:  # noqa: BLE001 - not answering yet
                    pass
                if time.monotonic() > deadline:
                    raise QueueError(f"the RE Manager did not answer on {self.control_address} "
                                     f"within {timeout:.0f} s; its log: {self._log_hint()}")
                time.sleep(0.2)
        finally:
            api.close()

    def _log_hint(self) -> str:
        directory = self.log_dir or self.state_dir
        if self.log is not None or directory is None:
            return "above"
        path = directory / "re-manager.log"
        tail = path.read_text(errors="replace")[-1500:] if path.exists() else ""
        return f"{path}\n{tail}"

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the RE Manager (and its worker), then Redis, by PID; idempotent.

        SIGINT first (the RE Manager closes its worker), SIGKILL to the manager's
        process group (its own session: the manager and the worker it forked, nothing
        else) if it has not exited within ``timeout`` s.
        """
        if self.manager is not None:
            _stop_process(self.manager, signal.SIGINT, timeout, group=True)
            self.manager = None
        if self.redis is not None:
            _stop_process(self.redis, signal.SIGTERM, timeout, group=False)
            self.redis = None
        for out in self._logs:
            out.close()
        self._logs.clear()
        if self._own_state_dir and self.state_dir is not None:
            shutil.rmtree(self.state_dir, ignore_errors=True)
            self.state_dir = None
            self._own_state_dir = False

    def __enter__(self) -> QueueServer:
        return self.start() if self.manager is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _stop_process(process: subprocess.Popen, first: int, timeout: float, *, group: bool) -> None:
    if process.poll() is None:
        try:
            process.send_signal(first)
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            pass
    if group:
        # The worker (a forked child) may outlive a manager that did not stop cleanly.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if process.poll() is None:
        process.kill()
    process.wait(timeout=timeout)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter,
                     argparse.ArgumentDefaultsHelpFormatter):
    """The description as written; every default shown, but for options whose help
    says what unset means."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``temsims queue`` (``--help`` shows every default)."""
    parser.formatter_class = _HelpFormatter
    parser.add_argument("--prefix", default="TEMSIMS:", help="instrument PV prefix")
    parser.add_argument("--base-port", type=int, default=CALayout.from_environment().base_port,
                        help="CA server port of the instrument's first IOC")
    parser.add_argument("--host", default=LOOPBACK, help="host the IOCs serve on")
    parser.add_argument("--catalog", default=None,
                        help="catalog directory or tiled URI the worker stores runs in; unset: "
                        "$TEMSIMS_CATALOG or the user data directory")
    parser.add_argument("--api-key", default=None,
                        help="API key for a tiled server's URI (temsims serve's write key); "
                        "unset: $TILED_API_KEY")
    parser.add_argument("--redis-port", type=int, default=0,
                        help="Redis port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--control-port", type=int, default=0,
                        help="RE Manager's ZMQ control port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--info-port", type=int, default=0,
                        help="RE Manager's ZMQ info (console) port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--zmq-publish", default=None, metavar="HOST:PORT",
                        help="0MQ proxy input the worker publishes documents to; unset: "
                        "$TEMSIMS_ZMQ_PUBLISH, else none")
    parser.add_argument("--state-dir", default=None,
                        help="directory of the RE Manager's permissions, plan list and logs; "
                        "unset: a temporary one, removed at exit")
    parser.add_argument("--log-dir", default=None,
                        help="write Redis' and the RE Manager's output there (redis.log, "
                        "re-manager.log); unset: to this terminal")


def _announce(server: QueueServer) -> None:
    print(f"temsims queue: RE Manager  control {server.control_address}  info "
          f"{server.info_address}  (pid {server.manager.pid if server.manager else '-'})")
    print(f"temsims queue: Redis       {server.redis_address}  (pid "
          f"{server.redis.pid if server.redis else '-'})")
    print(f"temsims queue: instrument  {server.prefix} on {server.host}:{server.base_port}; "
          f"state {server.state_dir}")
    print("temsims queue: e.g.  qserver -a " + server.control_address + " environment open")
    print("               or REManagerAPI(zmq_control_addr=" + repr(server.control_address)
          + ") (bluesky_queueserver_api.zmq)")
    print("Ctrl-C or SIGTERM stops both.", flush=True)


def main(args: argparse.Namespace) -> int:
    """Start the queue server, serve until Ctrl-C or SIGTERM, stop it. Exit code 1
    with one line saying what to do when it cannot start."""
    stop = StopSignals()
    log_dir = Path(args.log_dir) if args.log_dir else None
    server = QueueServer(prefix=args.prefix, base_port=args.base_port, host=args.host,
                         log_dir=log_dir, catalog=args.catalog, api_key=args.api_key,
                         redis_port=args.redis_port, control_port=args.control_port,
                         info_port=args.info_port, zmq_publish=args.zmq_publish,
                         state_dir=Path(args.state_dir) if args.state_dir else None,
                         log=None if log_dir else sys.stdout)
    try:
        server.start()
        _announce(server)
        while not stop.wait(0.5):
            for name, process in (("RE Manager", server.manager), ("redis-server", server.redis)):
                if process is not None and process.poll() is not None:
                    print(f"temsims queue: {name} exited (code {process.returncode}); "
                          "stopping", file=sys.stderr)
                    return 1
        return 0
    except QueueError as err:
        print(f"temsims queue: {err}", file=sys.stderr)
        return 1
    finally:
        server.stop()
        stop.restore()
