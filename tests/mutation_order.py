"""Under `make mutation` only: run each mutant's tests cheapest first.

Why: mutmut runs, per mutant, the tests that reached the mutated function, with `-x`, in the
order of a Python set. Most mutants are killed, and a killed mutant costs the tests run before
the first failing one, so a slow end-to-end test (a teacher run, a labeled dataset) that
happens to come first costs seconds that a millisecond unit test would have saved. Ordering the
files as pyproject.toml `[tool.mutmut] pytest_add_cli_args_test_selection` lists them (fast unit
files first) and, within a file, by the call time mutmut measured in its stats run, keeps a
killed mutant at about the cost of its cheapest killing test. Files stay contiguous, so a
module-scoped fixture (a labeled dataset) is built at most once per mutant.

A plain `pytest` run is untouched: mutmut names the mutant in MUTANT_UNDER_TEST
(`module.x_function__mutmut_N`); its own set-up runs ("stats", "fail", "") keep pytest's order.
Its fork server imports the tests once and forks a process per mutant, so what `warm_up` loads
there is loaded once per run, not once per mutant.
"""

import gc
import json
import os
import tomllib
from pathlib import Path


def warm_up() -> None:
    """Load in mutmut's fork server what every mutant's process would otherwise load again:
    pyarrow imports pandas (~380 modules, 0.3 s) the first time it converts a numpy array."""
    import numpy as np
    import pyarrow as pa

    pa.array(np.zeros(1))


def freeze_fork_server(config) -> None:
    """After the fork server's warm-up collection: move everything loaded so far (torch,
    pandas, the test modules) out of the garbage collector's sight. pytest collects garbage at
    the end of every session, and in each mutant's process that pass over a few million objects
    it never freed cost 0.3 s; frozen, they are not scanned (nor copied on write by it)."""
    if config.option.collectonly and "MUTANT_UNDER_TEST" in os.environ:
        gc.freeze()


def mutant_under_test() -> bool:
    return "__mutmut_" in os.environ.get("MUTANT_UNDER_TEST", "")


def _selection(root: Path) -> list[str]:
    try:
        config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["mutmut"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return []
    return [a for a in config.get("pytest_add_cli_args_test_selection", []) if a.endswith(".py")]


def _durations(root: Path) -> dict[str, float]:
    try:  # mutmut's stats, in the folder it runs the tests from (mutants/)
        return json.loads((root / "mutmut-stats.json").read_text())["duration_by_test"]
    except (OSError, KeyError, ValueError):
        return {}


def fastest_first(items: list, root: Path) -> None:
    """Reorder pytest items in place: listed files in their listed order, then by call time."""
    files = _selection(root)
    durations = _durations(root)

    def key(item):
        path = item.nodeid.split("::")[0]
        rank = files.index(path) if path in files else len(files)
        return rank, path, durations.get(item.nodeid, 0.0)

    items.sort(key=key)
