"""`pipeline export --to axolotl-kd`: the columns axolotl 0.19.0's KD trainer reads, checked
against the schema everywhere and, where axolotl is installed (README: Sharing a dataset), with
axolotl's own collator and top-k KL loss: a student whose logits are the reference reader's
labels has zero loss (so ids, log-probs and positions line up), and a random student's loss is
the KL computed here from the reader's decode."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.sharing.axolotl import AXOLOTL_VERSION, PAD_LOGPROB, kd_columns
from pipeline.softlabels.reader import SoftLabelDataset
from tests.conftest import run_cli
from tests.interop import OFFLINE

COLUMNS = ["input_ids", "attention_mask", "labels", "position_ids", "target_token_ids",
           "target_logprobs", "target_mask"]


@pytest.fixture(scope="module")
def exported(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("axolotl") / "kd.parquet"
    run_cli("export", dataset, "--to", "axolotl-kd", out, "--split", "validation")
    return out


def reference(dataset):
    ds = SoftLabelDataset(dataset)
    batches = [ds.decode(ds.read_table(s)) for s in ds.split_shards("validation")]
    return {k: torch.cat([b[k] for b in batches]) for k in ("input_ids", "topk_ids",
                                                            "topk_logprobs")}


def test_the_schema_axolotl_reads(dataset, exported):
    table = pq.read_table(exported)
    meta = table.schema.metadata
    assert table.column_names == COLUMNS
    assert meta[b"softlabels.axolotl_version"] == AXOLOTL_VERSION.encode()
    ref = reference(dataset)
    R, L, k = ref["topk_ids"].shape
    cols = {c: np.array(table.column(c).to_pylist()) for c in COLUMNS}
    assert cols["target_token_ids"].shape == (R, L, k)
    assert np.array_equal(cols["target_token_ids"], ref["topk_ids"].numpy())
    renorm = torch.log_softmax(ref["topk_logprobs"].double(), -1).numpy()
    assert np.allclose(cols["target_logprobs"], renorm, atol=1e-5)
    assert (cols["target_mask"] == 1).all() and (cols["attention_mask"] == 1).all()
    assert np.array_equal(cols["labels"][:, 1:], ref["input_ids"][:, 1:].numpy())
    assert (cols["labels"][:, 0] == -100).all()
    assert np.array_equal(cols["position_ids"], np.broadcast_to(np.arange(L), (R, L)))


def test_masked_and_packed_rows():
    """1.3 rows: untrained positions have mask 0 and padded entries, labels follow the loss
    mask shifted by one, never across samples, and position ids restart at each sample."""
    mask = torch.tensor([[True, True, False, True, False, False]])
    seg = torch.tensor([[1, 1, 1, 2, 2, 0]])
    decoded = {"input_ids": torch.tensor([[5, 6, 7, 8, 9, 0]]),
               "topk_ids": torch.tensor([[[1, 2]] * 6]),
               "topk_logprobs": torch.log(torch.tensor([[[0.5, 0.25]] * 6])),
               "label_mask": torch.ones(1, 6, 2, dtype=torch.bool),
               "loss_mask": mask, "segment_ids": seg}
    cols = kd_columns(decoded)
    assert cols["labels"].tolist() == [[-100, 6, 7, -100, 9, -100]]
    assert cols["target_mask"][0, :, 0].tolist() == [1, 1, 0, 1, 0, 0]
    assert cols["target_logprobs"][0, 2].tolist() == [PAD_LOGPROB] * 2
    assert np.allclose(cols["target_logprobs"][0, 0], np.log([2 / 3, 1 / 3]))
    assert cols["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0]]
    assert cols["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0]]


def test_axolotls_own_collator_and_loss_read_the_export(dataset, exported, monkeypatch):
    try:  # `make install` puts the pinned peers in (pyproject.toml's `peers` extra, --no-deps)
        from axolotl.integrations.kd import collator
    except ImportError as exc:
        pytest.fail(f"axolotl is not installed ({exc}): run `make install`, which installs the "
                    "pinned peers of pyproject.toml's `peers` extra with --no-deps")
    from axolotl.integrations.kd.topk_logprob.forward_kl import loss
    from datasets import load_dataset
    from transformers import PreTrainedTokenizerFast

    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    rows = load_dataset("parquet", data_files=str(exported), split="train")
    # axolotl's loader keeps a dataset with these three as it is (wrappers.py, 0.19.0)
    assert {"input_ids", "attention_mask", "labels"} <= set(rows.features)
    tok = PreTrainedTokenizerFast(tokenizer_file=str(dataset / "tokenizer.json"),
                                  pad_token="<|pad|>")
    batch = collator.DataCollatorForKD(tokenizer=tok)([rows[i] for i in range(4)])
    ref = reference(dataset)
    ids, lp = ref["topk_ids"][:4], ref["topk_logprobs"][:4]
    assert torch.equal(batch["target_token_ids"], ids)
    assert torch.equal(batch["input_ids"], ref["input_ids"][:4])
    vocab = SoftLabelDataset(dataset).vocab_size
    args = (batch["target_token_ids"], batch["target_logprobs"], batch["target_mask"])

    teacher_like = torch.full((4, ids.shape[1], vocab), -60.0).scatter(-1, ids, lp.float())
    assert loss(teacher_like, *args).item() == pytest.approx(0.0, abs=1e-5)

    student = torch.randn(4, ids.shape[1], vocab, generator=torch.Generator().manual_seed(0))
    p_log = torch.log_softmax(lp.double(), -1)
    q_log = torch.log_softmax(student.double(), -1).gather(-1, ids)
    want = (p_log.exp() * (p_log - q_log)).sum() / p_log.numel()
    assert loss(student, *args).item() == pytest.approx(want.item(), rel=1e-4)
