"""Packing documents into rows and shards (pipeline/labeling/packing.py) with a stand-in
tokenizer whose ids are the lengths of the words, so every row, its documents and the dropped
tail are worked out by hand; and the input hash and the spill of planned shards.
(With a real BPE tokenizer: tests/pipeline/test_packing.py.)
"""

import hashlib
import json

import numpy as np
import pytest

from pipeline.labeling.corpus import CorpusSpec, CorpusStats
from pipeline.labeling.packing import ShardInput, ShardSpill, iter_shard_inputs


class WordLengths:
    """A tokenizer: one id per word, the word's length; EOS is 0."""

    eos_id = 0

    def __init__(self):
        self.batches = []

    def encode_batch(self, texts):
        self.batches.append(len(texts))
        return [[len(w) for w in t.split()] for t in texts]


def corpus(tmp_path, texts) -> CorpusSpec:
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n"
                            for i, t in enumerate(texts)))
    return CorpusSpec(str(path), id_column="id")


def pack(tmp_path, texts, seq_len=4, shard_rows=1, fraction=0.0, **kw):
    stats = CorpusStats()
    shards = list(iter_shard_inputs(corpus(tmp_path, texts), WordLengths(), seq_len,
                                    shard_rows, fraction, stats=stats, **kw))
    return shards, stats


def test_documents_are_joined_by_eos_and_cut_into_rows_with_their_provenance(tmp_path):
    """Stream 2 1 0 | 3 0 | 1 2 3 0: rows [2 1 0 3] (d0, d1) and [0 1 2 3] (d1, d2); the last
    EOS is dropped."""
    shards, stats = pack(tmp_path, ["aa b", "ccc", "d ee fff"])
    assert [(s.split, s.index) for s in shards] == [("train", 0), ("train", 1)]
    assert [s.tokens.tolist() for s in shards] == [[[2, 1, 0, 3]], [[0, 1, 2, 3]]]
    assert [s.doc_ids for s in shards] == [[["d0", "d1"]], [["d1", "d2"]]]
    assert shards[0].tokens.dtype == np.int32
    assert stats.tokens_dropped == 1 and stats.documents_read == 3
    assert stats.by_split == {"train": 3}


def test_a_row_can_hold_the_end_of_one_document_and_a_whole_other_one(tmp_path):
    shards, stats = pack(tmp_path, ["aaaa bbb cc d e", "f", "gg hh"], seq_len=3, shard_rows=2)
    # stream 4 3 2 1 1 0 | 1 0 | 2 2 0: rows [4 3 2] [1 1 0] [1 0 2] [2 0 -]
    assert [s.tokens.tolist() for s in shards] == [[[4, 3, 2], [1, 1, 0]], [[1, 0, 2]]]
    assert shards[1].doc_ids == [["d1", "d2"]]
    assert shards[0].doc_ids == [["d0"], ["d0"]] and stats.tokens_dropped == 2


def test_a_row_names_only_the_documents_it_holds(tmp_path):
    """Stream 2 0 | 1 1 1 1 1 0 (cut at once into rows [2 0 1] [1 1 1]) | 1 1 1 1 0 (d1's
    leftover 1 0 and d2: rows [1 0 1] [1 1 1], d2's last 0 dropped)."""
    shards, stats = pack(tmp_path, ["aa", "a b c d e", "a b c d"], seq_len=3, shard_rows=4)
    assert shards[0].tokens.tolist() == [[2, 0, 1], [1, 1, 1], [1, 0, 1], [1, 1, 1]]
    assert shards[0].doc_ids == [["d0", "d1"], ["d1"], ["d1", "d2"], ["d2"]]
    assert stats.tokens_dropped == 1


def test_a_shard_is_yielded_as_soon_as_its_split_fills_it(tmp_path):
    """Documents of one row each, one row a shard: the shards come in the documents' order,
    whichever split each document falls in."""
    from pipeline.labeling.split import split_of

    texts = ["a b"] * 12
    shards, stats = pack(tmp_path, texts, seq_len=3, shard_rows=1, fraction=0.5)
    splits = [split_of(f"d{i}", 0.5) for i in range(12)]
    assert len(set(splits)) == 2
    assert [s.split for s in shards] == splits
    assert [s.doc_ids for s in shards] == [[[f"d{i}"]] for i in range(12)]


