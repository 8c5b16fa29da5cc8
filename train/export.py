"""Export the best checkpoint: `python -m train.export --name NAME [--precision int8|fp32]` writes
model-<hash>.onnx (one graph that reads, scores and samples: train/graph.py) and vocab.json (which
names it, with its sha256).

Before anything is moved into place, the float32 graph run by onnxruntime (through charsdk, as users
run it) must agree with Keras on real windows and with tf2onnx's conversion of the same model (an
independent witness), the graph's draws must be numpy's draws from its own distributions, and an int8
graph must score the held-out text within INT8_MAX_LOSS bits/char of the float32 one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

from charsdk import Generator, ModelError
from charsdk.generator import sha256_of
from charsdk.sampling import SamplingOptions, allowed, gumbel_noise, log_softmax, scores
from charsdk.vocab import PRECISIONS, Vocab

from . import keras_onnx
from .corpus import CorpusError, load_corpus
from .graph import OPSET, PAIR_LIMIT, build_graph, overflowing_pairs, product_weights
from .model import graph_weights, keep_chars, last_step_probs, load_checkpoint

TOLERANCE = 1e-5  # max abs difference of probabilities between Keras and the float32 graph
INT8_MAX_LOSS = 0.005  # held-out bits/char an int8 export may lose against its float32 self
# Held-out characters scored for vocab.json's figures, at most (the first ones of the held-out part):
# window mode does maxlen steps per character, ~maxlen/8 times the work of stateful mode.
HOLDOUT_CHARS = {"stateful": 1_000_000, "window": 100_000}


class ExportError(Exception):
    pass


def export(model_dir: Path, precision: str = "int8") -> dict:
    """Convert model_dir/best.keras; returns the checks' figures. Raises ExportError on a failed check."""
    log = json.loads((model_dir / "log.json").read_text())
    recipe, corpus_info = log["recipe"], log["corpus"]
    try:
        corpus = load_corpus(corpus_info["path"], maxlen=recipe["maxlen"], holdout=recipe["holdout"],
                             lowercase=recipe["lowercase"], cache_dir=model_dir,
                             known_chars="".join(corpus_info["vocab"]))  # the model's, in its order
    except CorpusError as exc:
        raise ExportError(f"the training corpus is needed to check the export: {exc}") from None
    if corpus.sha256 != corpus_info["sha256"]:
        raise ExportError(f"{corpus.path} changed since training (sha256 differs): retrain")

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


