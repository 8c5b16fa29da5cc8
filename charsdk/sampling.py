"""Drawing the next character from the model's distribution.

The book reweights by `exp(log(p) / T)`; in float32 `log(0)` warns and tiny temperatures overflow.
Here the arithmetic is float64, zeros stay zero, and the largest logit is subtracted before `exp`.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import InputError


def check_temperature(temperature: float) -> float:
    temperature = float(temperature)
    if not math.isfinite(temperature) or temperature < 0:
        raise InputError(
            f"temperature must be a finite number >= 0 (0 means greedy), got {temperature}"
        )
    return temperature


def reweight(probs: np.ndarray, temperature: float) -> np.ndarray:
    """The book's temperature rule, p_i^(1/T) renormalised, in float64; T=0 puts all mass on argmax."""
    p = np.asarray(probs, dtype=np.float64)
    if temperature == 0:
        out = np.zeros_like(p)
        out[np.argmax(p)] = 1.0
        return out
    with np.errstate(divide="ignore"):
        logits = np.log(p) / temperature
    logits -= logits.max()
    weights = np.exp(logits)
    return weights / weights.sum()


def sample(probs: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    """One index drawn from `probs` reweighted by `temperature` (inverse CDF, O(len(probs)))."""
    if temperature == 0:
        return int(np.argmax(probs))
    cdf = np.cumsum(reweight(probs, temperature))
    index = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return min(index, len(cdf) - 1)
