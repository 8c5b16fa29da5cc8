"""`make bench`: characters per second of charsdk, and of the book's Keras loop on the same weights.

charsdk is timed on a model directory; with --run, Keras is timed on that run's best.keras (checked to
be the checkpoint the model was exported from). Prints a table of medians and where one step's time
goes (bench/limits.py), and writes both as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from charsdk import Generator
from charsdk.sampling import SamplingOptions, sample
from charsdk.session import sha256_of

from . import machine
from .limits import describe, describe_limit, limit_line, median_rates, multiply_adds_per_step, profile

SEED_TEXT = "the free spirit, who has once attained to freedom of reason, "
TEMPERATURE = 0.5
SCORED = (SEED_TEXT + "and whoever attempts it, even with the best right, but without being obliged ") * 250

# Runs in a small helper process: a child forked from this one (TensorFlow loaded) would start with
# this process's resident memory counted in its peak RSS.
MEASURE = """
import json, os, subprocess, sys, time
start = time.perf_counter()
process = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
process.stdout.read(1)
first = time.perf_counter() - start
process.stdout.read()
_, status, usage = os.wait4(process.pid, 0)
print(json.dumps([os.waitstatus_to_exitcode(status), first, time.perf_counter() - start,
                  usage.ru_maxrss / 1024]))
"""


def book_loop(model, generator: Generator, length: int, direct: bool):
    """Deep Learning with Python's loop: one-hot the last maxlen chars, predict, sample, repeat."""
    vocab, rng = generator.vocab, np.random.default_rng(0)
    options = SamplingOptions(TEMPERATURE)
    text = SEED_TEXT[-vocab.maxlen :]
    for _ in range(length):
        x = np.eye(vocab.size, dtype=np.float32)[vocab.encode(text[-vocab.maxlen :])][None]
        probs = model(x, training=False).numpy()[0] if direct else model.predict(x, verbose=0)[0]
        text += vocab.chars[sample(probs, options, rng)]


def window_model(model, generator: Generator, directory: Path) -> Generator:
    """The checkpoint as `make export KERAS=` makes a window model of it: tf2onnx's conversion."""
    from train import keras_onnx
    from train.convert import save_window_model

    vocab = generator.vocab
    proto = keras_onnx.to_onnx(model, vocab.maxlen, vocab.size)
    save_window_model(proto, directory, vocab.chars, vocab.maxlen, vocab.lowercase, "one_hot", "float32",
                      "probs")
    return Generator.load(directory)


def keras_jobs(checkpoint: Path, generator: Generator) -> list:
    """The rows timed on the run's checkpoint: the book's loop in Keras, and the checkpoint as a window
    model (tf2onnx), one stream and 64."""
    from train.model import load_checkpoint

    model = load_checkpoint(checkpoint)
    window = window_model(model, generator, Path(tempfile.mkdtemp(prefix="charsdk-bench-")))
    window_batched = Generator.load(window.path, threads=os.cpu_count())
    return [
        ("book loop: Keras predict on the window", lambda: book_loop(model, generator, 20, direct=False), 20),
        ("Keras model called directly on the window",
         lambda: book_loop(model, generator, 20, direct=True), 20),
        ("window model (make export KERAS=, tf2onnx)",
         lambda: window.generate(SEED_TEXT, 1000, TEMPERATURE, seed=1), 1000),
        (f"window model, n=64, {os.cpu_count()} threads (aggregate)",
         lambda: window_batched.generate(SEED_TEXT, 100, TEMPERATURE, n=64, seed=1), 100 * 64),
    ]


def fresh_process(command: list[str]) -> tuple[float, float, float]:
    """Seconds to the first byte on stdout, seconds to exit, peak RSS in MB: one new process."""
    out = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True, text=True,
                         check=True)
    code, first, wall, rss = json.loads(out.stdout)
    assert code == 0, command
    return first, wall, rss


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.generation", description=__doc__)
    p.add_argument("--model", default="nietzsche", help="model directory or shipped model name")
    p.add_argument("--run", help="training run whose best.keras is timed in Keras (the book's loop)")
    p.add_argument("--out", required=True, help="JSON file for the results")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)

    generator = Generator.load(args.model)
    jobs = []
    if args.run:
        checkpoint = Path(args.run) / "best.keras"
        exported_from = generator.vocab.training.get("checkpoint_sha256")
        if not checkpoint.exists() or exported_from != sha256_of(checkpoint):
            print(f"bench: error: {args.model} is not the export of {checkpoint}: "
                  "run make export and make ship for that run", file=sys.stderr)
            return 2
        jobs += keras_jobs(checkpoint, generator)
    rows = median_rates(jobs + charsdk_jobs(generator, Generator.load(args.model, threads=os.cpu_count())),
                        args.repeats)
    result = measure_the_rest(generator, args, rows)
    print_tables(result, rows, rows[0][1] if args.run else None)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {args.out}")
    return 0


