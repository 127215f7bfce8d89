"""`pipeline label` end to end through the CLI: output, idempotence, refusals, bad input."""

import json
import os
import shutil
import socket

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import make_teacher, run_cli


def label_args(corpus, teacher, out, *extra):
    return ["label", "--corpus", corpus, "--teacher", teacher, "--out", out, "--top-k", "4",
            "--seq-len", "32", "--shard-rows", "16", "--batch-size", "8", "--quiet",
            "--device", "cpu", *extra]


def shard_bytes(d):
    return {p.relative_to(d).as_posix(): p.read_bytes()
            for p in sorted((d / "shards").rglob("*.parquet"))}


def test_label_cli_end_to_end_and_idempotent_rerun(tmp_path, tiny_corpus, tiny_teacher):
    out = tmp_path / "ds"
    proc = run_cli(*label_args(tiny_corpus, tiny_teacher, out))
    assert "rows" in proc.stdout
    assert run_cli("validate", out).returncode == 0
    manifest = (out / "manifest.json").read_text()
    before = shard_bytes(out)
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "shards").rglob("*.parquet")}
    run_cli(*label_args(tiny_corpus, tiny_teacher, out))
    assert (out / "manifest.json").read_text() == manifest
    assert {p: p.stat().st_mtime_ns for p in (out / "shards").rglob("*.parquet")} == mtimes
    assert shard_bytes(out) == before
    info = json.loads(run_cli("inspect", out, "--json").stdout)
    assert info["labels"]["k"] == 4
    assert "mean top-k mass" in run_cli("inspect", out).stdout


def test_corpus_read_once_and_plan_spill_removed(tmp_path, tiny_corpus, tiny_teacher,
                                                  monkeypatch):
    import tempfile

    import pipeline.labeling.planning as P
    import stages.label as L
    from stages.label import LabelConfig

    calls, real = [], P.iter_shard_inputs
    monkeypatch.setattr(P, "iter_shard_inputs", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    L.run(LabelConfig(corpus=str(tiny_corpus), out=str(tmp_path / "ds"), teacher=str(tiny_teacher),
                      top_k=4, seq_len=32, shard_rows=16, batch_size=8, quiet=True, device="cpu"))
    assert calls == [1]  # planned and labeled from one read of the corpus
    assert list((tmp_path / "tmp").iterdir()) == []  # the parked shards are gone


def test_resume_after_missing_shard_rewrites_only_it(tmp_path, tiny_corpus, tiny_teacher):
    out = tmp_path / "ds"
    run_cli(*label_args(tiny_corpus, tiny_teacher, out))
    before = shard_bytes(out)
    (out / "manifest.json").unlink()
    (out / "shards/train/part-00001.parquet").unlink()
    run_cli(*label_args(tiny_corpus, tiny_teacher, out))
    assert shard_bytes(out) == before


def test_rerun_relabels_a_shard_corrupted_in_place_at_the_same_size(tmp_path, tiny_corpus,
                                                                     tiny_teacher):
    """A shard whose bytes changed but whose size did not (bit rot, a bad copy) still has its
    completion record: only its sha256 can tell, and a rerun must relabel it, not keep it."""
    out = tmp_path / "ds"
    run_cli(*label_args(tiny_corpus, tiny_teacher, out))
    before = shard_bytes(out)
    (out / "manifest.json").unlink()
    path = out / "shards/train/part-00001.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert path.stat().st_size == len(before["shards/train/part-00001.parquet"])
    run_cli(*label_args(tiny_corpus, tiny_teacher, out))
    assert shard_bytes(out) == before
    assert run_cli("validate", out).returncode == 0


def test_different_plan_refused_unless_overwrite(tmp_path, tiny_corpus, tiny_teacher):
    out = tmp_path / "ds"
    run_cli(*label_args(tiny_corpus, tiny_teacher, out))
    proc = run_cli(*label_args(tiny_corpus, tiny_teacher, out, "--seq-len", "16"), check=False)
    assert proc.returncode == 1
    assert "already holds a different labeling plan" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    run_cli(*label_args(tiny_corpus, tiny_teacher, out, "--seq-len", "16", "--overwrite"))
    assert json.loads((out / "manifest.json").read_text())["seq_len"] == 16


def test_tokens_only_dataset(tmp_path, tiny_corpus, tiny_tokenizer):
    out = tmp_path / "tok"
    run_cli("label", "--corpus", tiny_corpus, "--tokenizer", tiny_tokenizer, "--top-k", "0",
            "--out", out, "--seq-len", "32", "--quiet")
    m = json.loads((out / "manifest.json").read_text())
    assert m["labels"]["mode"] == "none" and m["teacher"] is None
    assert pq.read_schema(out / "shards/train/part-00000.parquet").names == ["input_ids",
                                                                            "doc_ids"]
    assert run_cli("validate", out).returncode == 0


def fails(args, match, tmp_path=None):
    proc = run_cli(*args, check=False)
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], proc.stderr
    return proc


