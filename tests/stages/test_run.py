"""`pipeline run JOB.toml`: label → train → evaluate; a rerun of a finished job does no work;
a rerun of a broken job finishes only what is missing; a failing stage is named (exit 1)."""

import io
import json
import os
import shutil
import socket
from pathlib import Path

import pytest
from rich.console import Console

import stages.evaluate
import stages.label
import stages.train
from pipeline.cli.run import RunConfig, run
from pipeline.errors import PipelineError
from tests.conftest import run_cli

STUDENT = """name = "tiny-gpt"
[model]
family = "gpt"
n_layer = 1
n_head = 2
d_model = 16
[train]
batch_size = 8
eval_every = 3
"""

JOB = """[job]
name = "t"
out = "{out}"
device = "cpu"

[corpus]
source = "{corpus}"

[teacher]
dir = "{teacher}"

[label]
top_k = 8
seq_len = 32
shard_rows = 16
batch_size = 8
validation_fraction = 0.2

[train]
max_steps = 6

[evaluate]
max_rows = 8
bench_warmup = 1
bench_repeats = 2

[[students]]
path = "{student}"

[[students]]
name = "inline-gru"
model = {{ family = "gru", d_model = 16 }}
train = {{ batch_size = 8, eval_every = 3 }}
"""


def write_job(d: Path, corpus, teacher, out: Path | None = None) -> Path:
    (d / "student.toml").write_text(STUDENT)
    path = d / "job.toml"
    path.write_text(JOB.format(out=out or d / "out", corpus=corpus, teacher=teacher,
                               student=d / "student.toml"))
    return path


def run_job(path: Path, **kw) -> tuple[dict, str]:
    buf = io.StringIO()
    result = run(RunConfig(job=str(path), quiet=True, **kw), Console(file=buf, width=100))
    return result, buf.getvalue()


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_corpus, tiny_teacher):
    d = tmp_path_factory.mktemp("job")
    job = write_job(d, tiny_corpus, tiny_teacher)
    result, output = run_job(job)
    return d, job, result, output


@pytest.mark.slow
def test_first_run_does_every_stage(finished, tiny_teacher):
    d, _, result, output = finished
    out = d / "out"
    assert result["stages"] == {"label": "ran", "train": "ran", "evaluate": "ran"}
    assert (out / "labels" / "manifest.json").is_file()
    for name in ("tiny-gpt", "inline-gru"):
        assert (out / "runs" / name / "complete.json").is_file()
    assert (out / "students" / "inline-gru.toml").is_file()  # the inline student, as a file
    for name in ("results.json", "results.parquet", "report.md", "fidelity_vs_size.png"):
        assert (out / "report" / name).is_file()
    names = {r["name"] for r in result["results"]["rows"]}
    assert names == {tiny_teacher.name, "tiny-gpt", "inline-gru"}
    assert output.strip().splitlines()[-1].endswith(str(out / "report" / "report.md"))


@pytest.mark.slow
def test_second_run_does_no_work_and_exits_0(finished):
    d, job, _, _ = finished
    before = snapshot(d / "out")
    proc = run_cli("run", job, "--quiet")
    assert proc.returncode == 0
    for line in ("label: complete, skipped", "train: all 2 students complete, skipped",
                 "evaluate: report up to date, skipped"):
        assert line in proc.stdout
    assert "running" not in proc.stdout
    assert "tiny-gpt" in proc.stdout  # the leaderboard is still printed, from results.json
    assert proc.stdout.strip().splitlines()[-1].endswith("report.md")
    assert snapshot(d / "out") == before  # not one file written, touched or added


@pytest.mark.slow
def test_rerun_calls_no_stage(finished, monkeypatch):
    _, job, _, _ = finished
    for module in (stages.label, stages.train, stages.evaluate):
        monkeypatch.setattr(module, "run", lambda cfg: pytest.fail("a stage ran"))
    result, _ = run_job(job)
    assert result["stages"] == {"label": "skipped", "train": "skipped", "evaluate": "skipped"}


