"""The checks every reader runs on a manifest and shard metadata it did not make
(pipeline/softlabels/checks.py; the checks of tables and decoded values: test_checks_tables.py).

Each test hands the check a manifest, a shard entry or shard metadata built here by hand — one
field off by one from the edge of its documented range (docs/FORMAT.md) — and expects either
acceptance or one PipelineError whose words name the field and where. No teacher and no files:
these run in milliseconds, so `make mutation` runs them first.
"""

import math

import pytest

from pipeline.errors import PipelineError
from pipeline.softlabels import checks
from pipeline.softlabels import schema as S

SHA = "ab" * 32


def manifest(labels: dict | None = None, vocab=10, seq_len=4, sha=SHA, **top) -> dict:
    base = {"mode": "topk", "k": 2, "vocab_size": vocab, "id_type": "uint16",
            "logprob_encoding": "fp16"}
    return {"labels": {**base, **(labels or {})}, "seq_len": seq_len,
            "tokenizer": {"vocab_size": vocab, "sha256": sha}, **top}


def refused(m: dict, words: str) -> None:
    with pytest.raises(PipelineError) as info:
        checks.manifest_fields(m, "M")
    message = str(info.value)
    assert message.startswith("M: ") and words in message, message
    assert message.endswith("the dataset is corrupt - re-download or relabel it"), message


TOPP = {"mode": "topp", "k": 4, "top_p": 0.9, "min_k": 1}
SAMPLED = {"mode": "sampled", "k": 4, "samples": 4, "proposal_temperature": 1.0, "seed": 0}


# -- manifest_fields ------------------------------------------------------------------------------

def test_a_well_formed_manifest_gives_its_spec_and_seq_len():
    spec, seq_len = checks.manifest_fields(manifest(seq_len=7), "M")
    assert spec == S.LabelSpec("topk", 2, 10, "uint16", "fp16") and seq_len == 7


@pytest.mark.parametrize("drop", ["labels", "tokenizer", "seq_len"])
def test_a_missing_top_level_field_is_named(drop):
    m = manifest()
    del m[drop]
    refused(m, f"manifest field '{drop}' is missing or malformed")


@pytest.mark.parametrize("where, key", [("labels", "mode"), ("tokenizer", "vocab_size"),
                                        ("tokenizer", "sha256")])
def test_a_missing_nested_field_is_named(where, key):
    m = manifest()
    del m[where][key]
    refused(m, f"manifest field '{key}' is missing or malformed")


def test_labels_that_are_not_an_object_are_refused():
    m = manifest()
    m["labels"] = ["topk"]
    refused(m, "is missing or malformed")


@pytest.mark.parametrize("labels, words", [
    ({"mode": "topq"}, "labels.mode 'topq' is not one of ['topk', 'topp', 'sampled', 'none']"),
    ({"id_type": "uint8"}, "labels.id_type 'uint8' is not one of ['int32', 'uint16']"),
    ({"logprob_encoding": "bf16"},
     "labels.logprob_encoding 'bf16' is not one of ['fp16', 'fp32', 'u8']"),
    ({"k": 0}, "labels.k 0 is not a valid k for mode 'topk'"),
    ({"k": 2.0}, "labels.k 2.0 is not a valid k"),
    ({"k": True}, "labels.k True is not a valid k"),
    ({"mode": "none", "k": -1}, "labels.k -1 is not a valid k for mode 'none'"),
    ({"vocab_size": 11}, "labels.vocab_size 11 != tokenizer.vocab_size 10"),
])
def test_each_label_field_is_checked(labels, words):
    refused(manifest(labels), words)


def test_the_smallest_k_of_each_kind_is_accepted():
    """k >= 1 when labels are stored, k = 0 only for a tokens-only dataset."""
    assert checks.manifest_fields(manifest({"k": 1}), "M")[0].k == 1
    assert checks.manifest_fields(manifest({"mode": "none", "k": 0}), "M")[0].k == 0


