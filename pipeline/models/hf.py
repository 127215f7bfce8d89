"""Hugging Face `transformers` causal LMs as teachers and students, behind the pipeline's model
interface: `model(input_ids)` → [batch, seq, vocab] logits, and `hidden(input_ids)` plus
`output_head()` (pipeline/models/head.py) so the stages apply the head per chunk of positions.

Why a wrapper rather than special cases in the stages: the labeler, trainer, evaluator and
benchmark all see that one interface; `HFCausalLM` gives it to them, and the differences
(save_pretrained folders, tied weights stored once, padded batches, output transforms such as
Gemma's final-logit soft-capping) stay in this module.

- **Teacher specs** (`load_model_spec`, the one loader the stages call): a native model folder
  (config.json with `family`), a Hugging Face folder (config.json with `model_type`, e.g. a
  `family = "hf"` student's run folder), `hf:NAME_OR_PATH` (a local folder, offline, or a hub
  name where the hub is reachable), or any of these on object storage (copied to a local cache).
  Weights load from safetensors only; `trust_remote_code` only when the user passes
  `--trust-remote-code`. bf16 on CUDA, fp32 on CPU.
- **Vocabulary**: labels and students use the model's *logits width* as `vocab_size`. It may be
  larger than the tokenizer (embeddings padded to a multiple of 64/128); those ids are never
  input tokens but are real outputs of the softmax, so the stored distribution covers them.
  The manifest's `tokenizer.tokenizer_size` records the tokenizer's own size when it differs.
- **Tokenizer**: the folder's `tokenizer.json` (the fast tokenizer's file; serialised from the
  fast tokenizer if the folder has none) is what the dataset stores and hashes. Documents are
  encoded without special tokens (no BOS), as with native tokenizers; the EOS id joins documents.
- **Padding**: `HFCausalLM.forward(ids, attention_mask)` derives position ids from the mask, so
  a left- or right-padded row gets the same logits at its real positions as the row alone
  (tests/pipeline/models/test_hf.py). Packed rows are always full, so labeling passes no mask.
- **Students** (`family = "hf"`, `[model] config = {model_type = "gpt2", ...}`): built with
  `AutoConfig.for_model` + `AutoModelForCausalLM.from_config`; their checkpoints and run folders
  are `save_pretrained` folders (config.json, model.safetensors, tokenizer.json,
  tokenizer_config.json) that `AutoModelForCausalLM.from_pretrained` loads directly.
"""

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from pipeline.errors import ConfigError, PipelineError
from pipeline.models.head import Head

HF_PREFIX = "hf:"
TOKENIZER_JSON, TOKENIZER_CONFIG = "tokenizer.json", "tokenizer_config.json"
SPECIAL_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


@dataclass
class HFConfig:
    """A `family = "hf"` student: `config` holds `model_type` and its AutoConfig keys."""

    vocab_size: int
    config: dict = field(default_factory=dict)


def _quiet_transformers():
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def _config_class(model_type, where: str):
    transformers = _quiet_transformers()
    mapping = transformers.models.auto.configuration_auto.CONFIG_MAPPING
    if not isinstance(model_type, str) or model_type not in mapping:
        raise ConfigError(f"{where}: [model] config.model_type {model_type!r} is not a "
                          "transformers model type (e.g. \"gpt2\", \"llama\")")
    return mapping[model_type]


def student_hf_config(cfg: HFConfig, where: str = "student"):
    """The transformers config of a student; unknown keys are refused (typos would be ignored)."""
    kw = dict(cfg.config)
    model_type = kw.pop("model_type", None)
    cls = _config_class(model_type, where)
    default = cls()
    valid = set(default.to_dict()) | set(getattr(cls, "attribute_map", {}))
    unknown = sorted(set(kw) - valid)
    if unknown:
        raise ConfigError(f"{where}: unknown [model] config key {unknown[0]!r} for model_type "
                          f"{model_type}; valid keys include {sorted(valid)[:40]}")
    if "vocab_size" in kw:
        raise ConfigError(f"{where}: [model] config.vocab_size: drop it, the vocabulary comes "
                          "from the dataset ([model] vocab_size pins it)")
    for key in SPECIAL_ID_KEYS:  # defaults like GPT-2's 50256 lie outside a small vocabulary
        value = getattr(default, key, None)
        if key not in kw and isinstance(value, int) and value >= cfg.vocab_size:
            kw[key] = None
    return cls(**kw, vocab_size=cfg.vocab_size)


