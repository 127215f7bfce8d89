"""`pipeline run` over a growing corpus: a version per run, runs per version, history.jsonl."""

import json
import tomllib

import stages.label
from tests.conftest import make_docs
from tests.stages.test_label_incremental import write_corpus
from tests.stages.test_run import JOB, STUDENT, run_job

INCREMENTAL = JOB.replace("[label]\n", '[label]\nincremental = true\n').replace(
    "[train]\n", "[train]\ncontinue = true\n").replace(
    "[evaluate]\n", "[evaluate]\nversion = 1\n").replace(
    'source = "{corpus}"', 'source = "{corpus}"\nid_column = "id"')


def test_scheduled_job_labels_only_what_changed_and_keeps_a_history(tmp_path, tiny_teacher,
                                                                    monkeypatch):
    docs = make_docs(60, seed=3)
    corpus = write_corpus(tmp_path / "c.jsonl", docs)
    (tmp_path / "student.toml").write_text(STUDENT)
    job = tmp_path / "job.toml"
    out = tmp_path / "out"
    job.write_text(INCREMENTAL.format(out=out, corpus=corpus, teacher=tiny_teacher,
                                      student=tmp_path / "student.toml"))
    first, _ = run_job(job)
    assert first["stages"] == {"label": "ran", "train": "ran", "evaluate": "ran"}
    assert (out / "runs" / "v00001" / "tiny-gpt" / "complete.json").is_file()
    lines = (out / "history.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["version"] == 1

    def boom(cfg):
        raise AssertionError("the label stage ran")

    monkeypatch.setattr(stages.label, "run", boom)
    again, _ = run_job(job)  # nothing new: nothing runs, nothing is appended
    assert set(again["stages"].values()) == {"skipped"}
    assert len((out / "history.jsonl").read_text().splitlines()) == 1
    monkeypatch.undo()

    write_corpus(corpus, docs + [{"id": f"n{i}", "text": d["text"]}
                                 for i, d in enumerate(make_docs(8, seed=11))])
    grown, _ = run_job(job)
    assert grown["stages"]["label"] == "ran"
    line = json.loads((out / "history.jsonl").read_text().splitlines()[-1])
    assert line["version"] == 2 and line["documents"]["added"] == 8
    assert line["stages"]["label"]["seconds"] > 0 and line["leaderboard"]
    config = tomllib.loads((out / "runs" / "v00002" / "tiny-gpt" / "config.toml").read_text())
    assert config["data"]["dataset_version"] == 2
    assert config["data"]["continued_from"]["dataset_version"] == 1
    assert grown["results"]["dataset"]  # evaluated on the fixed version 1 validation split