@pytest.mark.slow
def test_dry_run_shows_the_plan(finished, tmp_path, tiny_corpus, tiny_teacher):
    _, job, _, _ = finished
    result, output = run_job(job, dry_run=True)
    assert output.count("complete, skip") == 3
    fresh = write_job(tmp_path, tiny_corpus, tiny_teacher)
    result, output = run_job(fresh, dry_run=True)
    assert result["stages"] == {"label": "planned", "train": "planned", "evaluate": "planned"}
    assert output.count("to run") == 3 and "tiny-gpt, inline-gru" in output
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


@pytest.mark.slow
def test_rerun_of_broken_job_finishes_only_what_is_missing(finished, tmp_path, tiny_corpus,
                                                           tiny_teacher):
    d, _, _, _ = finished
    shutil.copytree(d / "out", tmp_path / "out")
    job = write_job(tmp_path, tiny_corpus, tiny_teacher)
    (tmp_path / "out" / "report" / "results.json").unlink()  # killed during evaluate ...
    (tmp_path / "out" / "runs" / "inline-gru" / "complete.json").unlink()  # ... or train
    weights = tmp_path / "out" / "runs" / "tiny-gpt" / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    result, _ = run_job(job)
    assert result["stages"] == {"label": "skipped", "train": "ran", "evaluate": "ran"}
    assert (tmp_path / "out" / "runs" / "inline-gru" / "complete.json").is_file()
    assert weights.stat().st_mtime_ns == mtime  # the finished student was not retrained
    assert run_job(job)[0]["stages"]["evaluate"] == "skipped"


@pytest.mark.slow
def test_overlapping_run_is_refused(finished):
    d, job, _, _ = finished
    lock = d / "out" / ".lock"
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))  # alive
    try:
        with pytest.raises(PipelineError, match="locked by a live process"):
            run_job(job)
    finally:
        lock.unlink()
    assert run_job(job)[0]["stages"]["label"] == "skipped"  # and the lock is released after
    assert not lock.exists()


def test_failing_stage_exits_1_naming_it(tmp_path, tiny_teacher):
    job = write_job(tmp_path, tmp_path / "no-such-corpus.jsonl", tiny_teacher)
    proc = run_cli("run", job, "--quiet", check=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("error: stage label failed: ") and "no-such-corpus" in lines[0]


@pytest.mark.parametrize("mode", ["topp", "sampled"])
def test_label_stage_skipped_only_when_every_setting_matches(tmp_path, tiny_corpus, tiny_teacher,
                                                             mode):
    """Old `pipeline run` compared only top_k: a topp/sampled job relabeled on every run, and
    with top_k == max_k/samples a changed top_p/seed counted as labeled (stale labels)."""
    from pipeline.cli.jobs import load_job
    from pipeline.cli.run import label_config, plan

    job_path = write_job(tmp_path, tiny_corpus, tiny_teacher)
    text = job_path.read_text()
    extra = 'mode = "topp"\nmax_k = 8\ntop_p = 0.9\n' if mode == "topp" else \
        'mode = "sampled"\nsamples = 8\nseed = 3\n'
    job_path.write_text(text.replace("top_k = 8\n", "top_k = 8\n" + extra))
    stages.label.run(label_config(load_job(job_path), quiet=True))
    assert plan(load_job(job_path))[0].done
    changed = "top_p = 0.8\n" if mode == "topp" else "seed = 4\n"
    job_path.write_text(text.replace("top_k = 8\n", "top_k = 8\n" + extra.replace(
        "top_p = 0.9\n" if mode == "topp" else "seed = 3\n", changed)))
    assert not plan(load_job(job_path))[0].done
    job_path.write_text(text)  # topk with k = 8 = samples/max_k: another dataset
    assert not plan(load_job(job_path))[0].done
