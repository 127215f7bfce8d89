import json

import numpy as np

from pipeline.labeling.corpus import CorpusSpec, CorpusStats
from pipeline.labeling.packing import iter_shard_inputs
from pipeline.models.tokenizer import load_tokenizer


def test_packing_rows_shards_and_provenance(tiny_corpus, tiny_tokenizer):
    tok = load_tokenizer(tiny_tokenizer)
    stats = CorpusStats()
    shards = list(iter_shard_inputs(CorpusSpec(str(tiny_corpus)), tok, seq_len=32, shard_rows=10,
                                    validation_fraction=0.2, stats=stats))
    assert {s.split for s in shards} == {"train", "validation"}
    texts = [json.loads(x)["text"] for x in tiny_corpus.read_text().splitlines()]
    ids = [f"docs.jsonl:{i}" for i in range(len(texts))]
    for split in ("train", "validation"):
        parts = [s for s in shards if s.split == split]
        assert [s.index for s in parts] == list(range(len(parts)))
        assert all(s.tokens.shape == (10, 32) for s in parts[:-1])
        stream = np.concatenate([s.tokens.reshape(-1) for s in parts])
        # The packed stream is exactly the documents of this split, EOS-joined, in order.
        from pipeline.labeling.corpus import split_of
        expected = []
        for doc_id, text in zip(ids, texts):
            if split_of(doc_id, 0.2) == split:
                expected += tok.encode_batch([text])[0] + [tok.eos_id]
        assert stream.tolist() == expected[: len(stream)]
        assert len(expected) - len(stream) < 32
        first_row_docs = parts[0].doc_ids[0]
        assert first_row_docs[0] == next(d for d in ids if split_of(d, 0.2) == split)
    assert stats.tokens_dropped > 0
    assert stats.by_split["train"] + stats.by_split["validation"] == stats.documents_read == 120


def test_packing_is_deterministic_and_limit_docs(tiny_corpus, tiny_tokenizer):
    tok = load_tokenizer(tiny_tokenizer)
    spec = CorpusSpec(str(tiny_corpus))
    a = [s.input_sha256 for s in iter_shard_inputs(spec, tok, 32, 8, 0.1)]
    b = [s.input_sha256 for s in iter_shard_inputs(spec, tok, 32, 8, 0.1)]
    assert a == b
    stats = CorpusStats()
    list(iter_shard_inputs(spec, tok, 32, 8, 0.1, limit_docs=30, stats=stats))
    assert stats.documents_read == 30


def test_shard_spill_round_trip_keeps_the_input_hash(tmp_path):
    from pipeline.labeling.packing import ShardInput, ShardSpill

    spill = ShardSpill(tmp_path)
    small = ShardInput("train", 3, np.arange(12, dtype=np.int32).reshape(3, 4),
                       [["a.jsonl:0"], ["a.jsonl:0", "a.jsonl:1"], ["a.jsonl:1"]])
    big = ShardInput("validation", 0, np.array([[70_000, 1]], dtype=np.int32), [["x"]])
    for shard in (small, big):  # uint16 on disk when the ids fit, int32 otherwise
        spill.put(shard)
        back = spill.get(shard.split, shard.index)
        assert back.tokens.dtype == np.int32 and np.array_equal(back.tokens, shard.tokens)
        assert back.doc_ids == shard.doc_ids and back.input_sha256 == shard.input_sha256
    assert np.load(tmp_path / "train-00003.npy").dtype == np.uint16
