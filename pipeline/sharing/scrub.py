"""What a manifest may not carry off the machine it was made on.

The labeler records the corpus and teacher as typed, which is right for the team that made the
dataset (a rerun finds them again) and wrong for the teams it is shared with: a URI may carry a
credential, and a local path names someone's home folder. `scrub` returns a copy of a manifest
fit to leave: every URI redacted (pipeline/io/uris.py), every machine-local absolute path cut
to its last component, and the corpus and teacher named as the publisher says when it says so.
"""

import copy
import re

from pipeline.io.storage import is_remote
from pipeline.io.uris import redact

_LOCAL_ABSOLUTE = re.compile(r"^(/|~|[A-Za-z]:[\\/]|\\\\)")


def local_name(value: str) -> str:
    """A machine-local absolute path → its last component; anything else unchanged."""
    if is_remote(value) or not _LOCAL_ABSOLUTE.match(value):
        return value
    parts = [p for p in re.split(r"[\\/]", value) if p]
    return parts[-1] if parts else "local"


def _walk(obj):
    if isinstance(obj, dict):
        return {k: _walk(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_walk(v) for v in obj]
    if isinstance(obj, str) and ("://" in obj or _LOCAL_ABSOLUTE.match(obj)):
        return local_name(redact(obj))
    return obj


def scrub(manifest: dict, corpus_name: str | None = None,
          teacher_name: str | None = None) -> dict:
    """A copy of `manifest` with nothing private in it (see the module docstring)."""
    out = _walk(copy.deepcopy(manifest))
    if corpus_name and isinstance(out.get("corpus"), dict):
        out["corpus"]["uri"] = corpus_name
    if teacher_name and isinstance(out.get("teacher"), dict):
        out["teacher"]["spec"] = teacher_name
    return out
