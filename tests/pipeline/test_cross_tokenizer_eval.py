"""Evaluation of a model with its own tokenizer (pipeline/evaluation/cross_tokenizer.py):
against the same-tokenizer metrics where the tokenizers are identical, and against a per-row,
per-position reference written from the definitions where they differ."""

import math

import numpy as np
import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.evaluation.cross_tokenizer import CrossTokenizerSums, check_cross_model
from pipeline.evaluation.metrics import MetricSums
from pipeline.models import build_model
from pipeline.models.tokenbytes import token_bytes
from pipeline.models.tokenizer import load_tokenizer, train_bpe_tokenizer
from tests.pipeline.test_crosstok_align import TEXT

K = 4


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    return (train_bpe_tokenizer(TEXT, 400, d / "teacher.json"),
            train_bpe_tokenizer(TEXT[:2] * 10, 320, d / "student.json"))


def model(vocab: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("gpt", {"vocab_size": vocab, "n_layer": 1, "n_head": 2, "d_model": 16,
                               "context": 512}).eval()


def teacher_batch(teacher, rows: list[list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Rows with stored top-K labels of a random teacher distribution (exact tail mass)."""
    ids = torch.tensor(rows)
    gen = torch.Generator().manual_seed(seed)
    lp = torch.log_softmax(torch.randn(*ids.shape, teacher.vocab_size, generator=gen) * 3, -1)
    top = lp.topk(K, dim=-1)
    return {"input_ids": ids, "topk_ids": top.indices, "topk_logprobs": top.values,
            "tail_mass": (1 - top.values.exp().sum(-1)).clamp(min=0)}


def packed_rows(teacher, n_rows: int, length: int) -> list[list[int]]:
    stream = [i for e in teacher.encode_batch(TEXT[:9]) for i in [*e, teacher.eos_id]]
    return [stream[r * 7 + 1:r * 7 + 1 + length] for r in range(n_rows)]  # start mid-text


def test_identical_tokenizer_gives_the_same_metrics(toks):
    """Re-tokenizing with the dataset's own tokenizer is the identity: every metric equals the
    same-tokenizer evaluation's (the cross path adds nothing and drops nothing)."""
    teacher, _ = toks
    rows = [[*e, teacher.eos_id] for e in teacher.encode_batch(TEXT[:3])]
    n = min(map(len, rows))
    batch = teacher_batch(teacher, [r[:n] for r in rows])
    m = model(teacher.vocab_size, 1)
    plain = MetricSums(byte_len=CrossTokenizerSums(teacher, teacher, None).byte_len)
    plain.add(m(batch["input_ids"]), batch)
    cross = CrossTokenizerSums(teacher, teacher, None)
    cross.add_model_batch(m, batch, torch.device("cpu"))
    want, got = plain.result(), cross.result()
    assert got.pop("aligned_share") == 1.0
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


def test_other_tokenizer_matches_a_per_row_reference(toks):
    """Bits per byte over the teacher's scored bytes, KL / agreement / top-k mass at aligned
    positions with ids mapped by bytes: recomputed row by row from the definitions."""
    teacher, student = toks
    batch = teacher_batch(teacher, packed_rows(teacher, 6, 48), seed=2)  # row 4 starts with a
    # teacher token the student splits: its first targets are context, not scored
    m = model(student.vocab_size, 3)
    sums = CrossTokenizerSums(student, teacher, None)
    sums.add_model_batch(m, batch, torch.device("cpu"))
    got, want = sums.result(), reference(teacher, student, m, batch)
    for key in ("bits_per_byte", "kl_tail", "top1_agreement", "topk_mass", "aligned_share",
                "bytes"):
        assert got[key] == pytest.approx(want[key], rel=1e-4), key
    assert 0.2 < got["aligned_share"] < 1.0  # the tokenizers do differ


def reference(teacher, student, m, batch) -> dict:
    """Per row: decode the teacher row's bytes, encode them with the student tokenizer, score."""
    tt, st = token_bytes(teacher.tokenizer, "t"), token_bytes(student.tokenizer, "s")
    by_bytes = {b: i for i, b in enumerate(st) if b is not None}
    nll = nbytes = kl = agree = mass = aligned = real = 0.0
    for r, row in enumerate(batch["input_ids"].tolist()):
        t_ends = np.cumsum([1 if tt[i] is None else len(tt[i]) for i in row])
        s_ids, s_ends, at = [], [], 0
        for k, part in enumerate(_split(row, teacher.eos_id, tt)):
            text = part.decode("utf-8", errors="ignore") if part else ""
            lead = len(part) - len(part.lstrip(bytes(range(0x80, 0xC0)))) if k == 0 else 0
            enc = student.encode_batch([text])[0] if text else []
            for i in enc:
                at += len(st[i]) + (lead if not s_ids else 0)
                s_ids.append(i)
                s_ends.append(at)
            if k < row.count(teacher.eos_id):
                at = t_ends[[j for j, x in enumerate(row) if x == teacher.eos_id][k]]
                s_ids.append(student.eos_id)
                s_ends.append(at)
        with torch.no_grad():
            lp = torch.log_softmax(m(torch.tensor([s_ids]))[0].double(), -1)
        for j in range(len(s_ids) - 1):
            if s_ends[j] >= t_ends[0]:
                nll -= float(lp[j, s_ids[j + 1]])
                nbytes += s_ends[j + 1] - s_ends[j]
        real += len(s_ids)
        for j, end in enumerate(s_ends):
            if end not in t_ends:
                continue
            t = int(np.searchsorted(t_ends, end))
            aligned += 1
            ids = batch["topk_ids"][r, t].tolist()
            p = batch["topk_logprobs"][r, t].double().exp()
            sid = [student.eos_id if i == teacher.eos_id else by_bytes.get(tt[i]) for i in ids]
            rest = float(batch["tail_mass"][r, t]) + sum(float(p[a]) for a, s in enumerate(sid)
                                                         if s is None)
            q = [math.exp(float(lp[j, s])) for s in sid if s is not None]
            pm = [float(p[a]) for a, s in enumerate(sid) if s is not None]
            q_rest = max(1 - sum(q), 1e-12)
            kl += sum(a * math.log(a / b) for a, b in zip(pm, q) if a > 0) + (
                rest * math.log(rest / q_rest) if rest > 0 else 0.0)
            agree += sid[0] is not None and int(lp[j].argmax()) == sid[0]
            mass += sum(q)
    return {"bits_per_byte": nll / nbytes / math.log(2), "kl_tail": kl / aligned,
            "top1_agreement": agree / aligned, "topk_mass": mass / aligned,
            "aligned_share": aligned / real, "bytes": nbytes}


def _split(row: list[int], eos: int, table) -> list[bytes]:
    """The row's text between EOS tokens, as bytes."""
    parts, cur = [], []
    for i in row:
        if i == eos:
            parts.append(b"".join(cur))
            cur = []
        else:
            cur.append(table[i])
    return [*parts, b"".join(cur)]


def test_a_context_limit_cuts_the_row_and_scores_fewer_bytes(toks):
    teacher, student = toks
    batch = teacher_batch(teacher, packed_rows(teacher, 2, 48))
    m = model(student.vocab_size, 3)
    full, cut = CrossTokenizerSums(student, teacher, None), CrossTokenizerSums(student, teacher,
                                                                              16)
    for sums in (full, cut):
        sums.add_model_batch(m, batch, torch.device("cpu"))
    assert 0 < cut.result()["bytes"] < full.result()["bytes"]
    assert cut.result()["positions"] <= 2 * 15


def test_a_tokenizer_that_cannot_spell_every_byte_is_refused(toks, tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from pipeline.models.loaded import LoadedModel
    from pipeline.models.tokenizer import EOS_TOKEN

    teacher, _ = toks
    bad = Tokenizer(models.BPE({"a": 0, EOS_TOKEN: 1}, []))
    bad.pre_tokenizer, bad.decoder = pre_tokenizers.ByteLevel(), decoders.ByteLevel()
    bad.add_special_tokens([EOS_TOKEN])
    bad.save(str(tmp_path / "tokenizer.json"))
    loaded = LoadedModel(None, {}, load_tokenizer(tmp_path / "tokenizer.json"), "", tmp_path)

    class Dataset:
        root, spec = "ds", type("S", (), {"loss_mask": False, "has_labels": True,
                                         "mode": "topk"})()
    with pytest.raises(PipelineError, match=rf"--run {tmp_path} \(tokenizer .*tokenizer.json\):"
                                            r" the tokenizer cannot spell 255 of the 256 bytes"):
        check_cross_model(loaded, Dataset, teacher.tokenizer, "--run")
