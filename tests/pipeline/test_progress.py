"""LineProgress: a line per task at a steady interval, one last line per task, JSON alike."""

import json
import re
import time

import torch

from pipeline.progress import LineProgress, duration, plain_line


def test_lines_come_at_the_interval_and_each_task_ends_with_one_last_line(capsys):
    with LineProgress("train", interval=0.05) as p:
        a = p.add_task("a", total=10, unit="steps")
        b = p.add_task("b", total=10, completed=4, unit="steps")
        for step in range(1, 11):
            p.update(a, completed=step, loss=torch.tensor(2.5), tokens_per_s=1000.0)
            time.sleep(0.02)
        p.update(b, completed=7)
        time.sleep(0.12)
    lines = capsys.readouterr().err.splitlines()
    a_lines = [line for line in lines if " train a: " in line]
    b_lines = [line for line in lines if " train b: " in line]
    assert len(a_lines) >= 3 and len(b_lines) >= 3, lines  # ~0.3 s at 0.05 s
    assert re.search(r"train a: 10/10 steps \(100%\), [\d.]+ steps/s, 1,000 tok/s, done after "
                     r"\ds, loss 2\.5000$", a_lines[-1]), a_lines[-1]
    assert sum("done after" in line for line in a_lines) == 1  # printed once, when it ended
    assert b_lines[-1].split(": ", 1)[1].startswith("7/10 steps (70%), ")
    assert "stopped after" in b_lines[-1]  # never completed: an interrupted task says so
    assert all("eta " in line for line in lines if "after" not in line)


def test_json_lines_carry_the_same_record(capsys):
    with LineProgress("label", as_json=True, interval=10) as p:
        t = p.add_task("label", total=100, unit="pos", rate="ignored text")
        p.advance(t, 40)
    (line,) = capsys.readouterr().err.splitlines()  # the interval never passed: the last line
    rec = json.loads(line)
    assert rec["event"] == "progress" and rec["stage"] == rec["task"] == "label"
    assert (rec["done"], rec["total"], rec["unit"], rec["status"]) == (40, 100, "pos", "stopped")
    assert rec["rate"] > 0 and "rate" not in {k for k, v in rec.items() if isinstance(v, str)}
    assert plain_line(rec).startswith(rec["time"][11:19] + " label: 40/100 pos (40%), ")


def test_duration():
    assert [duration(s) for s in (None, 4.4, 65, 7265)] == ["-", "4s", "1m05s", "2h01m"]
