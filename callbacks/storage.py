"""Storage callbacks: the RunEngine hands documents over and never waits on storage.

``BufferedWriter(callback)``
    A RunEngine callback that checks each document, puts it on a queue and returns.
    One background thread hands the documents, in order and unchanged, to
    ``callback`` (in temsims the ``TiledWriter`` of
    :func:`temsims.catalog.storing_chain`). Write errors are logged with their
    traceback when they happen and re-raised to the caller on the next document, on
    :meth:`BufferedWriter.flush` or on :meth:`BufferedWriter.close`; the documents
    that follow keep being written, so nothing already stored (or storable) is lost.

``validate_document(name, doc)``
    event-model's JSON schema for the document, raising :class:`InvalidDocument`.

Validation is split by cost: the full schema check of an event takes ~0.2-0.3 ms,
more than the whole budget of the RunEngine per event, so events and datums get a
structural check (required keys, key types; microseconds) in the caller's thread and
the full schema check in the writer thread before they are stored. Start,
descriptor, stop and resource documents (a few per run) are fully validated in the
caller's thread. Either way an invalid document is never stored: refused in the
caller it raises at once; refused in the thread it raises on the next call. See
``docs/catalog.md`` and ``docs/decisions/0007-catalog.md``.
"""

from __future__ import annotations

import atexit
import collections
import copy
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import numpy as np
from event_model import DocumentNames, schema_validators

logger = logging.getLogger(__name__)

__all__ = [
    "BufferedWriter",
    "InvalidDocument",
    "StorageError",
    "WriterStats",
    "validate_document",
]

Callback = Callable[[str, dict], Any]

#: Documents validated in full in the caller's thread (rare, a few per run).
SYNC_VALIDATED = frozenset({"start", "descriptor", "stop", "resource", "stream_resource"})

_STOP = object()  # queue sentinel: end the writer thread
_Barrier = threading.Event  # queue item: set when every earlier document was handled


class InvalidDocument(ValueError):
    """A document that does not follow event-model's schema; it was not stored."""


class StorageError(RuntimeError):
    """Writing documents to storage failed (the cause is chained as ``__cause__``)."""


def _required_fields() -> dict[str, tuple[tuple[str, type | tuple[type, ...]], ...]]:
    """Required top-level keys of each document, with the Python types a valid value has.

    Read from event-model's schemas, following their ``allOf`` references.
    """
    json_types: dict[str, type | tuple[type, ...]] = {
        "string": str, "number": (int, float, np.number), "integer": (int, np.integer),
        "object": Mapping, "array": (list, tuple, np.ndarray), "boolean": bool,
    }

    def parts(schema: dict, root: dict):
        yield schema
        for sub in schema.get("allOf", []):
            if "$ref" in sub and sub["$ref"].startswith("#/$defs/"):
                sub = root.get("$defs", {}).get(sub["$ref"][len("#/$defs/"):], {})
            yield from parts(sub, root)

    out = {}
    for name in DocumentNames:
        validator = schema_validators.get(name)
        if validator is None:
            continue
        fields: dict[str, type | tuple[type, ...]] = {}
        for part in parts(validator.schema, validator.schema):
            props = part.get("properties", {})
            for key in part.get("required", []):
                jtype = props.get(key, {}).get("type")
                fields[key] = json_types.get(jtype, object) if isinstance(jtype, str) else object
        out[name.value] = tuple(fields.items())
    return out


_REQUIRED = _required_fields()


def quick_check(name: str, doc: Any) -> None:
    """The structural part of validation (microseconds): known name, dict, required keys.

    Raises :class:`InvalidDocument`. :func:`validate_document` does the full check.
    """
    if name not in _REQUIRED:
        raise InvalidDocument(f"unknown document name {name!r}; expected one of {sorted(_REQUIRED)}")
    if not isinstance(doc, Mapping):
        raise InvalidDocument(f"{name} document must be a dict, got {type(doc).__name__}")
    missing = [key for key, _ in _REQUIRED[name] if key not in doc]
    if missing:
        raise InvalidDocument(
            f"invalid {name} document (uid={doc.get('uid')!r}): missing required "
            f"key(s) {missing}; not stored"
        )
    for key, types in _REQUIRED[name]:
        value = doc[key]
        if types is object:
            continue
        if not isinstance(value, types) or (isinstance(value, bool) and types is not bool):
            raise InvalidDocument(
                f"invalid {name} document (uid={doc.get('uid')!r}): {key!r} is "
                f"{type(value).__name__} {value!r:.60}; not stored"
            )
    if name == "event" and "filled" in doc:
        # the one typed optional field of an event: with the checks above this is
        # the whole of event-model's event schema
        filled = doc["filled"]
        if not isinstance(filled, Mapping) or not all(
                isinstance(v, bool | str) for v in filled.values()):
            raise InvalidDocument(
                f"invalid event document (uid={doc.get('uid')!r}): 'filled' must map "
                f"data keys to booleans or datum ids, got {filled!r:.60}; not stored"
            )


