"""The row-group index: what planning and verification need, kept in the manifest (format 1.x,
optional shard fields; docs/FORMAT.md "Row-group index").

Why: at 10^5 shards, hashing every shard and opening every Parquet footer before the first
training step reads the whole dataset (terabytes) before any work is done. With the index, a
reader plans from manifest.json alone and verifies each row group when it first reads it, in the
loader worker, overlapped with training. Each shard file is cut into contiguous byte segments,
one per row group (the first also holds the leading magic) and a last one, the footer (metadata,
length, magic); each segment has its sha256 in the manifest. Every byte pyarrow reads is checked
against its segment's hash before pyarrow sees it, so a changed byte is refused naming the shard
and row group, before its rows are used.

Shard entry fields (all three or none):
    row_group_rows    [int]  rows of each row group
    row_group_bytes   [int]  bytes of each row group's segment (the first starts at offset 0)
    row_group_sha256  str    the segments' sha256 hex digests, concatenated: one per row group,
                             then the footer's (the rest of the file, up to `bytes`)
One string rather than a list of them: json.loads of 10^5 entries is ~2x faster so.
"""

import contextlib
import hashlib
import io
from bisect import bisect_right
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import PipelineError

KEYS = ("row_group_rows", "row_group_bytes", "row_group_sha256")
HEX = 64  # characters of one sha256 hex digest
_INT = frozenset({int})  # exactly int: not bool, not float
MISMATCH = ("checksum mismatch with manifest.json (the file changed or is corrupt); "
            "re-download or relabel it")


def _segment_starts(meta: pq.FileMetaData) -> list[int] | None:
    """Byte offsets where row groups 1.. start, then where the footer starts; None for a
    layout the index cannot describe (row groups not in file order)."""
    starts, ends = [], []
    for i in range(meta.num_row_groups):
        rg = meta.row_group(i)
        cols = [rg.column(j) for j in range(rg.num_columns)]
        first = [c.dictionary_page_offset if c.has_dictionary_page and c.dictionary_page_offset
                 else c.data_page_offset for c in cols]
        starts.append(min(first))
        ends.append(max(f + c.total_compressed_size for f, c in zip(first, cols)))
    cuts = starts[1:] + ends[-1:]
    ok = all(a < b for a, b in zip([0, *cuts], cuts)) and all(e <= s for e, s in zip(ends, cuts))
    return cuts if ok else None


def index_file(path: Path) -> dict:
    """{"sha256": whole file, **the index fields} of a finished shard, in one read of it. The
    index fields are left out for a layout they cannot describe (readers then hash the file)."""
    meta = pq.read_metadata(path)
    size = path.stat().st_size
    cuts = _segment_starts(meta) if meta.num_row_groups else []  # no row group: all footer
    if cuts and cuts[-1] >= size:
        cuts = None
    whole, parts, lo = hashlib.sha256(), [], 0
    with open(path, "rb") as f:
        for hi in [*(cuts or []), size]:
            seg = hashlib.sha256()
            while lo < hi:
                block = f.read(min(1 << 20, hi - lo))
                if not block:
                    raise PipelineError(f"{path}: file ended at {lo} bytes while indexing it")
                whole.update(block)
                seg.update(block)
                lo += len(block)
            parts.append(seg.hexdigest())
    out = {"sha256": whole.hexdigest()}
    if cuts is None:  # one segment: the whole file (hashed above)
        return out
    bounds = [0, *cuts]
    rows = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    return {**out, "row_group_rows": rows,
            "row_group_bytes": [b - a for a, b in zip(bounds, bounds[1:])][:len(rows)],
            "row_group_sha256": "".join(parts)}


def check_entry(entry: dict) -> str | None:
    """What is wrong with the shape of a shard entry's index fields (None: absent or well
    formed). Exact types, as for the other shard fields: a reader plans from these numbers.
    Called once per shard at start-up, so kept to a few builtin calls."""
    rows, sizes, hashes = entry.get(KEYS[0]), entry.get(KEYS[1]), entry.get(KEYS[2])
    if rows is None and sizes is None and hashes is None:
        return None
    if not (type(rows) is list and type(sizes) is list and type(hashes) is str
            and len(rows) == len(sizes) and len(hashes) == HEX * (len(rows) + 1)
            and _INT.issuperset(map(type, rows)) and _INT.issuperset(map(type, sizes))):
        return (f"has malformed {', '.join(KEYS)} (lists of ints of equal length, and one "
                f"sha256 hex digest per row group and the footer)")
    if (rows and min(rows) < 0) or (sizes and min(sizes) < 0):
        return "has a negative row_group_rows or row_group_bytes"
    return None  # sums are checked where they are used: planning (rows), opening (bytes)


