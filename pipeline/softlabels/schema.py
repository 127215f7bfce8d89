"""Column layout and value encodings of format v1 (the contract is docs/FORMAT.md).

One Parquet row = one packed sequence of `seq_len` tokens. Per-position label arrays are stored
flattened in row-major order (position-major, then rank within the position) so a whole row group
decodes with one `numpy` view per column and no per-row Python.

Format 1.1 adds label modes with a variable number of entries per position (`topp`, `sampled`,
with a per-position `label_counts` column) and the `u8` log-probability encoding. A dataset is
stamped with the lowest version whose features it uses, so top-k fp16/fp32 datasets stay 1.0
and readable by 1.0 readers.

Format 1.2 (`labels.id_encoding = "sorted_delta"`, the default for new labeled datasets) stores
each position's entries in ascending id order, ids delta-coded (pipeline/softlabels/sortedids.py),
under new column names: a reader of 1.0/1.1 columns fails on a missing column instead of taking
an id-ordered entry for the teacher's argmax. `--id-encoding rank` still writes 1.0/1.1.

Format 1.3 (chat and packed data) adds two per-position columns under new names: `loss_mask`
(bool: is the position trained on) and, for rows of separately-attending samples,
`segment_ids` (int32: the sample a position belongs to, 1, 2, ...; 0 = padding). In a masked
dataset every labeled mode stores a per-position `label_counts` (0 outside the mask, so
untrained positions hold no entries and cost no entry bytes; top-k positions inside it hold k)
and `tail_mass` is 1 where nothing is stored. A 1.0–1.2 reader refuses a 1.3 shard (its schema
holds columns the reader does not know).
"""

from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

FORMAT_VERSION = "1.3"  # the newest version this code reads and writes
FORMAT_MAJOR = 1
LOGPROB_ENCODINGS = {"fp32": pa.float32(), "fp16": pa.float16(), "u8": pa.uint8()}
ID_TYPES = {"uint16": pa.uint16(), "int32": pa.int32()}
MODES = ("topk", "topp", "sampled", "none")
VARIABLE_MODES = ("topp", "sampled")  # a per-position count of stored entries
U8_DEFAULT_MIN_LOGPROB = -16.0
ID_ENCODINGS = ("rank", "sorted_delta")  # rank: 1.0/1.1 (no manifest field); sorted_delta: 1.2

COL_INPUT_IDS = "input_ids"
COL_DOC_IDS = "doc_ids"
COL_TOPK_IDS = "topk_ids"
COL_TOPK_LOGPROBS = "topk_logprobs"
COL_TAIL = "tail_mass"
COL_COUNTS = "label_counts"  # 1.1, topp/sampled: entries stored at each position
COL_SAMPLE_COUNTS = "sample_counts"  # 1.1, sampled: draws (of N) that hit each stored id
COL_LOG_NORM = "proposal_log_norm"  # 1.1, sampled with T != 1: log sum_v p_v^(1/T)
# 1.2 (sorted_delta): the per-entry columns in ascending id order, under names no 1.1 reader knows
COL_ID_DELTAS = "label_id_deltas"  # per position: smallest id, then gaps to the next id (>= 1)
COL_LABEL_LOGPROBS = "label_logprobs"  # aligned with the ascending ids (rank = their order)
COL_LABEL_SAMPLE_COUNTS = "label_sample_counts"  # sampled: aligned with the ascending ids
COL_LOSS_MASK = "loss_mask"  # 1.3: per position, trained on or not
COL_SEGMENTS = "segment_ids"  # 1.3: per position, which packed sample (0: padding)
SPLIT_COLUMNS = (COL_ID_DELTAS, COL_LABEL_LOGPROBS, COL_TAIL)  # 1.2: BYTE_STREAM_SPLIT on disk


def id_type_for_vocab(vocab_size: int) -> str:
    """The narrowest id type that holds every id: ids dominate bytes, so this halves a shard."""
    return "uint16" if vocab_size <= np.iinfo(np.uint16).max + 1 else "int32"


BASE_FIELDS = ("mode", "k", "vocab_size", "id_type", "logprob_encoding")
# 1.1 fields, present in the manifest only when the mode/encoding uses them (None otherwise)
OPTIONAL_FIELDS = ("top_p", "min_k", "samples", "proposal_temperature", "seed",
                   "logprob_u8_min", "id_encoding",  # id_encoding: 1.2, only "sorted_delta"
                   "loss_mask", "segments")  # 1.3: true when the column exists