def validate_document(name: str, doc: Any) -> None:
    """Validate ``doc`` against event-model's schema for ``name``.

    Raises
    ------
    InvalidDocument
        With the schema's complaint and the path of the offending field.
    """
    quick_check(name, doc)
    try:
        schema_validators[DocumentNames(name)].validate(doc)
    except jsonschema.ValidationError as err:
        raise InvalidDocument(schema_error_message(name, doc, err)) from None


def schema_error_message(name: str, doc: Any, err: jsonschema.ValidationError) -> str:
    """What :class:`InvalidDocument` says of a document its schema refused."""
    where = "/".join(str(p) for p in err.absolute_path) or "(document)"
    return f"invalid {name} document (uid={doc.get('uid')!r}) at {where}: {err.message}; not stored"


# --------------------------------------------------------------------------- buffer


@dataclass
class WriterStats:
    """What the buffered writer cost the caller (the RunEngine) and the writer thread."""

    documents: int = 0
    events: int = 0
    call_s: float = 0.0  #: total time spent inside ``__call__`` (the RunEngine's cost)
    max_call_s: float = 0.0
    put_blocked_s: float = 0.0  #: time blocked on a full queue (0 with the default unbounded queue)
    write_s: float = 0.0  #: time the thread spent in the wrapped callback
    errors: int = 0
    refused: int = 0
    by_name: dict[str, int] = field(default_factory=lambda: collections.defaultdict(int))

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items() if k != "by_name"}
        out["by_name"] = dict(self.by_name)
        return out


