"""`pipeline train` opens no shard before its first step (bench figure 9 measures the time)."""

import json

import pytest

from pipeline.io.storage import Store
from pipeline.softlabels import rowgroups
from pipeline.training.trainer import StudentRun
from stages.label import LabelConfig
from stages.label import run as label
from stages.train import TrainConfig
from stages.train import run as train

STUDENT = ('[model]\nfamily = "gpt"\nn_layer = 1\nn_head = 2\nd_model = 16\n'
           "[train]\nbatch_size = 8\nmax_steps = 4\neval_every = 2\neval_batches = 1\n")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tiny_corpus, tiny_teacher):
    out = tmp_path_factory.mktemp("startup") / "ds"
    label(LabelConfig(corpus=str(tiny_corpus), out=str(out), teacher=str(tiny_teacher), top_k=4,
                      seq_len=16, shard_rows=16, row_group_rows=8, batch_size=16,
                      validation_fraction=0.2, limit_docs=30, quiet=True))
    return out


def _opens_before_first_step(monkeypatch, labels, tmp_path, workers: int) -> list[tuple]:
    """(Store method, shard) for each shard file this process opened or hashed before the
    first optimizer step (rows read by a loader worker are read in another process)."""
    opened, at_step = [], []
    for name in ("open", "input_file", "sha256"):
        real = getattr(Store, name)

        def counting(self, rel, *args, real=real, name=name, **kw):
            if str(rel).startswith("shards/"):
                opened.append((name, rel))
            return real(self, rel, *args, **kw)
        monkeypatch.setattr(Store, name, counting)
    real_step = StudentRun.train_step

    def step(self, batch):
        if not at_step:
            at_step.append(list(opened))
        return real_step(self, batch)
    monkeypatch.setattr(StudentRun, "train_step", step)
    student = tmp_path / "s.toml"
    student.write_text(STUDENT)
    runs = train(TrainConfig(labels=str(labels), students=[str(student)],
                             out=str(tmp_path / "runs"), device="cpu", quiet=True,
                             num_workers=workers))
    assert (runs["s"] / "complete.json").is_file()
    return at_step[0]


def test_train_opens_no_shard_before_step_1(monkeypatch, dataset, tmp_path):
    assert _opens_before_first_step(monkeypatch, dataset, tmp_path, workers=1) == []


def test_without_workers_only_the_first_batch_is_read_and_nothing_is_hashed(monkeypatch,
                                                                            dataset, tmp_path):
    opened = _opens_before_first_step(monkeypatch, dataset, tmp_path, workers=0)
    assert "sha256" not in {name for name, _ in opened}
    assert 0 < len(opened) <= 8  # the row groups batch 1's 8 rows were drawn from


def test_a_dataset_without_the_row_group_index_still_trains(monkeypatch, dataset, tmp_path):
    """An older labeler's dataset: planned from footers (opened before step 1, as before)."""
    import shutil

    old = shutil.copytree(dataset, tmp_path / "old")
    m = json.loads((old / "manifest.json").read_text())
    for entries in m["splits"].values():
        for e in entries:
            for k in rowgroups.KEYS:
                e.pop(k)
    (old / "manifest.json").write_text(json.dumps(m))
    opened = _opens_before_first_step(monkeypatch, old, tmp_path, workers=0)
    assert len({rel for name, rel in opened if name == "input_file"}) == len(m["splits"]["train"])
