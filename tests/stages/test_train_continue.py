"""`pipeline train --continue-from RUN` on a new dataset version: records, rows, kill + resume."""

import os
import tomllib

import pytest
import torch

import stages.label as L
from pipeline.errors import PipelineError
from stages.train import TrainConfig, open_dataset, run
from tests.conftest import make_docs
from tests.holds import hold_env, kill_in_hold
from tests.stages.test_label_incremental import cfg, write_corpus
from tests.stages.test_train import _weights, student


@pytest.fixture(scope="module")
def versions(tmp_path_factory, tiny_teacher):
    tmp = tmp_path_factory.mktemp("cont")
    docs = make_docs(60, seed=3)
    corpus, out = write_corpus(tmp / "c.jsonl", docs), tmp / "ds"
    L.run(cfg(corpus, tiny_teacher, out, seq_len=16))
    write_corpus(corpus, docs + [{"id": f"n{i}", "text": d["text"]}
                                 for i, d in enumerate(make_docs(30, seed=5))])
    L.run(cfg(corpus, tiny_teacher, out, seq_len=16))
    return out


def test_continue_on_new_rows_records_versions_and_resumes_after_sigkill(tmp_path, versions):
    torch.set_num_threads(1)
    s = student(tmp_path, "s", max_steps=8, checkpoint_every=2, eval_every=4)
    first = run(TrainConfig(labels=str(versions), version=1, students=[s],
                            out=str(tmp_path / "v1"), device="cpu", quiet=True))["s"]
    base = dict(labels=str(versions), students=[s], device="cpu", quiet=True,
                continue_from=str(first), new_rows_only=True)
    ref = run(TrainConfig(**base, out=str(tmp_path / "ref")))["s"]
    data = tomllib.loads((ref / "config.toml").read_text())["data"]
    assert data["dataset_version"] == 2
    assert (data["continued_from"]["dataset_version"], data["continued_from"]["rows"]) == (1, "new")
    ds_new, ds_all = open_dataset(TrainConfig(**base, out="x")), open_dataset(
        TrainConfig(**{**base, "new_rows_only": False}, out="x"))
    assert 0 < len(ds_new.shards["train"]) < len(ds_all.shards["train"])
    assert not all(torch.equal(_weights(first)[k], _weights(ref)[k]) for k in _weights(ref))
    args = ["train", "--labels", str(versions), "--student", s, "--out", str(tmp_path / "k"),
            "--device", "cpu", "--quiet", "--continue-from", str(first), "--new-rows-only"]
    hold = hold_env("pipeline.training.trainer:write_json_atomic", tmp_path / "held",
                    when="after", where="Path(args[0]).name == 'latest.json' and "
                                        "args[1]['step'] >= 4")
    kill_in_hold(args, hold, tmp_path / "held", env={**os.environ, "OMP_NUM_THREADS": "1"})
    got = run(TrainConfig(**base, out=str(tmp_path / "k"), resume=True))["s"]
    want, have = _weights(ref), _weights(got)
    assert all(torch.equal(want[k], have[k]) for k in want)


def test_continue_needs_a_finished_run(tmp_path, versions):
    s = student(tmp_path, "s", max_steps=2)
    with pytest.raises(PipelineError, match="not a finished run folder"):
        run(TrainConfig(labels=str(versions), students=[s], out=str(tmp_path / "o"),
                        device="cpu", quiet=True, continue_from=str(tmp_path)))
    with pytest.raises(PipelineError, match="needs --continue-from"):
        run(TrainConfig(labels=str(versions), students=[s], out=str(tmp_path / "o"),
                        device="cpu", quiet=True, new_rows_only=True))