@dataclass(frozen=True)
class LabelSpec:
    """What a dataset stores. `k` is the most entries a position holds: exactly k for topk,
    1..k for topp (k = max_k) and sampled (k = min(samples, vocab)); 0 for none (tokens only)."""

    mode: str
    k: int
    vocab_size: int
    id_type: str
    logprob_encoding: str = "fp16"
    top_p: float | None = None  # topp
    min_k: int | None = None  # topp
    samples: int | None = None  # sampled: draws N per position
    proposal_temperature: float | None = None  # sampled: draws come from p^(1/T)
    seed: int | None = None  # sampled
    logprob_u8_min: float | None = None  # u8: the log-probability of code 255
    id_encoding: str | None = None  # 1.2: "sorted_delta"; None: rank order (1.0/1.1)
    loss_mask: bool | None = None  # 1.3: a loss_mask column (None: every position trained)
    segments: bool | None = None  # 1.3: a segment_ids column (None: one causal stream a row)

    @property
    def has_labels(self) -> bool:
        return self.mode != "none"

    @property
    def variable(self) -> bool:
        """Entries per position vary (a label_counts column says how many): topp/sampled, and
        any labeled mode with a loss mask (1.3: 0 entries outside it)."""
        return self.mode in VARIABLE_MODES or bool(self.loss_mask and self.has_labels)

    @property
    def tempered(self) -> bool:
        return self.mode == "sampled" and self.proposal_temperature != 1.0

    @property
    def sorted_ids(self) -> bool:
        """1.2: entries stored in ascending id order, ids delta-coded (sortedids.py)."""
        return self.id_encoding == "sorted_delta"

    @property
    def format_version(self) -> str:
        """The lowest format version that has every feature this dataset uses."""
        if self.loss_mask or self.segments:
            return "1.3"
        if self.sorted_ids:
            return "1.2"
        new = self.mode not in ("topk", "none") or self.logprob_encoding not in ("fp16", "fp32")
        return "1.1" if new else "1.0"

    @property
    def ids_column(self) -> str:
        return COL_ID_DELTAS if self.sorted_ids else COL_TOPK_IDS

    @property
    def logprobs_column(self) -> str:
        return COL_LABEL_LOGPROBS if self.sorted_ids else COL_TOPK_LOGPROBS

    @property
    def sample_counts_column(self) -> str:
        return COL_LABEL_SAMPLE_COUNTS if self.sorted_ids else COL_SAMPLE_COUNTS

    def extras(self) -> dict:
        """The 1.1/1.2 fields this spec sets (empty for a 1.0 dataset)."""
        return {k: getattr(self, k) for k in OPTIONAL_FIELDS if getattr(self, k) is not None}

    def as_dict(self) -> dict:
        d = asdict(self)
        return {**{k: d[k] for k in BASE_FIELDS}, **self.extras()}

    @classmethod
    def from_dict(cls, d: dict) -> "LabelSpec":
        return cls(**{k: d[k] for k in BASE_FIELDS},
                   **{k: d[k] for k in OPTIONAL_FIELDS if k in d})


def count_type(n: int) -> pa.DataType:
    """Narrowest unsigned type for counts up to n (entries per position, draws per id)."""
    return pa.uint8() if n <= np.iinfo(np.uint8).max else pa.uint16()


def arrow_schema(spec: LabelSpec) -> pa.Schema:
    fields = [pa.field(COL_INPUT_IDS, pa.list_(ID_TYPES[spec.id_type])),
              pa.field(COL_DOC_IDS, pa.list_(pa.string()))]
    if spec.has_labels:
        fields += [pa.field(spec.ids_column, pa.list_(ID_TYPES[spec.id_type])),
                   pa.field(spec.logprobs_column,
                            pa.list_(LOGPROB_ENCODINGS[spec.logprob_encoding])),
                   pa.field(COL_TAIL, pa.list_(pa.float32()))]
    if spec.variable:
        fields.append(pa.field(COL_COUNTS, pa.list_(count_type(spec.k))))
    if spec.mode == "sampled":
        fields.append(pa.field(spec.sample_counts_column,
                               pa.list_(count_type(spec.samples or 0))))
    if spec.tempered:
        fields.append(pa.field(COL_LOG_NORM, pa.list_(pa.float32())))
    if spec.loss_mask:
        fields.append(pa.field(COL_LOSS_MASK, pa.list_(pa.bool_())))
    if spec.segments:
        fields.append(pa.field(COL_SEGMENTS, pa.list_(pa.int32())))
    return pa.schema(fields)


def numpy_dtype(arrow_type: pa.DataType) -> np.dtype:
    return np.dtype(arrow_type.to_pandas_dtype())