def test_bad_inputs(tmp_path, tiny_corpus, tiny_teacher, tiny_tokenizer):
    out = tmp_path / "out"
    fails(label_args(tmp_path / "missing.jsonl", tiny_teacher, out), "does not exist")
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": ""}\n')
    fails(label_args(empty, tiny_teacher, out), "is empty")
    nocol = tmp_path / "nocol.jsonl"
    nocol.write_text('{"body": "x"}\n')
    fails(label_args(nocol, tiny_teacher, out), "column 'text' not found")
    fails(label_args(tiny_corpus, tiny_teacher, out, "--top-k", "1000"), "exceeds the vocabulary")
    fails(label_args(tiny_corpus, tiny_teacher, out, "--top-k", "-1"), "negative")
    assert not (out / "manifest.json").exists()


def test_teacher_dir_problems(tmp_path, tiny_corpus, tiny_teacher, tiny_tokenizer):
    out = tmp_path / "out"
    no_weights = tmp_path / "t1"
    shutil.copytree(tiny_teacher, no_weights)
    (no_weights / "model.safetensors").unlink()
    fails(label_args(tiny_corpus, no_weights, out), "has no model.safetensors")
    pickled = tmp_path / "t2"
    shutil.copytree(tiny_teacher, pickled)
    import pickle
    (pickled / "model.safetensors").write_bytes(pickle.dumps({"w": [1, 2, 3]}))
    fails(label_args(tiny_corpus, pickled, out), "not a valid safetensors file")
    other_vocab = make_teacher(tiny_tokenizer, tmp_path / "t3", vocab_size=400)
    fails(label_args(tiny_corpus, other_vocab, out), "tokenizer vocab size 320 != model vocab")


def test_out_holding_foreign_files_refused(tmp_path, tiny_corpus, tiny_teacher):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    fails(label_args(tiny_corpus, tiny_teacher, out), "files that are not a dataset")
    assert (out / "precious.txt").read_text() == "keep me"


def test_overwrite_never_removes_files_it_did_not_write(tmp_path, tiny_corpus, tiny_teacher):
    out = tmp_path / "out"
    (out / "notes").mkdir(parents=True)
    (out / "precious.txt").write_text("keep me")
    (out / "notes" / "todo.md").write_text("mine")
    proc = fails(label_args(tiny_corpus, tiny_teacher, out, "--overwrite"),
                 "(e.g. notes/todo.md; 2 in all)")
    assert "--overwrite" not in proc.stderr  # never suggest the flag that would destroy data
    assert (out / "precious.txt").read_text() == "keep me"
    assert (out / "notes" / "todo.md").read_text() == "mine"


def test_overwrite_of_the_current_directory_refused(tmp_path, tiny_corpus, tiny_teacher,
                                                    monkeypatch):
    from pipeline.cli import main

    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in label_args(tiny_corpus, tiny_teacher, ".", "--overwrite")])
    assert exc.value.code == 1
    assert (tmp_path / "data.csv").read_text() == "a,b\n1,2\n"


