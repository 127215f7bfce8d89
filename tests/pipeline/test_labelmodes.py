"""Label modes beyond top-k (format 1.1): top-p sets, sampled labels and their unbiased loss, the
u8 encoding bound, round trips through writer/reader/validate, and loss/label matching."""

import json
import math
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.errors import ConfigError, PipelineError
from pipeline.io.hashing import sha256_file
from pipeline.labeling import modes as M
from pipeline.labeling.forward import label_tokens
from pipeline.models import build_model
from pipeline.models.checkpoint import load_model_dir, save_model_dir
from pipeline.models.tokenizer import load_tokenizer
from pipeline.softlabels import schema as S
from pipeline.softlabels.encodings import (
    decode_logprobs,
    encode_logprobs,
    importance_weights,
    u8_error_bound,
)
from pipeline.softlabels.reader import SoftLabelDataset
from pipeline.softlabels.validate import validate_dataset
from pipeline.training.losses import LossSpec, compute_loss
from stages.label import LabelConfig, run
from tests.conftest import run_cli


def sharp_teacher(tokenizer, out, scale: float = 12.0):
    """A random-init GPT with peaked next-token distributions (so top-p sets vary in size)."""
    torch.manual_seed(1)
    vocab = load_tokenizer(tokenizer).vocab_size
    model = build_model("gpt", {"vocab_size": vocab, "n_layer": 1, "n_head": 2, "d_model": 32,
                                "context": 64})
    with torch.no_grad():
        model.ln_f.weight.mul_(scale)
    return save_model_dir(model, tokenizer, out)


def label(corpus, teacher, out, **kw):
    args = dict(corpus=str(corpus), out=str(out), teacher=str(teacher), top_k=8, seq_len=32,
                shard_rows=16, batch_size=8, limit_docs=16, validation_fraction=0.25,
                quiet=True, device="cpu")
    return run(LabelConfig(**{**args, **kw}))


@pytest.fixture(scope="module")
def sharp(tmp_path_factory, tiny_tokenizer):
    """A teacher: tests using it are marked `teacher` (left out of `make mutation`)."""
    return sharp_teacher(tiny_tokenizer, tmp_path_factory.mktemp("sharp"))


@pytest.fixture(scope="module")
def topk_dataset(tmp_path_factory, tiny_corpus, tiny_teacher):
    """A top-k fp16 dataset in the rank-order layout (format 1.0); tests that damage it work on
    a copy. (Default, format 1.2 datasets: tests/pipeline/softlabels/test_format_12.py.)"""
    out = tmp_path_factory.mktemp("topk") / "ds"
    label(tiny_corpus, tiny_teacher, out, id_encoding="rank")
    return out


def teacher_logits(teacher, input_ids):
    with torch.no_grad():
        return load_model_dir(teacher, "cpu").model(input_ids).float()


# -- top-p -------------------------------------------------------------------------------------

def test_topp_sets_reach_p_are_minimal_and_never_exceed_max_k():
    torch.manual_seed(0)
    logits = torch.randn(4, 50, 200) * torch.linspace(0.2, 6, 50).view(1, 50, 1)
    for p, min_k, max_k in ((0.9, 1, 32), (0.5, 3, 200), (0.99, 1, 8)):
        ids, lp, tail, counts = M.topp_from_logits(logits, p, min_k, max_k)
        probs = torch.softmax(logits.double(), -1)
        sorted_p = probs.sort(-1, descending=True).values
        cum = sorted_p.cumsum(-1)
        assert ((counts >= min_k) & (counts <= max_k)).all()
        reached = cum.gather(-1, (counts - 1).unsqueeze(-1)).squeeze(-1)
        assert ((reached >= p - 1e-9) | (counts == max_k)).all()
        before = cum.gather(-1, (counts - 2).clamp(min=0).unsqueeze(-1)).squeeze(-1)
        assert ((before < p) | (counts == min_k)).all()  # smallest such set
        assert torch.allclose(tail.double(), 1 - reached, atol=1e-6)
        keep = torch.arange(max_k) < counts.unsqueeze(-1)
        assert torch.equal(probs.gather(-1, ids)[keep] > 0, torch.ones(int(keep.sum()),
                                                                      dtype=torch.bool))
        assert (lp[~keep] == M.PAD_LOGPROB).all()
    assert len(set(counts.flatten().tolist())) > 1  # the set size really varies


