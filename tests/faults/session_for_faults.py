"""A session process for the storage fault tests: a RunEngine storing into a catalog
through the session's writer (a :class:`~temsims.callbacks.writer_process.ProcessWriter`),
which a test kills or starves mid-run.

``python session_for_faults.py CATALOG OUT_DIR [--events N] [--delay S] [--spool DIR]``

- runs first a complete 5-event run (what must stay unharmed), then a long run of
  ``N`` events of a 64-pixel int32 map line each, ``delay`` s apart;
- appends the seq_num of every event it emits to ``OUT_DIR/emitted`` with one
  unbuffered ``write`` each (it survives a SIGKILL of this process: the page cache
  keeps it), and every document as a pickle to ``OUT_DIR/documents.pkl`` (the
  reference a stored run is compared with);
- prints ``READY <writer pid> <first run uid>``, then ``RUN <uid>`` when the long run
  starts, then every 20 ms ``ACK <run uid>=<events the writer acknowledged> ...`` when
  it changed and ``OUTAGE <n>`` when the writer found storage gone for the n-th time.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import threading
import time

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("catalog")
    parser.add_argument("out")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--delay", type=float, default=0.005)
    parser.add_argument("--spool", default=None)
    args = parser.parse_args()

    import bluesky.plans as bp
    from bluesky import RunEngine
    from ophyd.sim import SynSignal

    from temsims.catalog import open_catalog

    rng = np.random.default_rng(0)

    class Line(SynSignal):
        def describe(self):
            desc = super().describe()
            desc[self.name].update(dtype_numpy="<i4", shape=[64], dims=["pixel"])
            return desc

    line = Line(func=lambda: rng.poisson(20, 64).astype(np.int32), name="line")
    cat = open_catalog(args.catalog)
    options = {} if args.spool is None else {"spool_dir": args.spool}
    writer = cat.writer(process=True, **options)
    RE = RunEngine({})
    RE.subscribe(writer)
    emitted = os.open(os.path.join(args.out, "emitted"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    say_lock = threading.Lock()

    def say(line: str) -> None:
        # One write per line, under a lock: the reporting thread's and the main
        # thread's prints interleaved once ("ACK uid=2500DONE"; print writes the text
        # and the newline separately).
        with say_lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    reference = open(os.path.join(args.out, "documents.pkl"), "ab")  # noqa: SIM115

    def record(name, doc) -> None:
        pickle.dump((name, doc), reference)
        reference.flush()
        if name == "event":
            os.write(emitted, b"%d\n" % doc["seq_num"])

    RE.subscribe(record)
    (first,) = RE(bp.count([line], num=5))
    writer.wait_for_run(first, timeout=60)
    say(f"READY {writer.pid} {first}")

    def report() -> None:
        last = None
        outages = 0
        while True:
            if len(writer.outages) != outages:
                outages = len(writer.outages)
                say(f"OUTAGE {outages}")
            acked = dict(writer.acknowledged)
            if acked != last:
                last = acked
                say("ACK " + " ".join(f"{k}={v}" for k, v in acked.items()))
            time.sleep(0.02)

    threading.Thread(target=report, daemon=True).start()
    RE.subscribe(lambda name, doc: name == "start" and say(f"RUN {doc['uid']}"))
    RE(bp.count([line], num=args.events, delay=args.delay))
    writer.flush(timeout=120)
    say("DONE")
    cat.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