@pytest.mark.parametrize("vocab, words", [
    (0, "labels.vocab_size 0 != tokenizer.vocab_size 0"),
    (-3, "labels.vocab_size -3"),
    (10.0, "labels.vocab_size 10.0"),
])
def test_the_vocabulary_size_must_be_a_positive_integer(vocab, words):
    refused(manifest({"k": 1}, vocab=vocab), words)


def test_a_vocabulary_of_one_token_is_accepted():
    assert checks.manifest_fields(manifest({"k": 1}, vocab=1), "M")[0].vocab_size == 1


@pytest.mark.parametrize("seq_len", [0, -1, 4.0, "4", None])
def test_seq_len_must_be_a_positive_integer(seq_len):
    refused(manifest(seq_len=seq_len), f"seq_len {seq_len!r} must be a positive integer")


def test_seq_len_one_is_accepted():
    assert checks.manifest_fields(manifest(seq_len=1), "M")[1] == 1


def test_the_tokenizer_hash_must_be_a_string():
    refused(manifest(sha=123), "tokenizer.sha256 123 must be a string")


def test_mode_fields_are_checked_last():
    refused(manifest({"top_p": 0.9}), "labels.top_p does not belong to mode 'topk' / fp16")


# -- mode_fields ----------------------------------------------------------------------------------

def spec(**fields) -> S.LabelSpec:
    base = {"mode": "topk", "k": 2, "vocab_size": 10, "id_type": "uint16",
            "logprob_encoding": "fp16"}
    return S.LabelSpec(**{**base, **fields})


def ok(**fields) -> None:
    assert checks.mode_fields(spec(**fields)) is None


def bad(words: str, **fields) -> None:
    problem = checks.mode_fields(spec(**fields))
    assert problem is not None and words in problem, problem


@pytest.mark.parametrize("lo", [-16.0, -1e-9, -1])
def test_u8_needs_a_negative_lowest_log_probability(lo):
    ok(logprob_encoding="u8", logprob_u8_min=lo)


@pytest.mark.parametrize("lo", [0.0, 0, 0.5, None, math.nan, -math.inf, True, "-16"])
def test_u8_refuses_any_other_lowest_log_probability(lo):
    bad(f"labels.logprob_u8_min {lo!r} must be a number < 0", logprob_encoding="u8",
        logprob_u8_min=lo)


def test_id_encoding_is_sorted_delta_on_labeled_datasets_only():
    ok(id_encoding="sorted_delta")
    bad("labels.id_encoding 'rank' must be 'sorted_delta'", id_encoding="rank")
    bad("labels.id_encoding 'sorted_delta' must be", mode="none", k=0,
        id_encoding="sorted_delta")


@pytest.mark.parametrize("k, vocab", [(10, 10), (65535, 70000)])
def test_variable_k_up_to_the_vocabulary_and_65535_is_accepted(k, vocab):
    ok(**{**TOPP, "k": k, "min_k": 1}, vocab_size=vocab, id_type="int32")


@pytest.mark.parametrize("k, vocab", [(11, 10), (65536, 70000)])
def test_variable_k_beyond_the_vocabulary_or_65535_is_refused(k, vocab):
    bad(f"labels.k {k} exceeds the vocabulary (or 65535) for mode 'topp'",
        **{**TOPP, "k": k}, vocab_size=vocab, id_type="int32")


def test_a_fixed_k_is_not_bounded_by_65535():
    ok(k=70000, vocab_size=70000, id_type="int32")


@pytest.mark.parametrize("top_p", [1, 1.0, 0.5, 1e-9])
def test_top_p_in_the_half_open_unit_interval_is_accepted(top_p):
    ok(**{**TOPP, "top_p": top_p})


@pytest.mark.parametrize("top_p", [0, 0.0, 1.0000001, -0.5, None, math.nan, True])
def test_top_p_outside_the_half_open_unit_interval_is_refused(top_p):
    bad(f"labels.top_p {top_p!r} must be in (0, 1]", **{**TOPP, "top_p": top_p})


