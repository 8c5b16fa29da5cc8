"""An export's graph built again by this train/graph.py, around the same weights: `python -m train.regraph
DIR`. For an export whose checkpoint is gone (the shipped `nietzsche`'s never was kept) when the graph
gains something, as it gained the pattern inputs that let a constrained stream draw inside the call. The
initializers (every weight and constant) are carried over as they are, so the new graph computes the
same numbers: it is installed only if it reads a text to the same logits and draws the same characters
as the graph it replaces, in both modes. Needs no TensorFlow.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
from pathlib import Path

import onnx
from onnx import numpy_helper

from charsdk import CharsdkError, Generator, Vocab

from .graph import graph_of
from .install import ExportError, install, save_content_addressed

CHECK_TEXT = "the free spirit sees that the herd has its own truth, and " * 4  # what both graphs read


def regraph(model_dir: Path) -> Path:
    """Rebuild model_dir's graph around its own initializers; returns the new ONNX file's path."""
    vocab = Vocab.load(model_dir / "vocab.json")
    if vocab.window is not None:
        raise ExportError(f"{model_dir} is a window model (tf2onnx): its graph is not charsdk's")
    old = onnx.load(model_dir / vocab.onnx_file)
    arrays = {t.name: numpy_helper.to_array(t) for t in old.graph.initializer}
    new = graph_of(arrays, vocab.states, vocab.precision)
    before = Generator.load(model_dir)
    with tempfile.TemporaryDirectory(prefix=".regraph-", dir=model_dir) as staging:
        path, sha256 = save_content_addressed(new, Path(staging), "model")
        new_vocab = dataclasses.replace(vocab, onnx_file=path.name, onnx_sha256=sha256)
        new_vocab.save(Path(staging) / "vocab.json")
        others = set(new_vocab.files) - {path.name}  # a list model's record of its items, as it is
        for name in others:
            shutil.copy2(model_dir / name, Path(staging) / name)
        after = Generator.load(staging)
        check_same(before, after)
        install(Path(staging), model_dir, keep={path.name, *others})
    return model_dir / path.name


def check_same(before: Generator, after: Generator) -> None:
    """The same held-out-style figures and the same seeded text, both modes, one and several streams."""
    text = before.vocab.decode(before.vocab.encode(CHECK_TEXT, "skip"))
    for mode in before.modes:
        if before.evaluate(text, mode=mode) != after.evaluate(text, mode=mode):
            raise ExportError(f"the rebuilt graph scores the text differently in {mode} mode: not installed")
        for n in (1, 4):
            options = {"n": n, "seed": 7, "mode": mode, "temperature": 0.8}
            if before.generate(text[:30], 200, **options) != after.generate(text[:30], 200, **options):
                raise ExportError(f"the rebuilt graph draws other text in {mode} mode: not installed")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.regraph", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", type=Path, nargs="+",
                   help="an export's directory (vocab.json and its ONNX file)")
    args = p.parse_args(argv)
    for model_dir in args.model_dir:
        try:
            path = regraph(model_dir)
        except (ExportError, CharsdkError) as exc:
            print(f"regraph: error: {exc}", file=sys.stderr)
            return 1
        print(f"rebuilt {model_dir}'s graph around its own weights: {path.name} (same scores, same text)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
