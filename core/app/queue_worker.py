"""What the queue server's worker runs: the session's RunEngine, catalog writer and
devices, and the plan library as bluesky-queueserver lists and validates it.

The worker imports :mod:`temsims.app.queue_startup`, whose import calls
:func:`worker_namespace`; ``qserver-list-plans-devices`` imports it too, with no
instrument running. Nothing here does work on import.

Two things stand between the plan library and the queue server, and both are bridged
here rather than in the plans, which stay plain Bluesky plans:

- The plans' modules use postponed annotations (``from __future__ import
  annotations``): the queue server would list ``'float'`` and ``'StageDevice'`` as
  strings and its validator (pydantic) cannot resolve the protocol names. Each plan
  is listed through a wrapper whose signature carries the evaluated types
  (:func:`queue_plan`).
- The device parameters are typed with the protocols of
  :mod:`temsims.plans.types`, which the queue server cannot name. Each becomes an
  enum of the namespace's device names that satisfy the protocol (``stage``,
  ``imager``, ... and ``instrument`` for a :class:`~temsims.plans.types.Microscope`),
  so a client submits names and the worker passes the objects.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from temsims.devices import Instrument

#: Environment variable naming the 0MQ proxy input (``host:port``) the worker's
#: RunEngine publishes its documents to (bluesky's ``Publisher``); unset: none.
ZMQ_PUBLISH_VARIABLE = "TEMSIMS_ZMQ_PUBLISH"
#: Seconds the worker waits for the instrument's PVs when the environment opens.
CONNECT_TIMEOUT_VARIABLE = "TEMSIMS_CONNECT_TIMEOUT"
DEFAULT_CONNECT_TIMEOUT_S = 10.0
#: Set to ``1`` to list plans and devices with no instrument (``qserver-list-plans-devices``
#: marks its process as a worker too, so the worker cannot tell on its own).
OFFLINE_VARIABLE = "TEMSIMS_QUEUE_OFFLINE"


class QueuedInstrument(Instrument):
    """The instrument as a device the queue server lists, so that a plan item may name
    it (``"instrument"``) for the multi-part plans' ``microscope``.

    The queue server takes an object for a device when it is Readable, Flyable or has
    ``children()`` (ophyd-async's device tree); :class:`temsims.devices.Instrument`
    is none of these, so this one adds ``children()``: the parts, as (name, device)
    pairs.
    """

    def children(self) -> Iterator[tuple[str, Any]]:
        """The parts that were built, as (name, device) pairs."""
        yield from self.all_devices().items()

    @classmethod
    def of(cls, instrument: Instrument) -> QueuedInstrument:
        """The same parts and prefixes as ``instrument``."""
        return cls(**{f.name: getattr(instrument, f.name)
                      for f in dataclasses.fields(instrument)})


def _resolved_parameters(plan: Callable) -> list[inspect.Parameter]:
    """``plan``'s parameters with their annotations evaluated in its module; one that
    does not evaluate (a name imported for type checkers only) is dropped: the queue
    server then accepts any value for that parameter."""
    namespace = dict(vars(inspect.getmodule(plan)))
    resolved = []
    for parameter in inspect.signature(plan).parameters.values():
        annotation = parameter.annotation
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, namespace)  # noqa: S307 - the plan's own annotation
            except Exception:  # noqa: BLE001 - any failure: no annotation for the queue
                annotation = inspect.Parameter.empty
        resolved.append(parameter.replace(annotation=annotation))
    return resolved


def _protocol_of(annotation: Any, protocols: tuple[type, ...]) -> tuple[type | None, bool]:
    """The device protocol ``annotation`` names (or ``None``), and whether it is
    optional (``Protocol | None``)."""
    if annotation in protocols:
        return annotation, False
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1 and members[0] in protocols and len(typing.get_args(annotation)) == 2:
            return members[0], True
    return None, False


def queue_plan(plan: Callable, devices: Mapping[str, Any]) -> Callable:
    """``plan`` as the queue server should list it: the same generator, docstring,
    name and module, a signature with evaluated types, and each device parameter an
    enum of the names in ``devices`` that satisfy its protocol.

    Parameters
    ----------
    plan
        A plan of :mod:`temsims.plans`.
    devices
        Name -> device of the worker's namespace (the queue server's device list).

    Returns
    -------
    callable
        A generator function calling ``plan`` with the same arguments.
    """
    from temsims.plans.types import MICROSCOPE_PARTS, Microscope

    protocols = (*MICROSCOPE_PARTS.values(), Microscope)

    @functools.wraps(plan)
    def queued(*args: Any, **kwargs: Any) -> Any:
        return (yield from plan(*args, **kwargs))

    parameters = _resolved_parameters(plan)
    custom: dict[str, dict[str, Any]] = {}
    for i, parameter in enumerate(parameters):
        protocol, optional = _protocol_of(parameter.annotation, protocols)
        if protocol is None:
            continue
        names = sorted(name for name, device in devices.items() if isinstance(device, protocol))
        enum = protocol.__name__
        custom[parameter.name] = {
            "annotation": f"typing.Optional[{enum}]" if optional else enum,
            "devices": {enum: names}}
        # The enum replaces the type: the protocol itself would not survive the listing.
        parameters[i] = parameter.replace(annotation=inspect.Parameter.empty)
    queued.__signature__ = inspect.signature(plan).replace(  # type: ignore[attr-defined]
        parameters=parameters, return_annotation=inspect.Signature.empty)
    del queued.__wrapped__  # the queue server reads __signature__, not the original
    if custom:
        queued._custom_parameter_annotation_ = {"parameters": custom}  # type: ignore[attr-defined]
    return queued


def queue_plans(devices: Mapping[str, Any]) -> dict[str, Callable]:
    """Every public plan of :mod:`temsims.plans`, through :func:`queue_plan`."""
    import temsims.plans as plans

    return {name: queue_plan(getattr(plans, name), devices) for name in plans.__all__}


def publish_documents(RE: Any, address: str | None) -> Any:
    """Subscribe a 0MQ ``Publisher`` of every document to ``address`` (``host:port``
    of a ``bluesky-0MQ-proxy`` input), for viewers in other processes.

    The hook for ``TEMSIMS_ZMQ_PUBLISH``; ``None``, ``""`` or ``"none"``: nothing.
    Returns the publisher (or ``None``).
    """
    if not address or address.lower() == "none":
        return None
    from bluesky.callbacks.zmq import Publisher

    publisher = Publisher(address)
    RE.subscribe(publisher)
    return publisher


def worker_namespace(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The queue server worker's namespace.

    In the worker: :func:`temsims.app.session.configure_session` without IPython, the
    BestEffortCallback or progress bars (the RunEngine with persistent ``RE.md``, the
    catalog writer and its metadata check, the connected devices), then the
    document publisher when ``TEMSIMS_ZMQ_PUBLISH`` is set. With
    ``TEMSIMS_QUEUE_OFFLINE=1`` (listing plans with ``qserver-list-plans-devices``, no
    instrument needed): the devices built unconnected, no RunEngine and no catalog. Both have the same plans (:func:`queue_plans`) and devices, plus
    ``instrument`` (:class:`QueuedInstrument`) for the multi-part plans.

    Parameters
    ----------
    environ
        Where ``TEMSIMS_PREFIX``, ``TEMSIMS_CATALOG``, ``TEMSIMS_ZMQ_PUBLISH``,
        ``TEMSIMS_CONNECT_TIMEOUT`` and ``TEMSIMS_QUEUE_OFFLINE`` are read (default ``os.environ``; the CA client
        variables and ``TILED_API_KEY`` are read from ``os.environ`` by their clients).

    Returns
    -------
    dict
        Name -> object.
    """
    environ = os.environ if environ is None else environ
    prefix = environ.get("TEMSIMS_PREFIX", "TEMSIMS:")
    namespace: dict[str, Any] = {}
    if environ.get(OFFLINE_VARIABLE, "") in ("", "0"):
        from temsims.app.session import configure_session

        timeout = float(environ.get(CONNECT_TIMEOUT_VARIABLE, DEFAULT_CONNECT_TIMEOUT_S))
        session = configure_session(namespace, prefix=prefix,
                                    catalog=environ.get("TEMSIMS_CATALOG"),
                                    connect_timeout=timeout, bec=False, pbar=False,
                                    magics=False)
        # Once the session factory publishes itself (it reads the same variable),
        # a second publisher would send every document twice.
        if getattr(session, "publisher", None) is None:
            session.publisher = publish_documents(session.RE,
                                                  environ.get(ZMQ_PUBLISH_VARIABLE))
        instrument = session.instrument
    else:
        from temsims.devices import connect

        instrument = connect(prefix, timeout=None)
        namespace.update(instrument.all_devices())
    namespace["instrument"] = QueuedInstrument.of(instrument)
    from bluesky_queueserver import register_device

    # Listed alone: its parts are listed already, under their own names.
    register_device("instrument", depth=1)
    devices = {**instrument.all_devices(), "instrument": namespace["instrument"]}
    namespace.update(queue_plans(devices))
    return namespace


__all__ = ["OFFLINE_VARIABLE", "ZMQ_PUBLISH_VARIABLE", "QueuedInstrument", "publish_documents", "queue_plan",
           "queue_plans", "worker_namespace"]
