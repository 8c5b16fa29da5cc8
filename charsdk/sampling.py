"""Drawing the next character: temperature, top-k, top-p, inverse CDF — in float64 with no log(0).

The book reweights by `exp(log(p) / T)`; in float32 `log(0)` warns and small temperatures overflow.
`(p / max p) ** (1/T)` is the same distribution up to normalisation, keeps zeros at zero, and at T=0
(1/T = inf) leaves weight only on the most likely character: greedy decoding with no special case.
The uniform numbers come from the caller's seeded numpy generator, so a seed fixes the text.
sampler.onnx (written at export, see train/sampler_graph.py) computes exactly this inside onnxruntime.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class SamplingOptions:
    """One stream's settings; `check` turns user values into this or raises InputError."""

    temperature: float = 0.5  # 0 = greedy
    top_k: int = 0  # keep the k most likely characters; 0 = all
    top_p: float = 1.0  # keep the smallest set whose probability reaches p; 1 = all

    @classmethod
    def check(cls, temperature=0.5, top_k=0, top_p=1.0) -> SamplingOptions:
        try:
            temperature, top_p = float(temperature), float(top_p)
        except (TypeError, ValueError):
            raise InputError("temperature and top_p must be numbers") from None
        if not math.isfinite(temperature) or temperature < 0:
            raise InputError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
        if not (isinstance(top_k, (int, np.integer)) and not isinstance(top_k, bool)) or top_k < 0:
            raise InputError(f"top_k must be an integer >= 0 (0 = no limit), got {top_k!r}")
        if not 0 < top_p <= 1:
            raise InputError(f"top_p must be in (0, 1] (1 = no limit), got {top_p}")
        return cls(temperature, int(top_k), top_p)

    @property
    def inv_temperature(self) -> float:
        return math.inf if self.temperature == 0 else 1.0 / self.temperature

    @property
    def filters(self) -> bool:
        return self.top_k > 0 or self.top_p < 1


def reweight(probs: np.ndarray, inv_temperature, top_k=0, top_p=1.0) -> np.ndarray:
    """Unnormalised weights [B, V] for probs [B, V]; each argument is a scalar or one per row."""
    p = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    inv_t = np.broadcast_to(np.asarray(inv_temperature, np.float64), p.shape[:1])[:, None]
    w = (p / p.max(axis=1, keepdims=True)) ** inv_t
    top_k = np.broadcast_to(np.asarray(top_k, np.int64), p.shape[:1])
    top_p = np.broadcast_to(np.asarray(top_p, np.float64), p.shape[:1])
    if (top_k == 0).all() and (top_p >= 1).all():
        return w
    vocab = p.shape[1]
    k = np.where(top_k == 0, vocab, np.minimum(top_k, vocab))[:, None]
    ranked = -np.sort(-w, axis=1)
    in_k = np.arange(vocab)[None, :] < k
    ranked_k = ranked * in_k
    ranked_p = ranked_k / ranked_k.sum(axis=1, keepdims=True)
    mass_before = np.cumsum(ranked_p, axis=1) - ranked_p
    kept = (mass_before < top_p[:, None]) & in_k
    threshold = np.take_along_axis(ranked, kept.sum(axis=1, keepdims=True) - 1, axis=1)
    return w * (w >= threshold)


def draw(weights: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Inverse CDF, one uniform in [0, 1) per row: the first index where cdf > u * total."""
    cdf = np.cumsum(weights, axis=1)
    return np.argmax(cdf > uniforms[:, None] * cdf[:, -1:], axis=1)


def sample(probs: np.ndarray, options: SamplingOptions, rng: np.random.Generator) -> int:
    """One index drawn from one distribution (O(vocabulary))."""
    weights = reweight(probs, options.inv_temperature, options.top_k, options.top_p)
    return int(draw(weights, np.array([rng.random()]))[0])
