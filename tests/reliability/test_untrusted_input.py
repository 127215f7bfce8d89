"""Datasets and model files made by someone else: refused with one line naming the shard/file.

The producer is assumed to control every file, manifest included, so each tampered shard gets a
matching sha256 in the manifest: only the reader's own checks can catch it. Both `pipeline
validate` and `pipeline train` must refuse and name the shard; nothing is ever unpickled.
"""

import ast
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.models.checkpoint import load_state
from pipeline.softlabels.schema import COL_ID_DELTAS, COL_LABEL_LOGPROBS
from tests.conftest import REPO
from tests.reliability.conftest import copy_dataset, edit_manifest, rewrite_shard, write_student

SHARD = "shards/train/part-00000.parquet"


def _set_flat(column: str, index: int, value):
    """Mutation: entry `index` of a column's flat values becomes `value`."""
    def mutate(table: pa.Table) -> pa.Table:
        col = table.column(column).combine_chunks()
        values = col.values.to_numpy(zero_copy_only=False).astype(np.float64)
        values[index] = value
        new = pa.ListArray.from_arrays(col.offsets, pa.array(values).cast(col.type.value_type,
                                                                         safe=False))
        return table.set_column(table.schema.get_field_index(column), column, new)
    return mutate


def _shift_rows(table: pa.Table) -> pa.Table:
    """Row 0 gets one token fewer, row 1 one more: flat totals still add up."""
    col = table.column("input_ids").combine_chunks()
    offsets = np.asarray(col.offsets).copy()
    offsets[1] -= 1
    new = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), col.values)
    return table.set_column(table.schema.get_field_index("input_ids"), "input_ids", new)


def _future(extra_column: bool = False, retype: bool = False):
    def mutate(table: pa.Table) -> pa.Table:
        meta = {**table.schema.metadata, b"softlabels.format_version": b"2.0"}
        if extra_column:
            table = table.append_column("entropy", pa.array([[0.5]] * table.num_rows))
        if retype:
            i = table.schema.get_field_index(COL_LABEL_LOGPROBS)
            table = table.set_column(i, COL_LABEL_LOGPROBS, table.column(i).cast(
                pa.list_(pa.float64())))
        return table.replace_schema_metadata(meta)
    return mutate


# (case id, mutation of train shard 0, what the error must say besides the shard's name)
BAD_SHARDS = [
    ("input-id-ge-vocab", _set_flat("input_ids", 40, 400), r"outside \[0, vocab 320\)|input id >="),
    ("topk-id-ge-vocab", _set_flat(COL_ID_DELTAS, 300, 65535),
     r"outside \[0, vocab 320\)|topk id >="),
    ("nan-logprob", _set_flat(COL_LABEL_LOGPROBS, 77, np.nan), "non-finite log-probability"),
    ("inf-logprob", _set_flat(COL_LABEL_LOGPROBS, 78, -np.inf), "non-finite log-probability"),
    ("positive-logprob", _set_flat(COL_LABEL_LOGPROBS, 79, 0.25), "positive log-probability"),
    ("tail-above-1", _set_flat("tail_mass", 20, 1.5), r"tail mass outside \[0, 1\]"),
    ("tail-negative", _set_flat("tail_mass", 21, -0.1), r"tail mass outside \[0, 1\]"),
    ("rows-shifted", _shift_rows, "column input_ids has 15 values, expected 16"),
    ("future-kv-version", _future(), "format_version '2.0' .* not supported"),
    ("future-extra-column", _future(extra_column=True), "schema does not match"),
    ("future-changed-type", _future(retype=True), "schema does not match"),
]


def _train_args(ds: Path, tmp_path: Path) -> list:
    return ["train", "--labels", ds, "--student", write_student(tmp_path), "--out",
            tmp_path / "runs", "--device", "cpu", "--quiet"]


@pytest.mark.parametrize("case,mutate,message", BAD_SHARDS, ids=[c[0] for c in BAD_SHARDS])
def test_bad_shard_refused_by_validate_and_train(cli, small_dataset, tmp_path, case, mutate,
                                                 message):
    import re

    ds = copy_dataset(small_dataset, tmp_path)
    rewrite_shard(ds, SHARD, mutate)
    code, _, err = cli("validate", ds)
    assert code == 1 and SHARD in err and re.search(message, err), err
    code, _, err = cli(*_train_args(ds, tmp_path))
    assert code == 1, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert SHARD in err and re.search(message, err), err
    assert not list((tmp_path / "runs").rglob("complete.json"))


