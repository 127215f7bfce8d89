"""The train/validation split rule: a contract other teams rebuild from one sentence.

A document goes to `validation` when the first 8 bytes of sha256(doc_id), read as a big-endian
unsigned integer and divided by 2**64, are below the validation fraction. It depends on the id
alone, so a document lands in the same split in every run, whatever else the corpus holds, and
any team can reproduce it with a hash library (README "pipeline label", docs/FORMAT.md). Kept in
its own module so the rule stays small, obvious and mutation-tested (`make mutation`).
"""

import hashlib

SPLIT_RULE = "sha256(doc_id)[:8] as big-endian uint64 / 2**64 < validation_fraction"


def split_of(doc_id: str, validation_fraction: float) -> str:
    """Deterministic split of one document: the same id always gets the same split."""
    digest = hashlib.sha256(doc_id.encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return "validation" if u < validation_fraction else "train"