def export_graph(model, corpus, maxlen: int, lowercase: bool, training: dict, model_dir: Path,
                 precision: str) -> dict:
    """charsdk's graph of a Keras model (train/graph.py) into model_dir, once it agrees with Keras and
    with tf2onnx's conversion, draws as numpy draws, and (int8) scores within INT8_MAX_LOSS of float32;
    returns the checks' figures. Raises ExportError (and installs nothing) when a check fails."""
    layers, dense, states = graph_weights(model)
    holdout_text = corpus.decode(corpus.holdout_ids[: max(HOLDOUT_CHARS.values())])
    seed_start = holdout_text.find(" ") + 1
    training = {**training, "opset": OPSET}
    staging = model_dir / ".export-staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        generators, figures = {}, {}
        for graph_precision in dict.fromkeys(("fp32", precision)):  # fp32 first: the reference
            directory = staging / graph_precision
            directory.mkdir()
            proto = build_graph(layers, dense, states, graph_precision)
            check_pairs(proto)
            path, sha256 = save_content_addressed(proto, directory, "model")
            vocab = Vocab(chars=corpus.chars, maxlen=maxlen, lowercase=lowercase,
                          states=states, onnx_file=path.name, onnx_sha256=sha256, precision=graph_precision,
                          default_seed_text=holdout_text[seed_start : seed_start + maxlen],
                          training=training, int8_pair_limit=PAIR_LIMIT if graph_precision == "int8" else 0)
            vocab.save(directory / "vocab.json")
            generators[graph_precision] = Generator.load(directory, threads=os.cpu_count())
            # The figures users can reproduce with `charsdk eval` on the start of the held-out text.
            figures[graph_precision] = {
                mode: generators[graph_precision].evaluate(holdout_text[:limit], mode=mode)["bits_per_char"]
                for mode, limit in HOLDOUT_CHARS.items()}
        parity = check_parity(model, generators["fp32"], corpus)
        if parity["max_abs_diff"] > TOLERANCE:
            raise ExportError(f"onnxruntime and Keras disagree by {parity['max_abs_diff']:.2e} "
                              f"(> {TOLERANCE}): the export is wrong and was not installed")
        parity["tf2onnx_max_abs_diff"] = tf2onnx_witness(model, generators["fp32"], corpus)
        if parity["tf2onnx_max_abs_diff"] > TOLERANCE:
            raise ExportError(f"tf2onnx's conversion of the model and charsdk's graph disagree by "
                              f"{parity['tf2onnx_max_abs_diff']:.2e} (> {TOLERANCE}) on held-out windows: "
                              "the export is wrong and was not installed")
        generator = generators[precision]
        parity["sampler_mismatches"] = sampler_mismatches(generator, corpus.holdout_ids[:maxlen])
        if parity["sampler_mismatches"]:
            raise ExportError(f"model.onnx drew {parity['sampler_mismatches']} characters that "
                              "numpy sampling did not: the export is wrong and was not installed")
        parity["holdout_bits_per_char"] = figures
        int8, fp32 = figures[precision]["stateful"], figures["fp32"]["stateful"]
        if int8 > fp32 + INT8_MAX_LOSS:
            raise ExportError(f"the {precision} graph scores {int8:.4f} bits/char on the held-out text "
                              f"against {fp32:.4f} in float32 (more than {INT8_MAX_LOSS} worse): not "
                              "installed; export with --precision fp32 (make export PRECISION=fp32)")
        for mode, limit in HOLDOUT_CHARS.items():
            training[f"holdout_bits_per_char_{mode}"] = round(figures[precision][mode], 4)
            training[f"holdout_bits_per_char_{mode}_fp32"] = round(figures["fp32"][mode], 4)
            training[f"holdout_chars_{mode}"] = len(holdout_text[:limit])
        directory = staging / precision
        vocab = Vocab.load(directory / "vocab.json")
        dataclasses.replace(vocab, training=training).save(directory / "vocab.json")
        install(directory, model_dir, keep={vocab.onnx_file})
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return parity


def check_pairs(proto: onnx.ModelProto) -> None:
    """Every integer product exact on every CPU: no pair of neighbouring weights over PAIR_LIMIT
    (train/graph.py), which u8 x s8 kernels without VNNI would saturate on. Raises ExportError."""
    for name, q in product_weights(proto).items():
        if over := overflowing_pairs(q):
            raise ExportError(f"int8 matrix {name} has {over} pairs of neighbouring weights over "
                              f"{PAIR_LIMIT} in magnitude: onnxruntime's integer kernels without VNNI (AVX2) "
                              "would saturate on them; the export is wrong and was not installed")


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
    remove_unnamed_onnx(model_dir)  # left by an export killed before, if any
    for name in keep:
        os.replace(staging / name, model_dir / name)
    os.replace(staging / "vocab.json", model_dir / "vocab.json")
    remove_unnamed_onnx(model_dir)


def remove_unnamed_onnx(model_dir: Path) -> None:
    """Delete the ONNX files that model_dir/vocab.json does not name."""
    try:
        vocab = Vocab.load(model_dir / "vocab.json")
    except ModelError:
        return  # no readable vocab.json: nothing is known to be unused
    for path in model_dir.glob("*.onnx"):
        if path.name != vocab.onnx_file:
            path.unlink()


def holdout_windows(corpus, maxlen: int, windows: int = 64) -> np.ndarray:
    """Ids [windows, maxlen] of windows spread evenly over the held-out text."""
    holdout = corpus.holdout_ids
    starts = np.linspace(0, len(holdout) - maxlen - 1, windows).astype(int)
    return np.stack([holdout[s : s + maxlen] for s in starts]).astype(np.int64)


