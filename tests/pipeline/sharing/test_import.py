"""`pipeline import --from jsonl`: export → import gives the same rows (ids, log-probs, tail),
a dataset `validate` accepts and a student trains on; a file without a tail mass is recorded as
derived; bad rows are refused in one line naming file, row and column, nothing written."""

import json

import numpy as np
import pytest

from pipeline.io.storage import Store
from pipeline.softlabels.reader import SoftLabelDataset
from tests.conftest import run_cli


def decoded(path, split):
    ds = SoftLabelDataset(path)
    return [ds.decode(ds.read_table(s)) for s in ds.split_shards(split)]


def concat(batches, key):
    return np.concatenate([b[key].numpy() for b in batches])


@pytest.fixture(scope="module")
def exported(dataset, tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    for split in ("train", "validation"):
        run_cli("export", dataset, "--to", "jsonl", d / f"{split}.jsonl", "--split", split)
    return d


def import_cli(src, out, tokenizer, *extra, check=True):
    return run_cli("import", src, out, "--from", "jsonl", "--tokenizer", tokenizer,
                   "--teacher", "tiny-teacher", *extra, check=check)


def test_export_then_import_gives_the_same_rows(dataset, exported, tmp_path):
    out = tmp_path / "imported"
    proc = import_cli(exported / "train.jsonl", out, dataset / "tokenizer.json", "--validation",
                      exported / "validation.jsonl", "--shard-rows", "7", "--corpus", "tiny-docs")
    assert "tail mass as stored" in proc.stdout
    assert "valid: " in run_cli("validate", out).stdout
    m = json.loads((out / "manifest.json").read_text())
    src = json.loads((dataset / "manifest.json").read_text())
    assert m["labels"] == src["labels"] and m["seq_len"] == src["seq_len"]
    assert m["imported"]["tail_mass"] == "stored" and "tail_mass_source" not in m["labels"]
    assert m["teacher"]["spec"] == "tiny-teacher" and m["corpus"]["uri"] == "tiny-docs"
    assert len(m["splits"]["train"]) > 1  # --shard-rows cut it
    for split in ("train", "validation"):
        a, b = decoded(dataset, split), decoded(out, split)
        assert np.array_equal(concat(a, "input_ids"), concat(b, "input_ids"))
        assert np.array_equal(concat(a, "topk_ids"), concat(b, "topk_ids"))
        assert np.allclose(concat(a, "topk_logprobs"), concat(b, "topk_logprobs"), atol=2e-3)
        assert np.allclose(concat(a, "tail_mass"), concat(b, "tail_mass"), atol=1e-6)
    # and a student trains on it (validation loss from the imported validation split)
    (tmp_path / "s.toml").write_text('[model]\nfamily = "gpt"\nn_layer = 1\nn_head = 2\n'
                                     'd_model = 32\n[train]\nbatch_size = 8\nmax_steps = 4\n'
                                     'eval_every = 2\neval_batches = 1\n')
    run_cli("train", "--labels", out, "--student", tmp_path / "s.toml", "--out", tmp_path / "r")
    assert (tmp_path / "r" / "s" / "complete.json").is_file()


def test_without_tail_mass_the_tail_is_derived_and_said_so(dataset, exported, tmp_path):
    rows = [json.loads(line) for line in (exported / "train.jsonl").read_text().splitlines()]
    src = tmp_path / "no-tail.jsonl"
    src.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "tail_mass"}) + "\n"
                           for r in rows))
    out = tmp_path / "imported"
    assert "derived" in import_cli(src, out, dataset / "tokenizer.json").stdout
    m = json.loads((out / "manifest.json").read_text())
    assert m["labels"]["tail_mass_source"] == "derived"
    assert "valid: " in run_cli("validate", out).stdout
    b = decoded(out, "train")
    mass = np.exp(concat(b, "topk_logprobs").astype(np.float64)).sum(-1)
    assert np.allclose(concat(b, "tail_mass"), np.clip(1 - mass, 0, 1), atol=2e-3)
    assert "derived as 1 − Σ stored" in (out / "README.md").read_text()
    assert "derived: 1 − Σ stored" in run_cli("inspect", out).stdout
    run_cli("publish", out, tmp_path / "pub")
    card = (tmp_path / "pub" / "README.md").read_text()
    assert "(derived: 1 − Σ stored)" in card and "derived as 1 − Σ stored" in card


BAD = [
    ("topk_ids", lambda r: r["topk_ids"][3].__setitem__(0, 10_000), "id 10000 at position 3"),
    ("topk_logprobs", lambda r: r["topk_logprobs"][2].__setitem__(0, 0.5),
     "log-probability 0.5 > 0 at position 2"),
    ("topk_logprobs", lambda r: r["topk_logprobs"].__setitem__(5, [-0.1] * 4),
     "probabilities at position 5 sum to"),
    ("topk_ids", lambda r: r["topk_ids"][1].__setitem__(1, r["topk_ids"][1][0]),
     "listed twice at position 1"),
    ("topk_logprobs", lambda r: r["topk_logprobs"][0].pop(), "position 0 has 3 values"),
    ("input_ids", lambda r: [r[c].pop() for c in r if c != "doc_ids"],
     "tokens, the rows before it"),
    ("topk_ids", lambda r: r["topk_ids"].pop(), "must be a list of 16 lists"),
    ("tail_mass", lambda r: r["tail_mass"].__setitem__(4, 1.5), "at position 4 is outside"),
    ("topk_logprobs", lambda r: r["topk_logprobs"][0].__setitem__(0, "x"), "not a number"),
]


@pytest.mark.parametrize("column, spoil, says", BAD, ids=[b[2][:24] for b in BAD])
def test_a_bad_row_is_refused_naming_file_row_and_column(dataset, exported, tmp_path, column,
                                                         spoil, says):
    lines = (exported / "train.jsonl").read_text().splitlines()
    row = json.loads(lines[2])
    spoil(row)
    lines[2] = json.dumps(row)
    src = tmp_path / "bad.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    proc = import_cli(src, out, dataset / "tokenizer.json", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    err = " ".join(proc.stderr.split())
    assert f"bad.jsonl row 3 column {column}" in err and says in err, err
    assert not out.exists()  # checked before anything is written


def test_import_refuses_a_folder_holding_something_else(dataset, exported, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    proc = import_cli(exported / "train.jsonl", out, dataset / "tokenizer.json", check=False)
    assert proc.returncode == 1 and "notes.txt" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    proc = import_cli(exported / "train.jsonl", dataset, dataset / "tokenizer.json", check=False)
    assert proc.returncode == 1 and "already holds a dataset" in proc.stderr


def test_import_from_and_to_s3(dataset, exported, s3):
    Store("s3://bucket/in").put_file(exported / "train.jsonl", "train.jsonl")
    import_cli("s3://bucket/in/train.jsonl", "s3://bucket/ds", dataset / "tokenizer.json")
    assert "valid: " in run_cli("validate", "s3://bucket/ds").stdout
    assert np.array_equal(concat(decoded("s3://bucket/ds", "train"), "topk_ids"),
                          concat(decoded(dataset, "train"), "topk_ids"))
