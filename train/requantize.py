"""An int8 export's own integers within the pair limit: `python -m train.requantize DIR --corpus TEXT`.

For an export written before train/graph.py's PAIR_LIMIT whose checkpoint is gone (the shipped default
`nietzsche` was exported from a run whose best.keras was never kept): each weight matrix its integer
products multiply (its integers times their scales) is quantized again as an export now quantizes float
weights (`quantize_per_channel` with the pair limit). The held-out text the export was scored on (the
end of TEXT, as the run split it) is scored again in both modes; the result is installed only if it has
no overflowing pair and scores within graph_export.INT8_MAX_LOSS bits/char of the float32 figures vocab.json
recorded. Needs no TensorFlow.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from pathlib import Path

import onnx
from onnx import numpy_helper

from charsdk import CharsdkError, Generator, Vocab

from .corpus import CorpusError, load_corpus
from .graph import PAIR_LIMIT, overflowing_pairs, product_weights, quantize_per_channel
from .graph_export import INT8_MAX_LOSS
from .install import HOLDOUT_CHARS, ExportError, install, save_content_addressed


def requantize(model_dir: Path, corpus_path: Path) -> dict:
    """Rewrite model_dir's int8 graph within the pair limit; returns {mode: (before, after)} bits/char."""
    vocab = Vocab.load(model_dir / "vocab.json")
    if vocab.precision != "int8" or vocab.window is not None:
        raise ExportError(f"{model_dir} is not one of charsdk's int8 graphs: nothing to requantize")
    training, recipe = vocab.training, vocab.training["recipe"]
    corpus = load_corpus(corpus_path, maxlen=vocab.maxlen, holdout=recipe["holdout"],
                         lowercase=vocab.lowercase, known_chars="".join(vocab.chars))
    if corpus.chars != vocab.chars:
        raise ExportError(f"{corpus_path} has characters the model does not know: not its training text")
    model = onnx.load(model_dir / vocab.onnx_file)
    tensors = {t.name: t for t in model.graph.initializer}
    for name, q in product_weights(model).items():
        scale = tensors[name.removesuffix("_q") + "_scale"]
        new_q, new_scale = quantize_per_channel(q * numpy_helper.to_array(scale), PAIR_LIMIT)
        tensors[name].CopyFrom(numpy_helper.from_array(new_q, name))
        scale.CopyFrom(numpy_helper.from_array(new_scale, scale.name))
    over = {name: overflowing_pairs(q) for name, q in product_weights(model).items()}
    if any(over.values()):
        raise ExportError(f"pairs over the limit remain: {over}")
    before = Generator.load(model_dir, threads=os.cpu_count())
    with tempfile.TemporaryDirectory(prefix=".requantize-", dir=model_dir) as staging:
        path, sha256 = save_content_addressed(model, Path(staging), "model")
        figures, new_training = {}, dict(training)
        vocab = dataclasses.replace(vocab, onnx_file=path.name, onnx_sha256=sha256,
                                    int8_pair_limit=PAIR_LIMIT)
        vocab.save(Path(staging) / "vocab.json")
        after = Generator.load(staging, threads=os.cpu_count())
        for mode, limit in HOLDOUT_CHARS.items():
            text = corpus.decode(corpus.holdout_ids[:limit])
            figures[mode] = tuple(g.evaluate(text, mode=mode)["bits_per_char"] for g in (before, after))
            fp32 = training[f"holdout_bits_per_char_{mode}_fp32"]
            if figures[mode][1] > fp32 + INT8_MAX_LOSS:
                raise ExportError(f"requantized, {mode} scores {figures[mode][1]:.4f} bits/char against "
                                  f"{fp32:.4f} in float32: not installed")
            new_training[f"holdout_bits_per_char_{mode}"] = round(figures[mode][1], 4)
        new_training["requantized_from"] = {"onnx_sha256": before.vocab.onnx_sha256, **{
            f"holdout_bits_per_char_{m}": round(b, 4) for m, (b, _) in figures.items()}}
        dataclasses.replace(vocab, training=new_training).save(Path(staging) / "vocab.json")
        install(Path(staging), model_dir, keep={vocab.onnx_file})
    return figures


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.requantize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", type=Path, help="an export's directory (vocab.json and its ONNX file)")
    p.add_argument("--corpus", type=Path, required=True, help="the text the model was trained on")
    args = p.parse_args(argv)
    try:
        figures = requantize(args.model_dir, args.corpus)
    except (ExportError, CorpusError, CharsdkError) as exc:
        print(f"requantize: error: {exc}", file=sys.stderr)
        return 1
    print(f"requantized {args.model_dir} within the pair limit; held-out bits/char before -> after: "
          + ", ".join(f"{mode} {b:.4f} -> {a:.4f}" for mode, (b, a) in figures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
