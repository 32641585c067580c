"""A storage writer whose callback runs in a child process.

:class:`ProcessWriter` is a :class:`~temsims.callbacks.storage.BufferedWriter` on the
caller's side (same checks, queue, error reporting, ``flush``/``wait_for_run``/
``close``, drain at exit); its thread only pickles each document onto a pipe. The
child, ``python -m temsims.callbacks.writer_process``, receives a picklable factory
first, builds the callback from it (in temsims the ``TiledWriter`` of
:func:`temsims.catalog.storing_chain` on a tiled client of its own, connected to the
catalog directory's shared server and holding a lease on it, so that server serves
until the child is done: decision 0014) and feeds it the documents in order,
answering on a second pipe. Why, and what it costs:
``docs/decisions/0009-writer-process.md``.

The child is a plain ``subprocess`` (not ``multiprocessing``): spawning would re-run
the parent's ``__main__``, which in an IPython session started with
``python -m IPython`` is IPython itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from queue import Empty
from typing import Any

import jsonschema

from temsims.callbacks.spool import Spool, read_spool
from temsims.callbacks.storage import (
    _STOP,
    BufferedWriter,
    Callback,
    InvalidDocument,
    StorageError,
    _Barrier,
    schema_error_message,
)

logger = logging.getLogger("temsims.callbacks.storage")

__all__ = ["ProcessWriter"]

#: How long the child lets events wait in the TiledWriter's batches before it appends
#: them anyway (s): with the session's pipe, what bounds the events a killed writer
#: process loses (docs/decisions/0025-spool-and-replay.md).
FLUSH_PERIOD_S = 1.0
#: tiled's client retries in a storage process that has a spool behind it.
SPOOLED_RETRY_ATTEMPTS = 3
SPOOLED_RETRY_TIMEOUT_S = 3.0


class ProcessWriter(BufferedWriter):
    """A :class:`~temsims.callbacks.storage.BufferedWriter` writing from a child process.

    Parameters
    ----------
    factory
        Picklable zero-argument callable, called once in the child; returns the
        ``callback(name, doc)`` to feed (e.g. ``functools.partial(tiled_writer_chain,
        uri, api_key)``).
    flush_period_s
        The child appends the events it holds at the latest this long after they
        arrived (and at once when this process is gone), besides every ``batch_size``.
    buffer_options
        As for ``BufferedWriter`` (``validate``, ``maxsize``, ``exit_timeout_s``,
        ``name``); the full schema check happens in the child (TiledWriter's), so
        ``thread_validation`` is always off.
    """

    #: How long the thread lets documents gather before it sends them (s), and the
    #: most it sends in one batch.
    coalesce_s: float = 0.05
    max_batch: int = 1000

    #: Seconds between attempts to start a new storage process after one ended.
    retry_s: float = 2.0
    #: How long a new storage process may take to connect to its catalog (s).
    start_timeout_s: float = 90.0

    def __init__(self, factory: Callable[[], Callback], *,
                 flush_period_s: float = FLUSH_PERIOD_S, spool: Spool | None = None,
                 **buffer_options: Any) -> None:
        if buffer_options.pop("thread_validation", False):
            raise ValueError("ProcessWriter: the child validates; thread_validation must be False")
        self._factory_ = factory
        self._flush_period_s = flush_period_s
        #: Every document goes here first; runs not yet stored are delivered again from
        #: it when a storage process ends (None: a dead storage process is an error).
        self.spool = spool
        #: Run uid -> events of that run the storage process reported stored: their
        #: append was answered by the server (the writer's acknowledgement).
        self.acknowledged: dict[str, int] = {}
        #: When the current storage process was found gone (monotonic s), and how
        #: long each loss took to notice and to recover from (s), for the record.
        self.outages: list[dict[str, float]] = []
        self._barriers: dict[int, threading.Event] = {}
        self._next_token = 0
        self._next_attempt = 0.0
        self._start_child()
        super().__init__(_InChild(), thread_validation=False, **buffer_options)
        self._listen_to_child()

    def _start_child(self) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        env = None
        if self.spool is not None:
            # tiled's client retries a failed request for up to 45 s (10 attempts);
            # with the documents safe in the spool, a server that does not answer
            # within ~3 s is taken as gone, and the run delivered again when it is back.
            env = {**os.environ, "TILED_RETRY_ATTEMPTS": str(SPOOLED_RETRY_ATTEMPTS),
                   "TILED_RETRY_TIMEOUT": str(SPOOLED_RETRY_TIMEOUT_S)}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "temsims.callbacks.writer_process",
             str(to_child_r), str(from_child_w)], env=env,
            pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in the session must not reach storage
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._to_child = Connection(to_child_w, readable=False)
        self._from_child = Connection(from_child_r, writable=False)
        self._child_closed = threading.Event()
        self._ready = threading.Event()
        self._ready_ok = False
        self._to_child.send({"factory": self._factory_, "flush_period_s": self._flush_period_s})

    def _listen_to_child(self) -> None:
        self._listener = threading.Thread(target=self._listen, args=(self._from_child,),
                                          name="temsims-storage-acks", daemon=True)
        self._listener.start()

    @property
    def pid(self) -> int:
        return self._process.pid

    def close(self, timeout: float | None = None) -> None:
        try:
            super().close(timeout)
        finally:
            try:
                self._process.wait(timeout if timeout is not None else self.exit_timeout_s)
            except subprocess.TimeoutExpired:
                logger.error("storage process %s did not exit; terminating it", self.pid)
                self._process.terminate()
                self._process.wait(5)
            self._to_child.close()
            if self.spool is not None:
                self.spool.close()
                left = self.spool.pending()
                if left:
                    self._errors.append(StorageError(
                        f"{len(left)} run(s) not stored, kept in the spool: "
                        f"temsims catalog replay {self.spool.directory}"))
                    logger.error("runs not stored, kept in the spool (temsims catalog replay "
                                 "%s): %s", self.spool.directory, [str(p) for _, p, _ in left])
        self._raise_pending()

    # ------------------------------------------------------------ the sending thread

    def _work(self) -> None:
        queue = self._queue
        while True:
            try:
                # While storage is down, wake up to try it again even with no document.
                batch = [queue.get(timeout=None if self._child_up() else self.retry_s)]
            except Empty:
                self._recover()
                continue
            # Let documents gather: one pickle and one pipe write per batch, and the
            # RunEngine's puts find this thread asleep instead of waking it each time.
            time.sleep(self.coalesce_s)
            while len(batch) < self.max_batch:
                try:
                    batch.append(queue.get_nowait())
                except Empty:
                    break
            docs: list = []
            for item in batch:
                if item is _STOP or isinstance(item, _Barrier):
                    self._deliver(docs)
                    docs = []
                    if item is _STOP:
                        self._finish()
                        return
                    self._barrier(item)
                else:
                    docs.append(item)
            self._deliver(docs)

    def _child_up(self) -> bool:
        return not self._child_closed.is_set()

    def _deliver(self, docs: list) -> None:
        """Spool the batch, then send it to the storage process if there is one."""
        if not docs:
            return
        if self.spool is not None:
            try:
                self.spool.append(docs)
            except OSError as err:
                self.stats.errors += 1
                self._errors.append(StorageError(f"the spool {self.spool.directory} refused "
                                                 f"documents: {err}"))
                logger.error("spooling %d documents failed: %s", len(docs), err)
        if not self._child_up():
            # In the spool: delivered with it when storage is back, by this very
            # recovery if it succeeds now (so not sent again here).
            self._recover()
            return
        t0 = time.perf_counter()
        try:
            self._to_child.send(("docs", docs))
        except (OSError, EOFError, ValueError) as err:
            self._child_gone(err)
        self.stats.write_s += time.perf_counter() - t0

    def _barrier(self, item: threading.Event) -> None:
        if not self._child_up():
            item.set()  # nothing to wait for: storage is down (the spool has it all)
            return
        token, self._next_token = self._next_token, self._next_token + 1
        self._barriers[token] = item
        try:
            self._to_child.send(("barrier", token))
        except (OSError, EOFError, ValueError) as err:
            self._child_gone(err)

    def _finish(self) -> None:
        if not self._child_up():
            self._recover(force=True)
        if self._child_up():
            try:
                self._to_child.send(("close", None))
            except (OSError, EOFError, ValueError) as err:
                self._child_gone(err)
            self._child_closed.wait(self.exit_timeout_s)

    def _recover(self, force: bool = False) -> bool:
        """Start a new storage process and deliver again every run of the spool not yet
        stored; at most every ``retry_s``. True if storage is up again."""
        if self.spool is None or self._closed and not force:
            return False
        now = time.monotonic()
        if now < self._next_attempt and not force:
            return False
        self._next_attempt = now + self.retry_s
        with contextlib.suppress(OSError):
            self._process.kill()  # it said it ended, or its pipe did: make sure
        self._process.wait(30)
        self._to_child.close()
        self._start_child()
        self._listen_to_child()
        if not self._ready.wait(self.start_timeout_s) or not self._ready_ok:
            logger.warning("storage still unreachable; documents go to the spool %s",
                           self.spool.directory)
            with contextlib.suppress(OSError):
                self._process.kill()
            self._child_closed.set()
            return False
        pending = self.spool.pending()
        try:
            for uid, path, size in pending:
                self._to_child.send(("replay", (uid, str(path), size)))
        except (OSError, EOFError, ValueError) as err:
            self._child_gone(err)
            return False
        if self.outages and "recovered" not in self.outages[-1]:
            self.outages[-1]["recovered"] = time.monotonic()
        logger.warning("storage is back (process %s); delivering %d spooled run(s) again",
                       self.pid, len(pending))
        return True

    # ------------------------------------------------------------ the listening thread

    def _listen(self, inbox: Connection) -> None:
        while True:
            try:
                kind, payload = inbox.recv()
            except (EOFError, OSError) as err:
                if inbox is self._from_child:
                    self._child_gone(err)
                return
            if kind == "ready":
                self._ready_ok = bool(payload)
                self._ready.set()
            elif kind == "barrier":
                self._barriers.pop(payload).set()
            elif kind == "acked":
                self.acknowledged.update(payload)
            elif kind == "stored":
                self._stored_runs.setdefault(payload, threading.Event()).set()
            elif kind == "delivered":
                if self.spool is not None:
                    self.spool.delivered(payload)
            elif kind == "unreachable":
                logger.warning("storage process %s: catalog unreachable (%s)%s", self.pid,
                               payload, "; documents go to the spool" if self.spool else "")
                if self.spool is None:
                    self.stats.errors += 1
                    self._errors.append(StorageError(f"the catalog is unreachable: {payload}"))
            elif kind == "invalid":
                self.stats.refused += 1
                self._errors.append(InvalidDocument(payload))  # pending, then logged
                logger.error("%s", payload)
            elif kind == "error":
                self.stats.errors += 1
                self._errors.append(StorageError(payload.strip().splitlines()[-1]))
                logger.error("storage process: %s", payload)
            elif kind == "closed":
                self._child_closed.set()
                return

    def _child_gone(self, err: BaseException) -> None:
        if self._child_closed.is_set():
            return
        self._child_closed.set()
        self._ready.set()
        for event in list(self._barriers.values()):
            event.set()
        if self.spool is None:
            self._errors.append(StorageError(f"the storage process {self.pid} ended: {err!r}"))
            for event in list(self._stored_runs.values()):
                event.set()
            return
        self.outages.append({"lost": time.monotonic()})
        logger.warning("storage process %s ended (%r); documents go to the spool %s and are "
                       "delivered again when storage is back", self.pid, err,
                       self.spool.directory)


class _InChild:
    """Stands for the callback, which lives in the child process."""

    def __call__(self, name: str, doc: dict) -> None:  # pragma: no cover - never called
        raise AssertionError("ProcessWriter forwards documents to its child process")

    def __repr__(self) -> str:
        return "<callback in the storage process>"


def serve(inbox: Connection, outbox: Connection) -> None:
    """The child's loop: build the callback, feed it the documents, report back.

    The first message is the factory, or ``{"factory": ..., "flush_period_s": ...}``.
    Events the callback holds in its batches (TiledWriter appends ``batch_size`` at a
    time) are appended at the latest ``flush_period_s`` after they arrived, and at
    once when the session is gone (the pipe's end): a session killed mid-run loses
    only what it had not yet written to the pipe. After each append the child reports
    ``("acked", {run uid: events the server took})``.
    """
    import traceback

    first = inbox.recv()
    options = first if isinstance(first, dict) else {"factory": first}
    flush_period_s = float(options.get("flush_period_s", FLUSH_PERIOD_S))
    try:
        callback = options["factory"]()
    except BaseException as err:  # noqa: BLE001 - reported; then every document is refused
        if _unreachable(err):  # the writer tries again later, from its spool
            outbox.send(("unreachable", repr(err)))
            outbox.send(("ready", False))
            return
        outbox.send(("error", traceback.format_exc()))
        callback = None
    outbox.send(("ready", callback is not None))
    state = _ChildState()
    acked: dict[str, int] = {}
    held_since: float | None = None

    def report() -> None:
        stored = getattr(callback, "stored_events", None)
        if stored is None:
            return
        changed = {uid: n for uid, n in stored().items() if acked.get(uid) != n}
        if changed:
            acked.update(changed)
            outbox.send(("acked", changed))

    def flush() -> None:
        try:
            if hasattr(callback, "flush_events"):
                callback.flush_events()
        except BaseException as err:  # noqa: BLE001 - reported to the caller, never dropped
            if _unreachable(err):
                raise _Unreachable(repr(err)) from err
            outbox.send(("error", "appending the held events failed:\n" + traceback.format_exc()))
        report()

    while True:
        if held_since is not None:
            wait_s = max(0.0, held_since + flush_period_s - time.monotonic())
            if not inbox.poll(wait_s):
                flush()
                held_since = None
                continue
        try:
            kind, payload = inbox.recv()
        except (EOFError, OSError):  # the session died: store what reached us, then end
            with contextlib.suppress(_Unreachable):
                flush()
            return
        if kind == "close":
            report()
            outbox.send(("closed", None))
            return
        if kind == "barrier":
            outbox.send(("barrier", payload))
            continue
        try:
            if kind == "replay":
                _replay(callback, outbox, state, *payload)
            else:
                for name, doc in payload:  # "docs": a batch, in order
                    _store(callback, outbox, name, doc, state)
        except _Unreachable as err:
            outbox.send(("unreachable", str(err)))
            return  # the writer starts a new process when storage is back
        report()
        if getattr(callback, "events_held", 0):
            held_since = held_since or time.monotonic()
        else:
            held_since = None


class _Unreachable(Exception):
    """The catalog's server does not answer: end, and let the writer try again later."""


class _ChildState:
    """What the child knows of its runs: which had a document it could not store for a
    reason other than the document itself (those stay in the spool)."""

    def __init__(self) -> None:
        from temsims.callbacks.spool import run_of

        self.run_of = run_of()
        self.failed: set[str] = set()


def _unreachable(err: BaseException) -> bool:
    """Whether ``err`` (or its cause) says the server is not there (no connection, or
    it went away mid-request), as opposed to a refused document."""
    import httpx

    while err is not None:
        if isinstance(err, httpx.TransportError | ConnectionError):
            return True
        if isinstance(err, httpx.HTTPStatusError) and err.response.status_code >= 502:
            return True
        err = err.__cause__ or err.__context__
    return False


def _replay(callback, outbox: Connection, state: _ChildState, uid: str, path: str,
            size: int) -> None:
    """Store run ``uid`` again from its spool file (its first ``size`` bytes), after
    deleting what a storage process that died stored of it."""
    _header, docs = read_spool(path, size)
    runs = getattr(callback, "client", None)
    if runs is not None:
        delete_partial_run(runs, uid)
    for name, doc in docs:
        _store(callback, outbox, name, doc, state)


def delete_partial_run(runs, uid: str) -> bool:
    """Delete run ``uid`` from the ``runs`` node if it is there (a run cut short, to be
    written again whole from a spool). True if there was one."""
    try:
        runs[uid]
    except KeyError:
        return False
    runs.delete_contents(uid, recursive=True, external_only=False)
    return True


def _store(callback, outbox: Connection, name: str, doc: dict,
           state: _ChildState | None = None) -> None:
    import traceback

    run = state.run_of(name, doc) if state is not None else None
    try:
        if callback is None:
            raise StorageError("the storage callback could not be built (see the first error)")
        if name == "start" and state is not None:
            state.failed.discard(doc["uid"])
        callback(name, doc)
    except jsonschema.ValidationError as err:
        # refused for good (reported now): delivering the run again would not help
        outbox.send(("invalid", schema_error_message(name, doc, err)))
    except BaseException as err:  # noqa: BLE001 - reported to the caller, never dropped
        if _unreachable(err):
            raise _Unreachable(repr(err)) from err
        if state is not None:
            state.failed.add(run)
        outbox.send(("error", f"storing the {name} document {doc.get('uid')} failed:\n"
                              + traceback.format_exc()))
    finally:
        if name == "stop":
            outbox.send(("stored", doc.get("run_start")))
    if name == "stop" and state is not None and run not in state.failed:
        outbox.send(("delivered", run))


if __name__ == "__main__":
    serve(Connection(int(sys.argv[1]), writable=False),
          Connection(int(sys.argv[2]), readable=False))
