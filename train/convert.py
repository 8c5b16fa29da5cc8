"""Bring your own Keras model: `make export KERAS=model.keras CORPUS=text.txt NAME=mine [LOWERCASE=1]`.

Any Keras model that maps windows of `maxlen` characters (one-hot [batch, maxlen, chars], or ids
[batch, maxlen] for a model that starts with an Embedding) to the next character's probabilities or
logits [batch, chars], saved as .keras or legacy .h5. Its characters are the corpus's, ordered as the
book orders them: sorted(set(text)), lower-cased with --lowercase.

A model train/graph.py can build (stacked LSTMs and a dense softmax on one-hot windows: the book's
notebook, our recipes) becomes charsdk's own graph, with every check train/export.py makes, tf2onnx's
conversion of the same model among them: it then generates in both modes at charsdk's speed. Any other
model (a GRU, a Conv1D, an Embedding) becomes a window model: tf2onnx's conversion, which charsdk runs in
window mode as the book's loop does. Either way nothing is written unless every check passes.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from charsdk import Generator
from charsdk.session import sha256_of
from charsdk.vocab import Vocab, WindowIO

from . import keras_onnx
from .corpus import load_corpus
from .graph_export import export_graph
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
from .keras_onnx import keras
from .model import last_step_probs, load_checkpoint

DEFAULT_MAXLEN = 60  # the book's windows, for a model whose input does not fix its length
SANITY_WINDOWS = 1000  # held-out windows Keras scores to check that the corpus is the model's


def bring(keras_path: Path, corpus_path: Path, model_dir: Path, lowercase: bool, maxlen: int | None,
          precision: str) -> str:
    """Check and convert; returns what was written. Raises ExportError, with nothing written."""
    model = load_keras(keras_path)
    maxlen, width, encoding, dtype = window_shape(model, maxlen)
    corpus = load_corpus(corpus_path, maxlen=maxlen, holdout=0.1, lowercase=lowercase)
    if len(corpus.chars) != width:
        lowered = " after lower-casing" if lowercase else ""
        raise ExportError(f"the model reads and predicts {width} characters, but {corpus_path} has "
                          f"{len(corpus.chars)}{lowered}: give the text it was trained on (LOWERCASE=1 if "
                          "its training lower-cased it)")
    bits = keras_bits_per_char(model, corpus, maxlen, encoding)
    if bits >= math.log2(width):
        raise ExportError(f"the model scores {bits:.2f} bits/char on {corpus_path}'s last 10%, no better "
                          f"than guessing among its {width} characters: is that the text it was trained on "
                          "(and LOWERCASE as in its training)?")
    training = {"source": "keras", "keras_file": Path(keras_path).name, "keras_sha256": sha256_of(keras_path),
                "corpus_sha256": corpus.sha256, "corpus_chars": len(corpus.ids),
                "parameters": int(model.count_params()),
                "holdout": "the corpus's last 10% (the Keras model may have been trained on it)"}
    created = not model_dir.exists()
    model_dir.mkdir(parents=True, exist_ok=True)
    try:
        if encoding == "one_hot" and graph_can_build(model):
            parity = export_graph(model, corpus, maxlen, lowercase, training, model_dir, precision)
            return (f"charsdk's graph ({precision}): Keras vs the graph {parity['max_abs_diff']:.1e}, "
                    f"tf2onnx vs the graph {parity['tf2onnx_max_abs_diff']:.1e}; held-out bits/char "
                    f"(stateful) {parity['holdout_bits_per_char'][precision]['stateful']:.4f}")
        return export_window_model(model, corpus, maxlen, lowercase, encoding, dtype, training, model_dir)
    except BaseException:
        if created and not any(model_dir.iterdir()):
            model_dir.rmdir()
        raise


def load_keras(path: Path):
    if not Path(path).is_file():
        raise ExportError(f"KERAS file {path} does not exist: pass a model saved with model.save "
                          "(.keras or .h5)")
    try:
        return load_checkpoint(path)
    except Exception as exc:  # Keras raises many types for files it cannot read
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"{path} is not a Keras model this Keras can load (.keras or .h5): "
                          f"{first_line}") from None


def window_shape(model, maxlen: int | None) -> tuple[int, int, str, str]:
    """(maxlen, characters, "one_hot" or "ids", input dtype) of a character model, or ExportError."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ExportError("not a character model: it has several inputs or outputs; a character model "
                          "maps one window of characters to the next character's distribution")
    shape, out = tuple(model.input_shape), tuple(model.output_shape)
    first = next((layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)), None)
    if len(shape) == 3 and isinstance(shape[2], int):
        encoding, width, dtype = "one_hot", shape[2], "float32"
    elif len(shape) == 2 and isinstance(first, keras.layers.Embedding):
        encoding, width, dtype = "ids", first.input_dim, str(model.inputs[0].dtype)
    else:
        raise ExportError(f"not a character model: it takes input {shape}; a character model takes one-hot "
                          "windows [batch, maxlen, chars], or ids [batch, maxlen] into an Embedding")
    if out[-1] != width or len(out) not in (2, 3):
        raise ExportError(f"not a character model: it reads {width} characters but returns {out}; a "
                          f"character model returns the next character's distribution [batch, {width}]")
    if shape[1] is not None and maxlen is not None and shape[1] != maxlen:
        raise ExportError(f"the model reads windows of {shape[1]} characters, not MAXLEN={maxlen}: leave "
                          "MAXLEN out")
    return shape[1] or maxlen or DEFAULT_MAXLEN, width, encoding, dtype