def plan_units(entries: list[tuple[int, list[int]]]) -> np.ndarray:
    """[(shard index, row group index, rows)] of non-empty row groups, from (shard index,
    row_group_rows) pairs: numpy only, no file opened (10^5 shards in milliseconds)."""
    counts = np.fromiter((len(r) for _, r in entries), dtype=np.int64, count=len(entries))
    total = int(counts.sum())
    shard = np.repeat(np.fromiter((i for i, _ in entries), dtype=np.int64, count=len(entries)),
                      counts)
    rows = np.fromiter((n for _, r in entries for n in r), dtype=np.int64, count=total)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    units = np.stack([shard, np.arange(total, dtype=np.int64) - first, rows], axis=1)
    return units[units[:, 2] > 0]


class VerifiedFile(io.RawIOBase):
    """A shard opened through its index: reads are served from whole segments, each fetched
    once, hashed and compared with the manifest before any byte of it is returned."""

    def __init__(self, raw, rel: str, entry: dict, guard=contextlib.nullcontext):
        super().__init__()
        self.raw, self.rel, self.pos, self.guard = raw, rel, 0, guard
        self.bounds = [0, *np.cumsum(entry["row_group_bytes"], dtype=np.int64).tolist(),
                       entry["bytes"]]
        if self.bounds[-2] >= self.bounds[-1]:
            raise PipelineError(f"shard {rel}: row_group_bytes sum to {self.bounds[-2]}, not "
                                f"less than the file's {entry['bytes']} bytes that the "
                                "manifest says; the dataset is corrupt")
        digests = entry["row_group_sha256"]
        self.hashes = [digests[i:i + HEX] for i in range(0, len(digests), HEX)]
        self.cache: dict[int, bytes] = {}

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = {0: 0, 1: self.pos, 2: self.bounds[-1]}[whence] + offset
        return self.pos

    def segment(self, i: int) -> bytes:
        """Segment i (row group i; the last one is the footer), verified."""
        if i not in self.cache:
            lo, hi = self.bounds[i], self.bounds[i + 1]
            with self.guard():  # object storage: an outage is one line naming the shard
                self.raw.seek(lo)
                data = self.raw.read(hi - lo)
            if len(data) != hi - lo or hashlib.sha256(data).hexdigest() != self.hashes[i]:
                what = "footer" if i == len(self.hashes) - 1 else f"row group {i}"
                raise PipelineError(f"shard {self.rel} {what}: {MISMATCH}")
            self.cache[i] = data
        return self.cache[i]

    def read(self, n: int = -1) -> bytes:
        end = self.bounds[-1] if n is None or n < 0 else min(self.pos + n, self.bounds[-1])
        out = []
        while self.pos < end:
            i = bisect_right(self.bounds, self.pos) - 1
            lo, hi = self.bounds[i], min(self.bounds[i + 1], end)
            out.append(self.segment(i)[self.pos - lo:hi - lo])
            self.pos = hi
        return b"".join(out)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def release(self) -> None:
        """Drop the row groups' bytes (decoded rows are what the caller keeps)."""
        footer = len(self.hashes) - 1
        self.cache = {i: b for i, b in self.cache.items() if i == footer}

    def close(self) -> None:
        self.raw.close()
        super().close()


class VerifiedParquet:
    """A ParquetFile whose row groups are each verified, whole, before pyarrow reads them."""

    def __init__(self, pf: pq.ParquetFile, file: VerifiedFile):
        self.pf, self.file = pf, file

    @property
    def metadata(self) -> pq.FileMetaData:
        return self.pf.metadata

    @property
    def schema_arrow(self) -> pa.Schema:
        return self.pf.schema_arrow

    def read_row_group(self, i: int) -> pa.Table:
        try:
            self.file.segment(i)  # raises naming the shard and row group, before pyarrow reads
            return self.pf.read_row_group(i)
        finally:
            self.file.release()

    def close(self) -> None:
        self.file.close()


def open_verified(raw, rel: str, entry: dict, guard=contextlib.nullcontext) -> VerifiedParquet:
    """A shard over `raw` (a seekable binary file; its reads run inside `guard()`) whose
    footer is verified now and each row group when it is read."""
    try:
        vf = VerifiedFile(raw, rel, entry, guard)
    except PipelineError:
        raw.close()
        raise
    try:
        meta = pq.read_metadata(pa.BufferReader(vf.segment(len(vf.hashes) - 1)))
        return VerifiedParquet(pq.ParquetFile(vf, metadata=meta), vf)
    except PipelineError:
        vf.close()
        raise
    except (pa.ArrowException, OSError) as exc:
        vf.close()
        raise PipelineError(f"shard {rel} is not a readable Parquet file: {exc}") from exc
