"""Job files for `pipeline run`: one TOML names the corpus, teacher, labeling options, students,
training and evaluation, so a scheduled job is one command.

The whole file is checked before any stage starts: an unknown section or key, a missing section
or required key, a value of the wrong type or out of its range, or an option for another mode
is a `ConfigError` (exit 2) that names the key and the fix. Every key comes from the stage
config dataclasses (pipeline/config/stages.py): a field is a key of its stage's section under
its own name unless its `job` metadata says where a job sets it instead ("[corpus] source"), so
each key is also a flag of the verb and the schema cannot drift from the stages.

Relative paths are relative to the current directory (run jobs from the repository root).
"""

import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from pipeline.config.check import JOB, check_table, hint, schema_of
from pipeline.config.fields import opt_of
from pipeline.config.stages import EvaluateConfig, JobConfig, LabelConfig, TrainConfig
from pipeline.config.toml import read_toml
from pipeline.errors import ConfigError
from pipeline.training.students import load_student, parse_student

EXAMPLE = "data/jobs/example.toml"
STAGES = {"label": LabelConfig, "train": TrainConfig, "evaluate": EvaluateConfig}
# Keys of a stage section that are not fields of its config (and the flag that does the same).
EXTRA = {"evaluate": {"teacher_row": (bool, "--teacher (leave it out for no teacher row)")},
         "train": {"continue": (bool, "--continue-from (the previous version's runs folder)")}}
_REQUIRED = {"job": {"out": '"outputs/my-job"'}, "corpus": {"source": '"path/or/glob"'},
             "teacher": {"dir": '"path/to/teacher_dir"'}}
REQUIRED_SECTIONS = ("job", "corpus", "teacher", "students")
SECTIONS = ("job", "corpus", "teacher", "label", "students", "train", "evaluate")
_WIRED = re.compile(r"\[(\w+)\] (\w+)")


def wired(cls, section: str) -> dict[str, str]:
    """{key of `section`: field of `cls`} for the fields a job sets from another section, as
    their metadata says (LabelConfig.corpus ← "[corpus] source")."""
    out = {}
    for f in fields(cls):
        m = _WIRED.fullmatch(opt_of(f).job or "")
        if m and m.group(1) == section:
            out[m.group(2)] = f.name
    return out


def stage_keys(section: str) -> dict:
    """Valid keys of [label]/[train]/[evaluate] → (type, field): the fields without `job`
    wiring, plus EXTRA."""
    cls = STAGES[section]
    schema = schema_of(cls, exclude={f.name for f in fields(cls) if opt_of(f).job})
    return {**schema, **{k: (tp, None) for k, (tp, _) in EXTRA.get(section, {}).items()}}


def fixed_keys(section: str) -> dict:
    """Valid keys of [job]/[corpus]/[teacher]: the fields wired there (their types and rules)."""
    if section == "job":
        return schema_of(JobConfig)
    keys = {}
    for cls in STAGES.values():
        schema = schema_of(cls)
        keys.update({key: schema[name] for key, name in wired(cls, section).items()})
    return keys


@dataclass
class StudentEntry:
    """A student file (path), or an inline [[students]] table (`inline`, same keys as a student
    file, `name` required) that `pipeline run` writes to a file before training."""

    name: str
    path: Path | None = None
    inline: dict | None = None


@dataclass
class Job:
    path: Path
    name: str
    out: Path
    device: str
    corpus: dict
    teacher: Path
    label: dict = field(default_factory=dict)
    students: list[StudentEntry] = field(default_factory=list)
    train: dict = field(default_factory=dict)
    evaluate: dict = field(default_factory=dict)

    @property
    def labels_dir(self) -> Path:
        return Path(self.label.get("out") or self.out / "labels")

    @property
    def runs_dir(self) -> Path:
        return Path(self.train.get("out") or self.out / "runs")

    @property
    def report_dir(self) -> Path:
        return Path(self.evaluate.get("out") or self.out / "report")


