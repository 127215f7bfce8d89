"""How a corpus becomes samples and rows: the `--pack`, `--train-on`, `--add-special-tokens`,
`--overlong` and chat options resolved once, and the sample stream they describe.

Why one place: planning (stages/label.py), the completion check of `pipeline run` and the
manifest must agree on what the options mean, and on when a dataset is the 1.0–1.2 layout
(plain text, `--pack concat`, every position trained, no special tokens: documents joined by
EOS, pipeline/labeling/packing.py, unchanged bytes and plan) and when it is format 1.3 (a loss
mask and, for `none`/`packed`, segment ids: pipeline/labeling/rows.py).

Defaults: conversations are packed with per-sample attention and trained on assistant tokens
only; plain text keeps the 1.x layout. `--add-special-tokens auto` is what the tokenizer's own
post-processor does for a plain-text sample (BOS where the tokenizer adds one; EOS appended when
it does not end the sample), and nothing for a conversation, whose template writes its own
BOS/EOS (as transformers' apply_chat_template assumes); `yes`/`no` force it.
"""

from collections.abc import Iterator
from dataclasses import dataclass, replace
from itertools import islice

import numpy as np

from pipeline.errors import PipelineError
from pipeline.labeling import chat
from pipeline.labeling.conversations import (
    ConversationSpec,
    check_columns,
    is_conversation,
    iter_conversations,
)
from pipeline.labeling.corpus import CorpusSpec, CorpusStats, iter_documents, split_of
from pipeline.labeling.rows import Sample, SampleStats, iter_sample_shards
from pipeline.softlabels import schema as S

PAD_CANDIDATES = ("<|pad|>", "<pad>", "[PAD]")
BATCH = 64


@dataclass(frozen=True)
class SampleSettings:
    chat: bool
    pack: str
    train_on: str
    add_special_tokens: bool
    overlong: str
    pad_id: int
    template: chat.ChatTemplate | None = None

    @property
    def legacy(self) -> bool:
        """The 1.0–1.2 layout: planned by packing.py, no 1.3 column."""
        return (not self.chat and self.pack == "concat" and self.train_on == "all"
                and not self.add_special_tokens)

    def plan_dict(self) -> dict:
        """What the plan records (the template by hash: labels depend on every byte of it)."""
        d = {k: getattr(self, k) for k in ("chat", "pack", "train_on", "add_special_tokens",
                                           "overlong", "pad_id")}
        d["chat_template_sha256"] = self.template.sha256 if self.template else None
        return d

    def spec(self, spec: S.LabelSpec) -> S.LabelSpec:
        """The dataset's LabelSpec with the 1.3 columns these settings need."""
        if self.legacy:
            return spec
        return replace(spec, loss_mask=True, segments=True if self.pack != "concat" else None)


def _pad_id(tokenizer) -> int:
    tok = tokenizer.tokenizer
    found = (tok.token_to_id(t) for t in PAD_CANDIDATES)
    return next((i for i in found if i is not None), tokenizer.eos_id)


def resolve(cfg, tokenizer) -> SampleSettings:
    """The settings of a LabelConfig (one-line refusals for options that do not combine)."""
    is_chat = is_conversation(cfg.corpus, cfg.messages_column, cfg.prompt_column,
                              cfg.response_column)
    pack = cfg.pack or ("packed" if is_chat else "concat")
    train_on = cfg.train_on or ("assistant" if is_chat else "all")
    if not is_chat and train_on != "all":
        raise PipelineError(f"--train-on {train_on} needs a conversation corpus "
                            "(--messages-column, or --prompt-column and --response-column)")
    if not is_chat and cfg.chat_template:
        raise PipelineError("--chat-template applies to conversation corpora; add "
                            "--messages-column (or --prompt-column/--response-column)")
    if is_chat:
        check_columns(_conversation_spec(cfg))
    add = {"yes": True, "no": False}.get(cfg.add_special_tokens, not is_chat and pack != "concat")
    template = (chat.load_template(cfg.chat_template, tokenizer.path.parent, tokenizer)
                if is_chat else None)
    return SampleSettings(is_chat, pack, train_on, add, cfg.overlong, _pad_id(tokenizer),
                          template)


