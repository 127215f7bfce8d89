"""Job files: a valid one loads with its defaults; every bad one is a ConfigError (exit 2) that
names the key or section and the fix."""

import re
from pathlib import Path

import pytest

from pipeline.cli.jobs import load_job
from pipeline.errors import ConfigError
from tests.conftest import REPO, run_cli

STUDENT = """name = "{name}"
[model]
family = "gpt"
n_layer = 1
n_head = 2
d_model = 16
[train]
batch_size = 4
"""


def write_job(tmp: Path, teacher: Path, body: str | None = None, students: str | None = None,
              extra: str = "") -> Path:
    """A minimal valid job file; `body` replaces the sections, `students` the students line."""
    (tmp / "s1.toml").write_text(STUDENT.format(name="first"))
    if students is None:
        students = f'students = ["{tmp / "s1.toml"}"]'
    if body is None:
        body = (f'[job]\nout = "{tmp / "out"}"\n\n[corpus]\nsource = "{tmp / "docs.jsonl"}"\n\n'
                f'[teacher]\ndir = "{teacher}"\n\n[label]\ntop_k = 8\nseq_len = 32\n\n'
                '[train]\nmax_steps = 3\n\n[evaluate]\nmax_rows = 4\n')
    path = tmp / "job.toml"
    path.write_text(f"{students}\n\n{body}{extra}")
    return path


def drop_section(text: str, name: str) -> str:
    return re.sub(rf"\[{name}\]\n(?:[^\[\n].*\n)*", "", text)


def test_valid_job_loads_with_defaults(tmp_path, tiny_teacher):
    job = load_job(write_job(tmp_path, tiny_teacher))
    assert job.name == "job" and job.device == "auto"
    assert job.labels_dir == tmp_path / "out" / "labels"
    assert job.runs_dir == tmp_path / "out" / "runs"
    assert job.report_dir == tmp_path / "out" / "report"
    assert [s.name for s in job.students] == ["first"]  # the student file's own name
    assert job.label == {"top_k": 8, "seq_len": 32} and job.train == {"max_steps": 3}


def test_inline_students_and_section_outs(tmp_path, tiny_teacher):
    inline = ('\n[[students]]\nname = "inline-gru"\nmodel = { family = "gru", d_model = 16 }\n'
              f'\n[[students]]\npath = "{tmp_path / "s1.toml"}"\n')
    path = write_job(tmp_path, tiny_teacher, students="", extra=inline)
    text = path.read_text().replace("[label]\n", f'[label]\nout = "{tmp_path / "L"}"\n')
    path.write_text(text)
    job = load_job(path)
    assert [s.name for s in job.students] == ["inline-gru", "first"]
    assert job.students[0].inline["model"]["family"] == "gru"
    assert job.labels_dir == tmp_path / "L"


def test_example_job_is_valid(tmp_path, tiny_teacher):
    text = (REPO / "data/jobs/example.toml").read_text()
    assert 'dir = "data/teacher"' in text
    path = tmp_path / "example.toml"
    path.write_text(text.replace('dir = "data/teacher"', f'dir = "{tiny_teacher}"'))
    job = load_job(path)
    assert job.corpus["source"] == "builtin:bbc-news"
    assert {s.name for s in job.students} == {"gpt-small", "gru-small"}


