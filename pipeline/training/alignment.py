"""Re-tokenize teacher rows with a student's tokenizer and align the two tokenizations.

Coordinates: a row is a byte string (pipeline/models/tokenbytes.py) in which each special token
(EOS between packed documents) counts as one virtual byte. A position's *end* is the coordinate
just after its token. Teacher position t and student position j are aligned when their ends are
equal: both have read exactly the same bytes and both predict what follows, so the teacher's
label at t is a target for the student at j. Everything else gets CE only.

How a student row is made from a teacher row of L tokens (`StudentRows.row`):
- the row is split at special tokens into segments; each segment's bytes are decoded and
  encoded by the student tokenizer, with the student's EOS where the teacher had one;
- a row may start or end inside a multi-byte UTF-8 character (byte-level tokens can split one):
  those leading/trailing bytes cannot be text, so they are dropped and the student row starts
  after them; the teacher positions there have no aligned partner;
- the row may start mid-word (packing cuts rows anywhere): the teacher also saw the row from its
  first token (labels are per row), so both start at the same byte; the student's first tokens
  simply are the student's tokenization of the partial word;
- the student row is cut at `length` tokens (`[model] context`, default the dataset's seq_len);
  tokens beyond are dropped, with their alignments; a shorter row is padded with the student's
  EOS and those positions are masked out of both terms (`ce_mask`, `kd_pos` = -1).
"""

import numpy as np
from tokenizers import Tokenizer

CONTINUATION = (0x80, 0xC0)  # bytes 10xxxxxx


def align(teacher_ends: np.ndarray, student_ends: np.ndarray) -> np.ndarray:
    """For each student position, the teacher position whose token ends at the same coordinate,
    else -1. Both ends arrays are strictly increasing (one searchsorted, no Python loop)."""
    teacher_ends = np.asarray(teacher_ends, dtype=np.int64)
    student_ends = np.asarray(student_ends, dtype=np.int64)
    at = np.searchsorted(teacher_ends, student_ends)
    hit = at < len(teacher_ends)
    hit[hit] = teacher_ends[at[hit]] == student_ends[hit]
    return np.where(hit, at, -1)


def utf8_trim(data: bytes, first: bool, last: bool) -> tuple[int, int]:
    """(lead, end): data[lead:end] is whole UTF-8 characters. Only the row's first segment can
    start inside a character and only its last can end inside one."""
    lead = 0
    if first:
        while lead < min(3, len(data)) and CONTINUATION[0] <= data[lead] < CONTINUATION[1]:
            lead += 1
    end = len(data)
    if last:
        back = 0
        while back < min(3, end - lead) and CONTINUATION[0] <= data[end - 1 - back] < 0xC0:
            back += 1
        if end - 1 - back >= lead and data[end - 1 - back] >= 0xC0:
            need = 2 if data[end - 1 - back] < 0xE0 else 3 if data[end - 1 - back] < 0xF0 else 4
            if back + 1 < need:  # an incomplete character at the end
                end -= back + 1
    return lead, end


class StudentRows:
    """Teacher rows → student rows and alignments, for one student tokenizer and row length.
    Picklable (DataLoader workers build their batches with it)."""

    def __init__(self, teacher_bytes: list, student: Tokenizer, student_lengths: np.ndarray,
                 student_eos: int, length: int):
        self.teacher_bytes, self.student = teacher_bytes, student
        self.t_len = np.asarray([1 if b is None else len(b) for b in teacher_bytes],
                                dtype=np.int64)
        self.s_len, self.eos, self.length = student_lengths, student_eos, length

    def segments(self, ids: np.ndarray) -> list[tuple[int, str, bool]]:
        """[(start coordinate, text, followed by a special token)] of one teacher row."""
        out, coord, cur, start = [], 0, [], 0
        for i in ids.tolist():
            b = self.teacher_bytes[i]
            if b is None:
                out.append((start, cur, True))
                cur, start = [], coord + 1
            else:
                cur.append(b)
            coord += int(self.t_len[i])
        out.append((start, cur, False))
        texts = []
        for k, (start, parts, eos) in enumerate(out):
            data = b"".join(parts)
            lead, end = utf8_trim(data, first=k == 0, last=k == len(out) - 1)
            texts.append((start + lead, data[lead:end].decode("utf-8"), eos))
        return texts

    def rows(self, ids: np.ndarray, with_ends: bool = False) -> dict[str, np.ndarray]:
        """Student rows for teacher rows ids [B, L]: input_ids, ce_mask, kd_pos [B, length];
        `with_ends`: also each position's end coordinate (-1 on padding), for evaluation."""
        segs = [self.segments(row) for row in ids]
        flat = [t for s in segs for _, t, _ in s]
        enc = iter(e.ids for e in self.student.encode_batch(flat, add_special_tokens=False))
        t_ends = np.cumsum(self.t_len[ids], axis=1)
        out = {"input_ids": np.full((len(ids), self.length), self.eos, dtype=np.int64),
               "ce_mask": np.zeros((len(ids), self.length), dtype=bool),
               "kd_pos": np.full((len(ids), self.length), -1, dtype=np.int64)}
        if with_ends:
            out["ends"] = np.full((len(ids), self.length), -1, dtype=np.int64)
        for b, row in enumerate(segs):
            toks, ends = self._join(row, enc)
            n = min(len(toks), self.length)
            out["input_ids"][b, :n] = toks[:n]
            out["ce_mask"][b, :n - 1] = True
            out["kd_pos"][b, :n] = align(t_ends[b], ends[:n])
            if with_ends:
                out["ends"][b, :n] = ends[:n]
        return out

    def _join(self, row, enc) -> tuple[np.ndarray, np.ndarray]:
        """One row's student ids and their end coordinates."""
        toks, ends = [], []
        for start, _, eos in row:
            seg = np.asarray(next(enc), dtype=np.int64)
            toks.append(seg)
            seg_ends = start + np.cumsum(self.s_len[seg]) if len(seg) else seg
            ends.append(seg_ends)
            if eos:
                toks.append(np.asarray([self.eos]))
                ends.append(np.asarray([(seg_ends[-1] if len(seg) else start) + 1]))
        return np.concatenate(toks), np.concatenate(ends)
