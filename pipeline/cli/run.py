"""`pipeline run JOB.toml`: label → train → evaluate, skipping whatever is already complete.

Each stage is idempotent on its own (label resumes by shard, train resumes from its last
checkpoint, evaluate rewrites its report) and owns its completion test, `is_complete(cfg)`: a
cheap check, before the stage starts, that its outputs already match the job. This module only
asks them, so a rerun of a finished job does no work at all and a rerun of a broken one finishes
it (README "pipeline run" says what each stage compares).

A lock file in OUT stops two runs of one job from overlapping (a scheduler firing again
before the last run ended). A stage failure is one line naming the stage (exit 1, or 2 for a
bad student/job setting); an unexpected crash also leaves its traceback in OUT/run-error.log.
"""

import contextlib
import resource
import time
import traceback
from dataclasses import dataclass, fields
from pathlib import Path

from rich.console import Console

from pipeline.cli import history
from pipeline.cli.jobs import Job, StudentEntry, load_job, wired
from pipeline.cli.summary import dataset_lines, say
from pipeline.config.stages import EvaluateConfig, LabelConfig, TrainConfig
from pipeline.config.toml import dumps_toml
from pipeline.errors import ConfigError, PipelineError
from pipeline.evaluation.report import print_leaderboard
from pipeline.interrupt import Interrupted
from pipeline.io.locking import LOCK, DirLock
from pipeline.io.storage import Store
from pipeline.softlabels.layout import MANIFEST, read_json
from pipeline.softlabels.manifest import committed_version
from stages import label as label_stage
from stages.evaluate import is_complete, load_results

ERROR_LOG = "run-error.log"


@dataclass
class RunConfig:
    job: str
    dry_run: bool = False
    quiet: bool = False


@dataclass
class StageState:
    name: str
    done: bool
    detail: str


def _stage_values(cls, job: Job, section: dict) -> dict:
    """The config fields a job sets: [job] device (every stage's default), the stage's own
    section, and the keys wired from other sections ([corpus] source → corpus, ...)."""
    names = {f.name for f in fields(cls)}
    values = {"device": job.device, **{k: v for k, v in section.items() if k in names}}
    for key, name in wired(cls, "corpus").items():
        if key in job.corpus:
            values[name] = job.corpus[key]
    return values


def label_config(job: Job, quiet: bool = False) -> LabelConfig:
    return LabelConfig(**{**_stage_values(LabelConfig, job, job.label),
                          "out": str(job.labels_dir), "teacher": str(job.teacher),
                          "quiet": quiet})


def student_path(job: Job, s: StudentEntry) -> Path:
    """A student's TOML file; an inline [[students]] table is written under OUT/students/."""
    if s.path is not None:
        return s.path
    path = job.out / "students" / f"{s.name}.toml"
    text = dumps_toml(s.inline)
    if not path.is_file() or path.read_text() != text:  # unchanged file: unchanged mtime
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return path


def train_config(job: Job, students: list[Path], quiet: bool = False) -> TrainConfig:
    runs = runs_dir(job)
    return TrainConfig(**{**_stage_values(TrainConfig, job, job.train),
                          "labels": str(job.labels_dir), "students": [str(p) for p in students],
                          "out": str(runs), "resume": True, "quiet": quiet,
                          **_continue(job, runs)})


def _version(job: Job) -> int | None:
    """The dataset version the labels folder commits (format 1.4), when the job labels
    incrementally; None otherwise."""
    if not label_config(job).incremental:
        return None
    manifest = read_json(Store(job.labels_dir), MANIFEST)
    return committed_version(manifest) if isinstance(manifest, dict) else None


def runs_dir(job: Job) -> Path:
    """RUNS, or RUNS/vNNNNN for an incremental job: one runs folder per dataset version, so a
    new version trains new folders and the older ones stay as they were."""
    version = _version(job)
    return job.runs_dir / f"v{version:05d}" if version else job.runs_dir


def _continue(job: Job, runs: Path) -> dict:
    """[train] continue = true: start each student from the newest earlier version's runs
    folder that holds it (a runs folder: the student's name picks its run)."""
    if not job.train.get("continue") or runs == job.runs_dir:
        return {}
    earlier = sorted(p for p in job.runs_dir.glob("v[0-9][0-9][0-9][0-9][0-9]")
                     if p.name < runs.name)
    return {"continue_from": str(earlier[-1])} if earlier else {}


def evaluate_config(job: Job, quiet: bool = False) -> EvaluateConfig:
    teacher = str(job.teacher) if job.evaluate.get("teacher_row", True) else None
    return EvaluateConfig(**{**_stage_values(EvaluateConfig, job, job.evaluate),
                             "labels": str(job.labels_dir), "out": str(job.report_dir),
                             "teacher": teacher, "quiet": quiet,
                             "runs": [str(runs_dir(job) / s.name) for s in job.students]})


def _label_state(job: Job) -> StageState:
    cfg = label_config(job)
    where = f"{cfg.corpus} with {cfg.teacher} → {cfg.out} (top_k {cfg.top_k}, seq_len " \
            f"{cfg.seq_len or 'default'})"
    return StageState("label", label_stage.is_complete(cfg), where)


def _student_done(tcfg, s: StudentEntry) -> bool:
    """The train stage's own skip test, on the job's student (an inline table is parsed, not
    written: a dry run writes nothing). An invalid student is "to run": train says why."""
    from pipeline.training.students import load_student, parse_student
    from stages import train as train_stage

    try:
        spec = load_student(s.path) if s.path else parse_student(s.inline, s.name)
    except PipelineError:
        return False
    return train_stage.student_complete(tcfg, spec)