def context_of(hf_config) -> int | None:
    """Positions a model can embed (None: no fixed limit known)."""
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(hf_config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_student_model(model: dict, seq_len: int, where: str) -> None:
    """Refuse a `family = "hf"` student that could not train on rows of `seq_len` tokens."""
    hf_config = student_hf_config(HFConfig(model["vocab_size"], model.get("config", {})), where)
    context = context_of(hf_config)
    if context is not None and context < seq_len:
        raise ConfigError(f"{where}: [model] config positions {context} < dataset seq_len "
                          f"{seq_len}; set max_position_embeddings (n_positions for gpt2) >= "
                          f"{seq_len}")


class HFCausalLM(nn.Module):
    """A transformers causal LM as ids → logits (and, with a mask, padded batches)."""

    def __init__(self, cfg: HFConfig | None = None, hf_model: nn.Module | None = None):
        super().__init__()
        if hf_model is None:
            transformers = _quiet_transformers()
            hf_model = transformers.AutoModelForCausalLM.from_config(student_hf_config(cfg))
        self.cfg = cfg
        self.hf = hf_model
        self._head_checked: bool | None = None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                hidden_only: bool = False,
                segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [batch, seq, vocab] from the model's own forward, or with `hidden_only` its
        final hidden states (so a DDP-wrapped student can hand them to the chunked loss).
        `segment_ids`: packed samples, each attending only to itself (models/segments.py)."""
        if hidden_only:
            return self.hidden(input_ids, attention_mask, segment_ids)
        return self.hf(input_ids=input_ids, use_cache=False,
                       **_mask_kw(attention_mask, segment_ids)).logits

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The base model's last hidden state (after its final norm): the lm_head's input."""
        return self.hf.base_model(input_ids=input_ids, use_cache=False,
                                  **_mask_kw(attention_mask, segment_ids)).last_hidden_state

    def output_head(self) -> Head | None:
        """The lm_head plus the model type's output transform (models/head.py), or None when the
        model's logits are not that (an output transform we do not know): callers then use the
        full logits. Checked once against the model's own forward on a few tokens."""
        head = output_head_of(self.hf)
        if self._head_checked is None:
            self._head_checked = _head_matches(self, head)
        return head if self._head_checked else None

    @property
    def vocab_size(self) -> int:
        return int(self.hf.get_output_embeddings().weight.shape[0])

    def load_weights(self, state: dict[str, torch.Tensor], where) -> None:
        """Load a save_pretrained state: tied weights are stored once, so a key missing from the
        file is fine exactly when it shares storage with one that is present."""
        missing, unexpected = self.hf.load_state_dict(state, strict=False)
        params = self.hf.state_dict(keep_vars=True)
        storage = {k: v.data_ptr() for k, v in params.items()}
        present = {storage[k] for k in state if k in storage}
        untied = [k for k in missing if storage.get(k) not in present]
        if untied or unexpected:
            raise PipelineError(f"{where} does not match the model: missing {untied[:3]}, "
                                f"unexpected {list(unexpected)[:3]}")

    def save_dir(self, tokenizer_path: str | Path, out: str | Path) -> Path:
        """A save_pretrained folder plus the dataset's tokenizer.json and a tokenizer_config.json
        (so AutoTokenizer loads it too)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        _quiet_transformers()
        self.hf.save_pretrained(out, safe_serialization=True)
        if Path(tokenizer_path).resolve() != (out / TOKENIZER_JSON).resolve():
            shutil.copyfile(tokenizer_path, out / (TOKENIZER_JSON + ".tmp"))
            os.replace(out / (TOKENIZER_JSON + ".tmp"), out / TOKENIZER_JSON)
        from tokenizers import Tokenizer

        from pipeline.models.tokenizer import find_eos

        tok = Tokenizer.from_file(str(out / TOKENIZER_JSON))
        eos = find_eos(tok)
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces":
                  False, "model_max_length": context_of(self.hf.config) or 1_000_000_000}
        if eos is not None:
            config["eos_token"] = tok.id_to_token(eos)
        (out / TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2))
        return out


def _mask_kw(attention_mask: torch.Tensor | None, segment_ids: torch.Tensor | None = None
             ) -> dict:
    """With a mask, positions count real tokens only (left padding gives the row's labels).
    With segment ids: a 4-D block-diagonal causal mask and positions restarting per sample
    (transformers takes a 4-D mask as given; position ids alone would not stop attention)."""
    if segment_ids is not None:
        from pipeline.models.segments import block_causal_mask, segment_positions

        return {"attention_mask": block_causal_mask(segment_ids),
                "position_ids": segment_positions(segment_ids)}
    if attention_mask is None:
        return {}
    return {"attention_mask": attention_mask,
            "position_ids": (attention_mask.long().cumsum(-1) - 1).clamp(min=0)}


def output_head_of(hf_model) -> Head:
    """lm_head and the output transforms transformers' causal LMs apply after it (read from
    their modeling code): Gemma 2/3 `final_logit_softcapping`, Cohere `logit_scale` (×),
    Granite `logits_scaling` (÷). Others that transform logits fail `_head_matches`."""
    config = hf_model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    lm_head = hf_model.get_output_embeddings()
    multiplier = getattr(text, "logit_scale", None) if config.model_type.startswith(
        "cohere") else None
    divisor = getattr(text, "logits_scaling", None) if config.model_type.startswith(
        "granite") else None
    return Head(lm_head.weight, lm_head.bias, multiplier, divisor,
                getattr(text, "final_logit_softcapping", None))


@torch.no_grad()
def _head_matches(model: HFCausalLM, head: Head) -> bool:
    """Does head(hidden(ids)) give the model's logits? Eight tokens, eval mode, once."""
    was_training = model.training
    model.eval()
    try:
        ids = (torch.arange(8) % model.vocab_size).unsqueeze(0).to(head.weight.device)
        want = model(ids).float()
        got = head.logits(model.hidden(ids)).float()
    except (AttributeError, RuntimeError, TypeError, ValueError):
        return False  # no base model / hidden state where we look: full logits it is
    finally:
        model.train(was_training)
    tol = 1e-5 if head.weight.dtype == torch.float32 else 1e-2
    return want.shape == got.shape and bool((want - got).abs().max()
                                            <= tol * (want.abs().max() + 1.0))


def _hub_or_folder(name: str) -> bool:
    """True for a local folder; a hub id is `name` or `org/name`. Anything else that does not
    exist is a path typo, refused before transformers tries the network."""
    if Path(name).is_dir():
        return True
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or not name:
        raise PipelineError(f"hf:{name}: no such folder (a hub model is NAME or ORG/NAME)")
    return False


def load_hf(name: str, device="cpu", trust_remote_code: bool = False):
    from pipeline.models.loaded import LoadedModel, weights_sha256

    transformers = _quiet_transformers()
    device = torch.device(device)
    local = _hub_or_folder(name)
    kw = {"trust_remote_code": trust_remote_code, "local_files_only": local}
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        tok = transformers.AutoTokenizer.from_pretrained(name, **kw)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            name, dtype=dtype, use_safetensors=True, **kw)
    except (OSError, ValueError, ImportError, KeyError) as exc:
        hint = (" - it ships its own code: pass --trust-remote-code if you trust it"
                if "trust_remote_code" in str(exc) else "")
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PipelineError(f"hf:{name}: could not load a causal LM with safetensors weights "
                            f"and a fast tokenizer ({first}){hint}") from None
    if not getattr(tok, "is_fast", False):
        raise PipelineError(f"hf:{name}: its tokenizer is not a fast (tokenizers) tokenizer; "
                            "convert it (tokenizer.json) to label with it")
    wrapped = HFCausalLM(hf_model=model).to(device).eval()
    folder = Path(name) if local else _snapshot(name)
    weights = sorted(folder.glob("*.safetensors"))
    tokenizer = hf_tokenizer(tok, folder, wrapped.vocab_size, name)
    config = {"family": "hf", "model_type": model.config.model_type,
              "vocab_size": wrapped.vocab_size, "context": context_of(model.config)}
    return LoadedModel(wrapped, config, tokenizer, weights_sha256(weights), folder,
                       spec=HF_PREFIX + name, weights_files=weights)


