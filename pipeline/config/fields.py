"""Per-field metadata of the config dataclasses: help text, value rule, mode, CLI and job wiring.

Why metadata on the dataclass field: the stage configs are the one definition of every option,
and the CLI flags (pipeline/cli/options.py), the job-file keys (pipeline/cli/jobs.py) and the
checks of student files (pipeline/training/students.py) are all derived from it, so a flag, a
key, a default and a range cannot drift apart. A rule only describes a value ("must be in
(0, 1]"); the caller that parsed it names where it came from (a flag, a file and key).
"""

import math
import re
import types
import typing
from dataclasses import MISSING, Field, dataclass, field

INT64_MAX = 2**63 - 1


def _num(x) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


@dataclass(frozen=True)
class Range:
    """A number in [lo, hi] (either end open or absent); floats must also be finite. `says`
    replaces the generated rule text where an older message is part of the interface."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    says: str | None = None

    def rule(self) -> str:
        lo = None if self.lo is None else f"{'(' if self.lo_open else '['}{_num(self.lo)}"
        hi = None if self.hi is None else f"{_num(self.hi)}{')' if self.hi_open else ']'}"
        if lo and hi:
            return f"in {lo}, {hi}"
        if lo:
            return f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        return f"{'<' if self.hi_open else '<='} {_num(self.hi)}" if hi else "a number"

    def problem(self, value) -> str | None:
        if isinstance(value, int) and abs(value) > INT64_MAX:  # torch seeds, Parquet counts
            return f"must be at most {INT64_MAX}"
        finite = not isinstance(value, float) or math.isfinite(value)
        ok = finite and (self.lo is None or value > self.lo or (value == self.lo
                                                                 and not self.lo_open))
        ok = ok and (self.hi is None or value < self.hi or (value == self.hi
                                                           and not self.hi_open))
        if ok:
            return None
        if self.says and finite:
            return self.says
        return f"must be {'a finite number ' if not finite else ''}{self.rule()}"


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of strings."""

    values: tuple

    def problem(self, value) -> str | None:
        return None if value in self.values else f"is not one of {', '.join(self.values)}"


@dataclass(frozen=True)
class Pattern:
    """A string matching `regex` (whole), described as `means` in the message."""

    regex: str
    means: str

    def problem(self, value) -> str | None:
        values = value if isinstance(value, list) else [value]  # repeated options: each one
        ok = all(isinstance(v, str) and re.fullmatch(self.regex, v) for v in values)
        return None if ok else f"must be {self.means}"


# A path or URI: "" would mean the current directory, a NUL byte no file at all, and "s3:/x"
# (one slash) a local folder to some readers and a URI to others (hf:/abs/path is a model spec).
PATH = Pattern(r"(?s)(?!(?!hf:)[A-Za-z][\w+.-]+:/(?!/))[^\x00]*[^\s\x00][^\x00]*",
               "a non-empty path or scheme://URI without NUL bytes")
DEVICE = Pattern(r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda or cuda:N")
NAME = Pattern(r"(?!\.)[^/\\\x00]+", "a non-empty name without '/' that does not start with '.'")


def at_least(lo, says: str | None = None) -> Range:
    return Range(lo=lo, says=says)


@dataclass(frozen=True)
class Opt:
    """What a field means to a user. `when` = (other field, value): the option only applies
    then, so giving it otherwise is refused. `flag` = typer declarations replacing the default
    `--field-name`; `cli_type` = the type typer shows (Path). `job`: None when the field is a key
    of the stage's job section under its own name, else where a job file sets it instead
    (e.g. "[corpus] source"). `show_default` = the default as help shows it, when not literal."""

    help: str
    check: Range | Choice | Pattern | None = None
    when: tuple[str, str] | None = None
    flag: tuple = ()
    cli_type: type | None = None
    job: str | None = None
    show_default: str | None = None


def opt(default=MISSING, *, help: str, factory=MISSING, **meta) -> Field:
    """A dataclass field carrying its Opt (see the module doc)."""
    return field(default=default, default_factory=factory, metadata={"opt": Opt(help, **meta)})


def opt_of(f: Field) -> Opt:
    return f.metadata.get("opt") or Opt(help="")


def flag_of(f: Field) -> str:
    """The flag a user types for this field (its first long declaration)."""
    decls = [d for d in opt_of(f).flag if d.startswith("--")]
    return decls[0] if decls else "--" + f.name.replace("_", "-")


def base_types(tp) -> tuple:
    """`int | None` → (int,); `list[str]` → (list,)."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return tuple(t for a in typing.get_args(tp) if a is not type(None)
                     for t in base_types(a))
    return (typing.get_origin(tp) or tp,)


TYPE_WORDS = {int: ("int", "an integer"), float: ("float", "a number"), str: ("str", "a string"),
              bool: ("bool", "true/false"), list: ("list", "a list"), dict: ("dict", "a table")}


def type_problem(value, tp) -> tuple[str, str] | None:
    """None when `value` fits the annotation `tp` (an int for a float too, never a bool for a
    number); else (short, long) names of what was expected, e.g. ("int", "an integer")."""
    allowed = base_types(tp)
    if value is None and type(None) in typing.get_args(tp):
        return None
    if isinstance(value, bool):
        ok = bool in allowed
    else:
        ok = isinstance(value, allowed) or (float in allowed and isinstance(value, int))
    if ok or not all(t in TYPE_WORDS for t in allowed):
        return None
    words = [TYPE_WORDS[t] for t in allowed]
    return " or ".join(w[0] for w in words), " or ".join(w[1] for w in words)


def value_problem(f: Field, value) -> str | None:
    """The field's rule applied to a value of the right type (None values are "not set")."""
    check = opt_of(f).check
    return None if value is None or check is None else check.problem(value)


def show(value) -> str:
    return repr(value) if isinstance(value, str) else str(value)
