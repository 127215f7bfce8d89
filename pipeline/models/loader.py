"""Model loading in one place: every spec a user may name (native folder, Hugging Face folder,
`hf:NAME_OR_PATH`, either on object storage) resolves here to a LoadedModel.

Why one module: the labeler, evaluator, auditor, cluster workers and `pipeline run`'s completion
check must agree on what a spec means and on its weights hash; the native format
(checkpoint.py) and the transformers wrapper (hf.py) stay unaware of each other.
"""

import json
import re
import threading
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

from pipeline.errors import PipelineError
from pipeline.io.storage import Store
from pipeline.models.checkpoint import load_model_dir
from pipeline.models.hf import HF_PREFIX, context_of, load_hf
from pipeline.models.loaded import weights_sha256


def is_hf_spec(spec) -> bool:
    return str(spec).startswith(HF_PREFIX)


def _read_config(folder: Path) -> dict | None:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return config if isinstance(config, dict) else None


def is_hf_config(config: dict | None) -> bool:
    return bool(config) and "model_type" in config and "family" not in config


def is_native_dir(spec) -> bool:
    """A local folder that is not a Hugging Face folder (the native loader reports whatever
    else is wrong with it, e.g. missing files); a folder on object storage is not local."""
    folder = None if is_hf_spec(spec) else Store(spec).local_path()
    return folder is not None and not is_hf_config(_read_config(folder))


def _target(spec: str) -> str:
    """The folder (or hub name) a spec names: `hf:` dropped."""
    return spec[len(HF_PREFIX):] if is_hf_spec(spec) else spec


_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def check_model_exists(spec, flag: str) -> None:
    """A local model spec that names nothing is a typo, or a hub name without `hf:`: say which,
    before anything tries to load it (or reports a missing config.json in a missing folder)."""
    spec = str(spec)
    local = Store(spec).local_path()
    if is_hf_spec(spec) or local is None or local.is_dir():  # hf:, a URI, or a folder
        return
    if Path(spec).exists():
        raise PipelineError(f"{flag} {spec} is a file; pass the model's folder (config.json + "
                            "model.safetensors + tokenizer.json)")
    hint = (f"; if {spec} is a Hugging Face hub model, write {flag} {HF_PREFIX}{spec}"
            if _HUB_NAME.fullmatch(spec) else "")
    raise PipelineError(f"{flag} {spec}: no such folder; pass a model directory (config.json + "
                        f"model.safetensors + tokenizer.json) or a Hugging Face folder{hint}")


def load_model_spec(spec, device="cpu", trust_remote_code: bool = False):
    """Load a teacher/model spec (module doc) → LoadedModel (model returns logits; tokenizer with
    encode_batch/eos_id/vocab_size/sha256/describe; weights_sha256; describe())."""
    spec = str(spec)
    target = str(Store(_target(spec)).local_folder())  # a remote folder: its cached copy
    if not is_hf_spec(spec) and is_native_dir(target):
        loaded = load_model_dir(target, device)
    else:
        loaded = load_hf(target, device, trust_remote_code)
    loaded.spec = spec
    return loaded


def local_weights_sha256(spec) -> str | None:
    """The weights hash a plan records for a teacher spec, without loading the model; None for a
    hub name, a URI or a folder without weights (`pipeline run` compares it with plan.json)."""
    target = Store(_target(str(spec))).local_path()
    if target is None or not target.is_dir():
        return None
    hf = is_hf_spec(spec) or not is_native_dir(target)
    files = sorted(target.glob("*.safetensors")) if hf else [target / "model.safetensors"]
    return weights_sha256(files) if files and all(f.is_file() for f in files) else None


def local_context(spec) -> int | None:
    """The positions a local model folder can embed, read from its config.json without loading
    the model (None: no such folder, or no fixed limit); `pipeline label` caps its default
    --seq-len at it and `pipeline run` needs it to compare plans cheaply."""
    spec = str(spec)
    target = Store(_target(spec)).local_path()
    config = None if target is None else _read_config(target)
    if config is None:
        return None
    if is_hf_spec(spec) or is_hf_config(config):
        return context_of(SimpleNamespace(**config))
    context = config.get("context")
    return context if isinstance(context, int) and context > 0 else None


# One teacher per worker process (dask workers run many shard tasks): loaded on first use.
_teachers: dict[tuple, object] = {}
_loads: Counter = Counter()
_lock = threading.Lock()


def cached_teacher(path: str, sha256: str | None, device, trust_remote_code: bool = False):
    """The teacher of this worker process, loaded on first use and kept for later tasks."""
    key = (str(path), sha256, str(device))
    with _lock:
        if key not in _teachers:
            loaded = load_model_spec(path, device, trust_remote_code)
            if sha256 and loaded.weights_sha256 != sha256:
                raise PipelineError(f"teacher {path} changed on disk since the plan was made "
                                    f"(sha256 {loaded.weights_sha256[:12]} != {sha256[:12]}); "
                                    "rerun `pipeline label` to re-plan")
            _teachers[key] = loaded
            _loads[sha256 or str(path)] += 1
        return _teachers[key]


def teacher_loads() -> dict[str, int]:
    """Teacher loads in this process, by sha256 (run it on workers with `client.run`)."""
    return dict(_loads)


def clear_teacher_cache() -> None:
    with _lock:
        _teachers.clear()
        _loads.clear()
