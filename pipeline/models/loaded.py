"""What loading a model gives every caller, native or Hugging Face: the module, its config,
tokenizer and weights hash. A leaf module, so both loaders can return it without importing each
other."""

from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn

from pipeline.io.hashing import sha256_file, sha256_json
from pipeline.io.uris import redact
from pipeline.models import count_parameters
from pipeline.models.tokenizer import LoadedTokenizer

WEIGHTS = "model.safetensors"


@dataclass
class LoadedModel:
    model: nn.Module
    config: dict
    tokenizer: LoadedTokenizer
    weights_sha256: str
    path: Path
    spec: str | None = None  # as the user named it (hf:NAME, s3://...) when that is not `path`
    weights_files: list[Path] | None = None  # default: path / model.safetensors

    def describe(self) -> dict:
        dtype = str(next(self.model.parameters()).dtype).replace("torch.", "")
        # the spec as typed, less any credential in it: a manifest is shared (pipeline/io/uris)
        return {"spec": redact(self.spec or str(self.path)), "family": self.config["family"],
                "sha256": self.weights_sha256, "parameters": count_parameters(self.model),
                "dtype": dtype}

    @property
    def weights_bytes(self) -> int:
        return sum(Path(f).stat().st_size for f in self.weights_files or [self.path / WEIGHTS])


def weights_sha256(files: list[Path]) -> str:
    """sha256 of model.safetensors (as for native folders); of the shard hashes if sharded."""
    if len(files) == 1:
        return sha256_file(files[0])
    return sha256_json({f.name: sha256_file(f) for f in files})
