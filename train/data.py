"""Training windows cut and one-hot encoded batch by batch: only the ids are held in memory."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def window_starts(n_chars: int, maxlen: int, step: int) -> np.ndarray:
    """Where each window of `maxlen` inputs + 1 target begins (the book's `range(0, n - maxlen, step)`)."""
    return np.arange(0, n_chars - maxlen, step, dtype=np.int64)


def window_dataset(
    ids: np.ndarray,
    *,
    maxlen: int,
    step: int,
    vocab_size: int,
    batch_size: int,
    shuffle: bool,
    seed: int | None = None,
    loss_at: str = "last",
) -> tf.data.Dataset:
    """Batches of (one-hot [batch, maxlen, vocab], next-char ids): [batch] for loss_at="last",
    [batch, maxlen] (the character after every prefix of the window) for loss_at="all"."""
    corpus = tf.constant(ids.astype(np.int32))
    starts = window_starts(len(ids), maxlen, step)
    offsets = tf.range(maxlen + 1, dtype=tf.int64)
    dataset = tf.data.Dataset.from_tensor_slices(starts)
    if shuffle:
        dataset = dataset.shuffle(len(starts), seed=seed, reshuffle_each_iteration=True)

    def cut(batch_starts):
        windows = tf.gather(corpus, batch_starts[:, None] + offsets)
        targets = windows[:, 1:] if loss_at == "all" else windows[:, maxlen]
        return tf.one_hot(windows[:, :maxlen], vocab_size), targets

    return dataset.batch(batch_size).map(cut, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)
