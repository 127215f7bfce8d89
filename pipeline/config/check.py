"""The one checker of option values, for flags and for TOML tables (job files, student files).

Every value is checked where it is parsed, against its field's rule (pipeline/config/fields.py),
and a problem is one line naming the flag or the file and key, the value and what would be valid.
Flags are checked by `check_config` (exit 1, like every other failure of a verb); a file's
tables by `check_table` (a ConfigError, exit 2). Both refuse an option that only applies to
another mode when the user gave it, so a setting is never silently ignored.
"""

import difflib
import json
import typing
from dataclasses import Field, dataclass, fields

from pipeline.config.fields import flag_of, opt_of, show, type_problem, value_problem
from pipeline.errors import ConfigError, PipelineError


def schema_of(cls, exclude=()) -> dict[str, tuple[object, Field | None]]:
    """{key: (annotation, field)} of a config dataclass: what a TOML table of it may hold."""
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f) for f in fields(cls) if f.name not in exclude}


def _applies(f: Field, values: dict) -> bool:
    when = opt_of(f).when
    return when is None or values.get(when[0]) == when[1]


def _not_here(f: Field, values: dict, said, verb: str) -> str:
    """Why a given option is refused, e.g. `--top-p only applies to --mode topp (here --mode
    topk); drop --top-p or pass --mode topp`; `said(name[, value])` spells a flag or a key."""
    other, wanted = opt_of(f).when
    return (f"{said(f.name)} only applies to {said(other, wanted)} (here "
            f"{said(other, values.get(other))}); drop {said(f.name)} or {verb} "
            f"{said(other, wanted)}")


def check_config(cfg, given=None) -> None:
    """Refuse a config whose values break their rules, naming the flag and value (exit 1).
    `given`: the fields the user set (the CLI knows); an option for another mode among them is
    refused. Options that do not apply are not range-checked: they are unused."""
    values = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    hints = typing.get_type_hints(type(cfg))

    def said(name, *value):
        flag = flag_of(next(f for f in fields(cfg) if f.name == name))
        return " ".join([flag, *map(str, value)])

    for f in fields(cfg):
        value = values[f.name]
        if not _applies(f, values):
            if given is not None and f.name in given:
                raise PipelineError(_not_here(f, values, said, "pass"))
            continue
        wrong = type_problem(value, hints[f.name])
        if wrong:
            raise PipelineError(f"{flag_of(f)} must be {wrong[1]}, got {show(value)}")
        if problem := value_problem(f, value):
            raise PipelineError(f"{flag_of(f)} {show(value)} {problem}")


@dataclass(frozen=True)
class Voice:
    """How a file's problems read. Job and student files keep their own, older wordings (the
    README failure-modes table and tests pin them); the checks behind them are the same."""

    unknown: str  # {where} {key} {hint} {valid}
    wrong_type: str  # {where} {key} {short} {long} {value}
    bad_value: str  # {where} {key} {problem} {value}
    sorted_valid: bool
    hints: bool  # add "(did you mean ...?)"


JOB = Voice("{where} has unknown key {key!r}{hint}; valid keys: {valid}",
            "{where} {key} must be {long}, got {value!r}; fix the value (see {see})",
            "{where} {key} = {value} {problem}; fix the value (see {see})", True, True)
STUDENT = Voice("{where}: unknown key {key!r}{hint}; valid keys are {valid}",
                "{where}: key {key!r} must be {short}, got {value!r}",
                "{where}: {key} {problem}, got {value}", False, False)


def hint(word: str, valid) -> str:
    close = difflib.get_close_matches(word, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_table(table, schema: dict, where: str, voice: Voice, *, see: str = "") -> dict:
    """Check a TOML table against `schema` ({key: (annotation, field or None)}): unknown keys
    (with a close match), types and each field's rule; a key for another mode is refused.
    Returns the table as a dict. Every problem is a ConfigError (exit 2) naming the key."""
    for key, value in table.items():
        if key not in schema:
            valid = sorted(schema) if voice.sorted_valid else list(schema)
            raise ConfigError(voice.unknown.format(
                where=where, key=key, hint=hint(key, schema) if voice.hints else "",
                valid=", ".join(valid) if voice.sorted_valid else valid))
        tp, f = schema[key]
        wrong = type_problem(value, tp)
        if wrong:
            raise ConfigError(voice.wrong_type.format(where=where, key=key, short=wrong[0],
                                                      long=wrong[1], value=value, see=see))
        if f is not None and (problem := value_problem(f, value)):
            raise ConfigError(voice.bad_value.format(where=where, key=key, problem=problem,
                                                     value=show(value), see=see))
    _check_modes(table, schema, where)
    return dict(table)


def _check_modes(table, schema: dict, where: str) -> None:
    values = {**{k: f.default for k, (_, f) in schema.items() if f is not None}, **table}

    def said(name, *value):
        return f"{name} = {json.dumps(value[0])}" if value else name

    for key in table:
        f = schema[key][1]
        if f is not None and not _applies(f, values):
            raise ConfigError(f"{where} {_not_here(f, values, said, 'set')}")