# -- sampled -----------------------------------------------------------------------------------

def _sampled_weights(logits, n, temperature, uniforms):
    ids, lp, tail, counts, hits, *log_norm = M.sample_from_logits(logits, n, temperature,
                                                                  uniforms)
    spec = S.LabelSpec("sampled", min(n, logits.shape[-1]), logits.shape[-1], "uint16", "fp32",
                       samples=n, proposal_temperature=temperature, seed=0)
    w = importance_weights(hits.numpy(), lp.numpy(), log_norm[0].numpy() if log_norm else None,
                           spec)
    return ids, torch.from_numpy(w), counts, hits


def test_sampled_draws_are_unique_ids_with_counts_summing_to_n():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 40) * 2
    u = M.row_uniforms(5, "train", 2, 0, 3, 7, 16)
    ids, w, counts, hits = _sampled_weights(logits, 16, 1.0, u)
    assert (hits.sum(-1) == 16).all()
    keep = torch.arange(16) < counts.unsqueeze(-1)
    assert ((hits > 0) == keep).all()
    flat_ids = ids.masked_fill(~keep, -1).reshape(-1, 16)
    for r in range(flat_ids.shape[0]):
        real = flat_ids[r][flat_ids[r] >= 0]
        assert real.unique().numel() == real.numel()
    assert torch.allclose(w.sum(-1), torch.ones(3, 7))  # T = 1: w = draws / N


def test_sampled_draws_are_seeded_and_independent_of_batch_size(tiny_teacher):
    model = load_model_dir(tiny_teacher, "cpu").model
    tokens = np.random.default_rng(0).integers(0, 320, size=(6, 16))
    spec = S.LabelSpec("sampled", 8, 320, "uint16", samples=8, proposal_temperature=1.0, seed=3)
    cpu = torch.device("cpu")
    a = label_tokens(model, tokens, 8, 6, cpu, select=M.selector(spec, "train", 1))
    b = label_tokens(model, tokens, 8, 4, cpu, select=M.selector(spec, "train", 1))
    c = label_tokens(model, tokens, 8, 6, cpu, select=M.selector(spec, "train", 2))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])  # another shard draws differently


@pytest.mark.parametrize("temperature", [1.0, 0.6, 2.0])
def test_sampled_loss_is_unbiased_for_the_teacher_cross_entropy(temperature):
    """Mean over many seeds of −Σ_j w_j s_j ≈ −Σ_v p_v s_v (dense), within 4 standard errors."""
    torch.manual_seed(0)
    vocab, positions, seeds, n = 12, 6, 3000, 4
    teacher = torch.randn(positions, vocab) * 1.5
    student = torch.log_softmax(torch.randn(positions, vocab), -1)
    dense = -(torch.softmax(teacher.double(), -1) * student.double()).sum(-1)
    logits = teacher.expand(seeds, positions, vocab)
    u = torch.rand(seeds, positions, n, generator=torch.Generator().manual_seed(1),
                   dtype=torch.float64)
    ids, w, _, _ = _sampled_weights(logits, n, temperature, u)
    # through the training loss itself: compute_loss on a batch of [seeds, positions]
    batch = {"input_ids": torch.zeros(seeds, positions, dtype=torch.long), "topk_ids": ids,
             "sample_weights": w, "label_mask": w > 0}
    parts = compute_loss(student.expand(seeds, positions, vocab).clone(), batch,
                         LossSpec("sampled", alpha=1.0))
    s_at = student.double().expand(seeds, positions, vocab).gather(-1, ids)
    est = -(w.double() * s_at).sum(-1)  # [seeds, positions]
    assert math.isclose(float(parts["kd"]), float(est.mean()), rel_tol=1e-5)
    se = est.std(0) / math.sqrt(seeds)
    assert ((est.mean(0) - dense).abs() <= 4 * se + 1e-3).all(), (est.mean(0), dense, se)
    assert float(se.max()) < 0.1  # the test can fail: the tolerance is tight


def test_sampled_loss_refuses_tempered_weights_and_kl_losses():
    spec = S.LabelSpec("sampled", 8, 320, "uint16", samples=8, proposal_temperature=1.0, seed=0)
    with pytest.raises(ConfigError, match="does not fit labels mode 'sampled'"):
        M.check_loss("kl_tail", 1.0, spec, "s.toml")
    with pytest.raises(ConfigError, match="temperature = 1.0"):
        M.check_loss("sampled", 2.0, spec, "s.toml")
    topk = S.LabelSpec("topk", 8, 320, "uint16")
    with pytest.raises(ConfigError, match="does not fit labels mode 'topk'"):
        M.check_loss("sampled", 1.0, topk, "s.toml")
    M.check_loss("kl_renorm", 2.0, topk, "s.toml")