def test_bad_shard_found_by_a_dataloader_worker_is_still_one_line(cli, small_dataset, tmp_path):
    ds = copy_dataset(small_dataset, tmp_path)
    rewrite_shard(ds, SHARD, _set_flat(COL_LABEL_LOGPROBS, 77, np.nan))
    code, _, err = cli(*_train_args(ds, tmp_path), "--num-workers", "2")
    assert code == 1 and err.count("\n") == 1, err  # no worker traceback in the message
    assert f"error: shard {SHARD} row group 0 row 1: non-finite log-probability" in err


def test_bad_validation_shard_refused_by_evaluate_and_bigram(cli, small_dataset, trained,
                                                             tmp_path):
    ds = copy_dataset(small_dataset, tmp_path)
    val = "shards/validation/part-00000.parquet"
    rewrite_shard(ds, val, _set_flat("input_ids", 5, 999))
    code, _, err = cli("evaluate", "--labels", ds, "--run", trained[1], "--out",
                       tmp_path / "report", "--device", "cpu", "--quiet")
    assert code == 1 and f"error: shard {val} row 0: input_ids holds an id outside" in err, err
    assert not (tmp_path / "report" / "results.json").exists()
    code, _, err = cli("bigram", "--labels", ds)
    assert code == 1 and f"error: shard {val} row 0: input_ids holds an id outside" in err, err


def test_wrong_row_count_in_manifest_refused(cli, small_dataset, tmp_path):
    ds = copy_dataset(small_dataset, tmp_path)
    edit_manifest(ds, lambda m: m["splits"]["train"][0].update(rows=17))
    code, _, err = cli("validate", ds)
    assert code == 1 and f"{SHARD}: 16 rows on disk but the manifest says 17" in err, err
    code, _, err = cli(*_train_args(ds, tmp_path))
    assert code == 1 and SHARD in err and "manifest says 17" in err, err


@pytest.mark.parametrize("bad_path", ["../elsewhere/part-00000.parquet", "/etc/passwd",
                                      "s3://other-bucket/shards/train/part-00000.parquet"])
def test_shard_path_escaping_the_dataset_refused(cli, small_dataset, tmp_path, bad_path):
    ds = copy_dataset(small_dataset, tmp_path)
    edit_manifest(ds, lambda m: m["splits"]["train"][0].update(path=bad_path))
    for args in (["validate", ds], _train_args(ds, tmp_path)):
        code, _, err = cli(*args)
        assert code == 1 and bad_path in err and "refusing" in err, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("edit,message", [
    (lambda m: m.update(format_version="2.0"), "format_version 2.0 is not supported"),
    (lambda m: m["labels"].update(id_type="uint17"), "labels.id_type 'uint17'"),
    (lambda m: m.pop("seq_len"), "manifest field 'seq_len' is missing"),
    (lambda m: m["splits"]["train"][0].update(rows="16"), "malformed path/rows"),
])
def test_manifest_from_the_future_or_malformed_refused(cli, small_dataset, tmp_path, edit,
                                                       message):
    ds = copy_dataset(small_dataset, tmp_path)
    edit_manifest(ds, edit)
    for args in (["validate", ds], _train_args(ds, tmp_path)):
        code, _, err = cli(*args)
        assert code == 1 and "manifest.json" in err and message in err, err


# ---- pickles disguised as weights -------------------------------------------------------------