def test_overwrite_replaces_a_dataset_but_not_a_file_added_to_it(tmp_path, tiny_corpus,
                                                                 tiny_teacher):
    out = tmp_path / "ds"
    run_cli(*label_args(tiny_corpus, tiny_teacher, out))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (out / "shards" / "train" / "analysis.ipynb").write_text("{}")
    fails(label_args(tiny_corpus, tiny_teacher, out, "--seq-len", "16", "--overwrite"),
          "e.g. shards/train/analysis.ipynb")
    assert {p: p.read_bytes() for p in before} == before
    (out / "shards" / "train" / "analysis.ipynb").unlink()
    (out / "README.md").write_text("# my own notes\n")  # a card the tool did not write
    fails(label_args(tiny_corpus, tiny_teacher, out, "--seq-len", "16", "--overwrite"),
          "e.g. README.md;")
    (out / "README.md").unlink()
    run_cli(*label_args(tiny_corpus, tiny_teacher, out, "--seq-len", "16", "--overwrite"))
    assert json.loads((out / "manifest.json").read_text())["seq_len"] == 16


def test_out_that_is_a_file_refused(tmp_path, tiny_corpus, tiny_teacher):
    out = tmp_path / "ds.parquet"
    out.write_bytes(b"PAR1")
    fails(label_args(tiny_corpus, tiny_teacher, out), "is a file, not a folder")
    assert out.read_bytes() == b"PAR1"


def test_nan_teacher_refused_naming_rows(tmp_path, tiny_corpus, tiny_teacher):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "nan-teacher"
    shutil.copytree(tiny_teacher, bad)
    state = load_file(str(bad / "model.safetensors"))
    state["ln_f.weight"][:] = float("nan")
    save_file(state, str(bad / "model.safetensors"))
    out = tmp_path / "out"
    fails(label_args(tiny_corpus, bad, out), "NaN/inf logits for train/part-00000 rows [0,")
    assert not (out / "manifest.json").exists()


def test_live_lock_refused_and_stale_lock_taken_over(tmp_path, tiny_corpus, tiny_teacher):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    fails(label_args(tiny_corpus, tiny_teacher, out), "is locked by pid")
    (out / ".lock").write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname()}))
    run_cli(*label_args(tiny_corpus, tiny_teacher, out))
    assert (out / "manifest.json").exists() and not (out / ".lock").exists()


def test_parquet_corpus_with_id_column(tmp_path, tiny_teacher):
    from tests.conftest import make_docs

    docs = make_docs(40, seed=3)
    pq.write_table(pa.table({"key": [d["id"] for d in docs], "body": [d["text"] for d in docs]}),
                   tmp_path / "c.parquet")
    out = tmp_path / "out"
    run_cli(*label_args(tmp_path / "c.parquet", tiny_teacher, out, "--text-column", "body",
                        "--id-column", "key", "--validation-fraction", "0"))
    table = pq.read_table(out / "shards/train/part-00000.parquet")
    assert table.column("doc_ids")[0].as_py()[0] == "doc-0"


def _cfg(corpus_, teacher_, out_, **kw):
    from stages.label import LabelConfig

    return LabelConfig(**{"corpus": str(corpus_), "teacher": str(teacher_), "out": str(out_),
                          "top_k": 4, "seq_len": 32, "shard_rows": 16, "batch_size": 8,
                          "quiet": True, "device": "cpu", **kw})


@pytest.mark.parametrize("mode, opts", [("topp", {"max_k": 4, "top_p": 0.9}),
                                        ("sampled", {"samples": 4, "seed": 1})])
def test_is_complete_compares_every_recorded_setting(tmp_path, tiny_corpus, tiny_teacher,
                                                     tiny_tokenizer, mode, opts):
    """`pipeline run` skips labeling only through is_complete: with top_k == max_k/samples, a
    changed top_p/seed/temperature/u8 bound/mode must still count as "to run" (stale labels
    otherwise), and a finished topp/sampled dataset as complete (relabeled each run otherwise)."""
    import stages.label as L

    out = tmp_path / "ds"
    cfg = _cfg(tiny_corpus, tiny_teacher, out, mode=mode, **opts)
    assert not L.is_complete(cfg)
    L.run(cfg)
    assert L.is_complete(cfg)
    changes = [{"mode": "topk"}, {"logprob_encoding": "fp32"}, {"seq_len": 16},
               {"shard_rows": 8}, {"validation_fraction": 0.5}, {"limit_docs": 10},
               {"text_column": "body"}, {"id_column": "id"}, {"corpus": str(tmp_path)},
               {"logprob_encoding": "u8", "u8_min_logprob": -12.0},
               {"teacher": str(make_teacher(tiny_tokenizer, tmp_path / "t2", seed=5))}]
    changes += ([{"top_p": 0.8}, {"min_k": 2}, {"max_k": 5}] if mode == "topp" else
                [{"seed": 2}, {"proposal_temperature": 2.0}, {"samples": 5}])
    for change in changes:
        assert not L.is_complete(_cfg(tiny_corpus, tiny_teacher, out,
                                      **{"mode": mode, **opts, **change})), change
    (out / "manifest.json").unlink()  # planned but not committed
    assert not L.is_complete(cfg)


