"""An n-gram memory of the training text beside the network: exact counts of every context up to ORDER
characters, mixed into the LSTM's distribution.

Why: a 1 M-parameter LSTM trained for minutes does not learn a corpus's exact wording, while a count
model of it does (that is what PPMd's lead on formulaic text is made of: bench.repeats). Mixed, each
supplies what the other lacks: on Debian's licence texts the mixture codes the held-out part 0.15
bits/char better than the LSTM alone. The memory is the training text itself, in a searchable form: a
model shipped with one carries its corpus (vocab.json says so), which is why it is opt-in at export.
js/src/memory.js is the same in JavaScript.

The counts come from an FM-index (the Burrows-Wheeler transform of the training ids, with occurrence
counts every BLOCK positions), built at export and rebuilt here on load: it counts any string in
O(length) steps, and extending a context by one older character is one step (backward search).
Probabilities: interpolated additive smoothing from the uniform distribution up through orders 0..ORDER,
q_k(c) = (count(context_k c) + BETA q_{k-1}(c)) / (count(context_k) + BETA), to the longest context the
text holds; then p = (1 - w_d) p_lstm + w_d q with w_d fitted on the held-out part for each such depth
d (at export, where the best epoch is chosen too).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ModelError

ORDER = 16  # the longest context counted (24: 0.001-0.008 better held out, 50% more steps; 32 no better)
BETA = 4.0  # pseudo-count of the shorter context's distribution in each order's (2-4 measured alike)
BLOCK = 32  # positions between stored occurrence counts: memory (symbols x n / BLOCK) against time
SENTINEL = 0  # the end of the text in the transform; character id c is symbol c + 1
SCORE_CHUNK = 8192  # positions scored together (their gathers: SCORE_CHUNK x BLOCK per step)


def suffix_array(symbols: np.ndarray) -> np.ndarray:
    """The suffix array of `symbols` (ending in a unique smallest sentinel), by prefix doubling: each
    round sorts suffixes by their first 2k symbols from the ranks of their first k."""
    n = len(symbols)
    rank = symbols.astype(np.int64)
    k = 1
    while True:
        second = np.zeros(n, np.int64)
        second[: n - k] = rank[k:] + 1
        key = rank * (n + 2) + second
        order = np.argsort(key, kind="stable")
        changed = np.concatenate([[0], np.diff(key[order]) != 0])
        rank = np.empty(n, np.int64)
        rank[order] = np.cumsum(changed)
        if rank.max() == n - 1 or k >= n:
            return order
        k *= 2


def transform(ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """The Burrows-Wheeler transform of character ids (0 <= id < vocab_size) followed by the sentinel."""
    symbols = np.append(np.asarray(ids, np.int64) + 1, SENTINEL)
    before = suffix_array(symbols) - 1  # the symbol before each sorted suffix (the sentinel's: the last)
    return symbols[before].astype(np.uint16)


@dataclass(frozen=True)
class Memory:
    bwt: np.ndarray  # the transform, padded with BLOCK symbols no character has
    starts: np.ndarray  # starts[s]: sorted suffixes that begin with a symbol below s  [symbols + 1]
    occurrences: np.ndarray  # occurrences[b, s]: symbol s in bwt[: b * BLOCK]  [blocks + 1, symbols]
    weights: np.ndarray  # the memory's share of the mixture, by the depth of the context found [ORDER + 1]

    @classmethod
    def of(cls, bwt: np.ndarray, vocab_size: int, weights) -> Memory:
        symbols = vocab_size + 1
        blocks = -(-len(bwt) // BLOCK)
        padded = np.concatenate([bwt.astype(np.int32), np.full(blocks * BLOCK - len(bwt), symbols, np.int32)])
        per_block = np.bincount((np.arange(len(padded)) // BLOCK) * (symbols + 1) + padded,
                                minlength=blocks * (symbols + 1)).reshape(blocks, symbols + 1)[:, :symbols]
        occurrences = np.concatenate([np.zeros((1, symbols), np.int32), np.cumsum(per_block, axis=0,
                                                                                  dtype=np.int32)])
        starts = np.concatenate([[0], np.cumsum(np.bincount(bwt.astype(np.int64), minlength=symbols))])
        padded = np.concatenate([padded, np.full(BLOCK, symbols, np.int32)])
        return cls(padded, starts, occurrences, np.asarray(weights, np.float64))

    @classmethod
    def build(cls, ids: np.ndarray, vocab_size: int) -> Memory:
        """The memory of a training text (weights all zero until `fitted`)."""
        return cls.of(transform(ids, vocab_size), vocab_size, np.zeros(ORDER + 1))

    @property
    def vocab_size(self) -> int:
        return len(self.starts) - 2

    @property
    def characters(self) -> int:
        """The training text's length (the transform holds one more symbol: the sentinel)."""
        return int(self.starts[-1]) - 1

    @functools.cached_property
    def order0(self) -> np.ndarray:
        """Order 0, the start of every distribution: each character's count, smoothed from uniform [V]."""
        return (np.diff(self.starts)[1:] + BETA / self.vocab_size) / (self.characters + BETA)

    def fitted(self, weights) -> Memory:
        return Memory(self.bwt, self.starts, self.occurrences, np.asarray(weights, np.float64))

    # -- counting ------------------------------------------------------------------------------

    def _occ(self, symbol: np.ndarray, at: np.ndarray) -> np.ndarray:
        """How often `symbol` occurs in bwt[:at], elementwise (arrays of one shape)."""
        block = at // BLOCK
        window = self.bwt[(block * BLOCK)[..., None] + np.arange(BLOCK)]
        partial = ((window == symbol[..., None]) & (np.arange(BLOCK) < (at % BLOCK)[..., None])).sum(-1)
        return self.occurrences[block, symbol] + partial

    def _extend(self, lo: np.ndarray, hi: np.ndarray, symbol: np.ndarray):
        """The interval of sorted suffixes that begin with `symbol` then the string of [lo, hi)."""
        base = self.starts[symbol]
        return base + self._occ(symbol, lo), base + self._occ(symbol, hi)

    def distributions(self, contexts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The memory's next-character probabilities [B, V] after each context (ids [B, ORDER], the most
        recent last, -1 where the text is shorter), and the depth of the longest context counted [B].

        Only the (row, character) strings the text holds are extended: a few per row after some orders."""
        rows, size = len(contexts), self.vocab_size
        q = np.broadcast_to(self.order0, (rows, size)).copy()
        depth = np.zeros(rows, np.int64)
        row, char = np.nonzero(np.broadcast_to(np.diff(self.starts)[1:] > 0, (rows, size)))
        lo, hi = self.starts[char + 1], self.starts[char + 2]
        for k in range(1, ORDER + 1):
            symbol = contexts[:, -k] + 1
            live = (symbol > 0) & (depth == k - 1)
            keep = live[row]
            row, char, lo, hi = row[keep], char[keep], lo[keep], hi[keep]
            if not len(row):
                break
            lo, hi = self._extend(lo, hi, symbol[row])
            found = hi > lo
            row, char, lo, hi = row[found], char[found], lo[found], hi[found]
            total = np.bincount(row, weights=hi - lo, minlength=rows)
            live &= total > 0
            counts = np.zeros((rows, size))
            counts[row, char] = hi - lo
            q[live] = (counts[live] + BETA * q[live]) / (total[live, None] + BETA)
            depth[live] = k
        return q, depth

    def char_probs(self, ids: np.ndarray, first: int) -> tuple[np.ndarray, np.ndarray]:
        """q(ids[t]) given the characters before it, and its depth, for t >= first: the one character's
        share of `distributions`, counted without the other characters (a long text is scored)."""
        parts = [self._char_probs(ids, np.arange(s, min(s + SCORE_CHUNK, len(ids))))
                 for s in range(first, len(ids), SCORE_CHUNK)]
        if not parts:
            return np.zeros(0), np.zeros(0, np.int64)
        return np.concatenate([p for p, _ in parts]), np.concatenate([d for _, d in parts])

    def _char_probs(self, ids: np.ndarray, targets: np.ndarray):
        n = len(targets)
        char = ids[targets] + 1
        everything = np.zeros(n, np.int64), np.full(n, self.starts[-1])
        ending = np.zeros(n, np.int64), np.ones(n, np.int64)  # the sentinel: a context at the text's end
        pair = self.starts[char], self.starts[char + 1]
        q = self.order0[char - 1]
        depth = np.zeros(n, np.int64)
        for k in range(1, ORDER + 1):
            live = (targets - k >= 0) & (depth == k - 1)
            if not live.any():
                break
            symbol = np.where(live, ids[np.maximum(targets - k, 0)] + 1, 1)
            everything, ending, pair = (self._extend(*span, symbol) for span in (everything, ending, pair))
            total = (everything[1] - everything[0]) - (ending[1] - ending[0])
            live &= total > 0
            q = np.where(live, (pair[1] - pair[0] + BETA * q) / (total + BETA), q)
            depth[live] = k
        return q, depth

    # -- mixing --------------------------------------------------------------------------------

    def mix(self, log_p: np.ndarray, q: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """log((1 - w) p + w q), w by depth: the mixture's log-probabilities, for any matching shapes
        (a distribution [B, V] with depth [B, 1], or one character's [n] with depth [n])."""
        w = self.weights[depth]
        with np.errstate(divide="ignore"):
            return np.logaddexp(np.log1p(-w) + log_p, np.log(w) + np.log(q))

    # -- files ---------------------------------------------------------------------------------

    def save(self, directory: Path) -> dict:
        """Write the transform as memory-<sha256 prefix>.bin in `directory`: what vocab.json's `memory`
        holds (with the weights)."""
        data = self.bwt[: self.characters + 1].astype("<u2").tobytes()
        sha256 = hashlib.sha256(data).hexdigest()
        name = f"memory-{sha256[:12]}.bin"
        (directory / name).write_bytes(data)
        return {"file": name, "sha256": sha256, "characters": self.characters, "order": ORDER,
                "beta": BETA, "weights": [round(float(w), 4) for w in self.weights]}

    @classmethod
    def load(cls, path: Path, entry: dict, vocab_size: int) -> Memory:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelError(f"{path} cannot be read ({exc.strerror}): re-export the model") from None
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise ModelError(f"{path} does not match the sha256 vocab.json records: re-export the model")
        if entry["order"] != ORDER or entry["beta"] != BETA or len(entry["weights"]) != ORDER + 1:
            raise ModelError(f"vocab.json's memory was counted to order {entry['order']} with beta "
                             f"{entry['beta']}; this charsdk counts to {ORDER} with {BETA}: build it again "
                             "(make memory), or load the model without it (memory=False)")
        bwt = np.frombuffer(data, "<u2")
        if bwt.max(initial=0) > vocab_size:
            raise ModelError(f"{path} holds characters vocab.json does not list: re-export the model")
        return cls.of(bwt, vocab_size, entry["weights"])
