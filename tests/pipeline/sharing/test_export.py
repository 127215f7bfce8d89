"""`pipeline export --to jsonl`: one JSON line per row, entries in rank order equal to the
reference reader's decode (format 1.2's sorted ids undone); local and S3 (moto)."""

import json

import numpy as np

from pipeline.io.storage import Store
from pipeline.softlabels.reader import SoftLabelDataset
from tests.conftest import run_cli


def reference(dataset, split="validation"):
    ds = SoftLabelDataset(dataset)
    return [ds.decode(ds.read_table(s)) for s in ds.split_shards(split)]


def test_export_jsonl_matches_the_reader(dataset, tmp_path):
    out = tmp_path / "v.jsonl"
    run_cli("export", dataset, "--to", "jsonl", out, "--split", "validation")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    batches = reference(dataset)
    assert len(rows) == sum(b["input_ids"].shape[0] for b in batches)
    first = batches[0]
    assert set(rows[0]) == {"input_ids", "topk_ids", "topk_logprobs", "tail_mass"}
    assert rows[0]["input_ids"] == first["input_ids"][0].tolist()
    assert np.array_equal(np.array(rows[0]["topk_ids"]), first["topk_ids"][0].numpy())
    lp = np.array(rows[0]["topk_logprobs"])
    assert np.allclose(lp, first["topk_logprobs"][0].numpy(), atol=1e-5)
    assert (np.diff(lp, axis=1) <= 1e-6).all()  # rank order: most probable first
    assert np.allclose(rows[0]["tail_mass"], first["tail_mass"][0].numpy(), atol=1e-6)


def test_export_bad_input_is_one_line(dataset, tmp_path):
    for args in (["--to", "parquet2"], ["--to", "jsonl", "--split", "test"]):
        proc = run_cli("export", dataset, *args, tmp_path / "x.jsonl", check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.jsonl").exists()


def test_export_from_and_to_s3(dataset, s3):
    run_cli("publish", dataset, "s3://bucket/pub")
    run_cli("export", "s3://bucket/pub", "--to", "jsonl", "s3://bucket/out/v.jsonl", "--split",
            "validation")
    lines = Store("s3://bucket/out").read_text("v.jsonl").splitlines()
    assert len(lines) == sum(b["input_ids"].shape[0] for b in reference(dataset))
