"""Profile the executor: seed purchases into a running Firestore emulator and replay them with
the bundle's own code in this process, so a sampling profiler sees the handler's work alone::

    .venv/bin/python -m emulators.stack up --state-dir .local/profile-stack --port-base 9800
    FIRESTORE_EMULATOR_HOST=127.0.0.1:9801 py-spy record -o .local/profile.svg -- \\
        .venv/bin/python -m benchmarks.profile --events 6000
    .venv/bin/python -m emulators.stack down --state-dir .local/profile-stack

(py-spy is not a dependency of the bundle: ``pip install py-spy==0.4.1`` into any venv.)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from google.cloud import firestore

from benchmarks.bench import credited_once, replay_in_process, uniform
from emulators.sample import seed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile")
    parser.add_argument("--events", type=int, default=6000)
    parser.add_argument("--project", default="demo-profile")
    args = parser.parse_args(argv)
    if not os.environ.get("FIRESTORE_EMULATOR_HOST"):
        parser.error("set FIRESTORE_EMULATOR_HOST to a running Firestore emulator")
    db = firestore.Client(project=args.project)
    seed(db, uniform(args.events))
    started, cpu = time.perf_counter(), time.process_time()
    replay_in_process(db, args.project)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    # The handler's own CPU per event is what a deployed function pays; the wall time here
    # also holds the emulator's, which shares this machine's cores.
    print(f"{args.events} events in {seconds:.2f} s: {args.events / seconds:.0f} events/s, "
          f"{cpu * 1e6 / args.events:.0f} us of this process's CPU an event; "
          f"credited once: {credited_once(db, args.events)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