class BufferedWriter:
    """RunEngine callback: queue the documents, write them from one background thread.

    Parameters
    ----------
    callback
        Called as ``callback(name, doc)`` from the writer thread, in document order
        (e.g. ``TiledWriter(runs)``). Documents are passed on as they are: a
        descriptor is stored with the ``dtype_numpy`` its devices describe.
    validate
        Check every document against event-model's schemas (see the module notes).
    thread_validation
        Do the full schema check of events and datums in the writer thread. Turn it
        off only when ``callback`` validates every document itself before storing it
        (bluesky-tiled-plugins' ``TiledWriter`` does, in ``RunNormalizer.emit``): the
        check costs ~0.3 ms of the interpreter per event, which the RunEngine feels
        through the GIL. A ``jsonschema.ValidationError`` from the callback is then
        reported as :class:`InvalidDocument`.
    maxsize
        Queue length; 0 (default) is unbounded so the caller never waits. A positive
        value applies back-pressure: the caller then blocks while the queue is full
        (counted in ``stats.put_blocked_s``).
    exit_timeout_s
        How long the interpreter waits at exit for the queue to drain.
    name
        Name of the writer thread.
    check_start
        Called before a start document is taken (in the caller's thread); what it
        raises refuses the run before any data is taken (a catalog directory that is
        read-only or full: :func:`temsims.catalog.writer.check_writable`).

    Notes
    -----
    The thread passes documents on as it receives them; the wrapped ``TiledWriter``
    keeps events of a run in memory and writes them in batches, and at the stop
    document writes the rest, so a run is complete in the catalog once its stop
    document has been handled. ``flush()`` waits for that, ``close()`` then ends the
    thread, and at interpreter exit the queue is drained (``atexit``).
    """

    def __init__(
        self,
        callback: Callback,
        *,
        validate: bool = True,
        thread_validation: bool = True,
        maxsize: int = 0,
        exit_timeout_s: float = 120.0,
        name: str = "temsims-storage",
        check_start: Callable[[], None] | None = None,
    ) -> None:
        self.callback = callback
        self.validate = validate
        self.thread_validation = thread_validation
        self.exit_timeout_s = exit_timeout_s
        self.check_start = check_start
        self.stats = WriterStats()
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self._errors: collections.deque[BaseException] = collections.deque()
        self._lock = threading.Lock()
        self._closed = False
        self._refused_runs: set[str] = set()
        self._refused_descriptors: set[str] = set()
        self._stored_runs: dict[str, threading.Event] = {}
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()
        ref = weakref.ref(self)
        register_exit_hook(lambda: (w := ref()) is not None and w._at_exit())

    # ------------------------------------------------------------ caller side

    def __call__(self, name: str, doc: dict) -> None:
        t0 = time.perf_counter()
        name = name.value if isinstance(name, DocumentNames) else name
        if self._closed:
            raise StorageError("BufferedWriter is closed; the document was not stored")
        try:
            if self.validate:
                if name in SYNC_VALIDATED:
                    validate_document(name, doc)
                else:
                    quick_check(name, doc)
        except InvalidDocument:
            self._refuse(name, doc)
            raise
        if name == "start" and self.check_start is not None:
            try:
                self.check_start()
            except Exception:
                self._refuse(name, doc)
                raise
        if self._is_orphan(name, doc):
            self.stats.documents += 1
            return
        if name == "start":
            self._stored_runs.setdefault(doc["uid"], threading.Event())
        item = (name, _detach(name, doc))
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            tb = time.perf_counter()
            self._queue.put(item)
            self.stats.put_blocked_s += time.perf_counter() - tb
        stats = self.stats
        stats.documents += 1
        stats.by_name[name] += 1
        if name == "event":
            stats.events += 1
        dt = time.perf_counter() - t0
        stats.call_s += dt
        if dt > stats.max_call_s:
            stats.max_call_s = dt
        self._raise_pending()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every document queued so far was handled by the callback.

        Returns False if ``timeout`` (seconds) expired first. Raises
        :class:`StorageError` if a write failed since the last report.
        """
        done = threading.Event()
        if self._thread.is_alive():
            self._queue.put(done)
            finished = done.wait(timeout)
        else:
            finished = self._queue.empty()
        self._raise_pending()
        return finished

    def wait_for_run(self, uid: str, timeout: float | None = None) -> bool:
        """Wait until the stop document of run ``uid`` was handled (its data are stored)."""
        event = self._stored_runs.setdefault(uid, threading.Event())
        ok = event.wait(timeout)
        self._raise_pending()
        return ok

    def close(self, timeout: float | None = None) -> None:
        """Drain the queue, stop the thread; re-raise any unreported write error."""
        with self._lock:
            if self._closed:
                self._raise_pending()
                return
            self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.error("storage thread still writing after %s s; %d items queued",
                         timeout, self._queue.qsize())
        self._raise_pending()

    @property
    def pending(self) -> int:
        """Documents queued and not yet handled (approximate)."""
        return self._queue.qsize()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> BufferedWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<BufferedWriter {self.callback!r} pending={self.pending} closed={self._closed}>"

    # ------------------------------------------------------------ internals

    def _refuse(self, name: str, doc: Any) -> None:
        self.stats.refused += 1
        if isinstance(doc, Mapping):
            if name == "start" and "uid" in doc:
                self._refused_runs.add(doc["uid"])
            elif name == "descriptor" and "uid" in doc:
                self._refused_descriptors.add(doc["uid"])

    def _is_orphan(self, name: str, doc: dict) -> bool:
        """Documents of a run (or stream) whose start (or descriptor) was refused."""
        if not (self._refused_runs or self._refused_descriptors):
            return False
        if name in ("descriptor", "stop") and doc.get("run_start") in self._refused_runs:
            if name == "descriptor":
                self._refused_descriptors.add(doc["uid"])
            logger.warning("not storing %s %s: the start of run %s was refused",
                           name, doc.get("uid"), doc.get("run_start"))
            return True
        if name in ("event", "event_page") and doc.get("descriptor") in self._refused_descriptors:
            return True
        return False

    def _raise_pending(self) -> None:
        if self._errors:
            err = self._errors.popleft()
            if isinstance(err, InvalidDocument):
                raise InvalidDocument(str(err)) from err
            raise StorageError(f"storing documents failed: {err!r} (see the log for the traceback)") from err

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if isinstance(item, _Barrier):
                item.set()
                continue
            name, doc = item
            try:
                if self.validate and self.thread_validation and name not in SYNC_VALIDATED:
                    validate_document(name, doc)
                t0 = time.perf_counter()
                try:
                    self.callback(name, doc)
                except jsonschema.ValidationError as err:
                    raise InvalidDocument(schema_error_message(name, doc, err)) from None
                finally:
                    self.stats.write_s += time.perf_counter() - t0
            # Pending first, logged second: whoever saw the log record finds the
            # error raised on its next call (a test under load saw it the other way).
            except InvalidDocument as err:
                self.stats.refused += 1
                self._errors.append(err)
                logger.error("%s", err)
            except BaseException as err:  # noqa: BLE001 - reported to the caller, never dropped
                self.stats.errors += 1
                self._errors.append(err)
                logger.exception("storing the %s document %s failed", name, doc.get("uid"))
            finally:
                if name == "stop":
                    self._stored_runs.setdefault(doc["run_start"], threading.Event()).set()

    def _at_exit(self) -> None:
        if self._closed:
            return
        n = self.pending
        if n:
            logger.warning("draining %d queued documents to storage before exit", n)
        try:
            self.close(timeout=self.exit_timeout_s)
        except Exception:
            logger.exception("storage errors at interpreter exit")


def register_exit_hook(fn: Callable[[], Any]) -> None:
    """Call ``fn`` when the interpreter exits, while thread pools still take work.

    ``atexit`` handlers run too late for storage: by then ``concurrent.futures``
    executors (which the tiled server and client use) refuse new work. Hooks
    registered with ``threading._register_atexit`` run first, most recent first,
    before non-daemon threads are joined. Falls back to ``atexit`` if that private
    hook is missing.
    """
    hook = getattr(threading, "_register_atexit", None)
    if hook is None:
        atexit.register(fn)
        return
    try:
        hook(fn)
    except RuntimeError:  # the interpreter is already shutting down
        atexit.register(fn)


def _detach(name: str, doc: dict) -> dict:
    """A copy of ``doc`` that later changes by other callbacks cannot reach.

    Events get a copy of their dicts (arrays are shared: ophyd readings are fresh
    arrays); the rare documents are deep-copied.
    """
    if name == "event":
        out = dict(doc)
        out["data"] = dict(doc["data"])
        out["timestamps"] = dict(doc["timestamps"])
        if "filled" in doc:
            out["filled"] = dict(doc["filled"])
        return out
    return copy.deepcopy(doc)
