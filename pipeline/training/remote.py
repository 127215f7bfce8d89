"""`pipeline train --out s3://...`: run folders on object storage.

A run folder is written in place with renames and hard links (pipeline/training/layout.py), which
object storage does not have, so training runs in a local *staging* copy of each run folder
(under the cache, named by the URI) and every checkpoint is uploaded as whole objects, replaying
the run folder's write order (layout.write_order), with older remote checkpoints removed right
after latest.json:

  state/step-N/* → state/latest.json (now points at step N) → older state/step-* removed →
  config.toml, metrics.jsonl, model files (weights last) → complete.json (only when finished)

So a reader never finds `latest.json` pointing at a checkpoint that is not all there, and
`complete.json` is still the last word. Before training, each student's remote folder is
downloaded into a fresh staging folder, so skip (finished, same config), `--resume` and the
refusals behave exactly as for a local --out, on any machine: a run killed anywhere resumes from
its last uploaded checkpoint.
"""

import hashlib
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.io.cache import cache_dir
from pipeline.io.storage import Store
from pipeline.training import layout
from pipeline.training.students import load_student


def staging_root(uri: str) -> Path:
    return cache_dir() / "runs" / hashlib.sha256(uri.encode()).hexdigest()[:32]


def download_run(remote: Store, name: str, local: Path) -> None:
    """A fresh local copy of remote/name: its files and its latest checkpoint (nothing if the
    remote folder does not exist)."""
    shutil.rmtree(local, ignore_errors=True)
    names = remote.listdir(name)
    if not names:
        return
    local.mkdir(parents=True)
    for f in names:
        if f != layout.STATE and remote.isfile(f"{name}/{f}"):
            remote.get_file(f"{name}/{f}", local / f)
    latest = f"{name}/{layout.LATEST_REL}"
    if remote.isfile(latest):
        ckpt = f"{layout.STATE}/{json.loads(remote.read_bytes(latest))['checkpoint']}"
        for f in remote.listdir(f"{name}/{ckpt}"):
            remote.get_file(f"{name}/{ckpt}/{f}", local / ckpt / f)
        remote.get_file(latest, local / layout.LATEST_REL)


def upload_run(local: Path, remote: Store, name: str) -> None:
    """Upload a run folder's latest checkpoint and files in the run folder's write order."""
    keep = layout.latest_checkpoint(local)
    for rel in layout.write_order(local):
        remote.put_file(local / rel, f"{name}/{rel}")
        if rel == layout.LATEST_REL:  # the new checkpoint is live: drop the older ones
            for old in remote.listdir(f"{name}/{layout.STATE}"):
                if old not in (keep, layout.LATEST):
                    remote.remove(f"{name}/{layout.STATE}/{old}")


def train_to_remote(cfg, run) -> dict[str, Path]:
    """Train into staging folders mirrored to cfg.out (a URI); return {name: URI}."""
    if cfg.workers or cfg.scheduler or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise PipelineError(f"--out {cfg.out}: a run folder on object storage is written by one "
                            "process; use a local (shared) --out with --workers/--scheduler or "
                            "torchrun")
    remote = Store(cfg.out)
    staging = staging_root(remote.uri)
    names = [load_student(p).name for p in cfg.students]
    for name in names:
        download_run(remote, name, staging / name)

    def upload(run_dir: Path) -> None:
        upload_run(run_dir, remote, run_dir.name)

    try:
        run(replace(cfg, out=str(staging)), on_checkpoint=upload)
    except PipelineError as exc:  # name the remote folder, not the staging copy
        raise type(exc)(str(exc).replace(str(staging), remote.uri)) from None
    return {name: staging / name for name in names}