def _snapshot(name: str) -> Path:
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors"]))


def hf_tokenizer(tok, folder: Path, vocab_size: int, name: str):
    """The fast tokenizer as a LoadedTokenizer: its tokenizer.json file, hash, EOS id, and the
    model's logits width as vocab_size (module doc)."""
    from tokenizers import Tokenizer

    from pipeline.io.cache import cache_dir
    from pipeline.io.hashing import sha256_file
    from pipeline.models.tokenizer import LoadedTokenizer, find_eos

    path = folder / TOKENIZER_JSON
    if not path.is_file():  # serialise the fast tokenizer; cache it under its own hash
        tmp = cache_dir() / "tokenizers" / f"{os.getpid()}.json.tmp"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tok.backend_tokenizer.save(str(tmp))
        path = tmp.with_name(f"{sha256_file(tmp)}.json")
        os.replace(tmp, path)
    backend = Tokenizer.from_file(str(path))
    size = backend.get_vocab_size()
    eos = tok.eos_token_id if tok.eos_token_id is not None else find_eos(backend)
    if eos is None:
        raise PipelineError(f"hf:{name}: the tokenizer has no EOS token; packing needs one to "
                            "separate documents")
    if size > vocab_size:
        raise PipelineError(f"hf:{name}: tokenizer has {size} tokens but the model only "
                            f"{vocab_size} logits; the model and tokenizer do not belong together")
    return LoadedTokenizer(backend, path, sha256_file(path), vocab_size, int(eos), size)


