"""Model families by name. A model directory's config.json says `family` and the family's fields.

`hf` is any Hugging Face causal LM built from a config (pipeline/models/hf.py); transformers is
imported only when such a model is built or loaded.
"""

from dataclasses import asdict, fields

import torch.nn as nn

from pipeline.errors import PipelineError
from pipeline.models.gpt import GPT, GPTConfig
from pipeline.models.gru import GRULM, GRUConfig
from pipeline.models.hf import HFCausalLM, HFConfig

FAMILIES = {"gpt": (GPTConfig, GPT), "gru": (GRUConfig, GRULM), "hf": (HFConfig, HFCausalLM)}


def config_fields(family: str) -> list[str]:
    return [f.name for f in fields(FAMILIES[family][0])]


def build_model(family: str, params: dict) -> nn.Module:
    """Build a model from a family name and its config fields; unknown names are refused."""
    if family not in FAMILIES:
        raise PipelineError(f"unknown model family {family!r}: valid are {sorted(FAMILIES)}")
    cfg_cls, model_cls = FAMILIES[family]
    valid = config_fields(family)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise PipelineError(f"unknown {family} model key(s) {unknown}: valid keys are {valid}")
    try:
        return model_cls(cfg_cls(**params))
    except (TypeError, ValueError) as exc:
        raise PipelineError(f"bad {family} model config {params}: {exc}") from exc


def model_config_dict(model: nn.Module) -> dict:
    family = next(name for name, (_, cls) in FAMILIES.items() if isinstance(model, cls))
    return {"family": family, **asdict(model.cfg)}


def count_parameters(model: nn.Module) -> int:
    """Unique parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
