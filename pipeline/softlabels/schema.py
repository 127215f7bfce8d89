"""Column layout and value encodings of format v1 (the contract is docs/FORMAT.md).

One Parquet row = one packed sequence of `seq_len` tokens. Per-position label arrays are stored
flattened in row-major order (position-major, then rank within the position) so a whole row group
decodes with one `numpy` view per column and no per-row Python.
"""

from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

FORMAT_VERSION = "1.0"
FORMAT_MAJOR = 1
LOGPROB_ENCODINGS = {"fp32": pa.float32(), "fp16": pa.float16()}
ID_TYPES = {"uint16": pa.uint16(), "int32": pa.int32()}
MODES = ("topk", "none")

COL_INPUT_IDS = "input_ids"
COL_DOC_IDS = "doc_ids"
COL_TOPK_IDS = "topk_ids"
COL_TOPK_LOGPROBS = "topk_logprobs"
COL_TAIL = "tail_mass"


def id_type_for_vocab(vocab_size: int) -> str:
    """The narrowest id type that holds every id: ids dominate bytes, so this halves a shard."""
    return "uint16" if vocab_size <= np.iinfo(np.uint16).max + 1 else "int32"


@dataclass(frozen=True)
class LabelSpec:
    """What a dataset stores: `mode` topk with k entries per position, or none (tokens only)."""

    mode: str
    k: int
    vocab_size: int
    id_type: str
    logprob_encoding: str = "fp16"

    @property
    def has_labels(self) -> bool:
        return self.mode != "none"

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LabelSpec":
        return cls(**{k: d[k] for k in ("mode", "k", "vocab_size", "id_type", "logprob_encoding")})


def arrow_schema(spec: LabelSpec) -> pa.Schema:
    fields = [pa.field(COL_INPUT_IDS, pa.list_(ID_TYPES[spec.id_type])),
              pa.field(COL_DOC_IDS, pa.list_(pa.string()))]
    if spec.has_labels:
        fields += [pa.field(COL_TOPK_IDS, pa.list_(ID_TYPES[spec.id_type])),
                   pa.field(COL_TOPK_LOGPROBS, pa.list_(LOGPROB_ENCODINGS[spec.logprob_encoding])),
                   pa.field(COL_TAIL, pa.list_(pa.float32()))]
    return pa.schema(fields)


def numpy_dtype(arrow_type: pa.DataType) -> np.dtype:
    return np.dtype(arrow_type.to_pandas_dtype())
