"""`pipeline audit`: full-vocabulary KL of the distribution the stored labels imply, checked
against a by-hand reference; ~0 when every id is stored; teacher identity enforced."""

import json

import numpy as np
import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.models.checkpoint import load_model_dir
from pipeline.softlabels.reader import SoftLabelDataset
from stages.audit import AuditConfig, implied_logprobs, run
from tests.conftest import make_teacher, run_cli
from tests.pipeline.test_labelmodes import label, sharp_teacher


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_tokenizer):
    return sharp_teacher(tiny_tokenizer, tmp_path_factory.mktemp("audit") / "teacher")


def audit(ds, teacher, rows=6):
    return run(AuditConfig(labels=str(ds), teacher=str(teacher), rows=rows, device="cpu"))


def test_full_vocabulary_topk_has_zero_kl(tmp_path, tiny_corpus, teacher):
    label(tiny_corpus, teacher, tmp_path / "ds", top_k=320, logprob_encoding="fp32")
    r = audit(tmp_path / "ds", teacher)
    assert r["positions"] == 6 * 32 and r["mode"] == "topk"
    assert r["kl_mean"] < 1e-6 and r["kl_max"] < 1e-5
    assert r["coverage"] == pytest.approx(1.0, abs=1e-6)
    assert r["entries_per_position"] == 320


def _reference_kl(probs: np.ndarray, ids: list[int], stored: np.ndarray, tail: float) -> float:
    """One position by hand: stored values renormalised to 1 - tail, tail spread uniformly."""
    vocab = probs.size
    implied = np.full(vocab, max(tail, 1e-12) / (vocab - len(ids)))
    implied[ids] = stored / stored.sum() * (1 - tail)
    return float((probs * (np.log(probs) - np.log(implied))).sum())


@pytest.mark.parametrize("opts", [dict(mode="topp", top_p=0.8, max_k=12),
                                  dict(mode="sampled", samples=6, logprob_encoding="u8")])
def test_kl_matches_a_by_hand_reference(tmp_path, tiny_corpus, teacher, opts):
    label(tiny_corpus, teacher, tmp_path / "ds", **opts)
    r = audit(tmp_path / "ds", teacher, rows=2)
    ds = SoftLabelDataset(tmp_path / "ds")
    b = ds.decode(ds.read_table(ds.split_shards("validation")[0]).slice(0, 2))
    with torch.no_grad():
        logits = load_model_dir(teacher, "cpu").model(b["input_ids"]).double()
    probs = torch.softmax(logits, -1).numpy()
    values = b["sample_weights"] if "sample_weights" in b else b["topk_logprobs"].exp()
    kls, covered = [], []
    for row in range(2):
        for t in range(32):
            keep = b["label_mask"][row, t].numpy()
            ids = b["topk_ids"][row, t].numpy()[keep].tolist()
            stored = values[row, t].double().numpy()[keep]
            kls.append(_reference_kl(probs[row, t], ids, stored, float(b["tail_mass"][row, t])))
            covered.append(probs[row, t, ids].sum())
    assert r["kl_mean"] == pytest.approx(np.mean(kls), rel=1e-6, abs=1e-9)
    assert r["coverage"] == pytest.approx(np.mean(covered), rel=1e-6)
    assert r["kl_mean"] > 1e-3  # these labels really lose something
    assert r["tail_mass_max_error"] < 1e-5  # stored tail agrees with the re-run teacher
    implied = implied_logprobs(b, 320)
    assert torch.allclose(implied.exp().sum(-1), torch.ones(2, 32, dtype=torch.float64))


def test_more_entries_mean_less_kl(tmp_path, tiny_corpus, teacher):
    kl = {}
    for k in (2, 16):
        label(tiny_corpus, teacher, tmp_path / f"k{k}", top_k=k, logprob_encoding="fp32")
        kl[k] = audit(tmp_path / f"k{k}", teacher)["kl_mean"]
    assert kl[16] < kl[2]


def test_cli_json_table_and_wrong_teacher_refused(tmp_path, tiny_corpus, tiny_tokenizer, teacher):
    ds = tmp_path / "ds"
    label(tiny_corpus, teacher, ds, top_k=4)
    report = json.loads(run_cli("audit", "--labels", ds, "--teacher", teacher, "--rows", "2",
                                "--device", "cpu", "--json").stdout)
    assert report["rows"] == 2 and report["bytes_per_position"] > 0
    assert 0 < report["coverage"] < 1
    table = run_cli("audit", "--labels", ds, "--teacher", teacher, "--rows", "2").stdout
    assert "kl_mean" in table and "bytes_per_position" in table
    other = make_teacher(tiny_tokenizer, tmp_path / "other", seed=1)
    proc = run_cli("audit", "--labels", ds, "--teacher", other, check=False)
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "differ from the teacher that labeled" in proc.stderr
    with pytest.raises(PipelineError, match="--rows"):
        run(AuditConfig(labels=str(ds), teacher=str(teacher), rows=0))