def test_is_complete_of_a_u8_dataset_tracks_its_bound(tmp_path, tiny_corpus, tiny_teacher):
    import stages.label as L

    cfg = _cfg(tiny_corpus, tiny_teacher, tmp_path / "ds", logprob_encoding="u8")
    L.run(cfg)
    assert L.is_complete(cfg)
    assert not L.is_complete(_cfg(tiny_corpus, tiny_teacher, tmp_path / "ds",
                                  logprob_encoding="u8", u8_min_logprob=-9.0))
    assert not L.is_complete(_cfg(tiny_corpus, tiny_teacher, tmp_path / "ds",
                                  mode="sampled", samples=4))


def _cli(capsys, *argv) -> tuple[int, str]:
    """`pipeline ARGV` in this process (cheaper than a subprocess): (exit code, stderr)."""
    from pipeline.cli import main

    capsys.readouterr()
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def test_default_seq_len_fits_the_teacher(tmp_path, tiny_corpus, tiny_teacher, capsys):
    """The tiny teacher's context is 64: the default --seq-len (256) becomes 64 rather than a
    refusal; a --seq-len the user gave that does not fit is still refused."""
    out = tmp_path / "ds"
    code, err = _cli(capsys, "label", "--corpus", tiny_corpus, "--teacher", tiny_teacher,
                     "--out", out, "--limit-docs", 8, "--quiet", "--device", "cpu")
    assert code == 0, err
    assert json.loads((out / "manifest.json").read_text())["seq_len"] == 64
    code, err = _cli(capsys, *label_args(tiny_corpus, tiny_teacher, tmp_path / "x",
                                         "--seq-len", "65"))
    assert code == 1 and "--seq-len 65 exceeds the teacher context 64" in err
    import stages.label as L

    assert L.is_complete(L.LabelConfig(corpus=str(tiny_corpus), teacher=str(tiny_teacher),
                                       out=str(out), limit_docs=8))


@pytest.mark.parametrize("extra, message", [
    (["--top-p", "0.5"], "--top-p only applies to --mode topp (here --mode topk)"),
    (["--mode", "topp", "--samples", "8"], "--samples only applies to --mode sampled"),
    (["--u8-min-logprob", "-8"], "--u8-min-logprob only applies to --logprob-encoding u8"),
    (["--seq-len", "1"], "--seq-len 1 must be >= 2"),
    (["--proposal-temperature", "inf", "--mode", "sampled"],
     "--proposal-temperature inf must be a finite number in [0.01, 100]"),
    (["--device", "meta"], "--device 'meta' must be auto, cpu, cuda or cuda:N"),
    (["--top-k", "x"], "Invalid value for '--top-k'"),
])
def test_options_refused_in_one_line(tmp_path, tiny_corpus, tiny_teacher, capsys, extra,
                                     message):
    code, err = _cli(capsys, *label_args(tiny_corpus, tiny_teacher, tmp_path / "ds", *extra))
    assert code in (1, 2) and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("teacher, message", [
    ("gpt2", "--teacher gpt2: no such folder; pass a model directory"),
    ("org/some-model", "write --teacher hf:org/some-model"),
])
def test_teacher_that_is_no_folder_suggests_hf(tmp_path, tiny_corpus, capsys, teacher, message):
    code, err = _cli(capsys, *label_args(tiny_corpus, teacher, tmp_path / "ds"))
    assert code == 1 and message in err and "config.json" in err, err
