"""List corpora ("one item per line": names, words, titles): the training items as a compact record beside
the model, so that a shipped model tells a new item from a copied one without its corpus.

The record is the sorted 64-bit BLAKE2b hashes of the training part's distinct lines (the held-out part's
lines count as new: no model saw them), one file named in vocab.json. A new item is taken for a training
one only when its hash collides with one of theirs: at most count / 2**64 of the time (for 100,000 items,
5e-15).
"""

from __future__ import annotations

import hashlib
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ModelError

HASH_BYTES = 8
MIN_ITEMS = 50  # fewer lines than this are a text, not a list
MAX_MEDIAN_CHARS = 40  # a list's lines are short


def item_hash(item: str) -> int:
    return int.from_bytes(hashlib.blake2b(item.encode("utf-8"), digest_size=HASH_BYTES).digest(), "little")


def list_items(text: str) -> list[str] | None:
    """The lines of a one-item-per-line text, or None for running text (few lines, or long ones)."""
    lines = [line for line in text.split("\n") if line.strip()]
    if len(lines) < MIN_ITEMS or statistics.median(len(line) for line in lines) > MAX_MEDIAN_CHARS:
        return None
    return lines


@dataclass(frozen=True)
class ItemRecord:
    hashes: np.ndarray  # sorted, distinct uint64

    @classmethod
    def of(cls, items) -> ItemRecord:
        return cls(np.unique(np.array([item_hash(i) for i in items], np.uint64)))

    @classmethod
    def load(cls, path: Path, sha256: str) -> ItemRecord:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelError(f"{path} cannot be read ({exc.strerror}): re-export the model") from None
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ModelError(f"{path} does not match the sha256 vocab.json records: re-export the model")
        return cls(np.frombuffer(data, "<u8"))

    def save(self, directory: Path) -> dict:
        """Write the record as items-<sha256 prefix>.bin in `directory`: what vocab.json's `items` holds."""
        data = self.hashes.astype("<u8").tobytes()
        sha256 = hashlib.sha256(data).hexdigest()
        name = f"items-{sha256[:12]}.bin"
        (directory / name).write_bytes(data)
        return {"file": name, "sha256": sha256, "count": len(self.hashes), "hash": "blake2b-64"}

    def __contains__(self, item: str) -> bool:
        h = np.uint64(item_hash(item))
        at = np.searchsorted(self.hashes, h)
        return bool(at < len(self.hashes) and self.hashes[at] == h)

    @property
    def false_positive_rate(self) -> float:
        """The chance that a new item is taken for a training one."""
        return len(self.hashes) / 2.0**64
