"""Staging, checking and installing an export: what train/export.py (a run's checkpoint) and
train/convert.py (any Keras file) share.

An export is written into a staging folder beside the model, checked there by charsdk as users run it,
and moved into place only when every check passes (`install`), so that a failed check or a kill at any
moment leaves the previous complete model or the new one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from charsdk import ModelError
from charsdk.sampling import log_softmax
from charsdk.session import sha256_of
from charsdk.vocab import Vocab

TOLERANCE = 1e-5  # max abs difference of probabilities between Keras and the float32 graph
# Held-out characters scored for vocab.json's figures, at most (the first ones of the held-out part):
# window mode does maxlen steps per character, ~maxlen/8 times the work of stateful mode.
HOLDOUT_CHARS = {"stateful": 1_000_000, "window": 100_000}


class ExportError(Exception):
    """A check that failed: one line saying what and what to do; nothing was installed."""


@contextlib.contextmanager
def staging(model_dir: Path) -> Iterator[Path]:
    """An empty staging folder in model_dir, removed afterwards whatever happens."""
    folder = model_dir / ".export-staging"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def save_content_addressed(proto, directory: Path, stem: str) -> tuple[Path, str]:
    """Save as <stem>-<sha256 prefix>.onnx (a new export never overwrites a file in use);
    returns the path and the full sha256."""
    tmp = directory / f"{stem}.onnx"
    onnx.save(proto, tmp)
    sha256 = sha256_of(tmp)
    path = directory / f"{stem}-{sha256[:12]}.onnx"
    os.replace(tmp, path)
    return path, sha256


def install(staging: Path, model_dir: Path, keep: set[str]) -> None:
    """Move a checked export into place so that a kill at any moment leaves the previous complete
    model or the new one, never a mix: the new ONNX files arrive beside the old ones under their own
    names, vocab.json (which names them) is replaced in one rename, and only then are the files
    it no longer names removed."""
    remove_unnamed_files(model_dir)  # left by an export killed before, if any
    for name in keep:
        os.replace(staging / name, model_dir / name)
    os.replace(staging / "vocab.json", model_dir / "vocab.json")
    remove_unnamed_files(model_dir)


def remove_unnamed_files(model_dir: Path) -> None:
    """Delete the ONNX files and item records that model_dir/vocab.json does not name."""
    try:
        vocab = Vocab.load(model_dir / "vocab.json")
    except ModelError:
        return  # no readable vocab.json: nothing is known to be unused
    for path in [*model_dir.glob("*.onnx"), *model_dir.glob("items-*.bin")]:
        if path.name not in vocab.files:
            path.unlink()


def holdout_windows(corpus, maxlen: int, windows: int = 64) -> np.ndarray:
    """Ids [windows, maxlen] of windows spread evenly over the held-out text."""
    holdout = corpus.holdout_ids
    starts = np.linspace(0, len(holdout) - maxlen - 1, windows).astype(int)
    return np.stack([holdout[s : s + maxlen] for s in starts]).astype(np.int64)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities [B, V] from logits [B, V], in float64."""
    return np.exp(log_softmax(logits))