def encode(windows: np.ndarray, width: int, encoding: str, dtype: str = "float32") -> np.ndarray:
    return np.eye(width, dtype=np.float32)[windows] if encoding == "one_hot" else windows.astype(dtype)


def keras_outputs(model, windows: np.ndarray, width: int, encoding: str, dtype: str) -> np.ndarray:
    """The model's next-character probabilities [B, chars] after each window (softmax of logits)."""
    out = last_step_probs(model, encode(windows, width, encoding, dtype))
    return out if is_distribution(out) else softmax(out)


def is_distribution(out: np.ndarray) -> bool:
    return bool((out >= 0).all() and np.allclose(out.sum(axis=-1), 1, atol=1e-4))


def keras_bits_per_char(model, corpus, maxlen: int, encoding: str) -> float:
    holdout = corpus.holdout_ids
    targets = np.linspace(maxlen, len(holdout) - 1, min(SANITY_WINDOWS, len(holdout) - maxlen)).astype(int)
    windows = holdout[targets[:, None] - maxlen + np.arange(maxlen)].astype(np.int64)
    probs = keras_outputs(model, windows, len(corpus.chars), encoding, str(model.inputs[0].dtype))
    return float(-np.mean(np.log2(np.maximum(probs[np.arange(len(targets)), holdout[targets]], 1e-30))))


def graph_can_build(model) -> bool:
    """Stacked LSTMs (Keras' standard cell: tanh, sigmoid gates, a bias, forward) with dropout between
    them, then one Dense softmax: what train/graph.py writes out."""
    layers = [layer for layer in model.layers if not isinstance(layer, (keras.layers.InputLayer,
                                                                         keras.layers.Dropout))]
    if len(layers) < 2 or not isinstance(layers[-1], keras.layers.Dense):
        return False
    dense = layers[-1]
    if dense.activation.__name__ != "softmax" or not dense.use_bias:
        return False
    return all(isinstance(layer, keras.layers.LSTM) and layer.activation.__name__ == "tanh"
               and layer.recurrent_activation.__name__ == "sigmoid" and layer.use_bias
               and not layer.go_backwards and not layer.stateful for layer in layers[:-1])


def save_window_model(proto, directory: Path, chars, maxlen: int, lowercase: bool, encoding: str, dtype: str,
                      output_is: str, default_seed_text: str = "", training: dict | None = None) -> Vocab:
    """tf2onnx's graph and the vocab.json of a window model that names it, into `directory`."""
    path, sha256 = save_content_addressed(proto, directory, "model")
    io = WindowIO(proto.graph.input[0].name, encoding, dtype if encoding == "ids" else "float32",
                  proto.graph.output[0].name, output_is)
    vocab = Vocab(chars=tuple(chars), maxlen=maxlen, lowercase=lowercase, states=(), onnx_file=path.name,
                  onnx_sha256=sha256, precision="fp32", default_seed_text=default_seed_text, window=io,
                  training=training or {})
    vocab.save(directory / "vocab.json")
    return vocab


def export_window_model(model, corpus, maxlen: int, lowercase: bool, encoding: str, dtype: str,
                        training: dict, model_dir: Path) -> str:
    """tf2onnx's conversion as a window model, once onnxruntime agrees with Keras on held-out windows."""
    width = len(corpus.chars)
    proto = keras_onnx.to_onnx(model, maxlen, width, ids=encoding == "ids", dtype=dtype)
    windows = holdout_windows(corpus, maxlen)
    raw = last_step_probs(model, encode(windows, width, encoding, dtype))
    with staging(model_dir) as folder:
        holdout_text = corpus.decode(corpus.holdout_ids[: HOLDOUT_CHARS["window"]])
        seed_start = holdout_text.find(" ") + 1
        vocab = save_window_model(proto, folder, corpus.chars, maxlen, lowercase, encoding, dtype,
                                  "probs" if is_distribution(raw) else "logits",
                                  holdout_text[seed_start : seed_start + maxlen], training)
        generator = Generator.load(folder)
        theirs = keras_outputs(model, windows, width, encoding, dtype)
        diff = float(np.abs(generator.backend.distributions(windows) - theirs).max())
        if diff > TOLERANCE:
            raise ExportError(f"onnxruntime and Keras disagree by {diff:.2e} (> {TOLERANCE}) on held-out "
                              "windows: the conversion is wrong and was not installed")
        bits = generator.evaluate(holdout_text, mode="window")["bits_per_char"]
        vocab = Vocab.load(folder / "vocab.json")
        training = {**training, "onnx_converter": "tf2onnx", "holdout_bits_per_char_window": round(bits, 4),
                    "holdout_chars_window": len(holdout_text), "keras_vs_onnx_max_abs_diff": diff}
        dataclasses.replace(vocab, training=training).save(folder / "vocab.json")
        install(folder, model_dir, keep={vocab.onnx_file})
    return (f"a window model (tf2onnx, float32): Keras vs onnxruntime {diff:.1e}; held-out bits/char "
            f"(window) {bits:.4f}")
