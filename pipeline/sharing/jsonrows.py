"""One row of an imported JSONL file, parsed and checked: the rows `pipeline export --to jsonl`
writes, `{"input_ids": [L], "topk_ids": [L][n], "topk_logprobs": [L][n], "tail_mass": [L]}`
(`tail_mass` optional, `doc_ids` optional).

Another team's file is untrusted input, so each row is checked before anything is written: ids
are integers inside the vocabulary and unique within a position, log-probabilities are finite,
at most 0 and sum (as probabilities) to at most 1, every per-position list has the row's length,
and a position holds either k entries or none (none: not trained on, format 1.3's loss mask). A
refusal names the file, the row (its line number), the column and the position. The checks are
numpy reductions over the row's flattened entries, not Python loops over entries.
"""

import itertools
from dataclasses import dataclass

import numpy as np

from pipeline.errors import PipelineError

# Σ exp(log p) may pass 1 by the rounding of k stored values (fp16: a relative 2^-11 each).
MASS_SLACK = 1e-3
COLUMNS = ("input_ids", "topk_ids", "topk_logprobs", "tail_mass")


@dataclass
class Row:
    """A checked row: tokens [L], per-position entry counts [L] (0 or k), ids and log-probs
    flattened position-major [Σ counts], the tail [L] (None: derived later), doc ids."""

    tokens: np.ndarray
    counts: np.ndarray
    ids: np.ndarray
    logprobs: np.ndarray
    tail: np.ndarray | None
    doc_ids: list[str]


class RowError(PipelineError):
    """A refused row; the message names the file, the row, the column and the fix."""


def _refuse(where: str, column: str, problem: str) -> RowError:
    return RowError(f"{where} column {column}: {problem}; fix the file (or its exporter) and "
                    "import again, nothing was written")


def _numbers(values, where: str, column: str, kind: str) -> np.ndarray:
    """A flat list of JSON numbers as an array of `kind` ("i" integers, "f" finite floats)."""
    try:
        arr = np.asarray(values, dtype=np.float64 if kind == "f" else None)
    except (TypeError, ValueError):
        raise _refuse(where, column, "holds a value that is not a number") from None
    if kind == "i" and arr.size and arr.dtype.kind not in "iu":
        raise _refuse(where, column, "holds a value that is not an integer id")
    if kind == "f" and not np.isfinite(arr).all():
        raise _refuse(where, column, "holds a value that is not a finite number")
    return arr.reshape(-1)


def _per_position(row: dict, column: str, length: int, where: str) -> list[list]:
    values = row.get(column)
    if not isinstance(values, list) or len(values) != length or not all(
            isinstance(p, list) for p in values):
        raise _refuse(where, column, f"must be a list of {length} lists (one per position of "
                                     "input_ids)")
    return values


def _check_ids(ids: np.ndarray, pos: np.ndarray, vocab: int, where: str, column: str) -> None:
    if ids.size and ((bad := (ids < 0) | (ids >= vocab)).any()):
        i = int(np.flatnonzero(bad)[0])
        raise _refuse(where, column, f"id {int(ids[i])} at position {int(pos[i])} is outside "
                                     f"the vocabulary [0, {vocab}) of --tokenizer; import with "
                                     "the tokenizer the labels were made with")
    order = np.lexsort((ids, pos))
    same = (np.diff(pos[order]) == 0) & (np.diff(ids[order]) == 0)
    if same.any():
        i = order[int(np.flatnonzero(same)[0])]
        raise _refuse(where, column, f"id {int(ids[i])} is listed twice at position "
                                     f"{int(pos[i])}")