# -- u8 ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("lo", [-16.0, -8.0, -30.0])
def test_u8_error_stays_within_documented_bound(lo):
    spec = S.LabelSpec("topk", 8, 320, "uint16", "u8", logprob_u8_min=lo)
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(lo, 0, 100_003), rng.uniform(lo, 0, 10_000)])
    code = encode_logprobs(x.astype(np.float32), spec)
    assert code.dtype == np.uint8
    back = decode_logprobs(code, spec)
    err = np.abs(back.astype(np.float64) - x)
    assert err.max() <= u8_error_bound(lo) + 1e-5
    assert err.max() > 0.9 * u8_error_bound(lo)  # the bound is tight, not loose
    assert (np.diff(back[:100_003]) >= 0).all()  # monotone: order survives
    below = decode_logprobs(encode_logprobs(np.array([lo - 5, -1e4], np.float32), spec), spec)
    np.testing.assert_allclose(below, [lo, lo], rtol=1e-6)  # p overstated by at most e^lo


# -- round trips through the labeler, writer, reader and validator ------------------------------

def test_topk_rank_ids_stay_format_1_0(topk_dataset):
    m = json.loads((topk_dataset / "manifest.json").read_text())
    assert m["format_version"] == "1.0"
    assert set(m["labels"]) == {"mode", "k", "vocab_size", "id_type", "logprob_encoding"}
    pf = pq.ParquetFile(next((topk_dataset / "shards/train").glob("*.parquet")))
    meta = {k.decode(): v.decode() for k, v in pf.schema_arrow.metadata.items()}
    assert meta["softlabels.format_version"] == "1.0"
    assert not any(k.endswith(("top_p", "samples", "seed")) for k in meta)
    assert pf.schema_arrow.names == ["input_ids", "doc_ids", "topk_ids", "topk_logprobs",
                                     "tail_mass"]


@pytest.mark.teacher
def test_topp_round_trip_matches_teacher(tmp_path, tiny_corpus, sharp):
    m = label(tiny_corpus, sharp, tmp_path / "ds", mode="topp", top_p=0.8, min_k=2, max_k=12,
              logprob_encoding="fp32", id_encoding="rank")
    assert m["format_version"] == "1.1" and m["labels"]["top_p"] == 0.8
    assert validate_dataset(tmp_path / "ds")[0] == []
    ds = SoftLabelDataset(tmp_path / "ds")
    b = ds.decode(ds.read_table(ds.split_shards("train")[0]))
    ids, lp, tail, counts = M.topp_from_logits(teacher_logits(sharp, b["input_ids"]), 0.8, 2, 12)
    mask = b["label_mask"]
    assert torch.equal(mask.sum(-1), counts)
    assert torch.equal(b["topk_ids"][mask], ids[mask])
    assert torch.allclose(b["topk_logprobs"][mask], lp[mask], atol=1e-5)
    assert torch.allclose(b["tail_mass"], tail, atol=1e-6)
    assert 2 < m["summary"]["mean_entries_per_position"] < 12  # sets really vary


@pytest.mark.teacher
def test_sampled_round_trip_reproducible(tmp_path, tiny_corpus, sharp):
    kw = dict(mode="sampled", samples=8, proposal_temperature=0.7, seed=4, logprob_encoding="u8")
    label(tiny_corpus, sharp, tmp_path / "a", **kw)
    label(tiny_corpus, sharp, tmp_path / "b", batch_size=5, **kw)
    assert validate_dataset(tmp_path / "a")[0] == []
    for part in (tmp_path / "a/shards").rglob("*.parquet"):
        assert sha256_file(part) == sha256_file(tmp_path / "b" / part.relative_to(tmp_path / "a"))
    ds = SoftLabelDataset(tmp_path / "a")
    assert ds.spec.samples == 8 and ds.spec.seed == 4 and ds.spec.logprob_encoding == "u8"
    b = ds.decode(ds.read_table(ds.split_shards("train")[0]))
    w, mask = b["sample_weights"], b["label_mask"]
    assert ((w > 0) == mask).all()
    logp = torch.log_softmax(teacher_logits(sharp, b["input_ids"]).double(), -1)
    stored = logp.gather(-1, b["topk_ids"])
    assert (b["topk_logprobs"].double() - stored)[mask].abs().max() <= u8_error_bound(-16) + 1e-4
    exact_tail = 1 - stored.exp().masked_fill(~mask, 0).sum(-1)
    assert torch.allclose(b["tail_mass"].double(), exact_tail, atol=1e-5)


