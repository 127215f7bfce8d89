"""`pipeline train --continue-from RUN`: start a student from a finished run's weights.

Why a new run rather than more steps in the old folder: the old folder stays what it was (the
model trained on its version, comparable in the history), and the new one has the whole
checkpoint/resume contract of any run (pipeline/training/layout.py): the weights are copied in
before its first checkpoint, so a kill at any moment resumes from the new folder, never from the
source again. The optimizer state and the learning-rate schedule start fresh (warm-up, then the
student file's decay over the new run's steps): continuing is a second training phase.

`--new-rows-only` trains on the train shards the dataset version gained since the version the
source run was trained on (its config.toml records it); without it, on every row of the version.
"""

from dataclasses import replace
from pathlib import Path

from pipeline.config.toml import read_toml
from pipeline.errors import PipelineError
from pipeline.io.hashing import sha256_file
from pipeline.models.checkpoint import load_weights
from pipeline.models.loaded import WEIGHTS
from pipeline.softlabels.manifest import load_manifest
from pipeline.training.layout import COMPLETE, CONFIG


def run_folder(run: str, name: str | None = None) -> Path:
    """A finished run folder: `run` itself, or in a runs folder the student `name`'s (with no
    name, the first finished one: every run there was trained on the same version)."""
    base = Path(run)
    candidates = [base] + ([base / name] if name else
                           sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else [])
    for d in candidates:
        if (d / COMPLETE).is_file() and (d / WEIGHTS).is_file():
            return d
    raise PipelineError(f"--continue-from {run} is not a finished run folder (no {COMPLETE} or "
                        f"{WEIGHTS}{f' for student {name}' if name else ''}); finish that run "
                        "first or pass another")


def source(run: str, name: str | None = None) -> dict:
    """What a continued run records about where it started (its config.toml `continued_from`)."""
    run_dir = run_folder(run, name)
    data = read_toml(run_dir / CONFIG, "run config", "the run folder").get("data", {})
    return {"run": str(run_dir.resolve()), "weights_sha256": sha256_file(run_dir / WEIGHTS),
            "dataset_version": data.get("dataset_version", 0)}


def keep_new_rows(ds, since_version: int) -> None:
    """Drop from `ds`'s train split every shard that version `since_version` already listed
    (shards are never rewritten, so a listed path is the same rows)."""
    if not since_version:
        raise PipelineError("--new-rows-only needs a source run trained on a versioned dataset "
                            "(labeled with --incremental); continue over all rows instead")
    old = load_manifest(ds.store, since_version)
    seen = {e["path"] for e in old["splits"].get("train", [])}
    new = [s for s in ds.shards.get("train", []) if s.rel not in seen]
    ds.shards["train"] = [replace(s, index=i) for i, s in enumerate(new)]  # read by position
    if not ds.shards["train"]:
        raise PipelineError(f"dataset {ds.root} gained no train shards since version "
                            f"{since_version}; nothing new to continue on")


def start_from(model, run: str, name: str) -> None:
    """The source run's weights into a freshly built student of the same architecture."""
    try:
        load_weights(model, run_folder(run, name) / WEIGHTS)
    except (RuntimeError, KeyError) as exc:
        raise PipelineError(f"--continue-from {run}: its weights do not fit this student "
                            f"({str(exc).splitlines()[0]}); continue with the same student "
                            "file") from None