def test_every_split_fills_its_own_shards(tmp_path):
    """Nearly all documents go to validation at a fraction of 0.9999999; each split numbers
    its shards from 0 and ends with a partial one."""
    texts = ["aa b"] * 5
    shards, stats = pack(tmp_path, texts, seq_len=3, shard_rows=2, fraction=0.9999999)
    assert stats.by_split == {"validation": 5}
    assert [(s.split, s.index, s.tokens.shape[0]) for s in shards] == [
        ("validation", 0, 2), ("validation", 1, 2), ("validation", 2, 1)]


def test_limit_docs_and_tokenize_batches(tmp_path):
    texts = [f"w{'x' * (i % 5)}" for i in range(600)]
    tok = WordLengths()
    shards = list(iter_shard_inputs(corpus(tmp_path, texts), tok, 8, 10, 0.0, 550))
    assert tok.batches == [256, 256, 38]
    stream = np.concatenate([s.tokens.ravel() for s in shards]).tolist()
    want = [t for i in range(550) for t in (1 + i % 5, 0)]
    assert stream == want[:len(stream)] and len(want) - len(stream) < 8


def test_the_input_hash_covers_tokens_documents_and_the_1_3_columns():
    tokens = np.array([[1, 2], [3, 4]], dtype=np.int32)
    docs = [["a"], ["a", "b"]]
    shard = ShardInput("train", 0, tokens, docs)
    digest = hashlib.sha256(tokens.tobytes()).hexdigest()
    canonical = json.dumps({"docs": docs, "tokens": digest}, separators=(",", ":"))
    assert shard.input_sha256 == hashlib.sha256(canonical.encode()).hexdigest()
    mask = np.array([[True, False], [True, True]])
    with_mask = ShardInput("train", 0, tokens, docs, mask=mask)
    canonical = json.dumps({"docs": docs, "mask": hashlib.sha256(mask.tobytes()).hexdigest(),
                            "tokens": digest}, separators=(",", ":"))
    assert with_mask.input_sha256 == hashlib.sha256(canonical.encode()).hexdigest()
    segments = np.array([[1, 1], [1, 2]], dtype=np.int32)
    both = ShardInput("train", 0, tokens, docs, mask=mask, segments=segments)
    assert len({shard.input_sha256, with_mask.input_sha256, both.input_sha256}) == 3


@pytest.mark.parametrize("top, dtype", [(65535, np.uint16), (65536, np.int32)])
def test_the_spill_stores_tokens_in_two_bytes_when_they_fit(tmp_path, top, dtype):
    shard = ShardInput("validation", 12, np.array([[0, top]], dtype=np.int32), [["x"]])
    ShardSpill(tmp_path).put(shard)
    assert np.load(tmp_path / "validation-00012.npy").dtype == dtype
    back = ShardSpill(tmp_path).get("validation", 12)
    assert (back.split, back.index) == ("validation", 12)
    assert back.tokens.dtype == np.int32 and back.tokens.tolist() == [[0, top]]
    assert back.mask is None and back.segments is None


def test_the_spill_keeps_the_1_3_columns_and_an_empty_shard(tmp_path):
    spill = ShardSpill(tmp_path)
    mask = np.array([[True, False, True]])
    segments = np.array([[1, 1, 2]], dtype=np.int32)
    shard = ShardInput("train", 1, np.array([[5, 6, 7]], dtype=np.int32), [["a", "b"]],
                       mask, segments)
    spill.put(shard)
    back = spill.get("train", 1)
    assert back.mask.tolist() == mask.tolist() and back.segments.tolist() == segments.tolist()
    assert back.input_sha256 == shard.input_sha256 and back.doc_ids == [["a", "b"]]
    empty = ShardInput("train", 2, np.zeros((0, 3), dtype=np.int32), [])
    spill.put(empty)
    assert spill.get("train", 2).tokens.shape == (0, 3)