@pytest.mark.parametrize("min_k", [1, 4])
def test_min_k_from_one_to_k_is_accepted(min_k):
    ok(**{**TOPP, "min_k": min_k})


@pytest.mark.parametrize("min_k", [0, 5, 2.0, None, True])
def test_min_k_outside_one_to_k_is_refused(min_k):
    bad(f"labels.min_k {min_k!r} must be an integer in [1, k = 4]", **{**TOPP, "min_k": min_k})


def test_topp_fields_combine_with_u8_and_sorted_ids():
    ok(**TOPP, logprob_encoding="u8", logprob_u8_min=-16.0, id_encoding="sorted_delta")


@pytest.mark.parametrize("samples, k, vocab", [(1, 1, 10), (4, 4, 10), (20, 10, 10),
                                               (65535, 65535, 70000)])
def test_samples_with_k_the_smaller_of_samples_and_vocabulary_are_accepted(samples, k, vocab):
    ok(**{**SAMPLED, "samples": samples, "k": k}, vocab_size=vocab, id_type="int32")


@pytest.mark.parametrize("samples, k", [(0, 1), (65536, 65535), (4.0, 4), (None, 4), (4, 3),
                                        (True, 1)])
def test_samples_out_of_range_or_not_matching_k_are_refused(samples, k):
    bad(f"labels.samples {samples!r} must be an integer in [1, 65535] with k = "
        f"min(samples, vocab_size) (k is {k})",
        **{**SAMPLED, "samples": samples, "k": k}, vocab_size=70000, id_type="int32")


@pytest.mark.parametrize("t", [1.0, 0.5, 1e-9, 3])
def test_a_positive_proposal_temperature_is_accepted(t):
    ok(**{**SAMPLED, "proposal_temperature": t})


@pytest.mark.parametrize("t", [0.0, -1.0, math.inf, None, "1"])
def test_other_proposal_temperatures_are_refused(t):
    bad(f"labels.proposal_temperature {t!r} must be > 0", **{**SAMPLED, "proposal_temperature": t})


@pytest.mark.parametrize("seed, good", [(0, True), (2**40, True), (-1, False), (1.0, False),
                                        (None, False)])
def test_the_seed_is_an_integer_from_zero(seed, good):
    if good:
        ok(**{**SAMPLED, "seed": seed})
    else:
        bad(f"labels.seed {seed!r} must be an integer >= 0", **{**SAMPLED, "seed": seed})


@pytest.mark.parametrize("name", ["loss_mask", "segments"])
def test_format_13_fields_are_true_or_absent(name):
    ok(**{name: True})
    ok(mode="none", k=0, **{name: True})
    for value in (False, 1, "true"):
        bad(f"labels.{name} {value!r} must be true (format 1.3) or absent", **{name: value})


@pytest.mark.parametrize("fields, extra", [
    ({"top_p": 0.9}, "top_p"),
    ({**SAMPLED, "min_k": 1}, "min_k"),
    ({**TOPP, "seed": 3}, "seed"),
    ({"logprob_u8_min": -16.0}, "logprob_u8_min"),
])
def test_a_field_of_another_mode_or_encoding_is_refused(fields, extra):
    s = spec(**fields)
    assert checks.mode_fields(s) == (f"labels.{extra} does not belong to mode {s.mode!r} / "
                                     f"{s.logprob_encoding}")


# -- shard_entry ----------------------------------------------------------------------------------

def entry(**fields) -> dict:
    return {"path": "shards/train/part-00000.parquet", "sha256": SHA, "rows": 3, "bytes": 100,
            **fields}


def test_an_entry_with_zero_rows_and_bytes_is_accepted():
    checks.shard_entry(entry(rows=0, bytes=0), "train", "M")