def _rewrite(path, column, fn):
    """Replace one column's flat values of a shard (keeping offsets), then fix the manifest."""
    table = pq.read_table(path)
    col = table.column(column).combine_chunks()
    values = fn(col.values.to_numpy(zero_copy_only=False).copy())
    new = pa.ListArray.from_arrays(col.offsets, pa.array(values, type=col.type.value_type))
    table = table.set_column(table.schema.get_field_index(column), column, new)
    pq.write_table(table, path)
    root = path.parents[2]
    m = json.loads((root / "manifest.json").read_text())
    for entry in m["splits"]["train"]:
        if root / entry["path"] == path:
            entry.update(sha256=sha256_file(path), bytes=path.stat().st_size)
    (root / "manifest.json").write_text(json.dumps(m))


@pytest.mark.teacher
def test_validate_catches_broken_sampled_draws_and_short_topp_sets(tmp_path, tiny_corpus, sharp):
    label(tiny_corpus, sharp, tmp_path / "s", mode="sampled", samples=8)
    part = tmp_path / "s/shards/train/part-00000.parquet"
    _rewrite(part, S.COL_LABEL_SAMPLE_COUNTS, lambda v: v + 1)  # 1.2: draws in id order
    problems = validate_dataset(tmp_path / "s")[0]
    assert any("part-00000" in p and "do not sum to samples = 8" in p for p in problems)
    label(tiny_corpus, sharp, tmp_path / "p", mode="topp", top_p=0.9, max_k=16)
    part = tmp_path / "p/shards/train/part-00000.parquet"
    _rewrite(part, S.COL_TAIL, lambda v: np.minimum(v + 0.5, 1.0).astype(np.float32))
    problems = validate_dataset(tmp_path / "p")[0]
    assert any("part-00000" in p and "less than top_p 0.9" in p for p in problems)


@pytest.mark.teacher
def test_reader_refuses_counts_beyond_k(tmp_path, tiny_corpus, sharp):
    label(tiny_corpus, sharp, tmp_path / "p", mode="topp", top_p=0.9, max_k=16)
    part = tmp_path / "p/shards/train/part-00000.parquet"
    _rewrite(part, S.COL_COUNTS, lambda v: np.where(np.arange(v.size) == 3, 17, v).astype(v.dtype))
    ds = SoftLabelDataset(tmp_path / "p")
    with pytest.raises(PipelineError, match=r"row 0: label_counts outside \[1, k = 16\]"):
        ds.decode(ds.read_table(ds.split_shards("train")[0]), "shard x")


@pytest.mark.parametrize("bad, message", [
    ({"mode": "topp", "top_p": 1.5, "min_k": 1}, "labels.top_p 1.5"),
    ({"mode": "sampled", "samples": 8, "proposal_temperature": 1.0}, "labels.seed None"),
    ({"logprob_encoding": "u8"}, "labels.logprob_u8_min None"),
    ({"top_p": 0.9}, "labels.top_p does not belong to mode 'topk'"),
])
def test_manifest_mode_fields_are_checked(tmp_path, topk_dataset, bad, message):
    shutil.copytree(topk_dataset, tmp_path / "ds")
    path = tmp_path / "ds/manifest.json"
    m = json.loads(path.read_text())
    m["labels"].update(bad)
    path.write_text(json.dumps(m))
    with pytest.raises(PipelineError, match=message):
        SoftLabelDataset(tmp_path / "ds")


