"""`pipeline evaluate --version N` on a dataset with later versions: the fixed evaluation set,
the validation rows added since scored apart, and the leaderboard over versions from a job's
history.jsonl (pipeline/evaluation/over_versions.py)."""

import json

import pytest

import stages.label as L
from pipeline.config.stages import EvaluateConfig
from pipeline.evaluation import over_versions
from pipeline.softlabels.reader import SoftLabelDataset
from stages.evaluate import is_complete
from stages.evaluate import run as evaluate
from stages.train import TrainConfig
from stages.train import run as train
from tests.conftest import make_docs
from tests.stages.test_label_incremental import cfg, write_corpus
from tests.stages.test_train import student


@pytest.fixture(scope="module")
def grown(tmp_path_factory, tiny_teacher):
    """A dataset with versions 1 and 2 (30 documents added) and a student trained on v1."""
    tmp = tmp_path_factory.mktemp("evalver")
    docs = make_docs(60, seed=3)
    corpus, out = write_corpus(tmp / "c.jsonl", docs), tmp / "ds"
    L.run(cfg(corpus, tiny_teacher, out, seq_len=16, validation_fraction=0.2))
    write_corpus(corpus, docs + [{"id": f"n{i}", "text": d["text"]}
                                 for i, d in enumerate(make_docs(30, seed=5))])
    L.run(cfg(corpus, tiny_teacher, out, seq_len=16, validation_fraction=0.2))
    s = student(tmp, "s", max_steps=2)
    run = train(TrainConfig(labels=str(out), version=1, students=[s], out=str(tmp / "runs"),
                            device="cpu", quiet=True))["s"]
    return out, run


def config(ds, run, out, **kw) -> EvaluateConfig:
    return EvaluateConfig(labels=str(ds), runs=[str(run)], out=str(out), device="cpu",
                          quiet=True, bench_repeats=1, bench_warmup=0, **kw)


def test_added_validation_rows_are_scored_apart_from_the_fixed_set(grown, tmp_path):
    ds, run = grown
    fixed = {e["path"] for e in SoftLabelDataset(ds, 1).manifest["splits"]["validation"]}
    added = [s for s in SoftLabelDataset(ds).shards["validation"] if s.rel not in fixed]
    assert added, "the grown corpus added no validation shard"
    results = evaluate(config(ds, run, tmp_path / "r", version=1))
    assert results["dataset"]["rows"] == sum(
        s.rows for s in SoftLabelDataset(ds, 1).shards["validation"])  # the fixed set only
    new = results["new_validation"]
    assert (new["since_version"], new["latest_version"]) == (1, 2)
    assert new["rows"] == sum(s.rows for s in added)
    (m,) = new["models"]
    assert m["name"] == "s" and m["kl_tail"] > 0 and m["ce"] != results["rows"][0]["ce"]
    text = (tmp_path / "r" / "report.md").read_text()
    assert "## Validation rows added after version 1" in text
    assert "over_versions" not in results  # no --history: no plot
    latest = evaluate(config(ds, run, tmp_path / "l"))
    assert "new_validation" not in latest  # the latest version: nothing was added after it


def test_history_gives_the_leaderboard_over_versions_plot(grown, tmp_path):
    ds, run = grown
    history = tmp_path / "history.jsonl"
    history.write_text(json.dumps({"version": 1, "leaderboard": [
        {"name": "s", "role": "student", "kl_tail": 9.5, "ce": 9.9}]}) + "\n{torn")
    c = config(ds, run, tmp_path / "r", version=1, history=str(history))
    results = evaluate(c)
    over = results["over_versions"]
    assert over["metric"] == "kl_tail"
    assert [(p["version"], p["name"]) for p in over["points"]] == [(1, "s"), (2, "s")]
    assert over["points"][0]["value"] == 9.5
    png = tmp_path / "r" / over_versions.VERSIONS_PNG
    assert png.read_bytes().startswith(b"\x89PNG")
    assert f"![leaderboard over versions]({over_versions.VERSIONS_PNG})" in (
        tmp_path / "r" / "report.md").read_text()
    history.write_text(history.read_text() + json.dumps({"version": 2}) + "\n")
    assert is_complete(c)  # the history is not an input: appending to it reruns nothing


def test_points_keep_the_latest_value_per_version_and_fall_back_to_ce():
    history = [{"version": 1, "leaderboard": [{"name": "a", "ce": 3.0}]},
               {"version": 1, "leaderboard": [{"name": "a", "ce": 2.5}]},
               {"version": None, "leaderboard": [{"name": "a", "ce": 1.0}]}]
    over = over_versions.points(history, 2, [{"name": "a", "ce": 2.0, "kl_tail": None}])
    assert over == {"metric": "ce", "points": [{"version": 1, "name": "a", "value": 2.5},
                                               {"version": 2, "name": "a", "value": 2.0}]}
    assert over_versions.plot(over) is not None
    assert over_versions.plot({"metric": "ce", "points": over["points"][:1]}) is None
    assert over_versions.points(history, None, []) is None
