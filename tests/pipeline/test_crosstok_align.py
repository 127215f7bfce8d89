"""Alignment of two tokenizations of the same bytes (hand-made cases), the byte round trip of
byte-level BPE, and teacher rows re-tokenized into student rows."""

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from pipeline.errors import PipelineError
from pipeline.labeling.corpus import resolve_files
from pipeline.models.tokenbytes import byte_lengths, check_all_bytes, token_bytes, vocab_map
from pipeline.models.tokenizer import train_bpe_tokenizer
from pipeline.training.alignment import StudentRows, align, utf8_trim

TEXT = ["The café’s naïve ﬁsh — 東京 costs €5.", "  two  spaces\n\nand tabs\there",
        "Straddling boundaries: unbelievable, unbelievably, believe."] * 20


def ends(pieces: list[bytes], start: int = 0) -> np.ndarray:
    return start + np.cumsum([len(p) for p in pieces])


def test_align_identical_tokenizations_is_identity():
    t = ends([b"a", b"bc", b" d"])
    assert align(t, t).tolist() == [0, 1, 2]


def test_align_multibyte_utf8():
    # "é" is two bytes; the teacher splits it into two byte tokens, the student keeps it whole
    teacher = ends([b"caf", b"\xc3", b"\xa9", b"!"])
    student = ends([b"ca", b"f\xc3\xa9", b"!"])
    assert align(teacher, student).tolist() == [-1, 2, 3]


def test_align_whitespace_merges():
    # teacher merges "  " with the word, the student splits the spaces off
    teacher = ends([b"two", b"  spaces"])
    student = ends([b"two", b" ", b" ", b"spaces"])
    assert align(teacher, student).tolist() == [0, -1, -1, 1]


def test_align_straddling_tokens_have_no_partner():
    teacher = ends([b"unbel", b"ievable"])
    student = ends([b"un", b"believ", b"able"])
    assert align(teacher, student).tolist() == [-1, -1, 1]


def test_align_partial_first_token():
    # the student row starts 1 byte later (a continuation byte was dropped)
    teacher = ends([b"\xa9", b"te", b" x"])
    student = ends([b"t", b"e", b" x"], start=1)
    assert align(teacher, student).tolist() == [-1, 1, 2]


def test_utf8_trim_partial_characters():
    data = "é東".encode()  # c3 a9 e6 9d b1
    assert utf8_trim(data[1:], True, True) == (1, 4)
    assert utf8_trim(data[:4], True, True) == (0, 2)  # 東 cut after two of its three bytes
    assert utf8_trim(data, True, True) == (0, 5)
    assert utf8_trim(data[1:4], False, False) == (0, 3)  # inner segments are never trimmed


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    return (train_bpe_tokenizer(TEXT, 400, d / "teacher.json"),
            train_bpe_tokenizer(TEXT[:2] * 10, 320, d / "student.json"))


def test_byte_level_bpe_round_trips_the_corpus_bytes(toks):
    """The proof that replaces a byte-offset column: stored ids → bytes gives the text back."""
    teacher, _ = toks
    table = token_bytes(teacher.tokenizer, "teacher")
    root, files = resolve_files("builtin:bbc-news")
    texts = [f.read_bytes().decode("utf-8", errors="replace") for f in files[:30]]
    texts += ["bad \ufffd byte (replaced by the labeler)", "\t\n  emoji 🎉 done"]
    for text, ids in zip(texts, teacher.encode_batch(texts)):
        assert b"".join(table[i] for i in ids) == text.encode("utf-8")


def test_unsupported_family_and_missing_bytes_are_refused():
    wordlevel = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    with pytest.raises(PipelineError, match="byte-level BPE.*not BPE"):
        token_bytes(wordlevel, "s.toml")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel()
    with pytest.raises(PipelineError, match="s.toml: the tokenizer cannot spell 256"):
        check_all_bytes(bpe, "s.toml")


def _rows(toks, length):
    teacher, student = toks
    tt = token_bytes(teacher.tokenizer, "t")
    st = token_bytes(student.tokenizer, "s")
    return tt, st, StudentRows(tt, student.tokenizer, byte_lengths(st), student.eos_id, length)


def test_student_rows_cover_the_same_bytes(toks):
    teacher, student = toks
    tt, st, sr = _rows(toks, 64)
    ids = teacher.encode_batch(TEXT[:3])
    row = np.asarray([*ids[0][1:], teacher.eos_id, *ids[1]][:40])  # starts mid-word, one EOS
    out = sr.rows(row[None])
    n = int(out["ce_mask"].sum()) + 1
    s_ids = out["input_ids"][0, :n]
    t_text = b"".join(b"\n" if tt[i] is None else tt[i] for i in row)
    s_text = b"".join(b"\n" if st[i] is None else st[i] for i in s_ids)
    assert t_text.endswith(s_text) and len(t_text) - len(s_text) <= 3  # only a partial char lost
    pos = out["kd_pos"][0, :n]
    assert (pos[s_ids == student.eos_id] == list(row).index(teacher.eos_id)).all()
    assert (out["kd_pos"][0, n:] == -1).all() and (pos >= 0).mean() > 0.3


def test_identical_tokenizer_gives_identity_rows(toks):
    teacher, _ = toks
    tt = token_bytes(teacher.tokenizer, "t")
    sr = StudentRows(tt, teacher.tokenizer, byte_lengths(tt), teacher.eos_id, 32)
    row = np.asarray(([*teacher.encode_batch(TEXT[:1])[0], teacher.eos_id] * 4)[:32])
    out = sr.rows(row[None])
    assert out["input_ids"][0].tolist() == row.tolist()
    assert out["kd_pos"][0].tolist() == list(range(32))
    assert vocab_map(tt, tt, teacher.eos_id, teacher.eos_id)[row].tolist() == row.tolist()


def test_row_cut_and_partial_utf8_start(toks):
    teacher, _ = toks
    _, _, sr = _rows(toks, 5)
    tt = sr.teacher_bytes
    cont = [i for i, b in enumerate(tt) if b == b"\xa9"]
    t_ids = cont + teacher.encode_batch(["te x y z w v"])[0]
    out = sr.rows(np.asarray(t_ids)[None])
    assert out["ce_mask"][0].tolist() == [True] * 4 + [False]  # cut at 5, last has no target
    assert out["kd_pos"][0, 0] != 0  # the lone continuation byte has no student partner