@pytest.mark.parametrize("kw, message", [
    (dict(mode="topq"), "--mode 'topq'"),
    (dict(mode="topp", top_p=0.0), "--top-p 0.0"),
    (dict(mode="topp", min_k=5, max_k=4), "--min-k 5 / --max-k 4"),
    (dict(mode="topp", max_k=999), "--max-k 999 exceeds the vocabulary size 320"),
    (dict(mode="sampled", samples=0), "--samples 0"),
    (dict(mode="sampled", proposal_temperature=0.0), "--proposal-temperature 0.0"),
    (dict(logprob_encoding="u8", u8_min_logprob=1.0), "--u8-min-logprob 1.0"),
])
def test_bad_mode_options_refused(tmp_path, tiny_corpus, tiny_teacher, kw, message):
    with pytest.raises(PipelineError, match=message):
        label(tiny_corpus, tiny_teacher, tmp_path / "ds", **kw)


@pytest.mark.teacher
def test_cli_label_topp_u8_validates_and_inspects(tmp_path, tiny_corpus, sharp):
    out = tmp_path / "ds"
    run_cli("label", "--corpus", tiny_corpus, "--teacher", sharp, "--out", out, "--mode", "topp",
            "--top-p", "0.7", "--max-k", "10", "--logprob-encoding", "u8", "--u8-min-logprob",
            "-12", "--seq-len", "32", "--shard-rows", "16", "--limit-docs", "8", "--quiet",
            "--device", "cpu", "--id-encoding", "rank")
    assert "valid:" in run_cli("validate", out).stdout
    info = json.loads(run_cli("inspect", out, "--json").stdout)
    assert info["format_version"] == "1.1"
    assert info["labels"] == {"mode": "topp", "k": 10, "vocab_size": 320, "id_type": "uint16",
                              "logprob_encoding": "u8", "top_p": 0.7, "min_k": 1,
                              "logprob_u8_min": -12.0}
    assert "top_p = 0.7" in (out / "README.md").read_text()
    proc = run_cli("label", "--corpus", tiny_corpus, "--teacher", sharp, "--out", tmp_path / "x",
                   "--mode", "sampled", "--samples", "0", check=False)
    assert proc.returncode == 1 and "--samples 0" in proc.stderr


def test_topp_tail_is_never_negative_when_the_set_is_the_whole_vocabulary():
    """top_p = 1 with max_k = vocab keeps every id; their float mass can round above 1, and the
    tail must still be a probability in [0, 1]."""
    from pipeline.labeling.modes import topp_from_logits

    g = torch.Generator().manual_seed(0)
    _, lp, tail, counts = topp_from_logits(torch.randn(2000, 50, generator=g) * 5, 1.0, 1, 50)
    assert (tail >= 0).all() and (tail <= 1).all() and (lp <= 0).all()
    # and each set is the smallest that reaches p: without its last entry the mass is short
    p = torch.exp(lp.double()) * (torch.arange(50) < counts.unsqueeze(-1) - 1)
    assert (p.sum(-1) < 1.0).all()


def test_row_seed_is_a_63_bit_hash_of_seed_split_shard_and_row():
    """The per-row seed of sampled labels decides the stored draws: a relabel must derive the
    same one, so the derivation is pinned (first 8 bytes of sha256, big-endian, top 63 bits)."""
    import hashlib

    from pipeline.labeling.modes import row_seed

    digest = hashlib.sha256(b"7/validation/3/12").digest()
    assert row_seed(7, "validation", 3, 12) == int.from_bytes(digest[:8], "big") >> 1
    assert row_seed(7, "validation", 3, 12) < 2 ** 63


def test_a_student_without_a_loss_kind_gets_the_one_its_labels_need(tmp_path):
    """README "Label modes": sampled labels train the `sampled` loss when the student file does
    not choose a kind; a kind it does choose must fit the labels; top-k keeps kl_tail."""
    from pipeline.training.students import load_student

    sampled = S.LabelSpec("sampled", 8, 320, "uint16", samples=8, proposal_temperature=1.0, seed=0)
    topk = S.LabelSpec("topk", 8, 320, "uint16")
    (tmp_path / "plain.toml").write_text("[model]\nfamily = 'gpt'\n")
    (tmp_path / "chosen.toml").write_text("[model]\nfamily = 'gpt'\n[loss]\nkind = 'kl_tail'\n")
    plain, chosen = load_student(tmp_path / "plain.toml"), load_student(tmp_path / "chosen.toml")
    assert M.match_loss(plain, sampled).loss.kind == "sampled"
    assert M.match_loss(plain, topk).loss.kind == "kl_tail"
    assert M.match_loss(chosen, topk).loss.kind == "kl_tail"
    with pytest.raises(ConfigError, match="does not fit labels mode 'sampled'"):
        M.match_loss(chosen, sampled)
