"""`python -m train.memory --name NAME`: give run NAME's export an n-gram memory of its training text
(charsdk.memory), the mixture's weights fitted on the held-out part, and print the held-out figure without
and with it (also written to the run's memory.json). Run after `make export` (`make memory`); again
after a new export (it replaces the memory).

The weights are fitted where the best epoch is chosen, on the held-out part; so that the figure shows
what the mixture does on text it was not fitted to, the held-out figure with cross-fitted weights is
printed too (each half scored with the weights fitted on the other).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from charsdk import Generator
from charsdk.engine import Engine
from charsdk.memory import ORDER, Memory

from .export import training_corpus
from .install import ExportError

GRID = np.linspace(0.0, 0.95, 39)  # the weights tried for each depth
MIN_CHARS = 200  # held-out characters a depth needs for its own weight (else the one below it)


def best_weight(log_p: np.ndarray, q: np.ndarray) -> float:
    """The memory's share in GRID that codes these characters in the fewest bits."""
    with np.errstate(divide="ignore"):
        costs = -np.logaddexp(np.log1p(-GRID)[:, None] + log_p, np.log(GRID)[:, None] + np.log(q)).sum(1)
    return float(GRID[np.argmin(costs)])


def fit_weights(log_p: np.ndarray, q: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """One weight per depth of context found (MIN_CHARS at least, else the depth below's)."""
    weights = np.zeros(ORDER + 1)
    for d in range(ORDER + 1):
        at = depth == d
        weights[d] = best_weight(log_p[at], q[at]) if at.sum() >= MIN_CHARS else \
            weights[d - 1] if d else best_weight(log_p, q)
    return weights


def bits(memory: Memory, log_p: np.ndarray, q: np.ndarray, depth: np.ndarray) -> float:
    return float(-memory.mix(log_p, q, depth).mean() / np.log(2))


def add_memory(model_dir: Path) -> dict:
    """Build, fit and write the memory of an exported run; returns the held-out figures."""
    _, corpus = training_corpus(model_dir)
    generator = Generator.load(model_dir, memory=False)  # the network alone: its memory is rebuilt
    model = generator.backend
    chars = np.array(corpus.chars)
    train, held = (generator.vocab.encode("".join(chars[part]))
                   for part in (corpus.train_ids, corpus.holdout_ids))
    memory = Memory.build(train, generator.vocab.size)
    maxlen = generator.vocab.maxlen
    log_p = Engine(model, "stateful").log_probs(held, maxlen)
    q, depth = memory.char_probs(held, maxlen)
    memory = memory.fitted(fit_weights(log_p, q, depth))
    half = len(q) // 2
    crossed = [(memory.fitted(fit_weights(log_p[a], q[a], depth[a])), b)
               for a, b in ((slice(None, half), slice(half, None)), (slice(half, None), slice(None, half)))]
    figures = {
        "model": round(float(-log_p.mean() / np.log(2)), 4),
        "mixed": round(bits(memory, log_p, q, depth), 4),
        "mixed_cross_fitted": round(sum(bits(m, log_p[b], q[b], depth[b]) * len(q[b]) for m, b in crossed)
                                    / len(q), 4),
    }
    write(model_dir, generator, memory, figures)
    return figures


def write(model_dir: Path, generator: Generator, memory: Memory, figures: dict) -> None:
    """The memory's file, then vocab.json naming it (the old memory's file removed), and its entry as
    memory.json beside the run's log (what the docs cite: vocab.json is not kept with the logs)."""
    old = generator.vocab.memory
    entry = {**memory.save(model_dir), "holdout_bits_per_char": figures}
    dataclasses.replace(generator.vocab, memory=entry).save(model_dir / "vocab.json")
    (model_dir / "memory.json").write_text(json.dumps({"run": model_dir.name, **entry}, indent=2) + "\n")
    if old and old["file"] != entry["file"]:
        (model_dir / old["file"]).unlink(missing_ok=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.memory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="nietzsche")
    p.add_argument("--artifacts", default="artifacts")
    args = p.parse_args(argv)
    model_dir = Path(args.artifacts) / args.name
    if not (model_dir / "vocab.json").exists():
        print(f"memory: error: {model_dir} has no export: run make export NAME={args.name}", file=sys.stderr)
        return 2
    if not (model_dir / "log.json").exists():
        print(f"memory: error: {model_dir} has no log.json: a memory is built from the run's own corpus and "
              "split, which its log names (a model exported with KERAS= has none)", file=sys.stderr)
        return 2
    try:
        figures = add_memory(model_dir)
    except ExportError as exc:
        print(f"memory: error: {exc}", file=sys.stderr)
        return 1
    print(f"{model_dir}: held-out bits/char (stateful) {figures['model']:.4f} alone, {figures['mixed']:.4f} "
          f"with its memory ({figures['mixed_cross_fitted']:.4f} with weights fitted on the other half)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
