"""Reading and writing the TOML files of this tool (job files, student files, run configs).

One reader, so a missing or malformed file reads the same everywhere (a ConfigError, exit 2,
naming the file), and one writer: tomli-w, which quotes and escapes what a hand-written writer
would get wrong. TOML has no null, so None values are left out (they mean "the default").
"""

import tomllib
from pathlib import Path

import tomli_w

from pipeline.errors import ConfigError


def read_toml(path: str | Path, what: str, see: str) -> dict:
    """A TOML config file as a dict; missing or malformed: ConfigError (exit 2)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} not found (see {see})")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc


def _without_none(value):
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_without_none(v) for v in value]
    return value


def dumps_toml(d: dict) -> str:
    """`d` as TOML text (None values left out)."""
    return tomli_w.dumps(_without_none(d))
