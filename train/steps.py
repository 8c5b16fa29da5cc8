"""The TensorFlow functions a training run is made of: one optimisation step, the held-out scorers, the
cluster's vote, and the per-epoch samples. TensorFlow is imported when a function is built, not when
this module is, so that `python -m train.fit --help` answers at once."""

from __future__ import annotations

import math

import numpy as np

from .config import Recipe
from .corpus import Corpus

HOLDOUT_BATCH = 256  # held-out windows per replica and call
HOLDOUT_LANES = 16  # carry_state: the held-out text as this many lanes (at most), each read from a zero state


def holdout_lanes(holdout_chars: int, maxlen: int) -> int:
    """How many lanes the stateful held-out score reads: HOLDOUT_LANES, fewer for a short held-out part
    (each lane needs maxlen + 1 characters); 0 when it is shorter than one lane."""
    return min(HOLDOUT_LANES, (holdout_chars - 1) // (maxlen + 1))


def make_vote(strategy):
    """A function summing a flag over every replica of the cluster."""
    import tensorflow as tf

    @tf.function
    def votes(flag):
        return strategy.reduce("SUM", strategy.run(tf.identity, args=(flag,)), axis=None)
    return votes


def make_train_step(model, forward, strategy, recipe: Recipe):
    """One optimisation step on a distributed batch (ids) from the carried states (carry_state; else
    none); returns the batch's mean loss and the states after it.

    Each replica one-hot encodes its share, averages its loss over the global batch
    (tf.nn.compute_average_loss), and the Keras optimizer, built under the strategy, sums the replicas'
    gradients and applies them (clipped per replica, as its clipnorm does).

    In float32 a replica's forward and backward pass is compiled by XLA (jit_compile), which fuses each
    LSTM step's gate arithmetic: on an AVX2-only CPU the finetune recipe's step took 0.27 s without, 0.24
    s with it, in turns (bench/train_rate.py); in bfloat16 XLA was twice as slow on the avx512_bf16 CPU,
    and 2.4 times on an amx_bf16 one (0.27 s against 0.11 s), so it is not used there. The optimizer's
    update stays outside it, where the strategy sums replicas."""
    import keras
    import tensorflow as tf

    vocab_size = model.input_shape[-1]

    def loss_and_gradients(x, y, *states):
        with tf.GradientTape() as tape:
            probs, states = forward(tf.one_hot(x, vocab_size), states, training=True)
            per_window = keras.losses.sparse_categorical_crossentropy(y, probs)
            if recipe.loss_at == "all":
                per_window = tf.reduce_mean(per_window, axis=1)
            loss = tf.nn.compute_average_loss(per_window, global_batch_size=recipe.batch_size)
        return loss, tuple(states), tape.gradient(loss, model.trainable_variables)

    if not recipe.bfloat16:
        loss_and_gradients = tf.function(loss_and_gradients, jit_compile=True)

    def replica_step(x, y, *states):
        loss, states, gradients = loss_and_gradients(x, y, *states)
        model.optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        return loss, states

    @tf.function
    def train_step(x, y, *states):
        loss, states = strategy.run(replica_step, args=(x, y, *states))
        return strategy.reduce("SUM", loss, axis=None), states

    return train_step


def make_holdout_scorer(model, strategy, corpus: Corpus, starts: np.ndarray, maxlen: int):
    """Mean negative log-likelihood (nats) of the character after each of the fixed held-out windows,
    the windows shared out between the replicas (padded with zero-weight windows to equal calls)."""
    import tensorflow as tf

    from .data import cut

    replicas, vocab_size = strategy.num_replicas_in_sync, model.input_shape[-1]
    per_call = HOLDOUT_BATCH * replicas
    padded = np.resize(starts, math.ceil(len(starts) / per_call) * per_call)
    weights = (np.arange(len(padded)) < len(starts)).astype(np.float32)

    def replica_nats(x, y, w):
        probs = model(tf.one_hot(x, vocab_size), training=False)
        if len(probs.shape) == 3:  # loss_at="all": the distribution after the whole window
            probs = probs[:, -1]
        picked = tf.gather(probs, y, batch_dims=1)
        return tf.reduce_sum(-tf.math.log(tf.maximum(picked, 1e-30)) * w)

    @tf.function
    def call_nats(x, y, w):
        return strategy.reduce("SUM", strategy.run(replica_nats, args=(x, y, w)), axis=None)

    def score() -> float:
        total = 0.0
        for lo in range(0, len(padded), per_call):
            def replica_share(context, lo=lo):
                part = slice(lo + context.replica_id_in_sync_group * HOLDOUT_BATCH,
                             lo + (context.replica_id_in_sync_group + 1) * HOLDOUT_BATCH)
                x, y = cut(corpus, padded[part], maxlen, holdout=True)
                return tf.constant(x), tf.constant(y), tf.constant(weights[part])
            total += float(call_nats(*strategy.experimental_distribute_values_from_function(replica_share)))
        return total / len(starts)

    return score


def carried_state_sizes(recipe: Recipe) -> list[int]:
    """The width of each state carry_state carries, in the order h0, c0, h1, c1, ..."""
    return [units for units in recipe.units for _ in ("h", "c")]


def make_stateful_holdout_scorer(forward, corpus: Corpus, recipe: Recipe):
    """Mean negative log-likelihood (nats) of the held-out text read as stateful generation reads
    (carry_state): `holdout_lanes` contiguous lanes, maxlen characters a call, the states carried."""
    import tensorflow as tf

    from .data import cut

    lanes = holdout_lanes(len(corpus.holdout_ids), recipe.maxlen)
    lane = len(corpus.holdout_ids) // lanes
    calls = (lane - 1) // recipe.maxlen
    vocab_size = len(corpus.chars)

    @tf.function
    def call_nats(x, y, *states):
        probs, states = forward(tf.one_hot(x, vocab_size), states, training=False)
        picked = tf.gather(tf.cast(probs, tf.float32), y, batch_dims=2)
        return tf.reduce_sum(-tf.math.log(tf.maximum(picked, 1e-30))), states

    def score() -> float:
        states = [tf.zeros((lanes, u)) for u in carried_state_sizes(recipe)]
        total = 0.0
        for i in range(calls):
            starts = np.arange(lanes) * lane + i * recipe.maxlen
            x, y = cut(corpus, starts, recipe.maxlen, "all", holdout=True)
            nats, states = call_nats(tf.constant(x), tf.constant(y), *states)
            total += float(nats)
        return total / (lanes * calls * recipe.maxlen)

    return score


def sample_texts(step_fn, states, seed_ids, vocab_size, temperatures, length, rng) -> list[list[int]]:
    """The book's per-epoch samples, one per temperature, but one LSTM step per character with the state
    carried, and all temperatures in one batch (one call a character instead of one per temperature and
    character: a budgeted run spends its seconds training)."""
    from charsdk.sampling import SamplingOptions, draw_rows

    options = [SamplingOptions(t) for t in temperatures]
    state = [np.zeros((len(options), s.size), np.float32) for s in states]
    one_hot = np.eye(vocab_size, dtype=np.float32)
    x = np.repeat(one_hot[np.asarray(seed_ids, dtype=np.int64)][None], len(options), axis=0)
    out = []
    for _ in range(length):
        result = step_fn(x, *state)
        state = [result[s.output] for s in states]
        probs = result["probs"].numpy()
        out.append(draw_rows(probs, rng.random(probs.shape, np.float32), options))
        x = one_hot[out[-1]][:, None]
    return np.stack(out, axis=1).tolist() if out else [[] for _ in options]
