"""One config schema: every option is defined once, in pipeline/config/stages.py, and reachable
both as a flag of its verb and as a key of a job file (or wired there, as its metadata says)."""

import re
from dataclasses import MISSING, fields

import pytest
import typer

from pipeline.cli.commands import app
from pipeline.cli.jobs import EXTRA, STAGES, fixed_keys, stage_keys
from pipeline.config import stages as C
from pipeline.config.fields import PATH, flag_of, opt_of

VERBS = {"label": C.LabelConfig, "train": C.TrainConfig, "evaluate": C.EvaluateConfig,
         "audit": C.AuditConfig, "bigram": C.BigramConfig}
CLI_ONLY = {"audit": {"--json"}}  # presentation, not configuration
# How a job sets what is not a key of the stage's section (fields' `job` metadata).
JOB_WIRING = {C.QUIET, "students", "students (their run folders)",
              "always on in a job (a rerun resumes)", "OUT/history.jsonl (incremental jobs)"}


def _flags(command) -> set[str]:
    return {o for p in command.params for o in p.opts if o.startswith("--")} - {"--help"}


@pytest.fixture(scope="module")
def commands():
    group = typer.main.get_command(app)
    return {name: group.commands[name] for name in VERBS}


@pytest.mark.parametrize("verb", VERBS)
def test_every_field_is_a_flag_and_every_flag_a_field(commands, verb):
    cls = VERBS[verb]
    assert _flags(commands[verb]) == {flag_of(f) for f in fields(cls)} | CLI_ONLY.get(verb, set())
    for f in fields(cls):
        assert opt_of(f).help, f"{cls.__name__}.{f.name} has no help text"


@pytest.mark.parametrize("section", STAGES)
def test_every_stage_field_is_reachable_from_a_job(section):
    """A field is a key of its section, or its `job` metadata says where a job sets it (a key
    of another section, or one of a few documented wirings) — so no flag lacks a job key."""
    cls = STAGES[section]
    for f in fields(cls):
        where = opt_of(f).job
        if where is None:
            assert f.name in stage_keys(section), f.name
            continue
        m = re.fullmatch(r"\[(\w+)\] (\w+)", where)
        if m:
            other, key = m.groups()
            keys = fixed_keys(other) if other in ("job", "corpus", "teacher") else \
                stage_keys(other)
            assert key in keys, f"{cls.__name__}.{f.name}: {where} is not a job key"
        else:
            assert where in JOB_WIRING, f"{cls.__name__}.{f.name}: undocumented wiring {where!r}"


@pytest.mark.parametrize("section", STAGES)
def test_every_job_key_is_a_flag(commands, section):
    """The reverse: each key of a stage section is a field, hence a flag (EXTRA names its
    flag), and each key of [corpus]/[teacher] is wired to a field."""
    flags = _flags(commands[section])
    for key, (_, f) in stage_keys(section).items():
        if f is None:
            assert key in EXTRA[section] and EXTRA[section][key][1].split()[0] in flags
        else:
            assert flag_of(f) in flags
    for other in ("corpus", "teacher"):
        for key, (_, f) in fixed_keys(other).items():
            assert f is not None and any(f in fields(cls) for cls in STAGES.values()), key


def test_bench_warmup_is_a_flag_now(commands):
    assert "--bench-warmup" in _flags(commands["evaluate"])


def test_constants_match_the_format():
    from pipeline.softlabels import schema as S

    assert set(C.LOGPROB_ENCODINGS) == set(S.LOGPROB_ENCODINGS)
    assert set(C.ID_ENCODINGS) == set(S.ID_ENCODINGS)
    assert C.U8_DEFAULT_MIN_LOGPROB == S.U8_DEFAULT_MIN_LOGPROB


def test_defaults_are_the_dataclass_defaults(commands):
    """The flag's default is the field's, so the two cannot drift apart."""
    for verb, cls in VERBS.items():
        by_name = {p.name: p for p in commands[verb].params}
        for f in fields(cls):
            if f.default is not MISSING:
                assert by_name[f.name].default == f.default, (verb, f.name)
            else:
                assert by_name[f.name].required, (verb, f.name)


@pytest.mark.parametrize("value, ok", [("runs", True), ("s3://b/ds", True), ("hf:/abs/model", True),
                                       ("", False), (" ", False), ("a\x00b", False),
                                       ("s3:/b/ds", False), (["a", ""], False)])
def test_path_rule(value, ok):
    assert (PATH.problem(value) is None) == ok