@pytest.mark.parametrize("field, value", [
    ("path", 5), ("path", None), ("sha256", 5), ("sha256", b"ab"), ("rows", -1), ("rows", 3.0),
    ("rows", True), ("rows", "3"), ("bytes", -1), ("bytes", 100.0), ("bytes", None),
])
def test_each_malformed_entry_field_is_refused(field, value):
    with pytest.raises(PipelineError, match=r"^M: shard entry .* of split 'train' has a "
                                            "malformed path/rows/bytes/sha256"):
        checks.shard_entry(entry(**{field: value}), "train", "M")


# -- shard_metadata -------------------------------------------------------------------------------

def shard_meta(s: S.LabelSpec, **changes) -> dict:
    meta = {"format_version": s.format_version, "mode": s.mode, "k": str(s.k),
            "vocab_size": str(s.vocab_size), "id_type": s.id_type,
            "logprob_encoding": s.logprob_encoding, "seq_len": "4", "tokenizer_sha256": SHA,
            "split": "train", **{k: str(v) for k, v in s.extras().items()}, **changes}
    return {f"softlabels.{k}".encode(): v.encode() for k, v in meta.items() if v is not None}


def check_meta(metadata, s: S.LabelSpec) -> None:
    checks.shard_metadata(metadata, "R", "train", s, 4, SHA)


def test_metadata_that_agrees_with_the_manifest_is_accepted():
    s = spec(**TOPP, logprob_encoding="u8", logprob_u8_min=-16.0)
    check_meta(shard_meta(s), s)
    check_meta({**shard_meta(s), b"other.key": b"anything", b"\xff\xfe": b"\xff"}, s)


@pytest.mark.parametrize("version", ["1.0", "1.9", "1"])
def test_any_minor_version_of_the_major_version_is_accepted(version):
    check_meta(shard_meta(spec(), format_version=version), spec())


@pytest.mark.parametrize("version, shown", [("2.0", "'2.0'"), (None, "''"), ("x", "'x'"),
                                            ("11.0", "'11.0'")])
def test_another_or_a_missing_major_version_is_refused(version, shown):
    with pytest.raises(PipelineError, match=rf"^shard R: format_version {shown} in its metadata "
                                            r"is not supported \(this reader reads major "
                                            r"version 1\)"):
        check_meta(shard_meta(spec(), format_version=version), spec())


def test_no_metadata_at_all_is_refused():
    with pytest.raises(PipelineError, match="format_version '' in its metadata"):
        check_meta(None, spec())


def test_undecodable_metadata_bytes_are_compared_not_crashed_on():
    """A value that is not UTF-8 is decoded with replacement characters and then differs."""
    meta = {**shard_meta(spec()), b"softlabels.mode": b"top\xffk"}
    with pytest.raises(PipelineError, match="its metadata says mode = 'top\ufffdk' but "
                                            "manifest.json says 'topk'"):
        check_meta(meta, spec())
    meta = {**shard_meta(spec()), b"softlabels.format_version": b"1.\xff"}
    check_meta(meta, spec())  # the major version is what counts


@pytest.mark.parametrize("key, value, manifest_value", [
    ("mode", "topp", "'topk'"), ("k", "3", "'2'"), ("vocab_size", "11", "'10'"),
    ("id_type", "int32", "'uint16'"), ("logprob_encoding", "fp32", "'fp16'"),
    ("seq_len", "5", "'4'"), ("tokenizer_sha256", "cd" * 32, f"'{SHA}'"),
    ("split", "validation", "'train'"), ("split", None, "'train'"),
])
def test_each_metadata_field_must_agree_with_the_manifest(key, value, manifest_value):
    with pytest.raises(PipelineError, match=rf"^shard R: its metadata says {key} = "
                                            rf"{value!r} but manifest.json says "
                                            rf"{manifest_value}; the shard does not belong"):
        check_meta(shard_meta(spec(), **{key: value}), spec())


def test_mode_fields_in_the_metadata_must_agree_too():
    s = spec(**TOPP)
    with pytest.raises(PipelineError, match="its metadata says top_p = '0.8' but manifest.json "
                                            "says '0.9'"):
        check_meta(shard_meta(s, top_p="0.8"), s)
