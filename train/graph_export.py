"""charsdk's own graph of a Keras model (train/graph.py), checked before it is installed: the float32
graph run by onnxruntime (through charsdk, as users run it) must agree with Keras on real windows and
with tf2onnx's conversion of the same model (an independent witness), the graph's draws must be numpy's
draws from its own distributions, and an int8 graph must score the held-out text within INT8_MAX_LOSS
bits/char of the float32 one and hold no integer product that a CPU kernel could overflow.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import onnx

from charsdk import Generator
from charsdk.engine import draws
from charsdk.items import ItemRecord, list_items
from charsdk.sampling import SamplingOptions, allowed, gumbel_noise, scores
from charsdk.vocab import Vocab

from . import keras_onnx
from .graph import OPSET, PAIR_LIMIT, build_graph, overflowing_pairs, product_weights
from .install import (
    HOLDOUT_CHARS,
    TOLERANCE,
    ExportError,
    holdout_windows,
    install,
    save_content_addressed,
    softmax,
    staging,
)
from .model import graph_weights, last_step_probs

INT8_MAX_LOSS = 0.005  # held-out bits/char an int8 export may lose against its float32 self


def export_graph(model, corpus, maxlen: int, lowercase: bool, training: dict, model_dir: Path,
                 precision: str) -> dict:
    """charsdk's graph of a Keras model (train/graph.py) into model_dir, once it agrees with Keras and
    with tf2onnx's conversion, draws as numpy draws, and (int8) scores within INT8_MAX_LOSS of float32;
    returns the checks' figures. Raises ExportError (and installs nothing) when a check fails."""
    layers, dense, states = graph_weights(model)
    holdout_text = corpus.decode(corpus.holdout_ids[: max(HOLDOUT_CHARS.values())])
    seed_start = holdout_text.find(" ") + 1
    training = {**training, "opset": OPSET}
    with staging(model_dir) as folder:
        generators, figures = {}, {}
        for graph_precision in dict.fromkeys(("fp32", precision)):  # fp32 first: the reference
            directory = folder / graph_precision
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
        directory = folder / precision
        items = training_items(corpus)  # a list corpus: its record, beside the model (charsdk.items)
        vocab = dataclasses.replace(Vocab.load(directory / "vocab.json"), training=training,
                                    items=ItemRecord.of(items).save(directory) if items else None)
        vocab.save(directory / "vocab.json")
        install(directory, model_dir, keep=set(vocab.files))
    return parity


def training_items(corpus) -> list[str] | None:
    """The lines of the corpus's training part if it is a one-item-per-line list (charsdk.items), else
    None; a long running text is told apart by its first 100,000 characters, without reading it all."""
    if list_items(corpus.decode(corpus.train_ids[:100_000])) is None:
        return None
    text = corpus.decode(corpus.train_ids)
    return list_items(text if text.endswith("\n") else text.rsplit("\n", 1)[0])  # not a cut last line


def check_pairs(proto: onnx.ModelProto) -> None:
    """Every integer product exact on every CPU: no pair of neighbouring weights over PAIR_LIMIT
    (train/graph.py), which u8 x s8 kernels without VNNI would saturate on. Raises ExportError."""
    for name, q in product_weights(proto).items():
        if over := overflowing_pairs(q):
            raise ExportError(f"int8 matrix {name} has {over} pairs of neighbouring weights over "
                              f"{PAIR_LIMIT} in magnitude: onnxruntime's integer kernels without VNNI (AVX2) "
                              "would saturate on them; the export is wrong and was not installed")


def tf2onnx_witness(model, generator: Generator, corpus) -> float:
    """The largest difference of probabilities between charsdk's float32 graph and tf2onnx's conversion
    of the same Keras model, on whole held-out windows from a zero state: an independent converter's
    witness for train/graph.py."""
    maxlen, size = generator.vocab.maxlen, generator.vocab.size
    ids = holdout_windows(corpus, maxlen)
    theirs = keras_onnx.run(keras_onnx.to_onnx(model, maxlen, size), np.eye(size, dtype=np.float32)[ids])
    theirs = theirs[:, -1] if theirs.ndim == 3 else theirs  # a loss at every position: the last one
    _, _, _, logits = generator.backend.run(ids, generator.backend.zero_state(len(ids)))
    return float(np.abs(softmax(logits[-1]) - theirs).max())


def check_parity(model, generator: Generator, corpus, windows: int = 64, stepped: int = 4) -> dict:
    """Keras vs the graph on held-out windows: whole windows in one call from a zero state, and one
    character per call with the state carried."""
    maxlen, vocab = generator.vocab.maxlen, generator.vocab
    ids = holdout_windows(corpus, maxlen, windows)
    keras_probs = last_step_probs(model, np.eye(vocab.size, dtype=np.float32)[ids])
    _, _, _, logits = generator.backend.run(ids, generator.backend.zero_state(len(ids)))
    whole = float(np.abs(softmax(logits[-1]) - keras_probs).max())

    stepwise = 0.0
    for row in range(stepped):
        state = generator.backend.zero_state(1)
        for t in range(maxlen):
            _, state, _, logits = generator.backend.run(ids[row : row + 1, t : t + 1], state)
        stepwise = max(stepwise, float(np.abs(softmax(logits[-1]) - keras_probs[row]).max()))
    return {"window_max_abs_diff": whole, "step_max_abs_diff": stepwise, "max_abs_diff": max(whole, stepwise)}


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
        drawn = draws(generator.backend, seed_ids, options, uniforms, mode)
        texts = np.concatenate([np.tile(seed_ids, (len(options), 1)), drawn.T], axis=1)
        # the distribution before each drawn character: read seed + drawn text in one call
        window = maxlen if mode == "window" else 0
        state = generator.backend.zero_state(len(options) * (maxlen if window else 1))
        _, _, _, logits = generator.backend.run(texts[:, :-1], state, window=window)
        for step in range(length):
            probs = softmax(logits[len(seed_ids) - 1 + step])
            numpy_scores = scores(probs, noise[:, step], allowed(probs, inv_t, top_k, top_p))
            ids = drawn[step]
            mismatches += int((numpy_scores[rows, ids] < numpy_scores.max(axis=1) - 1e-4).sum())
    return mismatches
