"""The bytes every token stands for, for the tokenizer family cross-tokenizer training supports.

Why no byte-offset column in the dataset: for byte-level BPE (GPT-2 style: ByteLevel
pre-tokenizer and decoder, no normalizer) every token string is a spelling of its bytes in the
GPT-2 byte alphabet, so the bytes of a stored row are the concatenation of its tokens' bytes and
each token's byte span is a cumulative sum. That is lossless (tests/pipeline/test_crosstok_align
proves the round trip on the corpus, multi-byte UTF-8 included), costs no storage and works on
every dataset already labeled. Other families (a normalizer, SentencePiece metaspace, WordPiece)
do not round-trip and are refused with one line.

Documents whose invalid UTF-8 the labeler replaced (pipeline/labeling/corpus.py) align on the
*replaced* text: U+FFFD is the three bytes EF BF BD for teacher and student alike, so alignment
is exact on the text the teacher saw; bits per byte count those three bytes, not the original
invalid byte.
"""

import json

import numpy as np
from tokenizers import Tokenizer

from pipeline.errors import PipelineError


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's bytes_to_unicode, inverted: alphabet character → byte."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(keep, chars)}


BYTE_OF = _byte_alphabet()


def _types(node) -> list[str]:
    """Every component type in a pre-tokenizer/decoder description (Sequence included)."""
    if not node:
        return []
    inner = node.get("pretokenizers") or node.get("decoders") or []
    return [node.get("type", ""), *[t for n in inner for t in _types(n)]]


def family_problem(tok: Tokenizer) -> str | None:
    """Why this tokenizer's ids do not decode to their bytes losslessly, or None."""
    desc = json.loads(tok.to_str())
    if (desc.get("model") or {}).get("type") != "BPE":
        return "its model is not BPE"
    if "ByteLevel" not in _types(desc.get("pre_tokenizer")):
        return "it has no ByteLevel pre-tokenizer"
    if "ByteLevel" not in _types(desc.get("decoder")):
        return "it has no ByteLevel decoder"
    if desc.get("normalizer"):
        return "it normalizes text (a normalizer changes the bytes)"
    return None


STUDENT_FIX = ("train one with `pipeline tokenizer train` or use a student with the dataset's "
               "tokenizer")
DATASET_FIX = ("relabel with a byte-level BPE tokenizer (`pipeline tokenizer train`), or drop "
               "the student's `tokenizer` to use the dataset's")


def token_bytes(tok: Tokenizer, where: str, fix: str = STUDENT_FIX) -> list[bytes | None]:
    """bytes of every id (None for special tokens), refusing unsupported families: without
    them a row's bytes, and so its alignment, cannot be recovered from its ids."""
    if problem := family_problem(tok):
        raise PipelineError(f"{where}: aligning two tokenizers needs a byte-level BPE "
                            f"tokenizer and {problem}; {fix}")
    special = {t.content for t in tok.get_added_tokens_decoder().values()}
    out: list[bytes | None] = [None] * tok.get_vocab_size()
    for s, i in tok.get_vocab().items():
        if s not in special and i < len(out):
            out[i] = bytes(BYTE_OF[c] for c in s)
    return out


def check_all_bytes(tok: Tokenizer, where: str) -> None:
    """Refuse a tokenizer missing some of the 256 byte tokens: it would fall back to an
    unknown token on bytes it cannot spell, and the bytes could not be aligned."""
    vocab = tok.get_vocab()
    missing = [b for c, b in BYTE_OF.items() if c not in vocab]
    if missing:
        raise PipelineError(f"{where}: the tokenizer cannot spell {len(missing)} of the 256 "
                            f"bytes (e.g. 0x{missing[0]:02x}), so some corpus bytes would become "
                            "unknown tokens; retrain it with `pipeline tokenizer train` (its "
                            "initial alphabet has every byte)")


def byte_lengths(table: list[bytes | None]) -> np.ndarray:
    """[V] int64 lengths in alignment coordinates: a token's bytes, 1 for a special token (it
    stands for a document boundary both tokenizers have)."""
    return np.asarray([1 if b is None else len(b) for b in table], dtype=np.int64)


def vocab_map(teacher: list[bytes | None], student: list[bytes | None], teacher_eos: int,
              student_eos: int) -> np.ndarray:
    """[V_teacher] student id spelled with the same bytes, or -1 (teacher EOS → student EOS)."""
    by_bytes = {b: i for i, b in enumerate(student) if b is not None}
    out = np.asarray([by_bytes.get(b, -1) if b is not None else -1 for b in teacher],
                     dtype=np.int64)
    out[teacher_eos] = student_eos
    return out
