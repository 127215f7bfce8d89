"""The command line: the one layer above the stages (docs/ARCHITECTURE.md).

`commands` defines the typer app and its verbs; `jobs` reads job files; `run` chains the stages
for `pipeline run`. Nothing below this package imports it or `stages/`.
"""

from pipeline.cli.commands import app, main

__all__ = ["app", "main"]
