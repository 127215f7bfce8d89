"""Hugging Face `tokenizers` JSON tokenizers: load, hash, train.

The tokenizer is part of the dataset contract: its sha256 goes into the manifest and a student
with a different tokenizer is refused, because token ids only mean something under one vocabulary.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from pipeline.errors import PipelineError
from pipeline.io.hashing import sha256_file

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
# End-of-text tokens of common tokenizers (ours first): the one found joins packed documents.
EOS_CANDIDATES = (EOS_TOKEN, "</s>", "<|end_of_text|>", "<eos>")


@dataclass
class LoadedTokenizer:
    tokenizer: Tokenizer
    path: Path
    sha256: str
    vocab_size: int
    eos_id: int
    # the tokenizer's own size when the model's vocabulary is larger (padded embeddings of a
    # Hugging Face model): ids in [tokenizer_size, vocab_size) are outputs, never inputs
    tokenizer_size: int | None = None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def describe(self) -> dict:
        d = {"sha256": self.sha256, "vocab_size": self.vocab_size,
             "special_ids": {"eos": self.eos_id}}
        if self.tokenizer_size is not None and self.tokenizer_size != self.vocab_size:
            d["tokenizer_size"] = self.tokenizer_size
        return d


def find_eos(tok: Tokenizer) -> int | None:
    """The id of the first end-of-text token (EOS_CANDIDATES) the tokenizer has, else None."""
    return next((i for t in EOS_CANDIDATES if (i := tok.token_to_id(t)) is not None), None)


def load_tokenizer(path: str | Path) -> LoadedTokenizer:
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"tokenizer file {path} not found: pass a tokenizers JSON file "
                            "(make one with `pipeline tokenizer train`)")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
        raise PipelineError(f"tokenizer file {path} is not a valid tokenizers JSON: {exc}") from exc
    eos = find_eos(tok)
    if eos is None:
        raise PipelineError(f"tokenizer {path} has no {EOS_TOKEN} token (nor any of "
                            f"{list(EOS_CANDIDATES[1:])}): it is needed to separate packed "
                            "documents; retrain it with `pipeline tokenizer train`")
    return LoadedTokenizer(tok, path, sha256_file(path), tok.get_vocab_size(), eos)


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, out: str | Path) -> LoadedTokenizer:
    """Train a byte-level BPE tokenizer (GPT-2 style) and save it as one JSON file."""
    if vocab_size < 300:
        raise PipelineError(f"--vocab-size {vocab_size} is too small: byte-level BPE needs at "
                            "least 256 byte tokens plus specials; use >= 300")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out))
    return load_tokenizer(out)
