"""Job files for `pipeline run`: one TOML names the corpus, teacher, labeling options, students,
training and evaluation, so a scheduled job is one command.

The whole file is checked before any stage starts: an unknown section or key, a missing section
or required key, or a value of the wrong type is a `ConfigError` (exit 2) that names the key and
the fix. The keys of [label], [train] and [evaluate] are the fields of the stages' own config
dataclasses (minus the ones the job wires together), so the schema cannot drift from the stages.

Relative paths are relative to the current directory (run jobs from the repository root).
"""

import difflib
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

from pipeline.errors import ConfigError
from pipeline.training.students import load_student, parse_student, read_config_toml

EXAMPLE = "data/jobs/example.toml"
# Fields of the stage configs that the job fills in itself, so they are not keys of its sections.
_WIRED = {"label": {"corpus", "teacher", "tokenizer", "out", "quiet", "overwrite", "limit_docs",
                    "text_column", "id_column"},
          "train": {"labels", "students", "out", "resume", "quiet"},
          "evaluate": {"labels", "runs", "teacher", "out", "quiet"}}
_FIXED = {"job": {"name": str, "out": str, "device": str},
          "corpus": {"source": str, "text_column": str, "id_column": str, "limit_docs": int},
          "teacher": {"dir": str}}
_REQUIRED = {"job": {"out": '"outputs/my-job"'}, "corpus": {"source": '"path/or/glob"'},
             "teacher": {"dir": '"path/to/teacher_dir"'}}
_EXTRA = {"label": {"out": str}, "train": {"out": str},
          "evaluate": {"out": str, "teacher_row": bool}}
REQUIRED_SECTIONS = ("job", "corpus", "teacher", "students")
SECTIONS = ("job", "corpus", "teacher", "label", "students", "train", "evaluate")


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


def _stage_schema(section: str) -> dict[str, type]:
    """Valid keys of [label]/[train]/[evaluate] → expected type, from the stage dataclass."""
    if section == "label":
        from stages.label import LabelConfig as cls
    elif section == "train":
        from stages.train import TrainConfig as cls
    else:
        from stages.evaluate import EvaluateConfig as cls
    hints = typing.get_type_hints(cls)
    schema = {f.name: hints[f.name] for f in fields(cls) if f.name not in _WIRED[section]}
    return {**schema, **_EXTRA[section]}


def _hint(word: str, valid) -> str:
    close = difflib.get_close_matches(word, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _base_types(tp) -> tuple:
    """`int | None` → (int,); `float` also accepts int; anything exotic is not checked."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return tuple(t for t in typing.get_args(tp) if t is not type(None))
    return (tp,)


def _check_value(where: str, key: str, value, tp) -> None:
    allowed = _base_types(tp)
    if not all(t in (int, float, str, bool) for t in allowed):
        return
    if isinstance(value, bool) and bool not in allowed:
        ok = False
    else:
        ok = isinstance(value, allowed) or (float in allowed and isinstance(value, int))
    if not ok:
        want = " or ".join({int: "an integer", float: "a number", str: "a string",
                            bool: "true/false"}[t] for t in allowed)
        raise ConfigError(f"{where} {key} must be {want}, got {value!r}; fix the value "
                          f"(see {EXAMPLE})")


def _check_section(path: Path, name: str, table, schema: dict[str, type]) -> dict:
    where = f"{path}: [{name}]"
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: {name} must be a [{name}] table, got {table!r}")
    for key, value in table.items():
        if key == "students":
            raise ConfigError(f"{where} has key 'students': move students = [...] above the "
                              "first [section] header (a TOML key after a header belongs to it)")
        if key not in schema:
            raise ConfigError(f"{where} has unknown key {key!r}{_hint(key, schema)}; valid keys: "
                              f"{', '.join(sorted(schema))}")
        _check_value(where, key, value, schema[key])
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
    data = read_config_toml(path, "job file", EXAMPLE)
    for key in data:
        if key not in SECTIONS:
            raise ConfigError(f"{path}: unknown section [{key}]{_hint(key, SECTIONS)}; valid "
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
    sec = {n: _check_section(path, n, data[n], _FIXED[n]) for n in _FIXED}
    stage = {n: _check_section(path, n, data.get(n, {}), _stage_schema(n))
             for n in ("label", "train", "evaluate")}
    teacher = Path(sec["teacher"]["dir"])
    if not teacher.is_dir():
        raise ConfigError(f"{path}: [teacher] dir {teacher} is not a directory; point it at a "
                          "model directory (config.json + model.safetensors + tokenizer.json)")
    job = sec["job"]
    return Job(path=path, name=job.get("name", path.stem), out=Path(job["out"]),
               device=job.get("device", "auto"), corpus=sec["corpus"], teacher=teacher,
               label=stage["label"], students=_students(path, data["students"]),
               train=stage["train"], evaluate=stage["evaluate"])
