"""`python -m bench.train_rate`: how close one training step comes to what this CPU's matrix products do.

A step of a recipe (default: finetune, the base's shape and vocabulary) is timed in-process on random
characters, and its arithmetic counted: per character, each LSTM layer's 4·units·(inputs + units)
multiply-adds (the first layer's inputs are the one-hot vocabulary, which Keras multiplies in full) and
the softmax layer's, forward; backward about twice that (the gradients of the inputs and of the weights),
so a step is 3 × batch × maxlen × that. Beside it, the CPU's measured peak for the same precision: one
large tf.matmul ([4096, 1024] × [1024, 1024]) in float32, and in bfloat16 where the step computes in it.
Rows take turns (this host's speed drifts by 15–25% within minutes); medians. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from train.config import BASE_CHARS, make_recipe

from . import machine

PEAK_SHAPE = (4096, 1024, 1024)  # rows, inputs, outputs of the product that measures the peak


def step_multiply_adds(units: tuple[int, ...], vocab_size: int, batch: int, maxlen: int) -> int:
    """Multiply-adds of one training step, forward and backward (3 x forward)."""
    inputs = (vocab_size, *units[:-1])
    per_char = sum(4 * u * (i + u) for u, i in zip(units, inputs, strict=True)) + units[-1] * vocab_size
    return 3 * batch * maxlen * per_char


def step_seconds(recipe, vocab_size: int, steps: int) -> list[float]:
    """Seconds of each of `steps` timed training steps (after 3 untimed ones), on random characters."""
    import tensorflow as tf

    from train.model import build_model, carried
    from train.steps import carried_state_sizes, make_train_step

    strategy = tf.distribute.get_strategy()
    model = build_model(vocab_size, recipe, steps_per_epoch=steps + 3)
    forward = carried(model) if recipe.carry_state else (lambda x, states, training: (
        model(x, training=training), []))
    train_step = make_train_step(model, forward, strategy, recipe)
    rng = np.random.default_rng(0)
    sizes = carried_state_sizes(recipe) if recipe.carry_state else []
    states = [tf.zeros((recipe.batch_size, u)) for u in sizes]
    times = []
    for k in range(steps + 3):
        x = tf.constant(rng.integers(vocab_size, size=(recipe.batch_size, recipe.maxlen)), tf.int32)
        y = x if recipe.loss_at == "all" else x[:, -1]
        started = time.perf_counter()
        loss, states = train_step(x, y, *states)
        float(loss)
        if k >= 3:
            times.append(time.perf_counter() - started)
    return times


def peak_multiply_adds_per_s(dtype: str, repeats: int = 10) -> float:
    """Multiply-adds per second of one large product in `dtype` (float32 or bfloat16)."""
    import tensorflow as tf

    rows, n_in, n_out = PEAK_SHAPE
    a = tf.random.normal((rows, n_in), dtype=tf.float32)
    b = tf.random.normal((n_in, n_out), dtype=tf.float32)
    a, b = tf.cast(a, dtype), tf.cast(b, dtype)
    product = tf.function(lambda: tf.reduce_sum(tf.cast(tf.matmul(a, b), tf.float32)))
    float(product())
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        float(product())
        times.append(time.perf_counter() - started)
    return rows * n_in * n_out / statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.train_rate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="finetune")
    p.add_argument("--steps", type=int, default=20, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--precision", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="auto: as train.fit decides (bfloat16 where the recipe asks and the CPU has it)")
    p.add_argument("--out", help="JSON file (default: artifacts/bench/train-rate-<precision>-<CPU kind>"
                                 ".json)")
    args = p.parse_args(argv)
    from train import import_tensorflow
    from train.fit import bfloat16_here

    import_tensorflow()
    recipe = make_recipe(args.recipe)
    auto = recipe.bfloat16 and bfloat16_here()
    bfloat16 = auto if args.precision == "auto" else args.precision == "bfloat16"
    recipe = recipe.updated(bfloat16=bfloat16)
    vocab_size = len(BASE_CHARS)
    precision = "bfloat16" if recipe.bfloat16 else "float32"
    work = step_multiply_adds(recipe.units, vocab_size, recipe.batch_size, recipe.maxlen)
    steps, peaks = [], []
    for _ in range(args.rounds):  # in turns
        steps.append(statistics.median(step_seconds(recipe, vocab_size, args.steps)))
        peaks.append(peak_multiply_adds_per_s(precision))
    step_s, peak = statistics.median(steps), statistics.median(peaks)
    rate = work / step_s
    chars = recipe.batch_size * recipe.maxlen
    result = {"recipe": args.recipe, "precision": precision, "units": list(recipe.units),
              "vocab_size": vocab_size, "batch_size": recipe.batch_size, "maxlen": recipe.maxlen,
              "step_multiply_adds": work, "step_s": step_s, "chars_per_s": chars / step_s,
              "multiply_adds_per_s": rate, "peak_multiply_adds_per_s": peak, "share_of_peak": rate / peak,
              "peak_shape": list(PEAK_SHAPE), "rounds_step_s": steps, "rounds_peak": peaks,
              "machine": machine.describe()}
    print(f"{args.recipe} recipe, {precision}: {recipe.batch_size} x {recipe.maxlen} characters a step, "
          f"{work / 1e9:.2f} G multiply-adds (forward and backward)\n{machine.line()}\n"
          f"  a step {step_s:.3f} s ({chars / step_s:,.0f} characters/s): {rate / 1e9:.1f} G "
          "multiply-adds/s\n"
          f"  peak, one {PEAK_SHAPE[0]}x{PEAK_SHAPE[1]} x {PEAK_SHAPE[1]}x{PEAK_SHAPE[2]} {precision} "
          f"tf.matmul: {peak / 1e9:.1f} G multiply-adds/s\n  the step runs at {rate / peak:.0%} of that")
    out = Path(args.out or f"artifacts/bench/train-rate-{precision}-{machine.kind()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
