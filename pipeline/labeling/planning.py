"""Planning a labeling run and committing it: what `pipeline label` records about a dataset.

`plan_corpus` reads, tokenizes and packs the corpus once (each shard's input parked in a
`ShardSpill`) and fingerprints the result; `plan_params` is the one definition of the settings a
plan records, shared by planning and `is_complete` (stages/label.py); `prepare_out` refuses to
mix two plans in one folder and, with --overwrite, removes only files the labeler provably
wrote; `build_manifest` is the index written last, after every shard (its records).
"""

from datetime import UTC, datetime

import pipeline
from pipeline.config.stages import LabelConfig
from pipeline.errors import PipelineError
from pipeline.io.hashing import sha256_json
from pipeline.io.storage import Store
from pipeline.io.uris import redact
from pipeline.labeling import modes as labelmodes
from pipeline.labeling import samples
from pipeline.labeling.corpus import SPLIT_RULE, CorpusSpec, CorpusStats
from pipeline.labeling.packing import ShardSpill, iter_shard_inputs
from pipeline.softlabels import layout, rowgroups
from pipeline.softlabels.layout import PLAN


def plan_params(cfg: LabelConfig, spec, tokenizer_sha256: str | None,
                teacher_sha256: str | None, settings=None) -> dict:
    """Everything a plan.json records about how the dataset was made, except the corpus content
    (which needs a read): the one definition both planning and is_complete use."""
    return {"seq_len": cfg.seq_len, "shard_rows": cfg.shard_rows,
            "validation_fraction": cfg.validation_fraction, "split_rule": SPLIT_RULE,
            "labels": spec.as_dict(), "tokenizer_sha256": tokenizer_sha256,
            "teacher_sha256": teacher_sha256,
            "corpus": {"uri": redact(cfg.corpus), "text_column": cfg.text_column,
                       "id_column": cfg.id_column, "limit_docs": cfg.limit_docs,
                       **({"content_ids": True} if cfg.content_ids else {})},
            **(samples.plan_params(cfg, settings) if settings else {})}


def plan_corpus(cfg, tokenizer, teacher, spec, spill: ShardSpill, settings) -> dict:
    """Read, tokenize and pack the corpus once: the plan, and each shard's input in `spill`."""
    corpus = CorpusSpec(cfg.corpus, cfg.text_column, cfg.id_column)
    stats, sample_stats = CorpusStats(), samples.SampleStats()
    shards = []
    inputs = (iter_shard_inputs(corpus, tokenizer, cfg.seq_len, cfg.shard_rows,
                                cfg.validation_fraction, cfg.limit_docs, stats)
              if settings.legacy else samples.iter_inputs(cfg, tokenizer, settings, stats,
                                                          sample_stats))
    for s in inputs:
        spill.put(s)
        shards.append({"split": s.split, "index": s.index, "rows": int(s.tokens.shape[0]),
                       "input_sha256": s.input_sha256})
    if stats.documents_read == 0:
        raise PipelineError(f"corpus {cfg.corpus} is empty: no non-empty documents "
                            f"({stats.documents_skipped_empty} empty skipped)")
    if not shards:
        raise PipelineError(f"corpus {cfg.corpus} has fewer than --seq-len {cfg.seq_len} tokens; "
                            "use a smaller --seq-len or a bigger corpus")
    params = plan_params(cfg, spec, tokenizer.sha256, teacher.weights_sha256 if teacher else None,
                         settings)
    plan = {"params": params, "shards": shards, "corpus_stats": stats.as_dict()}
    if not settings.legacy:
        plan["sample_stats"] = sample_stats.as_dict()
    plan["fingerprint"] = sha256_json({"params": params, "shards": shards})
    return plan


def prepare_out(store: Store, plan: dict, overwrite: bool) -> None:
    """Refuse to mix two plans in one folder; with --overwrite remove the old dataset, and only
    when every file in the folder is provably one the labeler wrote (softlabels/layout.py)."""
    existing = layout.read_json(store, PLAN)
    if isinstance(existing, dict) and existing.get("fingerprint") == plan["fingerprint"]:
        return
    if foreign := layout.foreign_files(store):
        raise PipelineError(f"--out {store} holds files that are not a dataset of ours (e.g. "
                            f"{foreign[0]}; {len(foreign)} in all) and this tool removes only "
                            "files it wrote; choose a new or empty --out")
    if entries := layout.owned_entries(store):
        if not overwrite:
            raise PipelineError(f"--out {store} already holds a different labeling plan "
                                "(corpus, teacher, tokenizer or options differ); choose another "
                                "--out or pass --overwrite")
        for name in entries:
            store.remove(name)
    store.makedirs()
    store.write_json(PLAN, plan)


def build_manifest(cfg, plan, spec, tokenizer, teacher, records, settings) -> dict:
    splits: dict[str, list] = {}
    for rec in sorted(records, key=lambda r: r["path"]):
        split = rec["path"].split("/")[1]
        entry = {k: rec[k] for k in ("path", "rows", "positions", "bytes", "sha256")}
        # the row-group index, when the record has it (a record of an older labeler has not)
        entry.update({k: rec[k] for k in rowgroups.KEYS if k in rec})
        splits.setdefault(split, []).append(entry)
    positions = sum(r["positions"] for r in records)
    nbytes = sum(r["bytes"] for r in records)
    labeled = sum(r.get("trained_positions", r["positions"]) for r in records)  # 1.3: masked
    mass = (sum(r["topk_mass_sum"] for r in records) / max(labeled, 1)) if spec.has_labels else None
    stats = plan["corpus_stats"]
    return {
        "format_version": spec.format_version,
        "tool": {"name": "softlabel-pipeline", "version": pipeline.__version__},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "plan_fingerprint": plan["fingerprint"],
        "teacher": teacher.describe() if teacher else None,  # its spec redacted there
        "tokenizer": {**tokenizer.describe(), **({"chat_template_sha256": settings.template.sha256}
                                                  if settings.template else {})},
        "corpus": {"uri": redact(cfg.corpus), "fingerprint": sha256_json(
            [s["input_sha256"] for s in plan["shards"]]),
                   "validation_fraction": cfg.validation_fraction, "split_rule": SPLIT_RULE,
                   **{k: stats[k] for k in ("documents_read", "documents_skipped_empty",
                                            "non_utf8_documents", "tokens_dropped", "by_split")}},
        "labels": spec.as_dict(), "seq_len": cfg.seq_len, "splits": splits,
        "summary": {"rows": sum(r["rows"] for r in records), "positions": positions,
                    "bytes": nbytes, "mean_topk_mass": mass,
                    "bytes_per_position": nbytes / max(positions, 1),
                    "bytes_per_entry": nbytes / max(positions * max(spec.k, 1), 1),
                    **labelmodes.summary_extras(spec, records, nbytes)},
        **samples.manifest_fields(settings, plan, records),
    }
