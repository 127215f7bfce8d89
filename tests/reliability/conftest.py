"""Helpers shared by the reliability tests: a small labeled dataset, the CLI run in-process (real
exit codes and stderr, without paying a torch import per call), tiny student files, and ways to
tamper with a dataset the way an untrusted producer could (values changed, checksums fixed)."""

import json
import shutil
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from pipeline.softlabels.rowgroups import index_file
from stages.label import LabelConfig
from stages.label import run as label

TINY_GPT = '[model]\nfamily = "gpt"\nn_layer = 1\nn_head = 2\nd_model = 16\n'


@pytest.fixture(autouse=True, scope="package")
def one_thread():
    """Tiny models are fastest on one thread, the CPUs are shared, and one thread everywhere
    keeps in-process and subprocess teachers numerically identical."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory, tiny_corpus, tiny_teacher) -> Path:
    """~60 train rows in 16-row shards with 8-row row groups, plus a validation split."""
    out = tmp_path_factory.mktemp("reliability") / "ds"
    label(LabelConfig(corpus=str(tiny_corpus), out=str(out), teacher=str(tiny_teacher), top_k=4,
                      seq_len=16, shard_rows=16, row_group_rows=8, batch_size=16,
                      validation_fraction=0.2, limit_docs=30, device="cpu", quiet=True))
    return out


def copy_dataset(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "ds"
    shutil.copytree(src, dst)
    return dst


def write_student(tmp_path: Path, name: str = "s", body: str = TINY_GPT, **train) -> Path:
    train = {"batch_size": 8, "epochs": 1, "eval_batches": 1, "checkpoint_every": 2, **train}
    text = body + "[schedule]\nwarmup_steps = 1\n[train]\n" + "".join(
        f"{k} = {v}\n" for k, v in train.items() if v is not None)
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def train_unbroken(dataset: Path, tmp: Path, body: str, **train) -> tuple[Path, Path]:
    """Student "k" trained in process without interruption: (student file, run folder), the
    reference a killed or interrupted and resumed run must equal."""
    from stages.train import TrainConfig, run

    student = write_student(tmp, "k", body, **train)
    run(TrainConfig(labels=str(dataset), students=[str(student)], out=str(tmp / "runs"),
                    device="cpu", quiet=True))
    return student, tmp / "runs" / "k"


def edit_manifest(root: Path, fn) -> None:
    m = json.loads((root / "manifest.json").read_text())
    fn(m)
    (root / "manifest.json").write_text(json.dumps(m, indent=2))


def rewrite_shard(root: Path, rel: str, mutate) -> None:
    """Replace a shard's table by mutate(table) and record the new checksum in the manifest, as
    a producer who controls both files would: only content checks can catch it."""
    path = root / rel
    table = mutate(pq.read_table(path))
    pq.write_table(table, path, row_group_size=8)

    def fix(m):
        entry = next(e for shards in m["splits"].values() for e in shards if e["path"] == rel)
        entry.update(index_file(path), bytes=path.stat().st_size)  # sha256, row-group index

    edit_manifest(root, fix)


# ---- labeling the same dataset in a subprocess (to kill or starve) and in-process -------------

def label_opts(**overrides) -> dict:
    """Tiny labeling settings: 16 documents, many small shards, seconds of CPU."""
    return {"top_k": 4, "seq_len": 32, "batch_size": 8, "shard_rows": 16,
            "validation_fraction": 0.2, "limit_docs": 16, "device": "cpu", "quiet": True,
            **overrides}


def label_argv(corpus, teacher, out, **opts) -> list[str]:
    """`python -m pipeline.cli.commands label ...` with the same settings as label_opts(**opts)."""
    argv = [sys.executable, "-m", "pipeline.cli", "label", "--corpus", str(corpus), "--teacher",
            str(teacher), "--out", str(out)]
    for key, value in label_opts(**opts).items():
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return argv


def label_here(corpus, teacher, out, **opts) -> dict:
    return label(LabelConfig(corpus=str(corpus), out=str(out), teacher=str(teacher),
                             **label_opts(**opts)))


def snapshot(root: Path) -> tuple[dict, dict]:
    """(manifest without its timestamp, {shard path: pyarrow table}) of a finished dataset;
    asserts the manifest lists every shard on disk and no temp file is left."""
    m = json.loads((root / "manifest.json").read_text())
    m.pop("created_at")
    listed = [e["path"] for shards in m["splits"].values() for e in shards]
    on_disk = sorted(p.relative_to(root).as_posix() for p in (root / "shards").rglob("*")
                     if p.is_file())
    assert sorted(listed) == on_disk, (listed, on_disk)
    assert not [p for p in root.rglob("*.tmp")], list(root.rglob("*.tmp"))
    return m, {rel: pq.read_table(root / rel) for rel in listed}


def assert_same_dataset(got: Path, want: Path) -> None:
    (m1, t1), (m2, t2) = snapshot(got), snapshot(want)
    assert m1 == m2
    assert t1.keys() == t2.keys()
    for rel in t1:
        assert t1[rel].equals(t2[rel], check_metadata=True), rel
