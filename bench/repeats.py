"""`python -m bench.repeats MODEL CORPUS`: where a model's held-out bits go, by how much of each character's
context repeats text read before it.

PPMd codes a character cheaply when its context has been seen before, in the training text or earlier in
the held-out text (it adapts as it reads). This splits a model's held-out cost the same way: for each
length k, the characters whose k characters before them, with the character itself, occur in the
training text (or in the held-out text before them), against the rest. A model that codes repeated runs
worse than PPMd, or a held-out text that mostly repeats itself, is what the table shows. The split is
the one `make baselines` and training use (the last 10% held out); the model is scored stateful, as
`charsdk evaluate` scores it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from bench.baselines import split_as_training
from charsdk import Generator
from charsdk.engine import Engine
from charsdk.errors import CharsdkError

RUN_LENGTHS = (8, 16, 32, 64)  # k: characters of context that must repeat


def continues_a_run(before: str, text: str, k: int, *, within: bool = False) -> np.ndarray:
    """For each character of `text`: whether it and the k characters before it occur in `before` (or,
    `within`, earlier in `text` itself), as one string of k + 1 characters."""
    seen = {hash(before[j : j + k + 1]) for j in range(len(before) - k)} if not within else set()
    hits = np.zeros(len(text), bool)
    for i in range(k, len(text)):
        gram = hash(text[i - k : i + 1])
        hits[i] = gram in seen
        if within:
            seen.add(gram)
    return hits


def held_out_costs(model: str, text: str) -> tuple[str, str, np.ndarray]:
    """The training part, the held-out part, and the model's bits for each held-out character it scores
    (the first `maxlen` have too little context and are not scored, as in `evaluate`)."""
    generator = Generator.load(model)
    ordered, split = split_as_training(text, 0.1)
    held = ordered[split:]
    log_p = Engine(generator.backend, "stateful").log_probs(generator.vocab.encode(held, "error"),
                                                            generator.vocab.maxlen, None)
    return ordered[:split], held, -log_p / np.log(2)


def report(train: str, held: str, bits: np.ndarray) -> str:
    scored = slice(len(held) - len(bits), None)
    lines = [f"{len(bits):,} held-out characters scored: {bits.mean():.4f} bits/char",
             f"{'a run of k characters':<35} {'share':>6}  {'model bits there':>16}  {'elsewhere':>9}"]
    for within, where in ((False, "of the training text"), (True, "earlier in the held-out text")):
        for k in RUN_LENGTHS:
            hits = continues_a_run(train, held, k, within=within)[scored]
            there, elsewhere = (f"{bits[part].mean():.3f}" if part.any() else "-" for part in (hits, ~hits))
            lines.append(f"k={k:<3} {where:<29} {hits.mean():6.1%}  {there:>16}  {elsewhere:>9}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.repeats", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="an exported model: a folder or a shipped model's name")
    p.add_argument("corpus", type=Path, help="the UTF-8 text it was trained on")
    p.add_argument("--lowercase", action="store_true", help="lower-case the text, as the model's run did")
    args = p.parse_args(argv)
    try:
        text = args.corpus.read_text(encoding="utf-8").removeprefix("\ufeff")
        train, held, bits = held_out_costs(args.model, text.lower() if args.lowercase else text)
    except (OSError, UnicodeDecodeError, CharsdkError) as exc:
        print(f"repeats: error: {exc}", file=sys.stderr)
        return 2
    print(report(train, held, bits))
    return 0


if __name__ == "__main__":
    sys.exit(main())