@pytest.mark.parametrize("edit, expected", [
    (lambda t: t.replace("top_k = 8", "topk = 8"), ["[label]", "'topk'", "'top_k'"]),
    (lambda t: t.replace("[label]", "[lable]"), ["unknown section [lable]", "label"]),
    (lambda t: drop_section(t, "corpus"), ["missing section [corpus]"]),
    (lambda t: drop_section(t, "teacher"), ["missing section [teacher]"]),
    (lambda t: t.replace("[teacher]\ndir", "[teacher]\npath"), ["[teacher]", "'path'"]),
    (lambda t: t.replace("seq_len = 32", 'seq_len = "32"'), ["seq_len", "integer"]),
    (lambda t: t.replace("max_rows = 4", "max_rows = true"), ["max_rows", "integer"]),
    (lambda t: t.replace("[train]\n", "[train]\ndevices = 'cpu'\n"), ["'devices'", "'device'"]),
    (lambda t: t.replace("s1.toml", "missing.toml"), ["missing.toml", "does not exist"]),
    (lambda t: t.split("\n", 1)[1], ["missing students"]),
    (lambda t: t.split("\n", 1)[1] + "\n" + t.split("\n", 1)[0], ["'students'", "above"]),
    (lambda t: t.replace("[job]\nout", "[job]\nname = 'x'\nwhere"), ["[job]", "'where'"]),
    (lambda t: t + "[label\n", ["not valid TOML"]),
])
def test_bad_job_is_config_error_naming_the_key(tmp_path, tiny_teacher, edit, expected):
    path = write_job(tmp_path, tiny_teacher)
    path.write_text(edit(path.read_text()))
    with pytest.raises(ConfigError) as info:
        load_job(path)
    msg = str(info.value)
    assert "\n" not in msg
    for part in expected:
        assert part in msg, msg


def test_bad_student_file_is_config_error(tmp_path, tiny_teacher):
    path = write_job(tmp_path, tiny_teacher)
    (tmp_path / "s1.toml").write_text(STUDENT.format(name="first") + "bogus = 1\n")
    with pytest.raises(ConfigError, match="bogus"):
        load_job(path)


def test_duplicate_student_names_refused(tmp_path, tiny_teacher):
    s1 = tmp_path / "s1.toml"
    path = write_job(tmp_path, tiny_teacher, students=f'students = ["{s1}", "{s1}"]')
    with pytest.raises(ConfigError, match="two students are named 'first'"):
        load_job(path)


@pytest.mark.parametrize("edit, expected", [
    (lambda t: t.replace("max_steps = 3", "max_step = 3"), "unknown key 'max_step'"),
    (lambda t: drop_section(t, "corpus"), "missing section [corpus]"),
])
def test_cli_bad_job_exits_2_and_names_it(tmp_path, tiny_teacher, edit, expected):
    path = write_job(tmp_path, tiny_teacher)
    path.write_text(edit(path.read_text()))
    proc = run_cli("run", path, check=False)
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing ran


@pytest.mark.parametrize("edit, expected", [
    (lambda t: t.replace("seq_len = 32", "seq_len = 1"), "[label] seq_len = 1 must be >= 2"),
    (lambda t: t.replace("top_k = 8", "top_k = 8\nvalidation_fraction = nan"),
     "[label] validation_fraction = nan must be a finite number in [0, 1)"),
    (lambda t: t.replace("top_k = 8", "top_k = 8\ntop_p = 0.5"),
     '[label] top_p only applies to mode = "topp" (here mode = "topk"); drop top_p or set '
     'mode = "topp"'),
    (lambda t: t.replace("max_steps = 3", "max_steps = -3"), "[train] max_steps = -3 must be"),
    (lambda t: t.replace("max_rows = 4", "bench_repeats = 0"), "[evaluate] bench_repeats = 0"),
    (lambda t: t.replace("[job]\n", '[job]\ndevice = "gpu"\n'),
     "[job] device = 'gpu' must be auto, cpu, cuda or cuda:N"),
    (lambda t: t.replace("[corpus]\n", "[corpus]\nlimit_docs = 0\n"),
     "[corpus] limit_docs = 0 must be >= 1"),
    (lambda t: t.replace("[corpus]\n", '[corpus]\ntext_column = 3\n'),
     "[corpus] text_column must be a string, got 3"),
])
def test_job_values_are_range_checked_where_read(tmp_path, tiny_teacher, edit, expected):
    """Every key's rule is its stage option's rule (pipeline/config/stages.py): a job that would
    fail halfway, or train on a setting the stage ignores, is refused before anything runs."""
    path = write_job(tmp_path, tiny_teacher)
    path.write_text(edit(path.read_text()))
    with pytest.raises(ConfigError) as info:
        load_job(path)
    assert expected in str(info.value) and "\n" not in str(info.value), str(info.value)
