"""The chat example end to end: data/jobs/chat-headlines.toml (BBC articles → "write the
headline" conversations, labeled by the bundled teacher with data/chat/headline.jinja) on a tiny
slice, and `pipeline label` on conversations SIGKILLed mid-run, then rerun: the same dataset."""

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from pipeline.labeling.conversations import HEADLINE_PROMPT
from pipeline.softlabels.reader import SoftLabelDataset
from tests.conftest import REPO, run_cli
from tests.e2e.test_label_crash import rows
from tests.holds import cli_shim, hold_env, wait_for_marker

JOB = REPO / "data/jobs/chat-headlines.toml"


@pytest.mark.slow
def test_chat_headlines_job_on_a_tiny_slice(tmp_path):
    text = JOB.read_text()
    text = re.sub(r"limit_docs = \d+", "limit_docs = 60", text)
    text = re.sub(r"max_steps = \d+", "max_steps = 3", text)
    text = re.sub(r"max_rows = \d+", "max_rows = 8", text)
    text = text.replace('out = "outputs/chat-headlines"', f'out = "{tmp_path / "job"}"')
    text = text.replace('device = "auto"', 'device = "cpu"')
    job = tmp_path / "job.toml"
    job.write_text(text)
    run_cli("run", job, "--quiet")
    out = tmp_path / "job"
    manifest = json.loads((out / "labels/manifest.json").read_text())
    assert manifest["format_version"] == "1.3" and manifest["labels"]["segments"]
    samples = manifest["samples"]
    assert samples["chat"] and samples["pack"] == "packed" and samples["train_on"] == "assistant"
    assert samples["chat_template"]["text"] == (REPO / "data/chat/headline.jinja").read_text()
    assert samples["samples"] >= 55 and 0 < samples["trained_fraction"] < 0.3
    # the assistant's trained tokens are the headline: the user's prompt is never trained on
    ds = SoftLabelDataset(out / "labels")
    shard = ds.split_shards("train")[0]
    batch = ds.decode(ds.read_table(shard))
    from pipeline.models.tokenizer import load_tokenizer

    tok = load_tokenizer(out / "labels/tokenizer.json")
    ids, mask = batch["input_ids"][0], batch["loss_mask"][0]
    trained = tok.tokenizer.decode(ids[1:][mask[:-1]].tolist(), skip_special_tokens=False)
    assert "<|endoftext|>" in trained and HEADLINE_PROMPT.strip() not in trained
    for name in ("gpt-small", "gru-small"):
        run_dir = out / "runs" / name
        assert (run_dir / "complete.json").is_file()
        assert (run_dir / "chat_template.jinja").is_file()
    results = json.loads((out / "report/results.json").read_text())
    assert {r["name"] for r in results["rows"]} >= {"gpt-small", "gru-small"}
    assert all(r["fidelity_positions"] > 0 for r in results["rows"])
    assert run_cli("run", job, "--quiet").returncode == 0  # a rerun finds every stage complete


def _label_cmd(out):
    return ["label", "--corpus", "builtin:bbc-headlines", "--teacher", str(REPO / "data/teacher"),
            "--chat-template", str(REPO / "data/chat/headline.jinja"), "--out", str(out),
            "--limit-docs", "40", "--top-k", "4", "--seq-len", "128", "--shard-rows", "4",
            "--batch-size", "2", "--quiet", "--device", "cpu", "--validation-fraction", "0.2"]


@pytest.mark.slow
def test_sigkill_mid_chat_label_then_rerun_equals_uninterrupted(tmp_path):
    """Variable-length samples packed into rows: planning is deterministic, so a rerun after a
    kill labels the missing shards of the same plan and the dataset equals an unbroken run."""
    ref = tmp_path / "ref"
    run_cli(*_label_cmd(ref))
    out = tmp_path / "crashed"
    marker = tmp_path / "held"
    env = {**os.environ, **hold_env("pipeline.labeling.shards:write_shard", marker, nth=3)}
    proc = subprocess.Popen([sys.executable, "-c", cli_shim(), *_label_cmd(out)], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_marker(proc, marker)
        assert len(list((out / "_progress").rglob("*.json"))) == 2
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (out / "manifest.json").exists()
    run_cli(*_label_cmd(out))
    assert rows(out) == rows(ref)
    assert run_cli("validate", out).returncode == 0
