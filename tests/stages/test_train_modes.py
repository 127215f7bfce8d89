"""`pipeline train` on every label mode (format 1.1): the matching loss trains, a mismatched one is
refused with one line, and masked (padded) entries change nothing."""

import json
import tomllib

import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.evaluation.metrics import MetricSums
from pipeline.training.losses import LossSpec, compute_loss, kl_tail_from_gathered
from stages.train import TrainConfig, run
from tests.conftest import run_cli
from tests.pipeline.test_labelmodes import label, sharp_teacher

STUDENT = """
[model]
family = "gpt"
n_layer = 1
n_head = 2
d_model = 16

[train]
batch_size = 4
seed = 0
eval_every = 2
eval_batches = 1
checkpoint_every = 100
{loss}
"""


@pytest.fixture(scope="module")
def datasets(tmp_path_factory, tiny_corpus, tiny_tokenizer):
    root = tmp_path_factory.mktemp("modes")
    teacher = sharp_teacher(tiny_tokenizer, root / "teacher")
    kw = {"topk-u8": dict(logprob_encoding="u8"), "topp": dict(mode="topp", top_p=0.9, max_k=8),
          "sampled": dict(mode="sampled", samples=8, proposal_temperature=1.5)}
    for name, opts in kw.items():
        label(tiny_corpus, teacher, root / name, **opts)
    return root


def student(tmp_path, name, loss=""):
    path = tmp_path / f"{name}.toml"
    path.write_text(STUDENT.format(loss=loss))
    return path


@pytest.mark.parametrize("mode, loss, expect", [
    ("topk-u8", '[loss]\nkind = "kl_renorm"', "kl_renorm"),
    ("topp", "", "kl_tail"),
    ("sampled", "", "sampled"),  # no [loss] kind: the labels pick `sampled`
    ("sampled", '[loss]\nkind = "ce"', "ce"),
])
def test_each_mode_trains_with_its_loss(tmp_path, datasets, mode, loss, expect):
    runs = run(TrainConfig(labels=str(datasets / mode), students=[str(student(tmp_path, "s",
                                                                             loss))],
                           out=str(tmp_path / "runs"), max_steps=3, device="cpu", quiet=True))
    config = tomllib.loads((runs["s"] / "config.toml").read_text())
    assert config["loss"]["kind"] == expect
    records = [json.loads(x) for x in (runs["s"] / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 3
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    if expect != "ce":
        assert "kd" in records[-1] and "val_kd" in records[-1]


@pytest.mark.parametrize("mode, kind", [("sampled", "kl_tail"), ("sampled", "kl_renorm"),
                                        ("topp", "sampled"), ("topk-u8", "sampled")])
def test_mismatched_loss_refused_in_one_line(tmp_path, datasets, mode, kind):
    path = student(tmp_path, "s", f'[loss]\nkind = "{kind}"')
    with pytest.raises(ConfigError, match=f"kind '{kind}' does not fit labels mode"):
        run(TrainConfig(labels=str(datasets / mode), students=[str(path)],
                        out=str(tmp_path / "runs"), max_steps=1, device="cpu", quiet=True))
    if kind == "kl_tail":  # and through the CLI: exit 2, one line, nothing trained
        proc = run_cli("train", "--labels", datasets / mode, "--student", path, "--out",
                       tmp_path / "runs", "--max-steps", "1", "--quiet", check=False)
        assert proc.returncode == 2
        assert len(proc.stderr.strip().splitlines()) == 1
        assert 'set [loss] kind = "sampled"' in proc.stderr
        assert not (tmp_path / "runs" / "s").exists()


def test_padding_changes_neither_loss_nor_fidelity():
    """Masked (padded) entries are exactly equivalent to not storing them."""
    torch.manual_seed(0)
    vocab, k = 30, 6
    logits = torch.randn(2, 3, vocab)
    teacher = torch.log_softmax(torch.randn(2, 3, vocab) * 2, -1)
    counts = torch.tensor([[1, 4, 6], [2, 3, 5]])
    ids = teacher.topk(k, -1).indices
    mask = torch.arange(k) < counts.unsqueeze(-1)
    lp = teacher.gather(-1, ids).masked_fill(~mask, -1e4)
    tail = 1 - lp.exp().masked_fill(~mask, 0).sum(-1)
    batch = {"input_ids": torch.zeros(2, 3, dtype=torch.long),
             "topk_ids": ids.masked_fill(~mask, 0), "topk_logprobs": lp, "tail_mass": tail,
             "label_mask": mask}
    got = compute_loss(logits, batch, LossSpec("kl_tail", alpha=1.0))["kd"]
    s = torch.log_softmax(logits, -1)
    want = torch.stack([kl_tail_from_gathered(s[r, t, ids[r, t, :c]], lp[r, t, :c], tail[r, t])
                        for r in range(2) for t, c in enumerate(counts[r].tolist())]).mean()
    assert torch.allclose(got, want, atol=1e-6)
    sums = MetricSums()
    sums.add(logits, batch)
    assert abs(sums.result()["kl_tail"] - float(want)) < 1e-5
