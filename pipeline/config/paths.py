"""What an output folder option (--out) must satisfy before any work starts.

Why here and not at the first write: a folder that cannot be created (under a file, in a
read-only place) would otherwise surface as an OSError traceback from deep inside a stage, after
the corpus was read or a model loaded. Only local paths are checked; a URI's store reports its
own problems (pipeline/io/storage.py).
"""

import os
from pathlib import Path

from pipeline.errors import PipelineError


def check_out_dir(path: str, flag: str, what: str) -> None:
    """Refuse an output folder that is a file, lies under a file, or cannot be written."""
    if "://" in path:
        return
    target = Path(path).absolute()
    if target.exists() and not target.is_dir():
        raise PipelineError(f"{flag} {path} is a file, not a folder; choose a folder for the "
                            f"{what}")
    existing = target
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise PipelineError(f"{flag} {path}: {existing} is a file, so the folder cannot be "
                            f"created; choose a folder for the {what}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PipelineError(f"{flag} {path}: {existing} is not writable (permissions, or a "
                            f"read-only file system); choose a folder for the {what} you can write")
