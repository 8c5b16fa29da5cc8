"""Training windows, cut from the (memory-mapped) ids batch by batch: no array of windows is ever built.

The windows of a pass are visited in a pseudo-random order: a keyed bijection of [0, n) (a Feistel
network with cycle-walking) maps a position in the pass to a window, so a shuffled pass needs no buffer
and no stored permutation, each pass has its own order (the key is the seed and the pass number), and any
position of any pass can be found again, which is how a resumed run continues mid-pass. Batch k is the
positions [k·B, (k+1)·B) of the endless sequence pass 0, pass 1, …: every window is used once per pass.
With several replicas (workers, GPUs) replica r takes its B / R consecutive positions of each batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .corpus import Corpus

ROUNDS = 10  # 4 rounds on the 8-bit halves of a small corpus gave an order that trained markedly worse


def window_count(n_chars: int, maxlen: int, step: int) -> int:
    """Windows of `maxlen` inputs + 1 target, one every `step` characters (the book's
    `range(0, n - maxlen, step)`)."""
    return max(0, math.ceil((n_chars - maxlen) / step))


def _mix(x: np.ndarray, key: np.uint64) -> np.ndarray:
    """A 64-bit hash (splitmix64's finaliser) of x xor key."""
    x = x ^ key
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def permute(positions: np.ndarray, n: int, seed: int, pass_number: int) -> np.ndarray:
    """The window at each position of pass `pass_number`: a bijection of [0, n) keyed by (seed, pass)."""
    half = max(1, (int(n - 1).bit_length() + 1) // 2)  # a Feistel network on 2·half bits >= n
    mask = np.uint64((1 << half) - 1)
    keys = np.random.SeedSequence([seed, pass_number]).generate_state(ROUNDS, np.uint64)

    def feistel(x):
        left, right = x >> np.uint64(half), x & mask
        for key in keys:
            left, right = right, left ^ (_mix(right, key) & mask)
        return (left << np.uint64(half)) | right

    with np.errstate(over="ignore"):
        x = feistel(np.asarray(positions, np.uint64))
        outside = x >= np.uint64(n)
        while outside.any():  # cycle-walking: apply again until the value falls inside [0, n)
            x[outside] = feistel(x[outside])
            outside = x >= np.uint64(n)
    return x.astype(np.int64)


@dataclass(frozen=True)
class Windows:
    """The shuffled training windows of `ids`, batch by batch."""

    corpus: Corpus  # its training part
    maxlen: int
    step: int
    batch_size: int  # windows per batch, over all replicas
    seed: int
    loss_at: str = "last"

    @property
    def count(self) -> int:
        return window_count(self.corpus.split, self.maxlen, self.step)

    def batch(self, k: int, replica: int = 0, replicas: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Replica `replica`'s part of batch k: input ids [B / R, maxlen] and targets, [B / R] (the
        character after each window) or [B / R, maxlen] (after every prefix, loss_at="all")."""
        share = self.batch_size // replicas
        positions = k * self.batch_size + replica * share + np.arange(share, dtype=np.int64)
        n = self.count
        passes, within = np.divmod(positions, n)
        windows = np.empty_like(positions)
        for p in np.unique(passes):  # a batch spans at most two passes
            windows[passes == p] = permute(within[passes == p], n, self.seed, int(p))
        return cut(self.corpus, windows * self.step, self.maxlen, self.loss_at)


@dataclass(frozen=True)
class Lanes:
    """carry_state's batches: the training text as `batch_size` contiguous lanes, each read `maxlen`
    characters a step, so that the LSTM state after one window is the right start for the next. Each
    pass starts the lanes at its own offset (0 to maxlen - 1): the windows' edges move from pass to pass.
    Replica r of R takes lanes [r·B/R, (r+1)·B/R)."""

    corpus: Corpus  # its training part
    maxlen: int
    batch_size: int  # lanes, over all replicas
    seed: int
    shuffle_items: bool = False  # a list corpus (corpus.items): its items in a new order each pass
    _pass: dict = field(default_factory=dict, compare=False, repr=False)  # pass number -> its ids

    @property
    def lane_chars(self) -> int:
        return self.corpus.split // self.batch_size

    @property
    def steps(self) -> int:
        """Steps per pass (whatever the pass's offset, its last window ends inside the lane)."""
        return max(0, (self.lane_chars - 1) // self.maxlen - 1)

    def batch(self, k: int, replica: int = 0, replicas: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Replica `replica`'s part of step k: inputs [B / R, maxlen] and targets [B / R, maxlen]."""
        pass_number, within = divmod(k, self.steps)
        offset = int(np.random.default_rng([self.seed, pass_number]).integers(self.maxlen))
        share = self.batch_size // replicas
        lanes = replica * share + np.arange(share, dtype=np.int64)
        starts = lanes * self.lane_chars + offset + within * self.maxlen
        if self.shuffle_items and self.corpus.items is not None:
            ids = self.pass_ids(pass_number)
            windows = ids[starts[:, None] + np.arange(self.maxlen + 1)].astype(np.int32)
            return windows[:, :-1], windows[:, 1:]
        return cut(self.corpus, starts, self.maxlen, "all")

    def pass_ids(self, pass_number: int) -> np.ndarray:
        """A list corpus's training ids for one pass: its items (each with its newline) in that pass's
        order, keyed by (seed, pass) so that a resumed run reads the same (the latest pass's kept)."""
        if pass_number not in self._pass:
            starts, ids = self.corpus.items, self.corpus.train_ids
            order = np.random.default_rng([self.seed, pass_number, 1]).permutation(len(starts) - 1)
            self._pass.clear()
            self._pass[pass_number] = np.concatenate([ids[starts[i] : starts[i + 1]] for i in order])
        return self._pass[pass_number]

    def starts_pass(self, k: int) -> bool:
        """Whether step k begins a pass (the carried states start again from zero)."""
        return k % self.steps == 0


def cut(corpus: Corpus, starts: np.ndarray, maxlen: int, loss_at: str = "last", holdout: bool = False):
    """Input ids [len(starts), maxlen] (int32) of the training (or held-out) windows at `starts`, and the
    targets after them."""
    windows = corpus.read(starts, maxlen + 1, holdout)
    return windows[:, :maxlen], windows[:, 1:] if loss_at == "all" else windows[:, maxlen]


def holdout_starts(n_chars: int, maxlen: int, stride: int, limit: int) -> np.ndarray:
    """A fixed sample of held-out windows: every `stride`-th, at most `limit` of them spread evenly."""
    count = window_count(n_chars, maxlen, stride)
    if limit and count > limit:
        return np.linspace(0, count - 1, limit).astype(np.int64) * stride
    return np.arange(count) * stride
