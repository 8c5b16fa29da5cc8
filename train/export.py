"""Export the best checkpoint: `python -m train.export --name NAME [--precision int8|fp32]` writes
model-<hash>.onnx (one graph that reads, scores and samples: train/graph.py) and vocab.json (which
names it, with its sha256), once every check of train/graph_export.py passes. With --keras, any Keras
character model (train/convert.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from charsdk.session import sha256_of
from charsdk.vocab import PRECISIONS

from .convert import bring
from .corpus import Corpus, CorpusError, download_book_corpus, load_corpus
from .graph_export import export_graph
from .install import ExportError
from .model import keep_chars, load_checkpoint


def training_corpus(model_dir: Path) -> tuple[dict, Corpus]:
    """A run's log and its corpus, split and encoded as the run trained on it (ExportError if it is gone
    or changed): what checking an export, or scoring the held-out part again, needs."""
    log = json.loads((model_dir / "log.json").read_text())
    recipe, corpus_info = log["recipe"], log["corpus"]
    try:
        corpus = load_corpus(corpus_info["path"], maxlen=recipe["maxlen"], holdout=recipe["holdout"],
                             lowercase=recipe["lowercase"], cache_dir=model_dir,
                             known_chars="".join(corpus_info["vocab"]))  # the model's, in its order
    except CorpusError as exc:
        raise ExportError(f"the training corpus is needed: {exc}") from None
    if corpus.sha256 != corpus_info["sha256"]:
        raise ExportError(f"{corpus.path} changed since training (sha256 differs): retrain")
    return log, corpus


def export(model_dir: Path, precision: str = "int8") -> dict:
    """Convert model_dir/best.keras; returns the checks' figures. Raises ExportError on a failed check."""
    log, corpus = training_corpus(model_dir)
    recipe = log["recipe"]

    model = load_checkpoint(model_dir / "best.keras")
    with tempfile.TemporaryDirectory(prefix=".narrowed-", dir=model_dir) as scratch:
        # A fine-tune's vocabulary is its base's, more than its text uses: keep the characters used. A
        # recipe that names its vocabulary (the base's, BASE_CHARS) keeps all of it.
        used = corpus if recipe.get("vocab") else corpus.used_only(Path(scratch))
        if used is not corpus:
            model, corpus = keep_chars(model, corpus.chars, used.chars), used
        return export_graph(model, corpus, recipe["maxlen"], recipe["lowercase"],
                            training_summary(log, model, corpus, model_dir), model_dir, precision)


def training_summary(log: dict, model, corpus, model_dir: Path) -> dict:
    """vocab.json's `training`: how the exported model was trained, from the run's log."""
    best = log["epochs"][log["best_epoch"] - 1]
    training = {
        "run": model_dir.name,  # artifacts/<run>/: its log.json tells how the model was trained
        "recipe_name": log["recipe_name"],
        "recipe": log["recipe"],
        "corpus_sha256": corpus.sha256,
        "corpus_chars": len(corpus.ids),
        "epochs_trained": len(log["epochs"]),
        "best_epoch": log["best_epoch"],
        "holdout_bits_per_char_during_training": round(best["val_bits_per_char"], 4),
        "train_wall_s": best["wall_s"],
        "parameters": int(model.count_params()),
        "checkpoint_sha256": sha256_of(model_dir / "best.keras"),
        "chars_trained": len(log["corpus"]["vocab"]),  # more than vocab.json's when the text uses fewer
    }
    if log.get("base") and log.get("start"):  # a fine-tune: its base, and the base's figure on this text
        training["base"] = {"checkpoint_sha256": log["base"]["sha256"], "units": log["base"]["units"],
                            "holdout_bits_per_char_before": round(log["start"]["val_bits_per_char"], 4)}
    return training


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="nietzsche")
    p.add_argument("--artifacts", default="artifacts")
    p.add_argument("--precision", choices=PRECISIONS, default="int8",
                   help="int8: int8 weights, one scale per output channel (default); fp32: float32 weights")
    p.add_argument("--keras", type=Path, help="export this Keras model (.keras, .h5) instead of run NAME's "
                                              "checkpoint: train/convert.py")
    p.add_argument("--corpus", type=Path, help="with --keras: the text it was trained on (default: the "
                                               "book's Nietzsche text)")
    p.add_argument("--lowercase", action="store_true", help="with --keras: its training lower-cased the text")
    p.add_argument("--maxlen", type=int, help="with --keras: its window, if its input does not fix it (60)")
    args = p.parse_args(argv)
    model_dir = Path(args.artifacts) / args.name
    if args.keras:
        return export_keras(args, model_dir)
    if not (model_dir / "best.keras").exists() or not (model_dir / "log.json").exists():
        print(f"export: error: {model_dir} has no trained checkpoint: run make train NAME={args.name}",
              file=sys.stderr)
        return 2
    try:
        parity = export(model_dir, args.precision)
    except ExportError as exc:
        print(f"export: error: {exc}", file=sys.stderr)
        return 1
    figures = ", ".join(f"{p} {bits['stateful']:.4f}" for p, bits in parity["holdout_bits_per_char"].items())
    print(f"exported {model_dir}/vocab.json and the ONNX file it names ({args.precision}); Keras vs the "
          f"float32 graph max abs difference: window {parity['window_max_abs_diff']:.1e}, step by step "
          f"{parity['step_max_abs_diff']:.1e}; tf2onnx's conversion vs the graph "
          f"{parity['tf2onnx_max_abs_diff']:.1e}; its draws agree with numpy sampling; held-out "
          f"bits/char (stateful): {figures}")
    return 0


def export_keras(args, model_dir: Path) -> int:
    try:
        written = bring(args.keras, args.corpus or download_book_corpus(), model_dir, args.lowercase,
                        args.maxlen, args.precision)
    except (ExportError, CorpusError) as exc:
        print(f"export: error: {exc}", file=sys.stderr)
        return 2
    print(f"exported {args.keras} to {model_dir}/vocab.json and the ONNX file it names: {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
