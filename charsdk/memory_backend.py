"""A backend whose distributions are a model's mixed with its n-gram memory (charsdk.memory): the engine
runs it like any other, so sampling options, scores, controls, patterns and choices all see the mixture.

The mixture is computed in numpy after each model call, so characters are drawn one call each (as a
window model's are), with the same rules and uniform numbers as every other draw (draw_rows). Each row
keeps the last ORDER characters it has read beside the model's own arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .engine import Backend
from .memory import ORDER, Memory
from .rows import Rows
from .sampling import SamplingOptions, draw_rows

CONTEXT = "memory_context"  # the rows' array of the last ORDER ids read (-1 before the text's start)


class MemoryBackend:
    draws_in_call = False  # one model call per character: the mixture is made outside the model
    masks_in_call = False

    def __init__(self, model: Backend, memory: Memory):
        self.model, self.memory = model, memory
        self.vocab, self.modes = model.vocab, model.modes

    def _model_rows(self, rows: Rows) -> Rows:
        return Rows({name: value for name, value in rows.arrays.items() if name != CONTEXT})

    @staticmethod
    def _with_context(model_rows: Rows, context: np.ndarray) -> Rows:
        return Rows({**model_rows.arrays, CONTEXT: context})

    @staticmethod
    def _read(context: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """The last ORDER ids after reading ids [B, T]."""
        ids = np.asarray(ids, np.int64).reshape(len(context), -1)
        return np.concatenate([context, ids], axis=1)[:, -ORDER:]

    def empty(self, mode: str) -> Rows:
        return self._with_context(self.model.empty(mode), np.full((0, ORDER), -1, np.int64))

    def start(self, prompts: Sequence[np.ndarray], mode: str) -> Rows:
        context = np.full((len(prompts), ORDER), -1, np.int64)
        for row, prompt in zip(context, prompts, strict=True):
            tail = prompt[-ORDER:]
            row[ORDER - len(tail):] = tail
        return self._with_context(self.model.start(prompts, mode), context)

    def next_log_probs(self, rows: Rows) -> np.ndarray:
        q, depth = self.memory.distributions(rows[CONTEXT])
        return self.memory.mix(self.model.next_log_probs(self._model_rows(rows)), q, depth[:, None])

    def next_logits(self, rows: Rows) -> np.ndarray:
        """The mixture's log-probabilities as logits (what controls change)."""
        return self.next_log_probs(rows)

    def advance(self, rows: Rows, ids: np.ndarray) -> Rows:
        return self._with_context(self.model.advance(self._model_rows(rows), ids),
                                  self._read(rows[CONTEXT], ids))

    def step(self, rows: Rows, uniforms: np.ndarray, options: Sequence[SamplingOptions],
             scored: bool = False, automaton=None) -> tuple[np.ndarray, Rows, np.ndarray | None]:
        """Per character: the mixture, the draw, then the model reads what was drawn."""
        k = uniforms.shape[1]
        drawn = np.empty((k, len(rows)), np.int64)
        log_p = np.empty((k, len(rows), self.vocab.size)) if scored else None
        for step in range(k):
            mixed = self.next_log_probs(rows)
            drawn[step] = draw_rows(np.exp(mixed), uniforms[:, step], options)
            if scored:
                log_p[step] = mixed
            rows = self.advance(rows, drawn[step][:, None])
        return drawn, rows, log_p

    def log_probs(self, ids: np.ndarray, mode: str, first: int,
                  progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        q, depth = self.memory.char_probs(ids, first)
        return self.memory.mix(self.model.log_probs(ids, mode, first, progress), q, depth)

    def log_distributions(self, ids: np.ndarray, mode: str, first: int) -> np.ndarray:
        contexts = np.concatenate([np.full(ORDER, -1, np.int64), ids])
        positions = np.arange(first, len(ids))
        q, depth = self.memory.distributions(contexts[positions[:, None] + np.arange(ORDER)])
        return self.memory.mix(self.model.log_distributions(ids, mode, first), q, depth[:, None])
