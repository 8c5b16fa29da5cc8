"""Which weights a new run starts from: the pretrained base (make base), another run, or none.

A corpus that the base's vocabulary covers (at least MIN_COVERAGE of its characters, counted with
repeats) is fine-tuned from the base by default: its vocabulary is the base's, in the base's order,
followed by the corpus's other characters, which get new input rows and output columns (model.start_from).
A corpus mostly outside it (e.g. Chinese) trains from scratch, and the run's first line says why.
Everything here runs before TensorFlow is imported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .corpus import file_sha256, text_chunks

MIN_COVERAGE = 0.99  # of the corpus's characters (with repeats) in the base's vocabulary: fine-tune
BASE_RUN = "base"  # the run `make base` trains, under the artifacts directory


class BaseError(Exception):
    """A base that was asked for by name and cannot be used; the message says what to do."""


@dataclass(frozen=True)
class Base:
    checkpoint: Path  # best.keras of the base run
    chars: tuple[str, ...]  # its vocabulary, in its order
    units: tuple[int, ...]  # its LSTM layers

    def describe(self) -> dict:
        return {"checkpoint": str(self.checkpoint), "sha256": file_sha256(self.checkpoint),
                "chars": len(self.chars), "units": list(self.units)}


def load_base(run_dir: Path) -> Base:
    """The base in a run directory (or its best.keras): the checkpoint and, from its log, the vocabulary."""
    run_dir = run_dir.parent if run_dir.suffix == ".keras" else run_dir
    checkpoint = run_dir / "best.keras"
    try:
        log = json.loads((run_dir / "log.json").read_text(encoding="utf-8"))
        chars, units = tuple(log["corpus"]["vocab"]), tuple(log["recipe"]["units"])
    except (OSError, ValueError, KeyError) as exc:
        raise BaseError(f"{run_dir} is not a trained run ({exc}): name a run with a best.keras and "
                        "log.json, or BASE=none to train from scratch") from None
    if not checkpoint.is_file():
        raise BaseError(f"{checkpoint} does not exist: train that run first, or BASE=none")
    return Base(checkpoint, chars, units)


def corpus_char_counts(path: Path, lowercase: bool) -> dict[str, int]:
    """How often each character occurs in the corpus (after lower-casing, if the recipe does)."""
    counts: dict[int, int] = {}
    for text in text_chunks(path, lowercase, f"counting the characters of {path.name}"):
        codes, n = np.unique(np.frombuffer(text.encode("utf-32-le"), np.uint32), return_counts=True)
        for code, count in zip(codes.tolist(), n.tolist(), strict=True):
            counts[code] = counts.get(code, 0) + count
    return {chr(code): count for code, count in counts.items()}


def choose_base(choice: str, artifacts: Path, corpus: Path, lowercase: bool) -> tuple[Base | None, str]:
    """The base a new run starts from (None: from scratch) and the line that says so.

    choice: "auto" (the base run under `artifacts`, if there is one and it covers the corpus), "none",
    or a run's name under `artifacts` or its directory (used whatever it covers)."""
    if choice == "none":
        return None, "training from scratch (BASE=none)"
    named = choice != "auto"
    where = Path(choice) if named and Path(choice).exists() else artifacts / (choice if named else BASE_RUN)
    if not named and not (where / "best.keras").is_file():
        return None, f"training from scratch: there is no base model at {where} (make base trains one)"
    base = load_base(where)
    counts = corpus_char_counts(corpus, lowercase)
    known = set(base.chars)
    covered = sum(n for c, n in counts.items() if c in known) / max(1, sum(counts.values()))
    new = sorted(set(counts) - known)
    if not named and covered < MIN_COVERAGE:
        return None, (f"training from scratch: only {covered:.1%} of the corpus's characters are in the "
                      f"base's vocabulary (fine-tuning needs {MIN_COVERAGE:.0%}); BASE=base insists")
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in new[:20])  # a tab as \t
    shown += "…" if len(new) > 20 else ""
    return base, (f"fine-tuning from {base.checkpoint} ({len(base.units)} x LSTM({base.units[0]})): "
                  f"{covered:.2%} of the corpus's characters are in its vocabulary"
                  + (f"; {len(new)} new: {shown}" if new else ""))
