"""What changed in a corpus since a dataset version: cheap first, exact second.

Why two steps: a scheduled job reruns every night over a corpus that mostly did not change.
First the file listing (path, size, mtime locally, ETag on object storage) is fingerprinted; an
equal fingerprint means the corpus is the one already labeled, and neither the corpus bytes nor
the teacher are touched. When the listing differs, every document is read and hashed (blake2b of
its text) and compared with the version's document index: that decides, per document, added,
changed, removed or unchanged (a touched but unchanged file changes nothing).

A document's identity is its id. Incremental labeling needs ids that do not move when another
document is added or deleted: an --id-column, ids derived from the content (--content-ids), or
the file path of a .txt document. The default `file:row` of a table shifts on a deleted row, and
since the split is a hash of the id, validation documents would leak into train: refused.
"""

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice

from pipeline.errors import PipelineError
from pipeline.io.hashing import sha256_json
from pipeline.labeling.corpus import BUILTIN, CorpusSpec, CorpusStats, iter_documents, resolve_files

CONTENT_ID_PREFIX = "sha:"


def content_hash(text: str) -> str:
    """What a document's content is compared by (16 bytes: collisions are not a concern)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def _stamp(file) -> list:
    if hasattr(file, "stamp"):  # an object: size and ETag
        return file.stamp()
    st = file.stat()
    return [st.st_size, st.st_mtime_ns]


def listing(uri: str) -> list[list]:
    """[relative name, size, mtime or ETag] of every corpus file: no file is opened."""
    root, files = resolve_files(uri)
    out = []
    for f in files:
        rel = f.relative_to(root).as_posix() if f.is_relative_to(root) else str(f)
        out.append([rel, *_stamp(f)])
    return out


def listing_sha256(uri: str, options: dict) -> str:
    """The corpus fingerprint that needs no read: the listing plus how it is read."""
    return sha256_json({"files": listing(uri), "options": options})


def check_stable_ids(corpus: CorpusSpec, content_ids: bool) -> None:
    """Refuse `file:row` ids (they move when a row is deleted), naming a file and the fix."""
    if corpus.id_column or content_ids or corpus.uri in BUILTIN:
        return
    _, files = resolve_files(corpus.uri)
    tables = [f for f in files if f.suffix != ".txt"]
    if tables:
        raise PipelineError(f"--incremental needs stable document ids, but {tables[0]} is a table "
                            "whose ids would be file:row (they shift when a row is deleted); "
                            "pass --id-column COLUMN, or --content-ids to derive ids from the "
                            "text")


@dataclass
class Changes:
    """The per-document comparison of a corpus with a version's document index."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)  # added and changed documents only
    docs: dict[str, str] = field(default_factory=dict)  # every live id → content hash

    @property
    def gone(self) -> set[str]:
        """Documents whose old tokens must leave the dataset."""
        return set(self.removed) | set(self.changed)

    def counts(self) -> dict:
        return {"documents_added": len(self.added), "documents_changed": len(self.changed),
                "documents_removed": len(self.removed)}

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)


def iter_hashed(corpus: CorpusSpec, content_ids: bool, limit: int | None,
                stats: CorpusStats) -> Iterator[tuple[str, str, str]]:
    """(id, content hash, text) of every document in corpus order."""
    seen: set[str] = set()
    for doc_id, text in islice(iter_documents(corpus, stats), limit):
        digest = content_hash(text)
        if content_ids:
            doc_id = CONTENT_ID_PREFIX + digest
            if doc_id in seen:
                stats.documents_read -= 1  # the same document again, not a new one
                continue
            seen.add(doc_id)
        yield doc_id, digest, text


def compare(corpus: CorpusSpec, old: dict[str, str], content_ids: bool, limit: int | None,
            stats: CorpusStats) -> Changes:
    """Read the corpus once; keep the text of added and changed documents only."""
    ch = Changes()
    for doc_id, digest, text in iter_hashed(corpus, content_ids, limit, stats):
        ch.docs[doc_id] = digest
        before = old.get(doc_id)
        if before == digest:
            continue
        (ch.added if before is None else ch.changed).append(doc_id)
        ch.texts[doc_id] = text
    ch.removed = [d for d in old if d not in ch.docs]
    return ch