class _Payload:
    """Unpickling this creates `marker`: proof that a loader ran pickle."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def pickles(tmp_path):
    marker = tmp_path / "pwned"
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps({"tok_emb.weight": _Payload(marker)}))
    pt = tmp_path / "torch.pt"
    torch.save({"tok_emb.weight": _Payload(marker)}, pt)
    return marker, {"pickle": raw, "torch.save": pt}


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_pickle_as_teacher_weights_refused(cli, pickles, tiny_teacher, tiny_corpus, tmp_path,
                                           kind):
    import shutil

    marker, files = pickles
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_teacher, teacher)
    shutil.copyfile(files[kind], teacher / "model.safetensors")
    code, _, err = cli("label", "--corpus", tiny_corpus, "--teacher", teacher, "--out",
                       tmp_path / "out", "--top-k", "4", "--seq-len", "16", "--quiet")
    assert code == 1 and "model.safetensors is not a valid safetensors file" in err, err
    assert not marker.exists() and not (tmp_path / "out" / "manifest.json").exists()


def test_pt_file_is_never_loaded(cli, pickles, tiny_teacher, tiny_corpus, tmp_path):
    import shutil

    marker, files = pickles
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_teacher, teacher)
    (teacher / "model.safetensors").unlink()
    shutil.copyfile(files["torch.save"], teacher / "model.pt")
    code, _, err = cli("label", "--corpus", tiny_corpus, "--teacher", teacher, "--out",
                       tmp_path / "out", "--top-k", "4", "--seq-len", "16", "--quiet")
    assert code == 1 and "has no model.safetensors" in err, err
    with pytest.raises(PipelineError, match="only .safetensors weights are loaded"):
        load_state(teacher / "model.pt")
    assert not marker.exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_dataset):
    """An unfinished run (complete.json removed) to resume, and a finished one to evaluate."""
    from stages.train import TrainConfig, run

    tmp = tmp_path_factory.mktemp("trained")
    student = write_student(tmp, max_steps=2, epochs=None)
    runs = run(TrainConfig(labels=str(small_dataset), students=[str(student)],
                           out=str(tmp / "runs"), device="cpu", quiet=True))
    return student, runs["s"]


@pytest.mark.parametrize("target", ["model.safetensors", "optimizer.safetensors"])
def test_pickle_in_resume_state_refused(cli, pickles, small_dataset, trained, tmp_path, target):
    import json
    import shutil

    marker, files = pickles
    student, run_dir = trained
    runs = tmp_path / "runs"
    shutil.copytree(run_dir, runs / "s")
    (runs / "s" / "complete.json").unlink()
    latest = json.loads((runs / "s" / "state" / "latest.json").read_text())["checkpoint"]
    shutil.copyfile(files["pickle"], runs / "s" / "state" / latest / target)
    code, _, err = cli("train", "--labels", small_dataset, "--student", student, "--out", runs,
                       "--device", "cpu", "--quiet", "--resume")
    assert code == 1 and f"{target} is not a valid safetensors file" in err, err
    assert not marker.exists()


def test_pickle_as_evaluated_run_refused(cli, pickles, small_dataset, trained, tmp_path):
    import shutil

    marker, files = pickles
    run = tmp_path / "s"
    shutil.copytree(trained[1], run)
    (run / "model.safetensors").unlink()  # a hard link into state/: replace, don't write through
    shutil.copyfile(files["torch.save"], run / "model.safetensors")
    code, _, err = cli("evaluate", "--labels", small_dataset, "--run", run, "--out",
                       tmp_path / "report", "--device", "cpu", "--quiet")
    assert code == 1 and "model.safetensors is not a valid safetensors file" in err, err
    assert not marker.exists()


# ---- nothing in the code base can unpickle ----------------------------------------------------

UNPICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve"}


def unsafe_loads(source: str) -> list[str]:
    """Calls that can run code from a file: pickle-family loads, torch.load without
    weights_only=True, numpy.load(allow_pickle=True), pandas.read_pickle."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        owner = func.value.id if (isinstance(func, ast.Attribute)
                                  and isinstance(func.value, ast.Name)) else ""
        kw = {k.arg: k.value for k in node.keywords}
        literal = {k: v.value for k, v in kw.items() if isinstance(v, ast.Constant)}
        if (owner in UNPICKLERS and name in {"load", "loads", "open", "Unpickler"}
                or name in {"read_pickle", "Unpickler"}
                or owner == "torch" and name == "load" and literal.get("weights_only") is not True
                or name == "load" and literal.get("allow_pickle") is True):
            found.append(f"line {node.lineno}: {ast.unparse(node)[:80]}")
    return found


def test_scanner_finds_unsafe_loads():
    bad = ("import pickle, torch, numpy as np\npickle.load(f)\npickle.loads(b)\n"
           "torch.load('x.pt')\ntorch.load('x.pt', weights_only=False)\n"
           "np.load('a.npy', allow_pickle=True)\npickle.Unpickler(f).load()\n")
    assert len(unsafe_loads(bad)) == 6
    assert unsafe_loads("torch.load('x.pt', weights_only=True)\nnp.load('a.npy')\n") == []


def test_no_code_path_unpickles_files():
    roots = [REPO / d for d in ("pipeline", "stages", "benchmarks") if (REPO / d).is_dir()]
    files = [p for root in roots for p in root.rglob("*.py")]
    assert len(files) > 20
    offenders = {str(p.relative_to(REPO)): hits for p in files
                 if (hits := unsafe_loads(p.read_text()))}
    assert offenders == {}
