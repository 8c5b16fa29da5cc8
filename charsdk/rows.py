"""Rows: what a backend keeps per stream between model calls, as named arrays with one row per stream.

The engine adds, drops, copies and updates streams without knowing what a backend keeps (logits and
LSTM states, a window of characters, a count of characters read): every array's first axis is the
stream, so the same four operations serve every backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Rows:
    arrays: dict[str, np.ndarray]  # name -> [streams, ...]; every array has the same first dimension

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def take(self, index) -> Rows:
        """The rows at `index` (a slice, a boolean mask or integer positions), copied."""
        if isinstance(index, slice):  # a slice of an array is a view: copy it
            return Rows({name: value[index].copy() for name, value in self.arrays.items()})
        return Rows({name: value[index] for name, value in self.arrays.items()})

    def repeat(self, counts) -> Rows:
        """Row i `counts[i]` times (a prompt's rows, once per stream that starts from it)."""
        return Rows({name: np.repeat(value, counts, axis=0) for name, value in self.arrays.items()})

    def put(self, index, rows: Rows) -> None:
        """Write `rows` over the rows at `index`, in place."""
        for name, value in self.arrays.items():
            value[index] = rows.arrays[name]

    @staticmethod
    def concat(parts: Sequence[Rows]) -> Rows:
        return Rows({name: np.concatenate([p.arrays[name] for p in parts]) for name in parts[0].arrays})