def _train_state(job: Job) -> tuple[StageState, list[StudentEntry]]:
    tcfg = train_config(job, [])
    todo = [s for s in job.students if not _student_done(tcfg, s)]
    names = ", ".join(f"{s.name}{'' if s in todo else ' (complete)'}" for s in job.students)
    return StageState("train", not todo, f"{len(job.students)} students → {runs_dir(job)}: "
                      f"{names}"), todo


def _evaluate_state(job: Job, upstream_done: bool) -> StageState:
    teacher = " + teacher" if job.evaluate.get("teacher_row", True) else ""
    detail = f"{len(job.students)} students{teacher} → {job.report_dir}"
    if not upstream_done:
        return StageState("evaluate", False, detail)
    try:
        return StageState("evaluate", is_complete(evaluate_config(job)), detail)
    except PipelineError:
        return StageState("evaluate", False, detail)


def plan(job: Job) -> list[StageState]:
    label = _label_state(job)
    train, _ = _train_state(job)
    return [label, train, _evaluate_state(job, label.done and train.done)]


@contextlib.contextmanager
def _stage(name: str, job: Job):
    """Turn any failure inside a stage into one line that names the stage; a stop (SIGINT/SIGTERM)
    is told as the stage it interrupted."""
    try:
        yield
    except Interrupted as exc:
        exc.stage = name
        raise
    except ConfigError as exc:
        raise ConfigError(f"stage {name} failed: {exc}") from exc
    except PipelineError as exc:
        raise PipelineError(f"stage {name} failed: {exc}") from exc
    except Exception as exc:  # a bug: one line here, the traceback in the log
        log = job.out / ERROR_LOG
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(traceback.format_exc())
        first = (str(exc).splitlines() or [""])[0]
        raise PipelineError(f"stage {name} failed: {type(exc).__name__}: {first} "
                            f"(traceback in {log})") from exc


def print_plan(job: Job, states: list[StageState], console: Console) -> None:
    say(console, f"job {job.name} ({job.path}) → {job.out}")
    for i, s in enumerate(states, 1):
        say(console, f"  {i}. {s.name:<9} {'complete, skip' if s.done else 'to run'}")
        say(console, f"     {s.detail}")


def _timed(console: Console, name: str, job: Job, fn, seconds: dict | None = None):
    console.print(f"{name}: running", highlight=False)
    start, cpu = time.perf_counter(), _cpu_seconds()
    with _stage(name, job):
        result = fn()
    took = time.perf_counter() - start
    if seconds is not None:
        seconds[name] = round(took, 3)
    console.print(f"{name}: done in {took:.1f} s ({_cpu_seconds() - cpu:.1f} CPU-s)",
                  highlight=False)
    return result


def _cpu_seconds() -> float:
    """User + system time of this process and its finished children (the demo's budget is in
    CPU time, which stays honest on a shared machine where wall time does not)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run(cfg: RunConfig, console: Console | None = None) -> dict:
    """Run (or finish) a job. Returns {"stages": {name: "skipped"|"ran"|"planned"},
    "results": results.json content or None, "report": report dir}."""
    console = console or Console()
    job = load_job(cfg.job)
    if cfg.dry_run:
        states = plan(job)
        print_plan(job, states, console)
        return {"stages": {s.name: "skipped" if s.done else "planned" for s in states},
                "results": None, "report": str(job.report_dir)}
    say(console, f"job {job.name} ({job.path}) → {job.out}")
    with _job_lock(job):
        return _run_stages(job, cfg, console)


@contextlib.contextmanager
def _job_lock(job: Job):
    try:
        lock = DirLock(job.out).__enter__()
    except PipelineError as exc:  # a scheduled rerun overlapping a run still in progress
        raise PipelineError(f"job {job.name}: {job.out} is locked by a live process (another "
                            f"`pipeline run` of this job?); wait for it, or remove "
                            f"{job.out / LOCK} if that process is gone") from exc
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def _run_stages(job: Job, cfg: RunConfig, console: Console) -> dict:
    from stages import evaluate as evaluate_stage

    ran, seconds = {}, {}
    label = _label_state(job)
    if label.done:
        console.print(f"label: complete, skipped ({job.labels_dir})", highlight=False)
    else:
        manifest = _timed(console, "label", job,
                          lambda: label_stage.run(label_config(job, cfg.quiet)), seconds)
        for line in dataset_lines(manifest, str(job.labels_dir)):
            say(console, line)
    ran["label"] = "skipped" if label.done else "ran"

    train, todo = _train_state(job)
    if train.done:
        console.print(f"train: all {len(job.students)} students complete, skipped",
                      highlight=False)
    else:
        from stages import train as train_stage

        with _stage("train", job):
            paths = [student_path(job, s) for s in todo]
        _timed(console, "train", job, lambda: train_stage.run(train_config(job, paths, cfg.quiet)),
               seconds)
    ran["train"] = "skipped" if train.done else "ran"

    ev_cfg = evaluate_config(job, cfg.quiet)
    with _stage("evaluate", job):
        fresh = is_complete(ev_cfg)
    if fresh:
        console.print(f"evaluate: report up to date, skipped ({job.report_dir})",
                      highlight=False)
    else:
        _timed(console, "evaluate", job, lambda: evaluate_stage.run(ev_cfg), seconds)
    ran["evaluate"] = "skipped" if fresh else "ran"
    results = load_results(job.report_dir)
    history.append(job.out, read_json(Store(job.labels_dir), MANIFEST), ran, seconds, results)
    print_leaderboard(results, job.report_dir, console)
    return {"stages": ran, "results": results, "report": str(job.report_dir)}
