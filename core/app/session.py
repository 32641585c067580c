"""The session factory: one call builds a beamline-style session for the microscope.

In the spirit of ``nslsii.configure_base``: a RunEngine with persistent metadata, the
BestEffortCallback (plots switchable), progress bars, the catalog subscription, the
bluesky IPython magics, the devices and the plans, all put into a namespace. Nothing
happens on import; the IPython profile's startup file is a few lines calling
:func:`configure_session`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_CONFIGURED: set[int] = set()


@dataclass
class Session:
    """What :func:`configure_session` built (also placed in the namespace)."""

    RE: Any
    catalog: Any = None
    instrument: Any = None
    bec: Any = None
    publisher: Any = None
    fault_guard: Any = None
    namespace: dict[str, Any] = field(default_factory=dict)
    closed: bool = field(default=False, repr=False)

    def close(self) -> None:
        """Write ``RE.md`` to disk and close the catalog (a second call does nothing).

        bluesky's ``PersistentDict`` also writes itself when it is garbage collected;
        after ``close`` that write is detached, so a session closed before its metadata
        directory goes away (a test's temporary directory) does not write into nothing.
        """
        if self.closed:
            return
        self.closed = True
        if self.fault_guard is not None:
            self.fault_guard.remove()
            self.fault_guard = None
        md = getattr(self.RE, "md", None)
        if hasattr(md, "flush"):
            md.flush()
            finalizer = getattr(md, "_finalizer", None)
            if finalizer is not None:
                finalizer.detach()
        if self.catalog is not None:
            self.catalog.close()
        if self.publisher is not None:
            self.publisher.close()
            self.publisher = None
        if self in _OPEN_SESSIONS:
            _OPEN_SESSIONS.remove(self)


#: Sessions made by :func:`configure_session` and not closed yet, oldest first.
_OPEN_SESSIONS: list[Session] = []
_CLOSE_AT_EXIT_ARMED = False


def close_open_sessions() -> None:
    """Close every session of this process and disconnect its Channel Access client.

    Run when the interpreter exits (:func:`_arm_close_at_exit`); it disconnects the
    process's one caproto client context, after which no PV of the process connects
    again: not for a process that goes on.
    """
    for session in reversed(list(_OPEN_SESSIONS)):
        try:
            session.close()
        except Exception:  # noqa: BLE001 - the next one is still closed
            logging.getLogger(__name__).exception("closing a session failed")
    from temsims.devices.common import close_control_layer

    close_control_layer()


def _arm_close_at_exit() -> None:
    """Have :func:`close_open_sessions` run when the interpreter exits, before it shuts
    its thread pools down.

    Python shuts ``concurrent.futures`` pools down before it runs ``atexit`` handlers;
    caproto's client, still receiving the parts' heartbeats, then printed "cannot
    schedule new futures after shutdown" with a traceback per circuit at every
    ``temsims shell`` exit. Handlers registered with ``threading._register_atexit`` run
    before those pools' (latest first): the one private call of CPython 3.9+ that
    orders it, with ``atexit`` as the fallback.
    """
    global _CLOSE_AT_EXIT_ARMED
    if _CLOSE_AT_EXIT_ARMED:
        return
    import threading

    register = getattr(threading, "_register_atexit", None)
    try:
        if register is None:
            raise RuntimeError("no threading._register_atexit")
        register(close_open_sessions)
    except RuntimeError:
        import atexit

        atexit.register(close_open_sessions)
    _CLOSE_AT_EXIT_ARMED = True


def default_metadata_dir() -> Path:
    """Where ``RE.md`` persists between sessions (``TEMSIMS_MD_DIR`` overrides)."""
    env = os.environ.get("TEMSIMS_MD_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_data_dir("temsims")) / "runengine-md"


def configure_session(
    user_ns: dict[str, Any],
    *,
    prefix: str | None = None,
    catalog: str | Path | None = None,
    connect_devices: bool = True,
    connect_timeout: float = 5.0,
    bec: bool = True,
    plots: bool = False,
    pbar: bool = True,
    magics: bool = True,
    md_dir: str | Path | None = None,
    require_metadata: bool = True,
    writer_process: bool = True,
    publish: str | None = None,
    suspenders: bool = True,
) -> Session:
    """Build the RunEngine, callbacks, catalog, devices and plans into ``user_ns``.

    Parameters
    ----------
    user_ns
        Namespace to fill (the IPython user namespace in a profile).
    prefix
        Instrument PV prefix (default ``TEMSIMS_PREFIX`` or ``"TEMSIMS:"``).
    catalog
        Catalog directory or tiled URI (default ``TEMSIMS_CATALOG`` or the user's
        data directory); ``"none"`` runs without a catalog.
    connect_devices
        Connect the instrument's devices (fails fast, naming missing PVs).
    connect_timeout
        Seconds to wait for the devices' PVs.
    bec, plots, pbar, magics
        BestEffortCallback, its plots, progress bars, bluesky IPython magics.
    md_dir
        Directory of the persistent ``RE.md`` (default :func:`default_metadata_dir`).
    require_metadata
        Validate the start-document metadata contract before a run opens.
    writer_process
        Store documents from a child process (default) rather than a thread of the
        session, so storage never slows the RunEngine's interpreter
        (``docs/decisions/0009-writer-process.md``).
    publish
        ``host:port`` of a 0MQ proxy's input to publish every document to (bluesky's
        ``Publisher``, for ``temsims view`` and the stream writer; ``docs/remote.md``).
        Default ``TEMSIMS_ZMQ_PUBLISH``; unset, empty or ``"none"``: off. A proxy that
        does not answer is a warning, not an error (the publisher connects once it
        does).
    suspenders
        With the devices connected: suspend a run while a part is dead or hung or the
        bias arcs, the instrument made safe meanwhile
        (:func:`temsims.app.faults.install_suspenders`, decision 0026); the guard is
        ``session.fault_guard``.

    Returns
    -------
    Session
        Also bound as ``session`` in ``user_ns``.

    Raises
    ------
    RuntimeError
        When called twice on the same namespace.
    """
    if id(user_ns) in _CONFIGURED:
        raise RuntimeError("configure_session already ran for this namespace")

    from bluesky import RunEngine
    from bluesky import plan_stubs as bps
    from bluesky import plans as bp
    from bluesky import preprocessors as bpp
    from bluesky.utils import PersistentDict, ProgressBarManager

    from temsims.channel_access import apply_client_environment

    if "EPICS_CA_ADDR_LIST" not in os.environ:  # `temsims shell` or the site sets it
        apply_client_environment()
    os.environ.setdefault("OPHYD_CONTROL_LAYER", "caproto")

    RE = RunEngine({})
    md_path = Path(md_dir) if md_dir is not None else default_metadata_dir()
    md_path.mkdir(parents=True, exist_ok=True)
    RE.md = PersistentDict(str(md_path))
    RE.md.setdefault("operator", os.environ.get("USER", "unknown"))

    session = Session(RE=RE)
    _OPEN_SESSIONS.append(session)
    _arm_close_at_exit()
    ns: dict[str, Any] = {"RE": RE, "bp": bp, "bps": bps, "bpp": bpp, "session": session}

    if bec:
        from bluesky.callbacks.best_effort import BestEffortCallback

        session.bec = BestEffortCallback()
        if not plots:
            session.bec.disable_plots()
        RE.subscribe(session.bec)
        ns["bec"] = session.bec
    if pbar:
        RE.waiting_hook = ProgressBarManager()

    location = catalog if catalog is not None else os.environ.get("TEMSIMS_CATALOG")
    if str(location).lower() != "none":
        from temsims.catalog import open_catalog
        from temsims.catalog import require_metadata as install_metadata_check

        session.catalog = open_catalog(location)
        RE.subscribe(session.catalog.writer(process=writer_process))
        if require_metadata:
            install_metadata_check(RE)
        ns["catalog"] = session.catalog

    from temsims.app.stream import publish_address, publisher

    address = publish_address(publish)
    if address is not None:  # before the devices: its handshake overlaps their connect
        session.publisher = publisher(address)
        RE.subscribe(session.publisher)

    if connect_devices:
        from temsims.devices import connect

        instrument = connect(prefix or os.environ.get("TEMSIMS_PREFIX", "TEMSIMS:"),
                             timeout=connect_timeout)
        session.instrument = instrument
        ns["instrument"] = instrument
        ns.update(instrument.all_devices())
        if suspenders:
            from temsims.app.faults import install_suspenders

            session.fault_guard = install_suspenders(RE, instrument)

    ns.update(_plans())
    ns.update(_analysis_tools())

    if magics:
        try:
            from IPython import get_ipython

            ip = get_ipython()
        except ImportError:  # pragma: no cover - IPython is a dependency
            ip = None
        if ip is not None:
            from bluesky.magics import BlueskyMagics

            ip.register_magics(BlueskyMagics)

    if session.catalog is not None:
        # The run classes' imports (1.5-3 s) while the user types the first command.
        session.catalog.prefetch()
    session.namespace = ns
    user_ns.update(ns)
    _CONFIGURED.add(id(user_ns))
    return session


def _analysis_tools() -> dict[str, Any]:
    """Live views, exporters and the correlative loader, ready to use by name."""
    from temsims.app.loaders import load_correlative
    from temsims.callbacks.export import export_hdf5, export_tiff
    from temsims.callbacks.live import LiveFusedOverlay, LiveRatioMap, LiveSimsMap

    return {"LiveSimsMap": LiveSimsMap, "LiveRatioMap": LiveRatioMap,
            "LiveFusedOverlay": LiveFusedOverlay, "export_tiff": export_tiff,
            "export_hdf5": export_hdf5, "load_correlative": load_correlative}


def _plans() -> dict[str, Any]:
    """The plan library's public plans, if the package provides them."""
    try:
        import temsims.plans as plans
    except ImportError:  # pragma: no cover
        return {}
    names = getattr(plans, "__all__", [])
    return {name: getattr(plans, name) for name in names}
