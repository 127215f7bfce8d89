import hashlib
import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import PipelineError
from pipeline.labeling.corpus import CorpusSpec, CorpusStats, iter_documents, split_of


def docs(spec, stats=None):
    return list(iter_documents(spec, stats))


def test_reads_each_format_with_default_ids(tmp_path):
    pq.write_table(pa.table({"text": ["alpha", "beta"]}), tmp_path / "a.parquet")
    (tmp_path / "b.jsonl").write_text('{"text": "gamma"}\n\n{"text": "delta"}\n')
    (tmp_path / "c.csv").write_text("text,other\nepsilon,1\n\"zeta, quoted\",2\n")
    (tmp_path / "d.txt").write_text("eta whole file")
    (tmp_path / "ignored.md").write_text("not a corpus file")
    got = docs(CorpusSpec(str(tmp_path)))
    assert got == [("a.parquet:0", "alpha"), ("a.parquet:1", "beta"), ("b.jsonl:0", "gamma"),
                   ("b.jsonl:1", "delta"), ("c.csv:0", "epsilon"), ("c.csv:1", "zeta, quoted"),
                   ("d.txt", "eta whole file")]


def test_glob_and_id_and_text_columns(tmp_path):
    for i in range(2):
        (tmp_path / f"p{i}.jsonl").write_text(json.dumps({"body": f"t{i}", "key": i}) + "\n")
    got = docs(CorpusSpec(str(tmp_path / "p*.jsonl"), text_column="body", id_column="key"))
    assert got == [("0", "t0"), ("1", "t1")]


def test_missing_text_column_names_file_and_columns(tmp_path):
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "a.parquet")
    with pytest.raises(PipelineError, match=r"a.parquet: column 'text' not found.*\['body'\]"):
        docs(CorpusSpec(str(tmp_path)))


def test_missing_path_and_no_matching_files(tmp_path):
    with pytest.raises(PipelineError, match="does not exist"):
        docs(CorpusSpec(str(tmp_path / "nope")))
    (tmp_path / "x.md").write_text("hi")
    with pytest.raises(PipelineError, match="holds no"):
        docs(CorpusSpec(str(tmp_path)))


def test_non_utf8_is_replaced_and_counted_empty_skipped(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"caf\xe9 au lait")
    (tmp_path / "b.txt").write_text("   \n")
    (tmp_path / "c.jsonl").write_bytes(b'{"text": ""}\n{"text": "ok"}\n')
    stats = CorpusStats()
    got = docs(CorpusSpec(str(tmp_path)), stats)
    assert got[0] == ("a.txt", "caf\ufffd au lait")
    assert stats.non_utf8_documents == 1
    assert stats.documents_skipped_empty == 2
    assert stats.documents_read == 2


