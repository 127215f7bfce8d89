"""One exception type for every user-facing failure.

The CLI turns a `PipelineError` into a single red line and a non-zero exit code, so every message
must say what is wrong (naming the file, column, shard or key) and how to fix it.
"""


class PipelineError(Exception):
    """A failure caused by the user's input or environment, reported as one line."""

    exit_code = 1


class ConfigError(PipelineError):
    """A bad job or student file: exit code 2."""

    exit_code = 2