def charsdk_jobs(generator: Generator, batched: Generator) -> list:
    """The rows timed in charsdk: (name, call, characters); `batched` uses every core (many streams)."""
    gen, cores = generator.generate, os.cpu_count()
    return [
        ("charsdk window mode", lambda: gen(SEED_TEXT, 3000, TEMPERATURE, seed=1, mode="window"), 3000),
        ("charsdk stateful mode", lambda: gen(SEED_TEXT, 30000, TEMPERATURE, seed=1), 30000),
        (f"charsdk stateful, n=64, {cores} threads (aggregate)",
         lambda: batched.generate(SEED_TEXT, 2000, TEMPERATURE, n=64, seed=1), 2000 * 64),
        (f"charsdk stateful, n=256, {cores} threads (aggregate)",
         lambda: batched.generate(SEED_TEXT, 1000, TEMPERATURE, n=256, seed=1), 1000 * 256),
        ("charsdk eval, stateful (scoring a text)", lambda: generator.evaluate(SCORED), len(SCORED) - 60),
        # what the scores and the controls cost, beside the rows above without them (same rounds)
        ("charsdk stateful, logprobs=5",
         lambda: gen(SEED_TEXT, 10000, TEMPERATURE, seed=1, logprobs=5), 10000),
        ("charsdk stateful, frequency_penalty=0.5 (one character a call)",
         lambda: gen(SEED_TEXT, 2000, TEMPERATURE, seed=1, frequency_penalty=0.5), 2000),
        (f"charsdk stateful, n=256, logprobs=5, {cores} threads",
         lambda: batched.generate(SEED_TEXT, 300, TEMPERATURE, n=256, seed=1, logprobs=5), 300 * 256),
        ("charsdk stateful, regex [a-z ,.;]{2000} (compiled, then masked inside the call)",
         lambda: gen(SEED_TEXT, 2000, TEMPERATURE, seed=1, regex="[a-z ,.;]{2000}"), 2000),
        (f"charsdk stateful, n=64, regex, {cores} threads",
         lambda: batched.generate(SEED_TEXT, 300, TEMPERATURE, n=64, seed=1, regex="[a-z ,.;]{300}"),
         300 * 64),
        (f"charsdk stateful, n=256, frequency_penalty=0.5, {cores} threads",
         lambda: batched.generate(SEED_TEXT, 300, TEMPERATURE, n=256, seed=1, frequency_penalty=0.5),
         300 * 256),
    ]


def measure_the_rest(generator: Generator, args, rows) -> dict:
    """Fresh processes (first character, exit, memory), the step profile and the limit line: the JSON."""
    r, book = args.repeats, rows[0][1] if args.run else None
    cli = [str(Path(sys.executable).with_name("charsdk")), "gen", "--model", str(args.model),
           "--length", "1", "--seed", "1"]
    processes = {"charsdk gen --length 1": [fresh_process(cli) for _ in range(r)]}
    if args.run:
        processes['python -c "import tensorflow"'] = [
            fresh_process([sys.executable, "-c", "import tensorflow; print('x')"]) for _ in range(r)]
    return {
        "model": str(generator.path),
        "recipe": generator.vocab.training.get("recipe_name"),
        "parameters": generator.vocab.training.get("parameters"),
        "multiply_adds_per_step": multiply_adds_per_step(generator),
        "machine": machine.describe(),
        "temperature": TEMPERATURE,
        "repeats": r,
        "chars_per_s": dict(rows),
        "x_book_loop": {name: rate / book for name, rate in rows} if book else None,
        "processes": {
            name: {"first_char_s": statistics.median(v[0] for v in runs),
                   "wall_s": statistics.median(v[1] for v in runs),
                   "peak_rss_mb": max(v[2] for v in runs)}
            for name, runs in processes.items()
        },
        "limits": [profile(generator, 1, 1), profile(generator, 256, os.cpu_count())],
        "limit_line": limit_line(generator, os.cpu_count()),
    }


def print_tables(result: dict, rows, book: float | None) -> None:
    print(f"\n{result['model']} ({result['recipe']} recipe): {result['parameters']:,} parameters, "
          f"{result['multiply_adds_per_step']:,} multiply-adds per step; "
          f"medians of {result['repeats']} runs\n"
          f"{machine.line()}\n")
    print(f"| {'generation, temperature 0.5':<52} | {'chars/s':>10} | {'x book loop':>11} |")
    print(f"| {'-' * 52} | {'-' * 9}:| {'-' * 10}:|")
    for name, rate in rows:
        ratio = f"{rate / book:,.0f}" if book else "-"
        print(f"| {name:<52} | {rate:>10,.0f} | {ratio:>11} |")
    print(f"\n| {'fresh process':<32} | {'first char s':>12} | {'exit s':>7} | {'peak RSS MB':>11} |")
    print(f"| {'-' * 32} | {'-' * 11}:| {'-' * 6}:| {'-' * 10}:|")
    for name, figures in result["processes"].items():
        print(f"| {name:<32} | {figures['first_char_s']:>12.3f} | {figures['wall_s']:>7.3f} | "
              f"{figures['peak_rss_mb']:>11.0f} |")
    print("\nWhere a step's time goes (bench/limits.py says how each part is timed):")
    for p in result["limits"]:
        print("\n".join(describe(p)))
    print("\n".join(describe_limit(result["limit_line"])))


if __name__ == "__main__":
    sys.exit(main())
