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
#: process loses (docs/decisions/0022-spool-and-replay.md).
FLUSH_PERIOD_S = 1.0


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

    def __init__(self, factory: Callable[[], Callback], *,
                 flush_period_s: float = FLUSH_PERIOD_S, **buffer_options: Any) -> None:
        if buffer_options.pop("thread_validation", False):
            raise ValueError("ProcessWriter: the child validates; thread_validation must be False")
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "temsims.callbacks.writer_process",
             str(to_child_r), str(from_child_w)],
            pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in the session must not reach storage
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._to_child = Connection(to_child_w, readable=False)
        self._from_child = Connection(from_child_r, writable=False)
        self._to_child.send({"factory": factory, "flush_period_s": flush_period_s})
        #: Run uid -> events of that run the storage process reported stored: their
        #: append was answered by the server (the writer's acknowledgement).
        self.acknowledged: dict[str, int] = {}
        self._barriers: dict[int, threading.Event] = {}
        self._next_token = 0
        self._child_closed = threading.Event()
        super().__init__(_InChild(), thread_validation=False, **buffer_options)
        self._listener = threading.Thread(target=self._listen, name="temsims-storage-acks",
                                          daemon=True)
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

    def _work(self) -> None:
        send = self._to_child.send
        queue = self._queue
        while True:
            batch = [queue.get()]
            # Let documents gather: one pickle and one pipe write per batch, and the
            # RunEngine's puts find this thread asleep instead of waking it each time.
            time.sleep(self.coalesce_s)
            while len(batch) < self.max_batch:
                try:
                    batch.append(queue.get_nowait())
                except Empty:
                    break
            docs: list = []
            try:
                for item in batch:
                    if item is _STOP or isinstance(item, _Barrier):
                        if docs:
                            self._send_docs(send, docs)
                            docs = []
                        if item is _STOP:
                            send(("close", None))
                            self._child_closed.wait(self.exit_timeout_s)
                            return
                        token, self._next_token = self._next_token, self._next_token + 1
                        self._barriers[token] = item
                        send(("barrier", token))
                    else:
                        docs.append(item)
                if docs:
                    self._send_docs(send, docs)
            except (OSError, EOFError, ValueError) as err:  # the child is gone
                self._child_gone(err)
                for item in batch:
                    if isinstance(item, _Barrier):
                        item.set()
                if _STOP in batch:
                    return

    def _send_docs(self, send, docs: list) -> None:
        t0 = time.perf_counter()
        send(("docs", docs))
        self.stats.write_s += time.perf_counter() - t0

    def _listen(self) -> None:
        while True:
            try:
                kind, payload = self._from_child.recv()
            except (EOFError, OSError) as err:
                self._child_gone(err)
                return
            if kind == "barrier":
                self._barriers.pop(payload).set()
            elif kind == "acked":
                self.acknowledged.update(payload)
            elif kind == "stored":
                self._stored_runs.setdefault(payload, threading.Event()).set()
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
        self._errors.append(StorageError(f"the storage process {self.pid} ended: {err!r}"))
        for event in list(self._barriers.values()) + list(self._stored_runs.values()):
            event.set()


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
    except BaseException:  # noqa: BLE001 - reported; then every document is refused
        outbox.send(("error", traceback.format_exc()))
        callback = None
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
        except BaseException:  # noqa: BLE001 - reported to the caller, never dropped
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
            flush()
            return
        if kind == "close":
            report()
            outbox.send(("closed", None))
            return
        if kind == "barrier":
            outbox.send(("barrier", payload))
            continue
        for name, doc in payload:  # "docs": a batch, in order
            _store(callback, outbox, name, doc)
        report()
        if getattr(callback, "events_held", 0):
            held_since = held_since or time.monotonic()
        else:
            held_since = None


def _store(callback, outbox: Connection, name: str, doc: dict) -> None:
    import traceback

    try:
        if callback is None:
            raise StorageError("the storage callback could not be built (see the first error)")
        callback(name, doc)
    except jsonschema.ValidationError as err:
        outbox.send(("invalid", schema_error_message(name, doc, err)))
    except BaseException:  # noqa: BLE001 - reported to the caller, never dropped
        outbox.send(("error", f"storing the {name} document {doc.get('uid')} failed:\n"
                              + traceback.format_exc()))
    finally:
        if name == "stop":
            outbox.send(("stored", doc.get("run_start")))


if __name__ == "__main__":
    serve(Connection(int(sys.argv[1]), writable=False),
          Connection(int(sys.argv[2]), readable=False))
