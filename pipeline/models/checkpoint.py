"""Model directories: config.json + model.safetensors + tokenizer.json.

Weights are loaded only with safetensors, never with pickle or `torch.load`, because teams load
models and datasets that other teams made. A file that is not a safetensors file is refused.
"""

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pipeline.errors import PipelineError
from pipeline.hashing import sha256_file
from pipeline.models import build_model, count_parameters, model_config_dict
from pipeline.tokenizer import LoadedTokenizer, load_tokenizer

WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer.json"


@dataclass
class LoadedModel:
    model: nn.Module
    config: dict
    tokenizer: LoadedTokenizer
    weights_sha256: str
    path: Path

    def describe(self) -> dict:
        dtype = str(next(self.model.parameters()).dtype).replace("torch.", "")
        return {"spec": str(self.path), "family": self.config["family"],
                "sha256": self.weights_sha256, "parameters": count_parameters(self.model),
                "dtype": dtype}


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_model_dir(model: nn.Module, tokenizer_path: str | Path, out: str | Path) -> Path:
    """Write a model directory atomically file by file (weights last is not needed: all are
    rewritten together on every save and a loader checks all three exist)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # Tied weights share storage; safetensors refuses shared tensors, so drop the alias.
    state.pop("head.weight", None)
    tmp = out / (WEIGHTS + ".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, out / WEIGHTS)
    _atomic_write_bytes(out / CONFIG, json.dumps(model_config_dict(model), indent=2).encode())
    if Path(tokenizer_path).resolve() != (out / TOKENIZER).resolve():
        shutil.copyfile(tokenizer_path, out / (TOKENIZER + ".tmp"))
        os.replace(out / (TOKENIZER + ".tmp"), out / TOKENIZER)
    return out


def load_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix != ".safetensors":
        raise PipelineError(f"{path}: only .safetensors weights are loaded (never pickle/.pt); "
                            "convert the checkpoint with safetensors.torch.save_file")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise PipelineError(f"{path} is not a valid safetensors file ({exc}); refusing to load "
                            "it - re-export the weights with safetensors") from exc


def load_model_dir(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    path = Path(path)
    for name in (CONFIG, WEIGHTS, TOKENIZER):
        if not (path / name).is_file():
            raise PipelineError(f"model directory {path} has no {name}: a model directory holds "
                                f"{CONFIG}, {WEIGHTS} and {TOKENIZER}")
    try:
        config = json.loads((path / CONFIG).read_text())
    except json.JSONDecodeError as exc:
        raise PipelineError(f"{path / CONFIG} is not valid JSON: {exc}") from exc
    params = {k: v for k, v in config.items() if k != "family"}
    model = build_model(config.get("family", "gpt"), params)
    state = load_state(path / WEIGHTS)
    if "head.weight" not in state and hasattr(model, "head"):
        state["head.weight"] = state["tok_emb.weight"]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise PipelineError(f"{path / WEIGHTS} does not match {path / CONFIG}: "
                            f"{str(exc).splitlines()[0]}") from exc
    tokenizer = load_tokenizer(path / TOKENIZER)
    vocab = config.get("vocab_size")
    if vocab != tokenizer.vocab_size:
        raise PipelineError(f"{path}: tokenizer vocab size {tokenizer.vocab_size} != model "
                            f"vocab_size {vocab}; the model and tokenizer.json do not belong "
                            "together")
    model.to(device).eval()
    return LoadedModel(model, config, tokenizer, sha256_file(path / WEIGHTS), path)