def _check_section(path: Path, name: str, table, schema: dict) -> dict:
    where = f"{path}: [{name}]"
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: {name} must be a [{name}] table, got {table!r}")
    if "students" in table:
        raise ConfigError(f"{where} has key 'students': move students = [...] above the first "
                          "[section] header (a TOML key after a header belongs to it)")
    check_table(table, schema, where, JOB, see=EXAMPLE)
    for key, example in _REQUIRED.get(name, {}).items():
        if key not in table:
            raise ConfigError(f"{where} is missing key {key!r}: add {key} = {example}")
    return dict(table)


def _students(path: Path, value) -> list[StudentEntry]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{path}: students must be a non-empty list of student TOML paths, or "
                          "[[students]] tables with path = \"...\" (or inline keys and name)")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            item = {"path": item}
        if not isinstance(item, dict):
            raise ConfigError(f"{path}: students[{i}] must be a path string or a table")
        if "path" in item:
            if not isinstance(item["path"], str):
                raise ConfigError(f"{path}: students[{i}] path must be a string, got "
                                  f"{item['path']!r}; write path = \"student.toml\"")
            extra = sorted(set(item) - {"path"})
            if extra:
                raise ConfigError(f"{path}: students[{i}] has path and other keys {extra}; put "
                                  "settings in the student file, or define it inline without path")
            p = Path(item["path"])
            if not p.is_file():
                raise ConfigError(f"{path}: students[{i}] file {p} does not exist; fix the path "
                                  "(relative paths are relative to the current directory)")
            out.append(StudentEntry(load_student(p).name, path=p))
        elif isinstance(item.get("name"), str):
            parse_student(item, f"{path} students[{i}]")  # same checks as a student file
            out.append(StudentEntry(item["name"], inline=dict(item)))
        else:
            raise ConfigError(f"{path}: students[{i}] needs path = \"student.toml\", or a name = "
                              "\"...\" for an inline student")
    names = [s.name for s in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{path}: two students are named {dupes[0]!r}; a run folder is named "
                          "after its student, so give each a distinct file name or name")
    return out


def load_job(path: str | Path) -> Job:
    """Read and fully validate a job file; every problem is a ConfigError (exit 2)."""
    path = Path(path)
    data = read_toml(path, "job file", EXAMPLE)
    for key in data:
        if key not in SECTIONS:
            raise ConfigError(f"{path}: unknown section [{key}]{hint(key, SECTIONS)}; valid "
                              f"sections: {', '.join(SECTIONS)}")
    misplaced = [k for k, v in data.items() if isinstance(v, dict) and "students" in v]
    if "students" not in data and misplaced:
        raise ConfigError(f"{path}: [{misplaced[0]}] has key 'students': move students = [...] "
                          "above the first [section] header (a TOML key after a header belongs "
                          "to it)")
    for name in REQUIRED_SECTIONS:
        if name not in data and name == "students":
            raise ConfigError(f"{path}: missing students: add students = [\"a.toml\"] above the "
                              f"first [section], or [[students]] tables (see {EXAMPLE})")
        if name not in data:
            raise ConfigError(f"{path}: missing section [{name}]; add it (see {EXAMPLE})")
    sec = {n: _check_section(path, n, data[n], fixed_keys(n)) for n in _REQUIRED}
    stage = {n: _check_section(path, n, data.get(n, {}), stage_keys(n)) for n in STAGES}
    teacher = Path(sec["teacher"]["dir"])
    if not teacher.is_dir():
        raise ConfigError(f"{path}: [teacher] dir {teacher} is not a directory; point it at a "
                          "model directory (config.json + model.safetensors + tokenizer.json)")
    job = sec["job"]
    return Job(path=path, name=job.get("name", path.stem), out=Path(job["out"]),
               device=job.get("device", "auto"), corpus=sec["corpus"], teacher=teacher,
               label=stage["label"], students=_students(path, data["students"]),
               train=stage["train"], evaluate=stage["evaluate"])