def _check_distribution(lp: np.ndarray, pos: np.ndarray, length: int, where: str) -> np.ndarray:
    """Log-probabilities ≤ 0 whose probabilities sum to at most 1 at each position; returns
    the stored mass per position [L]."""
    if lp.size and (bad := lp > 0).any():
        i = int(np.flatnonzero(bad)[0])
        raise _refuse(where, "topk_logprobs", f"log-probability {lp[i]:.6g} > 0 at position "
                                              f"{int(pos[i])} (natural-log probabilities are ≤ 0)")
    mass = np.bincount(pos, weights=np.exp(lp), minlength=length)
    if (bad := mass > 1 + MASS_SLACK).any():
        t = int(np.flatnonzero(bad)[0])
        raise _refuse(where, "topk_logprobs", f"the probabilities at position {t} sum to "
                                              f"{mass[t]:.6g} > 1: not a distribution (natural "
                                              "log, temperature 1, one teacher distribution a "
                                              "position)")
    return mass


def _check_tail(row: dict, mass: np.ndarray, where: str) -> np.ndarray | None:
    if row.get("tail_mass") is None:
        return None
    tail = row["tail_mass"]
    if not isinstance(tail, list) or len(tail) != mass.size:
        raise _refuse(where, "tail_mass", f"must be a list of {mass.size} numbers")
    tail = _numbers(tail, where, "tail_mass", "f")
    if (bad := (tail < 0) | (tail > 1) | (tail + mass > 1 + MASS_SLACK)).any():
        t = int(np.flatnonzero(bad)[0])
        raise _refuse(where, "tail_mass", f"{tail[t]:.6g} at position {t} is outside [0, 1 − "
                                          f"stored mass {mass[t]:.6g}]")
    return tail


def _doc_ids(row: dict, default: str, where: str) -> list[str]:
    docs = row.get("doc_ids")
    if docs is None:
        return [default]
    if not isinstance(docs, list) or not all(isinstance(d, str) for d in docs):
        raise _refuse(where, "doc_ids", "must be a list of strings")
    return docs


def parse_row(row, vocab: int, where: str, default_doc: str) -> Row:
    """Check one decoded JSON value (see the module docstring); `where` is "FILE row N"."""
    if not isinstance(row, dict):
        raise RowError(f"{where}: not a JSON object; each line must be one row "
                       f"{{{', '.join(COLUMNS)}}}")
    if not isinstance(row.get("input_ids"), list) or not row["input_ids"]:
        raise _refuse(where, "input_ids", "must be a non-empty list of token ids")
    tokens = _numbers(row["input_ids"], where, "input_ids", "i")
    length = tokens.size
    _check_ids(tokens, np.arange(length), vocab, where, "input_ids")
    ids_lists = _per_position(row, "topk_ids", length, where)
    lp_lists = _per_position(row, "topk_logprobs", length, where)
    counts = np.fromiter(map(len, ids_lists), np.int64, length)
    if (bad := counts != np.fromiter(map(len, lp_lists), np.int64, length)).any():
        t = int(np.flatnonzero(bad)[0])
        raise _refuse(where, "topk_logprobs", f"position {t} has {len(lp_lists[t])} values for "
                                              f"{counts[t]} ids in topk_ids")
    pos = np.repeat(np.arange(length), counts)
    ids = _numbers(list(itertools.chain.from_iterable(ids_lists)), where, "topk_ids", "i")
    _check_ids(ids, pos, vocab, where, "topk_ids")
    lp = _numbers(list(itertools.chain.from_iterable(lp_lists)), where, "topk_logprobs", "f")
    mass = _check_distribution(lp, pos, length, where)
    return Row(tokens, counts, ids.astype(np.int64), lp, _check_tail(row, mass, where),
               _doc_ids(row, default_doc, where))


def derived_tail(row: Row) -> np.ndarray:
    """1 − Σ stored probabilities at each position, clipped to [0, 1] (the slack above)."""
    mass = np.bincount(np.repeat(np.arange(row.counts.size), row.counts),
                       weights=np.exp(row.logprobs), minlength=row.counts.size)
    return np.clip(1.0 - mass, 0.0, 1.0)
