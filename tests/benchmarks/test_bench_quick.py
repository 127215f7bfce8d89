"""`make bench` must not rot: the quick variant runs end to end and yields every figure.

The slow test runs `python -m benchmarks.run --quick` as a subprocess (the tiny session teacher
keeps it short) into a temp folder and checks the results JSON and the Markdown table; the fast
tests check the timing helpers and that regenerating BENCHMARKS.md leaves other sections alone.
"""

import json
import os
import re
import statistics
import subprocess
import sys

import pytest

from benchmarks.report import END, MODES_START, START, write_section
from benchmarks.timing import Stat, interleaved, per_round, ratio
from pipeline.threads import requested_threads
from tests.conftest import REPO

# "1 (all cores)": figure 1 again with every core, on a machine with more than the CLI's one
ALL_CORES = ["1 (all cores)"] if (os.cpu_count() or 1) > requested_threads() else []
FIGURES = ["1", *ALL_CORES, "1 (wide)", "2 (k=8)", "2 (k=32)", "2 (k=128)", "2 wide (k=8)",
           "2 wide (k=32)", "2 wide (k=128)", "2 random (k=32)", "3 (1p)", "3 (2w)", "4", "5",
           "6 (label)",
           "6 (train)", "7", "8 (ce off/on)", "8 (kl off/on)", "8 (ce hard/KD)", "8 (kl hard/KD)",
           "9 (train)", "9 (train, full logits)", "9 (label)", "10",
           "11 (bytes)", "11 (label)", "11 (stream)", "12", "12 (rerun)",
           "13 (bpb kd/ce)", "13 (bpb kd/same)", "13 (reader)", "13 (aligned)"]


def verdict(figure: dict) -> bool | None:
    """Pass/fail read from the goal text alone ("≤ 1.05", "≥ 20×", "> 1 (...)", "none set"),
    so a figure cannot report a pass its numbers do not show. Figure 2's goal has a second
    condition, the KL bound that some encoding's measured KL must meet."""
    m = re.match(r"([≤≥><])\s*([\d.]+)", figure["goal"])
    if m is None:
        return None
    op, bound, x = m.group(1), float(m.group(2)), figure["median"]
    ok = {"≤": x <= bound, "≥": x >= bound, ">": x > bound, "<": x < bound}[op]
    if kl := re.search(r"at ≤ ([\d.e-]+) nats", figure["goal"]):
        ok = ok and any(max(v) <= float(kl.group(1)) for k, v in figure["details"].items()
                        if k.endswith(" kl"))
    return ok


def test_verdict_reads_every_kind_of_goal():
    fig = {"median": 1.2, "details": {"u8 kl": [1e-4, 2e-4], "fp16 kl": [1e-6]}}
    assert verdict({**fig, "goal": "≤ 1.05"}) is False
    assert verdict({**fig, "goal": "≥ 1.1"}) is True
    assert verdict({**fig, "goal": "> 1 (both KD better)"}) is True
    assert verdict({**fig, "goal": "< 1 (KD helps)"}) is False
    assert verdict({**fig, "goal": "none set (ideal 2.00× on 2 cores)"}) is None
    assert verdict({**fig, "goal": "≤ 2.0 B at ≤ 0.001 nats"}) is True
    assert verdict({**fig, "goal": "≤ 2.0 B at ≤ 1e-07 nats"}) is False


def test_interleaved_runs_variants_in_rounds():
    calls = []
    out = interleaved({"a": lambda: calls.append("a") or 1.0,
                       "b": lambda: calls.append("b") or 2.0}, reps=3,
                      setup=lambda name, r: calls.append(f"setup-{name}-{r}"))
    assert [c for c in calls if not c.startswith("setup")] == ["a", "b"] * 3
    assert calls[:2] == ["setup-a-0", "a"]
    assert out == {"a": [1.0] * 3, "b": [2.0] * 3}
    with pytest.raises(ValueError):
        interleaved({"a": lambda: 1.0}, reps=0)


def test_ratio_is_per_round_and_stat_summarises():
    s = ratio([2.0, 9.0, 4.0], [1.0, 3.0, 1.0])
    assert s.values == [2.0, 3.0, 4.0]
    assert (s.median, s.min, s.max) == (3.0, 2.0, 4.0)
    assert per_round(lambda a, b: a + b, [1.0, 2.0], [3.0, 4.0]).values == [4.0, 6.0]
    assert Stat([5.0, 1.0, 3.0]).as_dict()["median"] == 3.0


def test_write_section_replaces_only_its_block(tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    modes = f"{MODES_START}\nmodes table\n<!-- modes:end -->\n"
    md.write_text("# Benchmarks\n\n" + modes)
    write_section("first", md)
    text = md.read_text()
    assert text.index(START) < text.index(MODES_START)  # ours above the label-modes table
    write_section("second", md)
    text = md.read_text()
    assert text.count(START) == 1 and "first" not in text and "second" in text
    assert modes in text and text.startswith("# Benchmarks")
    assert text.index(END) < text.index(MODES_START)


@pytest.mark.slow
@pytest.mark.timeout(1500)  # 12 figures' smoke runs: minutes on a busy 2-core machine
def test_bench_quick_produces_every_figure(tmp_path, tiny_teacher):
    results, md = tmp_path / "results.json", tmp_path / "BENCHMARKS.md"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--teacher", str(tiny_teacher),
         "--out", str(tmp_path / "work"), "--results", str(results), "--markdown", str(md)],
        cwd=REPO, capture_output=True, text=True, timeout=1400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(results.read_text())
    assert [f["id"] for f in data["figures"]] == FIGURES
    for f in data["figures"]:
        assert len(f["values"]) >= 3, f["id"]  # median of >= 3 repetitions
        assert f["min"] <= f["median"] <= f["max"], f["id"]
        # the summary is of these values, and the verdict is the goal applied to the median
        assert (f["median"], f["min"], f["max"]) == pytest.approx(
            (statistics.median(f["values"]), min(f["values"]), max(f["values"]))), f["id"]
        assert f["goal"] and f["passed"] == verdict(f), f["id"]
        if f["passed"] is False:
            assert f["note"], f"figure {f['id']} missed its goal without a note"
    assert data["params"]["quick"] is True and data["params"]["reps"] >= 3
    machine = data["machine"]
    for key in ("cpu", "cores", "torch", "pyarrow", "load_average_at_start"):
        assert machine[key] not in (None, ""), key

    text = md.read_text()
    assert text.count(START) == 1 and text.count(END) == 1
    header = "| # | figure | goal | measured: median (min–max) | result |"
    assert header in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and line != header]
    table = {r.split(" | ")[0][2:]: r for r in rows}
    assert list(table) == FIGURES
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 5, row
        assert re.fullmatch(r"[-\d.]+( ?\S+)? \([-\d.]+–[-\d.]+\)", cells[3]), row  # med (min–max)
        want = next(f for f in data["figures"] if f["id"] == cells[0])
        assert cells[4] == {True: "pass", False: "**fail**", None: "info"}[want["passed"]], row
    for section in ("### Machine", "### Parameters", "### Details", "### Notes"):
        assert section in text
    assert "Load average at start" in text and "pyarrow" in text
    params = text.split("### Parameters")[1].split("```json")[1].split("```")[0]
    assert json.loads(params)["quick"] is True
