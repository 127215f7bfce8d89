"""SIGKILL an incremental `pipeline label --incremental` at each kind of moment; rerun = unbroken.

The moments (each a hold of tests/holds.py, so the kill lands in a known state, never a race):
  a new shard written     - some of the version's shards labeled, others not
  a copy written          - an old shard's surviving rows copied, the rest of the version not
  before the commit       - versions/NNNNN.json written, manifest.json still the old version
After each kill the previous version must be committed and read exactly as before; the rerun
must give the same version as an unbroken run (manifest but its timestamps, and every shard).
"""

import shutil

import pytest

import stages.label as L
from pipeline.softlabels.reader import SoftLabelDataset
from tests.conftest import make_docs
from tests.holds import hold_env, kill_in_hold
from tests.stages.test_label_incremental import cfg, decoded, shard_bytes, write_corpus

MOMENTS = {"new shard": ("pipeline.labeling.shards:write_shard", "after"),
           "copy": ("pipeline.labeling.incremental:write_shard", "after"),
           "before commit": ("stages.label:write_card", "before")}


def grown(docs):
    """Version 2's corpus: one removed, one changed, six added."""
    out = [dict(d) for d in docs if d["id"] != docs[7]["id"]]
    out[30]["text"] = "the film won an award for music " * 8
    return out + [{"id": f"new-{i}", "text": d["text"]} for i, d in enumerate(make_docs(6, 9))]


def without_times(m: dict) -> dict:
    m = {k: v for k, v in m.items() if k != "created_at"}
    m["version"] = {k: v for k, v in m["version"].items() if k != "committed_at"}
    return m


@pytest.mark.parametrize("moment", sorted(MOMENTS))
def test_kill_during_incremental_run_then_rerun_equals_unbroken(tmp_path, tiny_teacher, moment):
    docs = make_docs(60, seed=3)
    corpus = write_corpus(tmp_path / "c.jsonl", docs)
    ref, out = tmp_path / "ref", tmp_path / "out"
    L.run(cfg(corpus, tiny_teacher, ref))
    shutil.copytree(ref, out)
    v1 = decoded(out)
    write_corpus(corpus, grown(docs))
    want = L.run(cfg(corpus, tiny_teacher, ref))
    assert want["version"]["changes"]["rows_copied"] > 0  # every moment is reachable
    target, when = MOMENTS[moment]
    args = ["label", "--corpus", str(corpus), "--teacher", str(tiny_teacher), "--out", str(out),
            "--top-k", "4", "--seq-len", "32", "--shard-rows", "8", "--batch-size", "8",
            "--quiet", "--device", "cpu", "--incremental", "--id-column", "id",
            "--validation-fraction", "0.1"]
    kill_in_hold(args, hold_env(target, tmp_path / "held", when=when), tmp_path / "held")
    assert SoftLabelDataset(out).manifest["version"]["number"] == 1  # v1 still committed
    assert decoded(out) == v1
    got = L.run(cfg(corpus, tiny_teacher, out))
    assert without_times(got) == without_times(want)
    live = {e["path"] for es in got["splits"].values() for e in es}
    assert {r: b for r, b in shard_bytes(out).items() if r in live} == \
        {r: b for r, b in shard_bytes(ref).items() if r in live}
    assert decoded(out, 1) == v1
