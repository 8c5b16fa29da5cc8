"""`make bench-memory NAME=RUN`: what a model's n-gram memory (`make memory`) costs in speed, beside the
same network without it, in turns: generation (one stream, 16, 256) and scoring a text, in Python.
Writes memory-<run>-<CPU kind>.json in --out-dir.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from charsdk import CharsdkError, Generator

from . import machine
from .limits import median_rates

SEED_TEXT = "The "
TEMPERATURE = 0.5


def jobs(label: str, generator: Generator, batched: Generator, scored: str) -> list:
    """(name, call, characters) rows for one way of loading the model; `batched` uses every core."""
    gen, cores = generator.generate, os.cpu_count()
    return [
        (f"{label}: one stream", lambda: gen(SEED_TEXT, 1000, TEMPERATURE, seed=1), 1000),
        (f"{label}: n=16, {cores} threads",
         lambda: batched.generate(SEED_TEXT, 300, TEMPERATURE, n=16, seed=1), 300 * 16),
        (f"{label}: n=256, {cores} threads",
         lambda: batched.generate(SEED_TEXT, 40, TEMPERATURE, n=256, seed=1), 40 * 256),
        (f"{label}: eval (scoring a text)", lambda: generator.evaluate(scored), len(scored) - 100),
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="an exported run's directory with its memory (make memory)")
    p.add_argument("--out-dir", type=Path, default=Path("artifacts/bench"), help="where the JSON goes")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    try:
        loads = {label: (Generator.load(args.model, memory=memory),
                         Generator.load(args.model, threads=os.cpu_count(), memory=memory))
                 for label, memory in (("with its memory", True), ("the network alone", False))}
    except CharsdkError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    generator = loads["with its memory"][0]
    if not generator.vocab.memory:
        print(f"bench: error: {args.model} has no memory: run make memory first", file=sys.stderr)
        return 2
    scored = loads["the network alone"][0].generate(SEED_TEXT, 20000, TEMPERATURE, seed=2)  # a text to score
    rows = median_rates([job for label, (one, many) in loads.items()
                         for job in jobs(label, one, many, scored)], args.repeats)
    result = {"model": str(generator.path), "machine": machine.describe(), "temperature": TEMPERATURE,
              "repeats": args.repeats, "chars_per_s": dict(rows)}
    print(f"{result['model']}: medians of {args.repeats} runs, in turns\n{machine.line()}\n")
    print(f"| {'characters per second':<42} | {'chars/s':>9} |\n| {'-' * 42} | {'-' * 8}:|")
    for name, rate in rows:
        print(f"| {name:<42} | {rate:>9,.0f} |")
    out = args.out_dir / f"memory-{generator.path.name}-{machine.kind()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