def test_bad_jsonl_line_named(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "ok"}\n{broken\n')
    with pytest.raises(PipelineError, match=r"a.jsonl:2: not valid JSON"):
        docs(CorpusSpec(str(tmp_path)))


def test_builtin_bbc_news():
    stats = CorpusStats()
    got = docs(CorpusSpec("builtin:bbc-news"), stats)
    assert len(got) == 2225 and stats.files == 2225
    assert got[0][0].startswith("bbc-news/business/")
    assert len({d for d, _ in got}) == len(got)


def test_unknown_builtin():
    with pytest.raises(PipelineError, match="unknown builtin corpus"):
        docs(CorpusSpec("builtin:nope"))


def test_split_is_stable_and_close_to_fraction():
    ids = [f"doc-{i}" for i in range(20000)]
    splits = [split_of(d, 0.1) for d in ids]
    assert splits == [split_of(d, 0.1) for d in ids]
    share = splits.count("validation") / len(ids)
    assert 0.09 < share < 0.11
    # A document's split never depends on which other documents are present.
    assert split_of("doc-7", 0.1) == splits[7]
    assert all(split_of(d, 0.0) == "train" for d in ids[:100])


# Every cell is type-checked where it is read, and a bad one is named with its file and line
# (row for Parquet); ids are never made up for a null one or renamed for a repeated one.
BAD_CELLS = [
    ("c.jsonl", '{"text": "ok"}\n{"text": 42}\n', None,
     r"c.jsonl:2: 'text' is a number \(42\), not a string"),
    ("c.jsonl", '{"text": "ok"}\n{"text": ["a"]}\n', None, r"c.jsonl:2: 'text' is a list"),
    ("c.jsonl", '{"text": "ok"}\n\n[1, 2]\n', None, r"c.jsonl:3: a list, not a JSON object"),
    ("c.jsonl", '{"text": "a", "id": 1}\n{"text": "b", "id": null}\n', "id",
     r"c.jsonl:2: id 'id' is null"),
    ("c.jsonl", '{"text": "a", "id": ""}\n', "id", r"c.jsonl:1: id 'id' is empty"),
    ("c.jsonl", '{"text": "a", "id": 1}\n{"text": "b"}\n', "id",
     r"c.jsonl:2: column 'id' not found"),
    ("c.jsonl", '{"text": "a", "id": 1}\n{"text": "b", "id": "1"}\n', "id",
     r"c.jsonl:2: id '1' is used by an earlier document too"),
    ("c.jsonl", '{"text": "a", "id": 1.5}\n', "id", r"c.jsonl:1: id 'id' is a number \(1.5\)"),
    ("c.jsonl", '{"text": "a", "id": "\\ud800"}\n', "id", r"c.jsonl:1: id 'id' holds an unpaired"),
    ("c.csv", "text,id\na,1\nb,2,3\n", "id", r"c.csv:3: the row has more fields than the header"),
    ("c.csv", "text,id\na\n", "id", r"c.csv:2: no 'id' cell"),
]


@pytest.mark.parametrize("name, content, id_column, match", BAD_CELLS)
def test_bad_cells_named_with_file_and_line(tmp_path, name, content, id_column, match):
    (tmp_path / name).write_text(content)
    with pytest.raises(PipelineError, match=match) as info:
        docs(CorpusSpec(str(tmp_path / name), id_column=id_column))
    assert "\n" not in str(info.value)


def test_bad_parquet_cells_named_with_row(tmp_path):
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "a.parquet")
    with pytest.raises(PipelineError, match=r"a.parquet row 0: 'text' is a number \(1\)"):
        docs(CorpusSpec(str(tmp_path / "a.parquet")))
    pq.write_table(pa.table({"text": ["a", "b"], "id": ["x", None]}), tmp_path / "b.parquet")
    with pytest.raises(PipelineError, match=r"b.parquet row 1: id 'id' is null"):
        docs(CorpusSpec(str(tmp_path / "b.parquet"), id_column="id"))


def test_null_text_is_an_empty_document_and_lone_surrogates_are_replaced(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"text": null}\n{"text": "a \\ud800 b"}\n')
    stats = CorpusStats()
    assert docs(CorpusSpec(str(tmp_path / "c.jsonl")), stats) == [("c.jsonl:1", "a \ufffd b")]
    assert stats.documents_skipped_empty == 1 and stats.non_utf8_documents == 1


# FIPS 180-2 test vectors: sha256("abc") and sha256("") start with these 8 bytes.
ABC, EMPTY = 0xBA7816BF8F01CFEA, 0xE3B0C44298FC1C14


def test_split_rule_is_the_documented_hash_literally():
    """README: `sha256(doc_id)[:8] / 2**64 < --validation-fraction`, the first 8 bytes read
    big-endian. Other teams rebuild the split from this sentence, so it is pinned with known
    digests and at the exact boundary (strict <), where a 4-byte, little-endian or <= reading
    would disagree."""
    for doc_id, head in (("abc", ABC), ("", EMPTY)):
        u = head / 2**64
        assert split_of(doc_id, u) == "train"  # u < u is false
        assert split_of(doc_id, math.nextafter(u, 1.0)) == "validation"
        assert split_of(doc_id, math.nextafter(u, 0.0)) == "train"
    assert split_of("abc", 0.7284) == "validation" and split_of("abc", 0.7283) == "train"
    for i in range(500):  # and for ordinary ids, straight from hashlib
        doc_id = f"news/{i:04d}.txt:{i}"
        u = int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big") / 2**64
        assert split_of(doc_id, 0.3) == ("validation" if u < 0.3 else "train")
