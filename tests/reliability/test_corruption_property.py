"""Random byte corruption of a shard or of manifest.json: the reader refuses or is unaffected.

The property: opening the dataset and reading + decoding every shard (with checksum
verification) either raises PipelineError with a one-line message that names the manifest or a
shard, or returns exactly the original data (tensors, label spec, seq_len, vocabulary and
tokenizer hash: everything a trainer uses). Never another exception type, never different data.
Corruptions: flip bits of one byte, truncate, or insert bytes, at random offsets.
"""

import json
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import PipelineError
from pipeline.softlabels.reader import SoftLabelDataset


def read_all(root) -> dict:
    """Everything a consumer gets from a dataset: spec, shapes, and every decoded shard."""
    ds = SoftLabelDataset(root)
    splits = {}
    for split in ds.shards:
        splits[split] = [(s.rel, s.rows, ds.decode(ds.read_table(s, verify=True), f"shard {s.rel}"))
                         for s in ds.split_shards(split)]
    return {"spec": ds.spec, "seq_len": ds.seq_len, "vocab": ds.vocab_size,
            "tokenizer": ds.tokenizer_sha256, "splits": splits}


def same(a: dict, b: dict) -> bool:
    if {k: v for k, v in a.items() if k != "splits"} != {k: v for k, v in b.items()
                                                           if k != "splits"}:
        return False
    if {k: [(r, n) for r, n, _ in v] for k, v in a["splits"].items()} != \
            {k: [(r, n) for r, n, _ in v] for k, v in b["splits"].items()}:
        return False
    return all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
               for split in a["splits"] for (_, _, x), (_, _, y)
               in zip(a["splits"][split], b["splits"][split]))


@pytest.fixture(scope="module")
def work(small_dataset, tmp_path_factory):
    """One working copy, restored after every example (copying per example would dominate)."""
    dst = tmp_path_factory.mktemp("corrupt") / "ds"
    shutil.copytree(small_dataset, dst)
    return dst, read_all(small_dataset)


def corrupt(data: bytes, op: str, offset: int, value: int, extra: bytes) -> bytes:
    offset %= max(len(data), 1)
    if op == "flip":
        return data[:offset] + bytes([data[offset] ^ value]) + data[offset + 1:]
    if op == "truncate":
        return data[:offset]
    return data[:offset] + extra + data[offset:]


def check_property(root, reference, target: str, new: bytes) -> str:
    path = root / target
    original = path.read_bytes()
    path.write_bytes(new)
    try:
        got = read_all(root)
    except PipelineError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg, msg
        assert "manifest" in msg or "shard" in msg, msg
        return "refused"
    finally:
        path.write_bytes(original)
    assert same(got, reference), f"{target} corrupted, read without error, data differs"
    return "unchanged"


def _targets(root) -> list[str]:
    shards = sorted(p.relative_to(root).as_posix() for p in (root / "shards").rglob("*.parquet"))
    return ["manifest.json", "manifest.json", *shards]  # the manifest is the richer target


@settings(max_examples=30, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), op=st.sampled_from(["flip", "truncate", "insert"]),
       offset=st.integers(0, 2**31), value=st.integers(1, 255),
       extra=st.binary(min_size=1, max_size=8))
def test_random_corruption_is_refused_or_harmless(work, data, op, offset, value, extra):
    root, reference = work
    target = data.draw(st.sampled_from(_targets(root)), label="target")
    new = corrupt((root / target).read_bytes(), op, offset, value, extra)
    outcome = check_property(root, reference, target, new)
    if target != "manifest.json" and new != (root / target).read_bytes():
        assert outcome == "refused"  # a changed shard never passes its checksum


def _object_span(text: str, start: int) -> tuple[int, int]:
    """The span of the JSON object whose "{" is at or after `start`."""
    i = text.index("{", start)
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return i, j + 1
    raise AssertionError("unbalanced manifest")


def _essential_spans(text: str) -> list[tuple[int, int]]:
    """Byte spans of what the reader trusts: format_version, labels, seq_len, tokenizer, the
    split names and the first shard entry of each split."""
    m = json.loads(text)
    spans = [_object_span(text, text.index('"labels": {')),
             _object_span(text, text.index('"tokenizer": {'))]
    for needle in [f'"format_version": "{m["format_version"]}"', f'"seq_len": {m["seq_len"]}',
                   *(f'"{split}": [' for split in m["splits"])]:
        at = text.index(needle, text.index('"splits"') if needle.endswith("[") else 0)
        spans.append((at, at + len(needle)))
    for shards in m["splits"].values():
        spans.append(_object_span(text, text.rindex("{", 0, text.index(shards[0]["path"]))))
    return spans


@pytest.mark.slow
def test_every_single_bit_flip_in_trusted_manifest_fields(work):
    """Exhaustive over the fields that matter: flipping the lowest bit of each of their bytes
    (digits stay digits, letters stay letters) is refused or harmless, never silent."""
    root, reference = work
    text = (root / "manifest.json").read_text()
    raw = text.encode()
    offsets = sorted({i for a, b in _essential_spans(text) for i in range(a, b)
                      if not text[i].isspace()})  # a flipped space is just invalid JSON
    assert len(offsets) > 150
    outcomes = [check_property(root, reference, "manifest.json",
                               corrupt(raw, "flip", i, 1, b"")) for i in offsets]
    assert outcomes.count("refused") > len(offsets) // 2
