"""SIGKILL a scheduled `pipeline run` while it labels version 2 of a grown corpus, then rerun.

The job's first run committed version 1 (and trained and evaluated on it); the corpus then grew,
and the next run is killed in the label stage, after a shard of version 2 is written (a hold of
tests/holds.py, so the kill lands in that state, never a race). Afterwards version 1 must still
be the committed one and the history must hold only the first run's line; the rerun must finish
the job: history.jsonl gains exactly one line, for version 2, and the dataset equals the one an
unbroken run of the same job made (manifest but its timestamps, and every live shard's bytes).
"""

import json
import os

from pipeline.softlabels.reader import SoftLabelDataset
from tests.conftest import make_docs
from tests.holds import hold_env, kill_in_hold
from tests.reliability.test_label_kills_incremental import grown, without_times
from tests.stages.test_label_incremental import shard_bytes, write_corpus
from tests.stages.test_run import STUDENT, run_job
from tests.stages.test_run_incremental import INCREMENTAL


def write_job(tmp, name, corpus, teacher):
    job = tmp / f"{name}.toml"
    job.write_text(INCREMENTAL.format(out=tmp / name, corpus=corpus, teacher=teacher,
                                      student=tmp / "student.toml"))
    return job


def history(out) -> list[dict]:
    path = out / "history.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_sigkill_while_labeling_version_2_then_rerun_equals_unbroken(tmp_path, tiny_teacher):
    docs = make_docs(60, seed=3)
    corpus = write_corpus(tmp_path / "c.jsonl", docs)
    (tmp_path / "student.toml").write_text(STUDENT)
    ref_job, job = (write_job(tmp_path, n, corpus, tiny_teacher) for n in ("ref", "out"))
    run_job(ref_job), run_job(job)
    write_corpus(corpus, grown(docs))
    run_job(ref_job)  # the unbroken run of version 2
    out = tmp_path / "out"
    v1 = SoftLabelDataset(out / "labels").manifest
    kill_in_hold(["run", job, "--quiet"],
                 hold_env("pipeline.labeling.shards:write_shard", tmp_path / "held",
                          when="after"), tmp_path / "held",
                 env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert SoftLabelDataset(out / "labels").manifest == v1  # version 1 still the committed one
    assert [x["version"] for x in history(out)] == [1]

    result, _ = run_job(job)
    assert result["stages"] == {"label": "ran", "train": "ran", "evaluate": "ran"}
    assert [x["version"] for x in history(out)] == [1, 2]
    assert history(out)[-1]["documents"] == history(tmp_path / "ref")[-1]["documents"]
    got, want = (SoftLabelDataset(d / "labels").manifest for d in (out, tmp_path / "ref"))
    assert without_times(got) == without_times(want)
    live = {e["path"] for es in got["splits"].values() for e in es}
    assert {r: b for r, b in shard_bytes(out / "labels").items() if r in live} == \
        {r: b for r, b in shard_bytes(tmp_path / "ref" / "labels").items() if r in live}
    assert run_job(job)[0]["stages"] == {s: "skipped" for s in ("label", "train", "evaluate")}
    assert len(history(out)) == 2  # a rerun with nothing new appends nothing
