"""The run folder's layout: every file name the trainer writes, and the order it writes them in.

```
RUN/
  config.toml             the resolved student config (written when the run starts)
  metrics.jsonl           one JSON line per logged step (appended; cut back on resume)
  state/step-NNNNNNNN/    a checkpoint: the model files, optimizer.safetensors, trainer.json
  state/latest.json       names the checkpoint a resume starts from
  config.json, tokenizer.json, model.safetensors
                          the latest checkpoint's model files (hard links), so the run folder
                          is a model directory from the first checkpoint on
  complete.json           the run's summary: it finished (written last)
```
Any of these may also exist as `NAME.tmp` (a write in flight when a process died).

The write order: each step starts only when the one before it is complete, so a kill at any
instant leaves a folder that resumes, never one that reads as further along than it is.
  1. the checkpoint folder (written as `step-N.tmp`, then renamed);
  2. `latest.json`, now pointing at it (older checkpoints are removed after it);
  3. the run folder's model files, weights last (a reader that sees the weights sees a whole
     model directory);
  4. `complete.json`, once the run is finished.
The trainer (pipeline/training/trainer.py, stages/train.py) follows it on the local disk; the
uploader (pipeline/training/remote.py) replays it for a copy on object storage (`write_order`).
"""

import json
from pathlib import Path

from pipeline.io.atomic import TMP_SUFFIX
from pipeline.models.checkpoint import model_files
from pipeline.models.loaded import WEIGHTS

CONFIG = "config.toml"
METRICS = "metrics.jsonl"
COMPLETE = "complete.json"
STATE = "state"
LATEST = "latest.json"
LATEST_REL = f"{STATE}/{LATEST}"
OPTIMIZER = "optimizer.safetensors"
TRAINER = "trainer.json"


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def latest_checkpoint(run_dir: Path) -> str | None:
    """The checkpoint `state/latest.json` points at; None before the first checkpoint."""
    latest = Path(run_dir) / LATEST_REL
    return json.loads(latest.read_text())["checkpoint"] if latest.is_file() else None


def checkpoint_model_files(checkpoint: Path) -> list[str]:
    """The model files of a checkpoint, in write order (step 3: weights last)."""
    return model_files(checkpoint, exclude=(OPTIMIZER, TRAINER))


def write_order(run_dir: Path) -> list[str]:
    """Every file a copy of a local run folder needs, relative to it, in the module doc's order:
    the latest checkpoint's files, latest.json, the other top-level files, the weights, and
    complete.json last. Files in flight (`.tmp`) and older checkpoints are left out."""
    run_dir = Path(run_dir)
    order = []
    if (ckpt := latest_checkpoint(run_dir)) is not None:
        order += [f"{STATE}/{ckpt}/{f.name}" for f in sorted((run_dir / STATE / ckpt).iterdir())]
        order.append(LATEST_REL)
    top = sorted(f.name for f in run_dir.iterdir()
                 if f.is_file() and not f.name.endswith(TMP_SUFFIX))
    order += [f for f in top if f not in (WEIGHTS, COMPLETE)]
    return order + [f for f in (WEIGHTS, COMPLETE) if f in top]
