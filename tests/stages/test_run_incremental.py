"""`pipeline run` over a growing corpus: a version per run, runs per version, history.jsonl."""

import json
import tomllib

import stages.label
from pipeline.cli.jobs import load_job
from pipeline.cli.run import evaluate_config
from pipeline.evaluation import over_versions
from pipeline.softlabels.reader import SoftLabelDataset
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
    over = grown["results"]["over_versions"]  # the report plots history.jsonl and this run
    assert sorted({p["version"] for p in over["points"]}) == [1, 2]
    assert (out / "report" / over_versions.VERSIONS_PNG).is_file()
    fixed = {e["path"] for e in SoftLabelDataset(out / "labels", 1).manifest["splits"][
        "validation"]}
    added = [s for s in SoftLabelDataset(out / "labels").shards["validation"]
             if s.rel not in fixed]
    assert bool(added) == ("new_validation" in grown["results"])


def test_an_incremental_job_evaluates_on_version_1_and_plots_its_history(tmp_path,
                                                                         tiny_teacher):
    """Without [evaluate] version, the fixed evaluation set is version 1's validation split."""
    job = tmp_path / "job.toml"
    (tmp_path / "student.toml").write_text(STUDENT)
    job.write_text(INCREMENTAL.replace("[evaluate]\nversion = 1\n", "[evaluate]\n").format(
        out=tmp_path / "out", corpus=tmp_path / "c.jsonl", teacher=tiny_teacher,
        student=tmp_path / "student.toml"))
    ev = evaluate_config(load_job(job))
    assert ev.version == 1 and ev.history == str(tmp_path / "out" / "history.jsonl")
    job.write_text(job.read_text().replace("[evaluate]\n", "[evaluate]\nversion = 3\n"))
    assert evaluate_config(load_job(job)).version == 3
