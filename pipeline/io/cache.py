"""Local scratch space: the cache (copies of remote model folders and tokenizers, staging copies
of remote run folders) and temporary folders."""

import os
import tempfile
from pathlib import Path

CACHE_ENV = "SOFTLABELS_CACHE"


def cache_dir() -> Path:
    """$SOFTLABELS_CACHE or ~/.cache/softlabel-pipeline."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "softlabel-pipeline"
    return Path(root)


def temporary_dir(prefix: str = "softlabels-") -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix=prefix)
