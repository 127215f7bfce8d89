"""Model directories: config.json + model.safetensors + tokenizer.json.

Weights are loaded only with safetensors, never with pickle or `torch.load`, because teams load
models and datasets that other teams made. A file that is not a safetensors file is refused.

A Hugging Face model (`pipeline.models.hf.HFCausalLM`, `family = "hf"`) is saved as a
save_pretrained folder instead (its config.json has HF keys); `load_weights` loads either kind.
A native model whose vocabulary is larger than its tokenizer (a student of an HF teacher with
padded embeddings) records `tokenizer_vocab_size` in config.json, so the pair is still checked.
"""

import functools
import json
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pipeline.errors import PipelineError
from pipeline.io import atomic
from pipeline.io.hashing import sha256_file
from pipeline.models import build_model, model_config_dict
from pipeline.models.hf import HFCausalLM
from pipeline.models.loaded import WEIGHTS, LoadedModel
from pipeline.models.tokenizer import load_tokenizer

CONFIG, TOKENIZER = "config.json", "tokenizer.json"


def save_model_dir(model: nn.Module, tokenizer_path: str | Path, out: str | Path,
                   padded_vocab: bool = False) -> Path:
    """Write a model directory atomically file by file (weights last is not needed: all are
    rewritten together on every save and a loader checks all three exist)."""
    if isinstance(model, HFCausalLM):
        return model.save_dir(tokenizer_path, out)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # Tied weights share storage; safetensors refuses shared tensors, so drop the alias.
    state.pop("head.weight", None)
    with atomic.replacing(out / WEIGHTS) as tmp:
        save_file(state, str(tmp))
    config = model_config_dict(model)
    if padded_vocab:  # trained on a dataset whose vocabulary exceeds its tokenizer (module doc)
        tokens = tokenizer_size(str(tokenizer_path))
        if config.get("vocab_size", 0) > tokens:
            config["tokenizer_vocab_size"] = tokens
    atomic.write_bytes(out / CONFIG, json.dumps(config, indent=2).encode())
    if Path(tokenizer_path).resolve() != (out / TOKENIZER).resolve():
        atomic.copy_file(tokenizer_path, out / TOKENIZER)
    return out


@functools.lru_cache(maxsize=8)
def tokenizer_size(path: str) -> int:
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(path).get_vocab_size()
    except Exception:  # not ours to judge here: load_model_dir reports a bad tokenizer
        return 0


def model_files(folder: Path, exclude: tuple[str, ...] = ()) -> list[str]:
    """The files of a model folder, weights last (a reader that sees the weights sees a whole
    folder): config.json and tokenizer.json, plus a save_pretrained folder's other JSON files."""
    names = sorted(p.name for p in Path(folder).iterdir() if p.is_file()
                   and p.suffix in (".json", ".safetensors") and p.name not in exclude)
    return [n for n in names if n != WEIGHTS] + ([WEIGHTS] if WEIGHTS in names else [])


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a safetensors file into a native or HF model (re-tying weights stored once)."""
    state = load_state(path)
    if isinstance(model, HFCausalLM):
        return model.load_weights(state, path)
    if "head.weight" not in state and hasattr(model, "head"):
        state["head.weight"] = state["tok_emb.weight"]
    model.load_state_dict(state)


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
    params = {k: v for k, v in config.items() if k not in ("family", "tokenizer_vocab_size")}
    model = build_model(config.get("family", "gpt"), params)
    try:
        load_weights(model, path / WEIGHTS)
    except RuntimeError as exc:
        raise PipelineError(f"{path / WEIGHTS} does not match {path / CONFIG}: "
                            f"{str(exc).splitlines()[0]}") from exc
    tokenizer = load_tokenizer(path / TOKENIZER)
    vocab = config.get("vocab_size")
    padded = config.get("tokenizer_vocab_size")
    if padded is not None and padded == tokenizer.vocab_size and isinstance(vocab, int) \
            and vocab > padded:
        tokenizer.tokenizer_size, tokenizer.vocab_size = tokenizer.vocab_size, vocab
    if vocab != tokenizer.vocab_size:
        raise PipelineError(f"{path}: tokenizer vocab size {tokenizer.vocab_size} != model "
                            f"vocab_size {vocab}; the model and tokenizer.json do not belong "
                            "together")
    model.to(device).eval()
    return LoadedModel(model, config, tokenizer, sha256_file(path / WEIGHTS), path)