def tf2onnx_witness(model, generator: Generator, corpus) -> float:
    """The largest difference of probabilities between charsdk's float32 graph and tf2onnx's conversion
    of the same Keras model, on whole held-out windows from a zero state: an independent converter's
    witness for train/graph.py."""
    maxlen, size = generator.vocab.maxlen, generator.vocab.size
    ids = holdout_windows(corpus, maxlen)
    theirs = keras_onnx.run(keras_onnx.to_onnx(model, maxlen, size), np.eye(size, dtype=np.float32)[ids])
    theirs = theirs[:, -1] if theirs.ndim == 3 else theirs  # a loss at every position: the last one
    _, _, _, logits = generator.run(ids, generator._zero_state(len(ids)))
    return float(np.abs(softmax(logits[-1]) - theirs).max())


def check_parity(model, generator: Generator, corpus, windows: int = 64, stepped: int = 4) -> dict:
    """Keras vs the graph on held-out windows: whole windows in one call from a zero state, and one
    character per call with the state carried."""
    maxlen, vocab = generator.vocab.maxlen, generator.vocab
    ids = holdout_windows(corpus, maxlen, windows)
    keras_probs = last_step_probs(model, np.eye(vocab.size, dtype=np.float32)[ids])
    _, _, _, logits = generator.run(ids, generator._zero_state(len(ids)))
    whole = float(np.abs(softmax(logits[-1]) - keras_probs).max())

    stepwise = 0.0
    for row in range(stepped):
        state = generator._zero_state(1)
        for t in range(maxlen):
            _, state, _, logits = generator.run(ids[row : row + 1, t : t + 1], state)
        stepwise = max(stepwise, float(np.abs(softmax(logits[-1]) - keras_probs[row]).max()))
    return {"window_max_abs_diff": whole, "step_max_abs_diff": stepwise, "max_abs_diff": max(whole, stepwise)}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities [B, V] from logits [B, V], in float64."""
    return np.exp(log_softmax(logits))


def sampler_mismatches(generator: Generator, seed_ids, length: int = 200) -> int:
    """Characters the graph drew, in both modes, that numpy's draw (float64, from the graph's own
    distribution after the same characters, read in one call) would not draw with the same uniform
    numbers, for several temperature / top-k / top-p settings at once."""
    options = [SamplingOptions.check(t, k, p) for t, k, p in
               [(0, 0, 1), (0.5, 0, 1), (1.0, 5, 1), (1.2, 0, 0.9), (0.8, 3, 0.5)]]
    inv_t = np.array([o.inv_temperature for o in options])
    top_k = np.array([o.top_k for o in options])
    top_p = np.array([o.top_p for o in options])
    uniforms = np.random.default_rng(0).random((len(options), length, generator.vocab.size), np.float32)
    noise = gumbel_noise(uniforms, [o.temperature for o in options])
    seed_ids, maxlen, rows = np.asarray(seed_ids), generator.vocab.maxlen, np.arange(len(options))
    mismatches = 0
    for mode in ("stateful", "window"):
        (drawn,) = generator._draws(seed_ids, options, [uniforms], mode)
        texts = np.concatenate([np.tile(seed_ids, (len(options), 1)), drawn.T], axis=1)
        # the distribution before each drawn character: read seed + drawn text in one call
        window = maxlen if mode == "window" else 0
        state = generator._zero_state(len(options) * (maxlen if window else 1))
        _, _, _, logits = generator.run(texts[:, :-1], state, window=window)
        for step in range(length):
            probs = softmax(logits[len(seed_ids) - 1 + step])
            numpy_scores = scores(probs, noise[:, step], allowed(probs, inv_t, top_k, top_p))
            ids = drawn[step]
            mismatches += int((numpy_scores[rows, ids] < numpy_scores.max(axis=1) - 1e-4).sum())
    return mismatches


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
    from .convert import bring
    from .corpus import download_book_corpus

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
