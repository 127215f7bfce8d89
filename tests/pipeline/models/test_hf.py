"""Hugging Face models (pipeline/models/hf.py): tiny random models built from configs, never
downloaded (HF_HUB_OFFLINE=1). Labels from the HF path must equal a direct
`model(input_ids).logits` top-k; padding must never change a label."""

import json
import shutil

import numpy as np
import pytest
import torch

from pipeline.errors import ConfigError, PipelineError
from pipeline.models import build_model
from pipeline.models.checkpoint import load_weights, save_model_dir
from pipeline.models.hf import HFCausalLM
from pipeline.models.loader import load_model_spec
from pipeline.softlabels.reader import SoftLabelDataset
from pipeline.training.students import parse_student, resolve_for_dataset
from stages.label import LabelConfig, run
from tests.interop import HF_GPT2, make_hf_model

# Padded batches: how a caller would label rows of different lengths with an HF model; the
# test checks that padding never changes a label (HFCausalLM derives positions from the mask).

def pad_batch(rows: list[list[int]], pad_id: int, side: str = "right"
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of different lengths → (ids [B, T], attention_mask [B, T]), padded on `side`."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(0, len(r)) if side == "right" else slice(width - len(r), width)
        ids[i, span] = torch.tensor(r, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


@torch.inference_mode()
def label_padded(model: HFCausalLM, rows: list[list[int]], k: int, pad_id: int,
                 side: str = "right", device="cpu") -> list[tuple[torch.Tensor, ...]]:
    """Top-k labels of rows of different lengths in one padded batch: per row (ids, logprobs,
    tail) at its real positions only. Padding never changes a label (tested against each row
    alone)."""
    from pipeline.device import autocast
    from pipeline.labeling.forward import check_finite, topk_from_logits

    ids, mask = pad_batch(rows, pad_id, side)
    device = torch.device(device)
    with autocast(device):
        logits = model(ids.to(device), mask.to(device))
    out = []
    for i in range(len(rows)):
        real = logits[i][mask[i].bool().to(logits.device)].unsqueeze(0)  # [1, len, V]
        check_finite(real, i, "padded batch")
        out.append(tuple(t[0] for t in topk_from_logits(real, k)))
    return out



@pytest.fixture(scope="module")
def hf_teacher(tmp_path_factory, tiny_tokenizer):
    """GPT-2 shaped, with 5 padded embedding rows past the tokenizer (as real models have)."""
    return make_hf_model(tiny_tokenizer, tmp_path_factory.mktemp("hf") / "gpt2", extra_vocab=5)


@pytest.fixture(scope="module")
def hf_labeled(tmp_path_factory, tiny_corpus, hf_teacher):
    out = tmp_path_factory.mktemp("hf-ds") / "ds"
    run(LabelConfig(corpus=str(tiny_corpus), out=str(out), teacher=f"hf:{hf_teacher}", top_k=8,
                    seq_len=32, shard_rows=32, batch_size=8, limit_docs=30,
                    logprob_encoding="fp32", validation_fraction=0.2, quiet=True))
    return out


def test_labels_equal_direct_logits_topk(hf_labeled, hf_teacher):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_teacher, local_files_only=True).eval()
    ds = SoftLabelDataset(hf_labeled)
    for shard in ds.split_shards("train")[:2]:
        batch = ds.decode(ds.read_table(shard))
        with torch.no_grad():
            logits = model(batch["input_ids"]).logits.double()
        logp = torch.log_softmax(logits, dim=-1)
        want_lp, want_ids = logp.topk(8, dim=-1)
        assert torch.equal(batch["topk_ids"], want_ids)
        assert torch.allclose(batch["topk_logprobs"].double(), want_lp, atol=1e-5)
        tail = 1.0 - want_lp.exp().sum(-1)
        assert torch.allclose(batch["tail_mass"].double(), tail, atol=1e-6)


def test_manifest_records_hf_teacher_and_tokenizer(hf_labeled, hf_teacher, tiny_tokenizer):
    m = json.loads((hf_labeled / "manifest.json").read_text())
    stored = (hf_labeled / "tokenizer.json").read_bytes()
    assert stored == (hf_teacher / "tokenizer.json").read_bytes()
    import hashlib

    assert m["tokenizer"]["sha256"] == hashlib.sha256(stored).hexdigest()
    # labels span the model's logits (tokenizer + 5 padded rows), the tokenizer size is kept
    assert m["labels"]["vocab_size"] == m["tokenizer"]["vocab_size"] == 325
    assert m["tokenizer"]["tokenizer_size"] == 320
    assert m["teacher"]["spec"] == f"hf:{hf_teacher}" and m["teacher"]["family"] == "hf"
    assert m["teacher"]["dtype"] == "float32"  # fp32 on CPU


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_never_changes_a_label(tmp_path, tiny_tokenizer, model_type, side):
    model = load_model_spec(f"hf:{make_hf_model(tiny_tokenizer, tmp_path / 'm', model_type)}")
    rng = np.random.default_rng(0)
    rows = [rng.integers(2, 320, n).tolist() for n in (12, 5, 9, 1)]
    padded = label_padded(model.model, rows, k=6, pad_id=1, side=side)
    for row, (ids, lp, tail) in zip(rows, padded, strict=True):
        (alone_ids, alone_lp, alone_tail), = label_padded(model.model, [row], k=6, pad_id=1)
        assert ids.shape == (len(row), 6)
        assert torch.equal(ids, alone_ids)
        assert torch.allclose(lp, alone_lp, atol=1e-5) and torch.allclose(tail, alone_tail,
                                                                          atol=1e-5)


def test_hf_student_checkpoint_roundtrip(tmp_path, tiny_tokenizer):
    """The run folder is a save_pretrained folder; load_weights restores it (tied weights)."""
    torch.manual_seed(0)
    student = build_model("hf", {"vocab_size": 320, "config": {
        "model_type": "gpt2", "n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 32}})
    save_model_dir(student, tiny_tokenizer, tmp_path / "run")
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model_type"] == "gpt2"
    torch.manual_seed(1)
    other = build_model("hf", {"vocab_size": 320, "config": {
        "model_type": "gpt2", "n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 32}})
    load_weights(other, tmp_path / "run" / "model.safetensors")
    ids = torch.randint(0, 320, (2, 8))
    assert torch.equal(student.eval()(ids), other.eval()(ids))
    loaded = load_model_spec(tmp_path / "run")  # no prefix: a Hugging Face folder is detected
    assert isinstance(loaded.model, HFCausalLM) and loaded.tokenizer.vocab_size == 320
    assert torch.equal(loaded.model(ids), student(ids))


def test_student_file_errors_name_the_key():
    raw = {"model": {"family": "hf", "config": {"model_type": "gpt2", "n_layers": 1}}}
    with pytest.raises(ConfigError, match="unknown \\[model\\] config key 'n_layers'"):
        resolve_for_dataset(parse_student(raw, "s.toml"), 320, 32)
    raw["model"]["config"] = {"model_type": "not-a-model"}
    with pytest.raises(ConfigError, match="is not a transformers model type"):
        resolve_for_dataset(parse_student(raw, "s.toml"), 320, 32)
    raw["model"]["config"] = {"model_type": "gpt2", "n_positions": 16}
    with pytest.raises(ConfigError, match="positions 16 < dataset seq_len 32"):
        resolve_for_dataset(parse_student(raw, "s.toml"), 320, 32)
    import tomllib

    spec = parse_student(tomllib.loads(HF_GPT2), "s.toml")
    assert resolve_for_dataset(spec, 320, 32).model["config"]["n_embd"] == 32


def test_refusals_are_one_line(tmp_path, hf_teacher):
    with pytest.raises(PipelineError, match="no such folder"):
        load_model_spec(f"hf:{tmp_path}/missing/model")
    # custom code in the model folder runs only with trust_remote_code
    evil = tmp_path / "evil"
    shutil.copytree(hf_teacher, evil)
    cfg = json.loads((evil / "config.json").read_text())
    cfg.update(model_type="evil", auto_map={"AutoConfig": "evil.C",
                                            "AutoModelForCausalLM": "evil.M"})
    (evil / "config.json").write_text(json.dumps(cfg))
    marker = tmp_path / "ran"
    (evil / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    with pytest.raises(PipelineError, match="pass --trust-remote-code"):
        load_model_spec(f"hf:{evil}")
    assert not marker.exists()
    (hf_teacher / "model.safetensors").rename(tmp_path / "w")
    try:  # no pickle fallback: safetensors or nothing
        with pytest.raises(PipelineError, match="safetensors"):
            load_model_spec(f"hf:{hf_teacher}")
    finally:
        (tmp_path / "w").rename(hf_teacher / "model.safetensors")


def test_plan_weights_hash_without_loading(hf_labeled, hf_teacher, tiny_teacher):
    """`pipeline run` decides "label complete" from this hash: it must be the manifest's."""
    from pipeline.io.hashing import sha256_file
    from pipeline.models.loader import local_weights_sha256

    m = json.loads((hf_labeled / "manifest.json").read_text())
    assert local_weights_sha256(f"hf:{hf_teacher}") == m["teacher"]["sha256"]
    assert local_weights_sha256(hf_teacher) == m["teacher"]["sha256"]  # detected HF folder
    assert local_weights_sha256(tiny_teacher) == sha256_file(tiny_teacher / "model.safetensors")
    assert local_weights_sha256("hf:org/name") is None