def _conversation_spec(cfg) -> ConversationSpec:
    return ConversationSpec(cfg.corpus, cfg.messages_column, cfg.prompt_column,
                            cfg.response_column, cfg.id_column)


def _text_samples(cfg, tokenizer, add: bool, stats: CorpusStats) -> Iterator[Sample]:
    docs = islice(iter_documents(CorpusSpec(cfg.corpus, cfg.text_column, cfg.id_column),
                                 stats), cfg.limit_docs)
    eos = tokenizer.eos_id
    while batch := list(islice(docs, BATCH)):
        encoded = tokenizer.tokenizer.encode_batch([t for _, t in batch], add_special_tokens=add)
        for (doc_id, _), enc in zip(batch, encoded):
            ids = enc.ids if enc.ids and enc.ids[-1] == eos else [*enc.ids, eos]
            mask = np.ones(len(ids), dtype=bool)
            mask[-1] = False
            yield Sample(doc_id, np.asarray(ids, dtype=np.int32), mask, f"document {doc_id}")


def _chat_samples(cfg, tokenizer, settings: SampleSettings,
                  stats: CorpusStats) -> Iterator[Sample]:
    rows = islice(iter_conversations(_conversation_spec(cfg), stats), cfg.limit_docs)
    for doc_id, messages, where in rows:
        try:
            checked = chat.check_messages(messages, settings.train_on)
            ids, mask = chat.encode_conversation(settings.template, tokenizer, checked,
                                                 settings.train_on, settings.add_special_tokens)
        except chat.ChatError as exc:
            raise PipelineError(f"{where}: {exc}") from None
        yield Sample(doc_id, ids, mask, where)


def iter_inputs(cfg, tokenizer, settings: SampleSettings, stats: CorpusStats,
                sample_stats: SampleStats):
    """The planned ShardInputs of a 1.3 dataset (settings not legacy)."""
    samples = (_chat_samples(cfg, tokenizer, settings, stats) if settings.chat
               else _text_samples(cfg, tokenizer, settings.add_special_tokens, stats))

    def split(doc_id: str) -> str:
        name = split_of(doc_id, cfg.validation_fraction)
        stats.by_split[name] = stats.by_split.get(name, 0) + 1
        return name

    yield from iter_sample_shards(samples, split, cfg.seq_len, cfg.shard_rows, settings.pack,
                                  settings.overlong, settings.pad_id, sample_stats)
    if sample_stats.samples == 0 and stats.documents_read:
        st = sample_stats
        raise PipelineError(f"corpus {cfg.corpus}: no sample has a position left to train on "
                            f"({st.dropped_no_target} without one, {st.truncated} truncated to "
                            f"--seq-len {cfg.seq_len}, {st.dropped_overlong} dropped as longer); "
                            "raise --seq-len, or check --train-on")


def plan_params(cfg, settings: SampleSettings) -> dict:
    """What a 1.3 plan adds to its params (nothing for the 1.0–1.2 layout: old plans stay)."""
    if settings.legacy:
        return {}
    columns = {k: getattr(cfg, k) for k in ("messages_column", "prompt_column",
                                            "response_column") if getattr(cfg, k)}
    return {"samples": settings.plan_dict(), "corpus_columns": columns}


def manifest_fields(settings: SampleSettings, plan: dict, records: list[dict]) -> dict:
    """The manifest's `samples` section (1.3): the options, the template (text and hash, so a
    student can be served with it), the counts of truncated and skipped samples, and how many
    positions are trained on (and hold labels)."""
    if settings.legacy:
        return {}
    positions = sum(r["positions"] for r in records)
    trained = sum(r.get("trained_positions", 0) for r in records)
    return {"samples": {**settings.plan_dict(),
                        "chat_template": settings.template.describe() if settings.template
                        else None, **plan.get("sample_stats", {}),
                        "positions": positions, "trained_fraction": trained / max(positions, 1)}}


def local_settings(cfg, tokenizer_path) -> SampleSettings | None:
    """The settings `resolve` would give, from a local tokenizer file (for the cheap completion
    check of `pipeline run`); None when that cannot be done without loading more."""
    from pipeline.models.tokenizer import load_tokenizer

    try:
        return resolve(cfg, load_tokenizer(tokenizer_path))
    except PipelineError:
        return None
