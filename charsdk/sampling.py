"""Drawing the next character: temperature, top-k, top-p and the Gumbel-max trick — with no log(0) warning.

The book reweights by `exp(log(p) / T)`, renormalises and draws. Adding Gumbel noise g to log(p) / T
and taking the argmax is an exact draw from that same distribution (the Gumbel-max trick); multiplied
through by T it is `argmax(log p + T·g)`: no normalisation, no cumulative sum, one pass over the
vocabulary, and T = 0 is the argmax itself (greedy) with no special case. Characters with p = 0 have
log p = -inf and are never drawn. The uniform numbers behind g come from the caller's seeded numpy
generator, so a seed fixes the text. model.onnx (train/graph.py) computes the same noise
and argmax inside onnxruntime.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import InputError

LOG_LOG_CAP = 88.0  # log(-log u) for u = 0 is +inf: cap it so that 0 · cap stays 0 for T = 0


def is_integer(value) -> bool:
    """An int or numpy integer, and not a bool (which Python counts as an int)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


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
            raise InputError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}",
                             "temperature")
        if not is_integer(top_k) or top_k < 0:
            raise InputError(f"top_k must be an integer >= 0 (0 = no limit), got {top_k!r}", "top_k")
        if not 0 < top_p <= 1:
            raise InputError(f"top_p must be in (0, 1] (1 = no limit), got {top_p}", "top_p")
        return cls(temperature, int(top_k), top_p)

    @property
    def inv_temperature(self) -> float:
        return math.inf if self.temperature == 0 else 1.0 / self.temperature

    @property
    def filters(self) -> bool:
        return self.top_k > 0 or self.top_p < 1


def gumbel_noise(uniforms: np.ndarray, temperatures) -> np.ndarray:
    """T·g, float32, for uniforms [B, ...] in [0, 1) and one temperature per row B.

    g = -log(-log u) is a standard Gumbel number; u = 0 gives g = -inf, capped at -88 so that it
    never wins an argmax yet T = 0 still gives exactly 0. model.onnx computes the same on its input."""
    uniforms = np.asarray(uniforms, np.float32)
    temperatures = np.asarray(temperatures, np.float32).reshape((-1,) + (1,) * (uniforms.ndim - 1))
    with np.errstate(divide="ignore"):
        noise = np.log(uniforms)
        np.negative(noise, out=noise)
        np.log(noise, out=noise)  # log(-log u) = -g
    np.minimum(noise, LOG_LOG_CAP, out=noise)
    noise *= -temperatures
    return noise


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities (float64) from logits along the last axis, e.g. model.onnx's read_logits."""
    z = np.asarray(logits, np.float64)
    top = z.max(axis=-1, keepdims=True)
    return z - top - np.log(np.exp(z - top).sum(axis=-1, keepdims=True))


def allowed(probs: np.ndarray, inv_temperature, top_k=0, top_p=1.0) -> np.ndarray:
    """Which characters top-k / top-p keep [B, V], for probs [B, V] reweighted by 1/T.

    Each argument is a scalar or one per row. The weights `(p / max p) ** (1/T)` are the book's
    reweighting up to normalisation, computed in float64 with zeros kept at zero."""
    p = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    inv_t = np.broadcast_to(np.asarray(inv_temperature, np.float64), p.shape[:1])[:, None]
    w = (p / p.max(axis=1, keepdims=True)) ** inv_t
    vocab = p.shape[1]
    top_k = np.broadcast_to(np.asarray(top_k, np.int64), p.shape[:1])
    top_p = np.broadcast_to(np.asarray(top_p, np.float64), p.shape[:1])
    k = np.where(top_k == 0, vocab, np.minimum(top_k, vocab))[:, None]
    ranked = -np.sort(-w, axis=1)
    in_k = np.arange(vocab)[None, :] < k
    ranked_k = ranked * in_k
    ranked_p = ranked_k / ranked_k.sum(axis=1, keepdims=True)
    mass_before = np.cumsum(ranked_p, axis=1) - ranked_p
    kept = (mass_before < top_p[:, None]) & in_k
    threshold = np.take_along_axis(ranked, kept.sum(axis=1, keepdims=True) - 1, axis=1)
    return w >= threshold


def scores(probs: np.ndarray, noise: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """log p + T·g per row of probs [B, V] (float64), -inf where `keep` drops the character."""
    with np.errstate(divide="ignore"):
        result = np.log(np.atleast_2d(np.asarray(probs, np.float64))) + noise
    if keep is not None:
        result = np.where(keep, result, -np.inf)
    return result


def draw(probs: np.ndarray, noise: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """argmax(log p + T·g) per row of probs [B, V], over the characters `keep` allows."""
    return np.argmax(scores(probs, noise, keep), axis=1)


def draw_rows(probs: np.ndarray, uniforms: np.ndarray, options) -> np.ndarray:
    """One index per row of probs [B, V], each row with its own options and uniform numbers [B, V]:
    the rules model.onnx applies in its graph, in numpy (a window model's draw, `sample`)."""
    noise = gumbel_noise(uniforms, [o.temperature for o in options])
    keep = None
    if any(o.filters for o in options):  # top_p 1 as +inf: a cumulative sum may reach 1.0 by rounding
        keep = allowed(probs, [o.inv_temperature for o in options], [o.top_k for o in options],
                       [o.top_p if o.top_p < 1 else np.inf for o in options])
    return draw(probs, noise, keep)


def sample(probs: np.ndarray, options: SamplingOptions, rng: np.random.Generator) -> int:
    """One index drawn from one distribution [V] (O(vocabulary))."""
    return int(draw_rows(np.atleast_2d(probs), rng.random((1, len(probs)), np.float32), [options])[0])
