"""The embedded default: the demo job on a tiny slice, and the bundled teacher being real."""

import json
import re

import numpy as np
import polars as pl
import pytest
import torch

from pipeline.evaluation.bigram import bigram_cross_entropy, fit_bigram
from pipeline.labeling.corpus import CorpusSpec
from pipeline.labeling.packing import iter_shard_inputs
from pipeline.models.checkpoint import load_model_dir
from tests.conftest import REPO, run_cli

DEMO = REPO / "data/jobs/demo.toml"
TEACHER = REPO / "data/teacher"


def test_bundled_teacher_is_small_and_matches_its_tokenizer():
    teacher = load_model_dir(TEACHER)
    assert teacher.tokenizer.vocab_size == teacher.config["vocab_size"] == 4096
    size = sum(p.stat().st_size for p in TEACHER.iterdir())
    assert size <= 25 * 2**20
    ids = teacher.tokenizer.encode_batch(["The minister said the election was won."])[0]
    assert teacher.tokenizer.tokenizer.decode(ids) == "The minister said the election was won."


@pytest.mark.slow
def test_bundled_teacher_beats_bigram_on_validation_sample():
    """Teacher CE < count-based bigram CE on held-out BBC articles (the teacher's own split)."""
    teacher = load_model_dir(TEACHER)
    shards = list(iter_shard_inputs(CorpusSpec("builtin:bbc-news"), teacher.tokenizer, 128,
                                    10_000, 0.05))
    train = np.concatenate([s.tokens for s in shards if s.split == "train"])
    valid = np.concatenate([s.tokens for s in shards if s.split == "validation"])[:128]
    bigram_ce = bigram_cross_entropy(fit_bigram(train, 4096), valid)
    x = torch.from_numpy(valid.astype(np.int64))
    with torch.inference_mode():
        logits = torch.cat([teacher.model(x[i:i + 32]) for i in range(0, len(x), 32)])
    teacher_ce = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 4096), x[:, 1:].reshape(-1)).item()
    assert teacher_ce < bigram_ce - 0.05, (teacher_ce, bigram_ce)


@pytest.mark.slow
def test_demo_job_on_a_tiny_slice(tmp_path):
    """The real demo job file, shrunk to a few documents and steps: every artifact appears."""
    text = DEMO.read_text()
    text = re.sub(r"limit_docs = \d+", "limit_docs = 60", text)
    text = re.sub(r"max_steps = \d+", "max_steps = 3", text)
    text = text.replace('out = "outputs/demo"', f'out = "{tmp_path / "demo"}"')
    text = text.replace('dir = "data/teacher"', f'dir = "{TEACHER}"')
    job = tmp_path / "demo.toml"
    job.write_text(text)
    proc = run_cli("run", job)
    out = tmp_path / "demo"
    assert str(out / "report") in "\n".join(proc.stdout.strip().splitlines()[-3:])
    manifest = json.loads((out / "labels/manifest.json").read_text())
    assert manifest["labels"]["k"] == 32
    names = {"gpt-small-kd", "gpt-tiny-kd", "gru-tiny-kd", "gpt-tiny-baseline-ce",
             "gpt-tiny-xtok-kd", "gpt-tiny-xtok-ce"}  # the last two: own tokenizer (#21)
    for name in names:
        run_dir = out / "runs" / name
        assert (run_dir / "complete.json").is_file()
        load_model_dir(run_dir)
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        assert all("step" in json.loads(line) for line in lines)
    results = json.loads((out / "report/results.json").read_text())
    rows = pl.read_parquet(out / "report/results.parquet")
    assert names <= set(rows["name"].to_list())
    assert [r["role"] for r in results["rows"]].count("teacher") == 1
    assert all(r["ce"] > 0 and 0 <= r["top1_agreement"] <= 1 for r in results["rows"])
    # mixed tokenizers: every row in bits per byte over the same bytes, students ranked by it
    assert "ranked by bits per byte" in proc.stdout
    assert all(r["bits_per_byte"] > 0 for r in results["rows"])
    students = [r for r in results["rows"] if r["role"] == "student"]
    assert [r["bits_per_byte"] for r in students] == sorted(r["bits_per_byte"] for r in students)
    own = [r for r in students if "xtok" in r["name"]]
    assert len(own) == 2 and all(0.5 < r["aligned_share"] < 1 for r in own)
    same = results["rows"][0]["bytes"]  # the teacher's; a straddled first token may cost a few
    assert all(same * 0.99 <= r["bytes"] <= same for r in own)
    assert (out / "report/report.md").read_text().count("|") > 10
    assert list((out / "report").glob("*.png"))
    again = run_cli("run", job)
    assert again.returncode == 0
