"""Sampling controls that depend on what a stream has drawn: OpenAI's presence and frequency penalties,
Hugging Face's (and llama.cpp's) repetition penalty over a window of recent characters, and a bias per
character (OpenAI's logit_bias; -100 bans a character).

They change the logits before each draw, so a stream that uses any of them is stepped one character per
model call by the engine, its draw made in numpy by charsdk.sampling with the same uniform numbers; a
stream that uses none is drawn inside the graph as before, at full speed.

The rules, on the logits z of the next character (the model's own: charsdk's graph gives its logits; a
window model its logits, or log-probabilities when it outputs probabilities):
- `logit_bias`: z[c] += bias[c], each bias in [-100, 100]; -100 (or less after other rules) never drawn.
- `presence_penalty` p and `frequency_penalty` f, in [-2, 2] as OpenAI's API takes them, over the
  characters this stream has generated (not the prompt): z[c] -= f * count[c] + p * (count[c] > 0).
- `repetition_penalty` r > 0 (1 = off) over the last `repetition_window` characters read (prompt included,
  as llama.cpp's repeat_last_n): z[c] = z[c] / r if z[c] > 0 else z[c] * r, once per character present.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .sampling import is_integer
from .vocab import Vocab

BAN = -100.0  # a bias at which a character is never drawn
REPETITION_WINDOW = 64  # llama.cpp's repeat_last_n default


@dataclass(frozen=True, eq=False)
class Controls:
    bias: np.ndarray | None  # [V] added to the logits, or None
    presence: float = 0.0
    frequency: float = 0.0
    repetition: float = 1.0
    window: int = REPETITION_WINDOW
    banned: np.ndarray | None = None  # [V] bool: biased at BAN or below

    @staticmethod
    def check(vocab: Vocab, logit_bias: Mapping | None = None, presence_penalty: float = 0.0,
              frequency_penalty: float = 0.0, repetition_penalty: float = 1.0,
              repetition_window: int = REPETITION_WINDOW) -> Controls | None:
        """The controls (InputError naming the argument), or None when all are neutral."""
        presence = _number(presence_penalty, "presence_penalty", -2.0, 2.0)
        frequency = _number(frequency_penalty, "frequency_penalty", -2.0, 2.0)
        repetition = _number(repetition_penalty, "repetition_penalty", 0.0, math.inf, open_low=True)
        if not is_integer(repetition_window) or repetition_window < 1:
            raise InputError(f"repetition_window must be an integer >= 1, got {repetition_window!r}",
                             "repetition_window")
        bias = _bias(vocab, logit_bias) if logit_bias else None
        if bias is None and presence == 0 and frequency == 0 and repetition == 1:
            return None
        return Controls(bias, presence, frequency, repetition, int(repetition_window),
                        None if bias is None else bias <= BAN)

    def apply(self, logits: np.ndarray, counts: np.ndarray, recent: Sequence[int]) -> np.ndarray:
        """One stream's logits [V] (float64) after the controls: `counts` [V] of its generated characters,
        `recent` the ids it has read last (its window)."""
        z = np.array(logits, np.float64)
        if self.repetition != 1 and len(recent):
            seen = np.unique(np.asarray(recent[-self.window:], np.int64))
            z[seen] = np.where(z[seen] > 0, z[seen] / self.repetition, z[seen] * self.repetition)
        if self.frequency or self.presence:
            z -= self.frequency * counts + self.presence * (counts > 0)
        if self.bias is not None:
            z += self.bias
            z[self.banned] = -np.inf
        return z


def _number(value, name: str, low: float, high: float, open_low: bool = False) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}", name) from None
    if isinstance(value, bool) or not math.isfinite(number) or number > high or (
            number <= low if open_low else number < low):
        span = f"> {low:g}" if open_low and high == math.inf else f"from {low:g} to {high:g}"
        raise InputError(f"{name} must be a number {span}, got {value!r}", name)
    return number


def _bias(vocab: Vocab, logit_bias: Mapping) -> np.ndarray:
    """[V] from {character or id: bias}: keys may be characters, ids, or ids as strings (OpenAI's JSON)."""
    if not isinstance(logit_bias, Mapping):
        raise InputError("logit_bias must be a mapping of characters (or their ids) to biases", "logit_bias")
    bias = np.zeros(vocab.size)
    for key, value in logit_bias.items():
        index = _char_index(vocab, key)
        bias[index] = _number(value, "logit_bias", -100.0, 100.0)
    return bias


def _char_index(vocab: Vocab, key) -> int:
    if is_integer(key) or (isinstance(key, str) and key.isdigit() and len(key) > 1):
        index = int(key)
        if not 0 <= index < vocab.size:
            raise InputError(f"logit_bias has the id {index}; this model's ids are 0 to {vocab.size - 1}",
                             "logit_bias")
        return index
    if isinstance(key, str) and len(key) == 1:
        char = vocab.normalize(key)
        if char in vocab.chars:
            return vocab.chars.index(char)
    raise InputError(f"logit_bias has the key {key!r}, which is neither one of this model's characters nor "
                     f"an id from 0 to {vocab.size - 1}", "logit_bias")
