"""Issue 16 §2: a wide-vocabulary teacher end to end, in memory bounded by a chunk of positions.

The teacher is Qwen2-shaped (`hf:`, random weights, 1 layer, hidden size 32) with Qwen2's real
logits width, 151,936, its embeddings padded far past its tokenizer as real models pad theirs.
No tokenizer can be downloaded here, so the tokenizer is the suite's own `tiny_tokenizer`: a
320-token byte-level BPE trained with `tokenizers` (pipeline.models.tokenizer.train_bpe_tokenizer)
on the synthetic test corpus. The teacher labels the corpus; an `hf` (Llama-shaped) student and a
native GPT student train from those labels; evaluate and audit run against the teacher.
"""

import json

import numpy as np
import pytest
import torch

from pipeline.models.loader import load_model_spec
from pipeline.softlabels.reader import SoftLabelDataset
from stages.audit import AuditConfig
from stages.audit import run as audit
from stages.evaluate import EvaluateConfig
from stages.evaluate import run as evaluate
from stages.label import LabelConfig
from stages.label import run as label
from stages.train import TrainConfig
from stages.train import run as train
from tests.interop import HF_LLAMA, make_hf_model

VOCAB = 151_936  # Qwen2's logits width
TRAIN = "[train]\nbatch_size = 4\nmax_steps = 3\neval_every = 3\neval_batches = 1\n"
NATIVE = '[model]\nfamily = "gpt"\nn_layer = 1\nn_head = 2\nd_model = 16\n'


@pytest.mark.slow
def test_wide_vocabulary_teacher_labels_trains_evaluates_audits(tmp_path, tiny_corpus,
                                                                tiny_tokenizer):
    teacher = make_hf_model(tiny_tokenizer, tmp_path / "qwen2", "qwen2", extra_vocab=VOCAB - 320)
    spec, ds = f"hf:{teacher}", tmp_path / "ds"
    label(LabelConfig(corpus=str(tiny_corpus), out=str(ds), teacher=spec, top_k=8, seq_len=32,
                      shard_rows=16, batch_size=8, limit_docs=12, validation_fraction=0.3,
                      device="cpu", quiet=True))
    m = json.loads((ds / "manifest.json").read_text())
    assert m["labels"]["vocab_size"] == VOCAB and m["tokenizer"]["tokenizer_size"] == 320
    _labels_equal_the_models_own_topk(ds, spec)

    (tmp_path / "llama.toml").write_text(HF_LLAMA + TRAIN)
    (tmp_path / "gpt.toml").write_text(NATIVE + TRAIN)
    runs = tmp_path / "runs"
    train(TrainConfig(labels=str(ds), students=[str(tmp_path / "llama.toml"),
                                                str(tmp_path / "gpt.toml")],
                      out=str(runs), device="cpu", quiet=True))
    for name in ("llama", "gpt"):
        done = json.loads((runs / name / "complete.json").read_text())
        assert done["step"] == 3 and np.isfinite(done["val_loss"]), name

    results = evaluate(EvaluateConfig(labels=str(ds), runs=[str(runs / "llama"),
                                                            str(runs / "gpt")],
                                      teacher=spec, out=str(tmp_path / "report"), max_rows=4,
                                      batch_size=4, bench_warmup=0, bench_repeats=1,
                                      device="cpu", quiet=True))
    rows = {r["name"]: r for r in results["rows"]}
    assert rows["qwen2"]["kl_tail"] == 0.0 and rows["qwen2"]["family"] == "hf"
    for name in ("llama", "gpt"):
        assert rows[name]["kl_tail"] > 0 and np.isfinite(rows[name]["ce"]), name

    report = audit(AuditConfig(labels=str(ds), teacher=spec, rows=2, device="cpu"))
    assert report["positions"] == 64 and 0 < report["coverage"] < 1
    assert report["tail_mass_max_error"] < 1e-4 and report["kl_mean"] > 0


def _labels_equal_the_models_own_topk(ds_path, spec: str) -> None:
    """Two rows: the chunked labeler's top-8 = transformers' own forward's (full logits)."""
    ds = SoftLabelDataset(ds_path)
    batch = ds.decode(ds.read_table(ds.split_shards("train")[0]).slice(0, 2))
    model = load_model_spec(spec, "cpu").model
    with torch.no_grad():
        logp = torch.log_softmax(model.hf(input_ids=batch["input_ids"]).logits.double(), -1)
    want_lp, want_ids = logp.topk(8, dim=-1)
    # the same 8 ids; format 1.2 restores rank order from the stored (fp16) values, so ids whose
    # stored values tie come in id order (docs/FORMAT.md), and this flat random teacher has ties
    assert torch.equal(batch["topk_ids"].sort(-1).values, want_ids.sort(-1).values)
    assert torch.allclose(batch["topk_logprobs"].double(), want_lp, atol=1e-2)  # fp16 stored
