"""`pipeline label --incremental`: plan and commit one dataset version over a grown corpus.

The stage (stages/label.py) loads the teacher and labels; this module decides what to label.
`prepare` compares the corpus with the last version (pipeline/labeling/changes.py), packs only
new material (pipeline/labeling/repack.py: carried tokens, fragments of rows that leave, added
and changed documents) into shards numbered after every shard the dataset ever had, and lists
the old shards that lose rows: each is copied without those rows into a new shard (no teacher:
the surviving rows' labels are copied, `copy_shards`), so removed documents' tokens are
physically absent from the new version's files. `commit` writes the version (versions.py).

Everything is a function of the previous version and the corpus, so a rerun after a kill plans
the same shards under the same names and input hashes, and the stage's completion records keep
what was finished (pipeline/softlabels/writer.py).
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow.parquet as pq

from pipeline.errors import PipelineError
from pipeline.io.hashing import sha256_json
from pipeline.io.storage import Store
from pipeline.labeling import changes, repack
from pipeline.labeling.corpus import CorpusSpec, CorpusStats
from pipeline.labeling.packing import TOKENIZE_BATCH, ShardSpill
from pipeline.labeling.split import split_of
from pipeline.softlabels import layout, versions
from pipeline.softlabels.layout import PLAN, record_relpath
from pipeline.softlabels.writer import write_shard

EMPTY_INDEX = {"docs": {}, "rows": {}, "tails": {}, "next_index": {}}


@dataclass
class Step:
    """One incremental run: the plan, or (nothing changed) the committed manifest."""

    manifest: dict | None = None
    plan: dict = field(default_factory=dict)
    index: dict = field(default_factory=dict)
    live: list[str] = field(default_factory=list)  # old shards that stay, unchanged
    changes: dict = field(default_factory=dict)


def listing_options(cfg) -> dict:
    return {"text_column": cfg.text_column, "id_column": cfg.id_column,
            "content_ids": cfg.content_ids, "limit_docs": cfg.limit_docs}


def unchanged(store: Store, cfg) -> dict | None:
    """The committed manifest when the corpus listing is the labeled one: no corpus byte read."""
    try:
        sha = changes.listing_sha256(cfg.corpus, listing_options(cfg))
    except PipelineError:
        return None  # a missing corpus: the full path says so in its own words
    return versions.unchanged(store, sha)


def prepare(store: Store, cfg, tokenizer, params: dict, spill: ShardSpill) -> Step:
    prev = versions.latest(store)
    if prev is not None:
        versions.check_same_params(store, prev, params)
    elif foreign := layout.foreign_files(store):
        raise PipelineError(f"--out {store} holds files that are not a dataset of ours (e.g. "
                            f"{foreign[0]}); choose a new or empty --out")
    listing = changes.listing_sha256(cfg.corpus, listing_options(cfg))
    if prev is not None and versions.unchanged(store, listing):
        return Step(manifest=prev)
    number = prev["version"]["number"] if prev else 0
    old = versions.read_index(store, number) if prev else EMPTY_INDEX
    corpus = CorpusSpec(cfg.corpus, cfg.text_column, cfg.id_column)
    changes.check_stable_ids(corpus, cfg.content_ids)
    stats = CorpusStats()
    ch = changes.compare(corpus, old["docs"], cfg.content_ids, cfg.limit_docs, stats)
    if prev is not None and not ch:
        versions.mark_seen(store, number, listing)
        return Step(manifest=prev)
    if not ch.docs:
        raise PipelineError(f"corpus {cfg.corpus} is empty: no non-empty documents "
                            f"({stats.documents_skipped_empty} empty skipped)")
    return _plan(store, cfg, tokenizer, params, spill, prev, old, ch, stats, listing)


def _plan(store, cfg, tokenizer, params, spill, prev, old, ch, stats, listing) -> Step:
    gone = ch.gone
    hit = repack.affected_rows(old["rows"], gone)
    packer = repack.Packer(cfg.seq_len, cfg.shard_rows, old["next_index"])
    shards, relabeled = [], {"documents": set(), "positions": 0}
    for shard in _pieces(store, cfg, tokenizer, packer, old, hit, ch, relabeled):
        spill.put(shard)
        shards.append({"split": shard.split, "index": shard.index,
                       "rows": int(shard.tokens.shape[0]), "input_sha256": shard.input_sha256})
    entries = {e["path"]: e for es in (prev or {}).get("splits", {}).values() for e in es}
    copies, rows = _copies(hit, old["rows"], entries, packer)
    rows.update({rel: spans for rel, spans in old["rows"].items() if rel not in hit})
    rows.update(packer.spans)
    index = {"docs": ch.docs, "rows": rows, "tails": packer.tails(),
             "next_index": packer.next_index}
    dropped = sum(len(h) for h in hit.values())
    summary = {**ch.counts(), "documents_relabeled": len(relabeled["documents"]),
               "positions_relabeled": relabeled["positions"], "rows_dropped": dropped,
               "rows_copied": sum(len(c["kept"]) for c in copies),
               "shards_added": sorted(layout.shard_relpath(s["split"], s["index"])
                                      for s in shards + copies),
               "shards_removed": sorted(hit)}
    plan = {"params": params, "shards": shards, "copies": copies, "version": 1 + (
        prev["version"]["number"] if prev else 0), "corpus_listing_sha256": listing,
            "corpus_stats": _stats(stats, ch.docs, index["tails"], cfg.validation_fraction)}
    plan["fingerprint"] = sha256_json({k: plan[k] for k in ("params", "shards", "copies",
                                                            "version")})
    store.makedirs()
    store.write_json(PLAN, plan)
    live = sorted(rel for rel in entries if rel not in hit)
    return Step(plan=plan, index=index, live=live, changes=summary)


def _pieces(store, cfg, tokenizer, packer, old, hit, ch, relabeled) -> Iterator:
    """Planned shards from carried tokens, fragments, then new documents, in that order."""
    gone = ch.gone
    for split, pieces in sorted(old["tails"].items()):
        for doc_id, tokens in pieces:
            if doc_id not in gone:
                yield from packer.add(split, doc_id, tokens)
    for rel in sorted(hit):
        split = rel.split("/")[1]
        tokens = repack.read_tokens(store, rel)
        for doc_id, piece in repack.fragments(tokens, old["rows"][rel], hit[rel], gone):
            relabeled["documents"].add(doc_id)
            relabeled["positions"] += len(piece)
            yield from packer.add(split, doc_id, piece)
    ids = list(ch.texts)
    for lo in range(0, len(ids), TOKENIZE_BATCH):
        batch = ids[lo:lo + TOKENIZE_BATCH]
        for doc_id, encoded in zip(batch, tokenizer.encode_batch([ch.texts[d] for d in batch])):
            split = split_of(doc_id, cfg.validation_fraction)
            yield from packer.add(split, doc_id, [*encoded, tokenizer.eos_id])
    yield from packer.finish()


def _copies(hit, old_rows, entries, packer) -> tuple[list[dict], dict]:
    """Each old shard that loses rows, copied without them under a new number (no teacher)."""
    copies, rows = [], {}
    for rel in sorted(hit):
        kept = [i for i in range(len(old_rows[rel])) if i not in set(hit[rel])]
        if not kept:
            continue
        split = rel.split("/")[1]
        index = packer.next_index[split]
        packer.next_index[split] += 1
        copies.append({"split": split, "index": index, "rows": len(kept), "source": rel,
                       "kept": kept, "input_sha256": sha256_json(
                           {"copy_of": entries[rel]["sha256"], "rows": kept})})
        rows[layout.shard_relpath(split, index)] = [old_rows[rel][i] for i in kept]
    return copies, rows


def _stats(stats: CorpusStats, docs: dict, tails: dict, fraction: float) -> dict:
    by_split: dict[str, int] = {}
    for doc_id in docs:
        split = split_of(doc_id, fraction)
        by_split[split] = by_split.get(split, 0) + 1
    out = stats.as_dict()
    out.update(documents_read=len(docs), by_split=by_split,
               tokens_dropped=sum(len(t) for ps in tails.values() for _, t in ps))
    return out


def copy_shards(store: Store, step: Step, kv: dict, row_group_rows: int,
                completed: Callable[[Store, dict], dict | None]) -> list[dict]:
    """Write (or find finished) the copies of shards that lose rows."""
    records = []
    for c in step.plan["copies"]:
        rec = completed(store, c)
        if rec is None:
            table = pq.read_table(store.input_file(c["source"])).take(c["kept"])
            rec = write_shard(store, c["split"], c["index"], table, kv, row_group_rows,
                              c["input_sha256"])
        records.append(rec)
    return records


def live_records(store: Store, step: Step) -> list[dict]:
    """The completion records of the old shards the new version keeps as they are."""
    out = []
    for rel in step.live:
        split, name = rel.split("/")[1:3]
        rec = layout.read_json(store, record_relpath(split, int(name[5:10])))
        if not isinstance(rec, dict) or rec.get("path") != rel:
            raise PipelineError(f"{store.locate(rel)}: its completion record is missing; the "
                                "dataset cannot take a new version (relabel into a new --out)")
        out.append(rec)
    return out


def commit(store: Store, step: Step, manifest: dict, before_last=None) -> dict:
    """Stamp the manifest with its version block (format 1.4) and commit it."""
    number = step.plan["version"]
    manifest = {**manifest, "format_version": versions.FORMAT_VERSION, "version": {
        "number": number, "parent": number - 1 or None, "params": step.plan["params"],
        "corpus_listing_sha256": step.plan["corpus_listing_sha256"],
        "index": layout.index_relpath(number), "changes": step.changes,
        "committed_at": datetime.now(UTC).isoformat(timespec="seconds")}}
    return versions.commit(store, manifest, step.index, before_last)
