"""Figure 10's child process: `pipeline train ARGS` as a user runs it, stopped at its first
optimizer step. Prints one JSON line: seconds from this process's start to the end of its
imports and to the first step, and how many times the training process opened a shard file
before it (Store.open / Store.input_file below `shards/`; rows read by loader workers are in
other processes and not counted).

Deliberately standalone (no `benchmarks` import): figure 10 also runs it against the code of the
commit before the row-group index (PYTHONPATH set to that tree), to measure the old start-up.

    python benchmarks/startup_child.py train --labels DS --student S.toml --out RUNS ...
"""

import time

START = time.perf_counter()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402


def main() -> None:
    from pipeline.cli import main as cli
    from pipeline.io.storage import Store
    from pipeline.training.trainer import StudentRun

    imported = time.perf_counter()
    opens = [0]

    def counting(name):
        real = getattr(Store, name)

        def wrapper(self, rel, *args, **kw):
            opens[0] += str(rel).startswith("shards/")
            return real(self, rel, *args, **kw)
        return wrapper

    for name in ("open", "input_file"):
        setattr(Store, name, counting(name))

    def first_step(self, batch):
        shard_opens = opens[0]
        real_step(self, batch)
        print(json.dumps({"imports_s": imported - START,
                          "first_step_s": time.perf_counter() - START,
                          "shard_opens": shard_opens}), flush=True)
        os._exit(0)  # the figure is the first step; the rest of the run is not timed

    real_step = StudentRun.train_step
    StudentRun.train_step = first_step
    sys.argv = ["pipeline", *sys.argv[1:]]
    cli()


if __name__ == "__main__":
    main()
