"""Typer commands whose options are the fields of a config dataclass (pipeline/config/stages.py).

Why generated: the dataclass is the one definition of an option (name, default, help, rule), so
a verb cannot grow a flag the job file lacks, or lose one, and a default cannot differ between
the two. The generated command builds the config, checks it (`check_config`, with the fields the
user actually typed, so an option for another mode is refused) and calls the verb's body.
"""

import inspect
import typing
from dataclasses import MISSING, Field, fields
from pathlib import Path

import typer

from pipeline.config.check import check_config
from pipeline.config.fields import opt_of

# click's ParameterSource names (compared by name: typer may ship its own copy of click)
GIVEN = ("COMMANDLINE", "ENVIRONMENT")


def _option(f: Field):
    o = opt_of(f)
    default = ... if f.default is MISSING and f.default_factory is MISSING else f.default
    kw = {"help": o.help}
    if o.show_default:
        kw["show_default"] = o.show_default
    return typer.Option(default, *o.flag, **kw)


def _plain(value):
    """What the CLI parsed (Path, list of Path) as the config's plain strings."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def parameters(cls) -> list[inspect.Parameter]:
    """One keyword parameter per field, as typer reads a command's signature."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        cli_type = opt_of(f).cli_type
        if cli_type is not None and type(None) in typing.get_args(hints[f.name]):
            cli_type = cli_type | None
        out.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                                     default=_option(f), annotation=cli_type or hints[f.name]))
    return out


def config_command(cls, *extra: inspect.Parameter):
    """Decorator: `body(cfg, **extra)` becomes a typer command taking `cls`'s fields as options
    (plus `extra`, options that are presentation only, such as --json)."""
    names = [f.name for f in fields(cls)]

    def wrap(body):
        def command(ctx: typer.Context, **kw):
            given = {n for n in names
                     if getattr(ctx.get_parameter_source(n), "name", None) in GIVEN}
            cfg = cls(**{n: _plain(kw.pop(n)) for n in names})
            check_config(cfg, given)
            return body(cfg, **kw)

        params = [inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY,
                                    annotation=typer.Context), *parameters(cls), *extra]
        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.__name__, command.__doc__ = body.__name__, body.__doc__
        return command

    return wrap


def extra_option(name: str, annotation, default, *decls: str, help: str) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=typer.Option(default, *decls, help=help))
