"""`make bench`: characters per second of the book's loop against charsdk, on the same weights.

Keras is loaded from <run>/best.keras and charsdk from a model directory checked to be the export of
that checkpoint. Prints a table of medians and writes <run>/bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from charsdk import Generator
from charsdk.generator import sha256_of
from charsdk.sampling import SamplingOptions, sample

SEED_TEXT = "the free spirit, who has once attained to freedom of reason, "
TEMPERATURE = 0.5


def median_rate(run, chars: int, repeats: int) -> float:
    """Median characters/second of `run()` producing `chars` characters."""
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return chars / statistics.median(times)


def book_loop(model, generator: Generator, length: int, direct: bool):
    """Deep Learning with Python's loop: one-hot the last maxlen chars, predict, sample, repeat."""
    vocab, rng = generator.vocab, np.random.default_rng(0)
    options = SamplingOptions(TEMPERATURE)
    text = SEED_TEXT[-vocab.maxlen :]
    for _ in range(length):
        x = vocab.one_hot(vocab.encode(text[-vocab.maxlen :]))
        probs = model(x, training=False).numpy()[0] if direct else model.predict(x, verbose=0)[0]
        text += vocab.chars[sample(probs, options, rng)]


def first_char_and_rss(command: list[str]) -> tuple[float, float, float]:
    """Seconds to the first byte on stdout, seconds to exit, peak RSS in MB: one fresh process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    process.stdout.read(1)
    first = time.perf_counter() - start
    process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, command
    return first, time.perf_counter() - start, usage.ru_maxrss / 1024


def multiply_adds_per_step(generator: Generator) -> int:
    """LSTM gates (4 x units x (inputs + units)) per layer plus the softmax layer."""
    sizes = [s.size for s in generator.vocab.states[::2]]
    inputs = [generator.vocab.size] + sizes[:-1]
    return sum(4 * u * (i + u) for u, i in zip(sizes, inputs, strict=True)) + sizes[-1] * generator.vocab.size


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.bench", description=__doc__)
    p.add_argument("--run", default="artifacts/nietzsche", help="training run holding best.keras")
    p.add_argument("--model", default="charsdk/models/nietzsche", help="its export, for charsdk")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)

    import keras

    checkpoint = Path(args.run) / "best.keras"
    generator = Generator.load(args.model)
    if not checkpoint.exists() or generator.vocab.training.get("checkpoint_sha256") != sha256_of(checkpoint):
        print(f"bench: error: {args.model} is not the export of {checkpoint}: "
              "run make export and make ship for that run", file=sys.stderr)
        return 2
    model = keras.models.load_model(checkpoint)
    r = args.repeats
    gen = generator.generate
    rows = [
        ("book loop: Keras predict on the window", median_rate(
            lambda: book_loop(model, generator, 20, direct=False), 20, r)),
        ("Keras model called directly on the window", median_rate(
            lambda: book_loop(model, generator, 100, direct=True), 100, r)),
        ("charsdk window mode", median_rate(
            lambda: gen(SEED_TEXT, 2000, TEMPERATURE, seed=1, mode="window"), 2000, r)),
        ("charsdk stateful mode", median_rate(
            lambda: gen(SEED_TEXT, 50000, TEMPERATURE, seed=1), 50000, r)),
        ("charsdk stateful, n=64 (aggregate)", median_rate(
            lambda: gen(SEED_TEXT, 4000, TEMPERATURE, n=64, seed=1), 4000 * 64, r)),
        ("charsdk stateful, n=256 (aggregate)", median_rate(
            lambda: gen(SEED_TEXT, 2000, TEMPERATURE, n=256, seed=1), 2000 * 256, r)),
    ]
    book = rows[0][1]
    model_dir = args.model
    charsdk_cli = [str(Path(sys.executable).with_name("charsdk")), "gen", "--model", model_dir,
                   "--length", "1", "--seed", "1"]
    processes = {
        "charsdk gen --length 1": [first_char_and_rss(charsdk_cli) for _ in range(r)],
        'python -c "import tensorflow"': [first_char_and_rss(
            [sys.executable, "-c", "import tensorflow; print('x')"]) for _ in range(r)],
    }
    result = {
        "model": model_dir,
        "parameters": generator.vocab.training.get("parameters"),
        "multiply_adds_per_step": multiply_adds_per_step(generator),
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "temperature": TEMPERATURE,
        "chars_per_s": {name: rate for name, rate in rows},
        "x_book_loop": {name: rate / book for name, rate in rows},
        "processes": {
            name: {"first_char_s": statistics.median(v[0] for v in runs),
                   "wall_s": statistics.median(v[1] for v in runs),
                   "peak_rss_mb": max(v[2] for v in runs)}
            for name, runs in processes.items()
        },
    }
    print(f"\n{model_dir}: {result['parameters']} parameters, "
          f"{result['multiply_adds_per_step']:,} multiply-adds per step; medians of {r} runs\n")
    print(f"| {'generation':<44} | {'chars/s':>12} | {'x book loop':>11} |")
    print(f"| {'-' * 44} | {'-' * 12}:| {'-' * 11}:|")
    for name, rate in rows:
        print(f"| {name:<44} | {rate:>12,.0f} | {rate / book:>11,.0f} |")
    print(f"\n| {'fresh process':<32} | {'first char s':>12} | {'exit s':>7} | {'peak RSS MB':>11} |")
    print(f"| {'-' * 32} | {'-' * 12}:| {'-' * 7}:| {'-' * 11}:|")
    for name, figures in result["processes"].items():
        print(f"| {name:<32} | {figures['first_char_s']:>12.3f} | {figures['wall_s']:>7.3f} | "
              f"{figures['peak_rss_mb']:>11.0f} |")
    out = Path(args.run) / "bench.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
