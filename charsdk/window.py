"""Window models: any Keras character model converted by tf2onnx, run exactly as the book's loop runs it.

Each character is predicted from the last `maxlen` characters: numpy encodes every stream's window
(one-hot, or ids for a model that starts with an Embedding), one onnxruntime call gives every stream's
next distribution, and charsdk.sampling draws from it with the same rules and the same seeded uniform
numbers as charsdk's own graph. A window shorter than `maxlen` (a short seed) is padded on the left with
"no character": zero rows one-hot, id 0 for an id model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .errors import InputError, ModelError
from .generator import Generator
from .sampling import SamplingOptions, draw_rows, log_softmax
from .vocab import Vocab

SCORE_WINDOWS = 512  # windows per onnxruntime call when scoring a text
ONNX_TYPES = {"float32": "tensor(float)", "int32": "tensor(int32)", "int64": "tensor(int64)"}


class WindowGenerator(Generator):
    """A loaded window model: the Generator API (generate, stream, evaluate) in window mode only."""

    modes = ("window",)

    def __init__(self, vocab: Vocab, session: ort.InferenceSession, path: Path):
        self.vocab, self.session, self.path = vocab, session, path
        self._codes = np.array([ord(c) for c in vocab.chars], dtype=np.uint32)
        self._dtype = np.dtype(vocab.window.input_type)

    @classmethod
    def checked(cls, vocab: Vocab, session: ort.InferenceSession, path: Path) -> WindowGenerator:
        io, size = vocab.window, vocab.size
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = {o.name: o for o in session.get_outputs()}
        if io.input not in inputs or io.output not in outputs or len(inputs) != 1:
            raise ModelError(f"{vocab.onnx_file} does not have the input {io.input!r} and output "
                             f"{io.output!r} vocab.json names: the files do not belong together; re-export")
        shape = inputs[io.input].shape
        want = [vocab.maxlen, size] if io.encoding == "one_hot" else [vocab.maxlen]
        if shape[1:] != want or inputs[io.input].type != ONNX_TYPES[io.input_type]:
            raise ModelError(f"{vocab.onnx_file} reads {inputs[io.input].type} {shape}, not the "
                             f"{io.encoding} windows of {vocab.maxlen} x {size} characters vocab.json says; "
                             "re-export the model")
        if outputs[io.output].shape[-1] != size:
            raise ModelError(f"vocab.json lists {size} characters but {vocab.onnx_file} predicts "
                             f"{outputs[io.output].shape[-1]}: the files do not belong together; re-export")
        return cls(vocab, session, path)

    def _encode_windows(self, windows: np.ndarray) -> np.ndarray:
        """The model's input for ids [B, maxlen] (-1: no character yet)."""
        if self.vocab.window.encoding == "ids":
            return np.maximum(windows, 0).astype(self._dtype)
        x = np.zeros((*windows.shape, self.vocab.size), np.float32)
        rows, cols = np.nonzero(windows >= 0)
        x[rows, cols, windows[rows, cols]] = 1.0
        return x

    def distributions(self, windows: np.ndarray) -> np.ndarray:
        """The next character's probabilities [B, V] (float64) after each window of ids [B, maxlen]."""
        io = self.vocab.window
        (out,) = self.session.run([io.output], {io.input: self._encode_windows(windows)})
        return np.exp(log_softmax(out)) if io.output_is == "logits" else np.asarray(out, np.float64)

    def _draws(self, ids, options: Sequence[SamplingOptions], uniform_chunks,
               mode: str) -> Iterator[np.ndarray]:
        """Chunks of drawn ids [k, B]: per character, one call for every stream's window, then the draw."""
        maxlen = self.vocab.maxlen
        windows = np.full((len(options), maxlen), -1, np.int64)
        seed = ids[-maxlen:]
        windows[:, maxlen - len(seed):] = seed
        for uniforms in uniform_chunks:
            drawn = np.empty((uniforms.shape[1], len(options)), np.int64)
            for step in range(uniforms.shape[1]):
                drawn[step] = draw_rows(self.distributions(windows), uniforms[:, step], options)
                windows = np.concatenate([windows[:, 1:], drawn[step][:, None]], axis=1)
            yield drawn

    def evaluate(self, text: str, mode: str | None = None, on_unknown: str = "error",
                 progress: Callable[[int, int], None] | None = None) -> dict:
        """Bits per character on `text`: each character after the first `maxlen`, predicted from the
        `maxlen` before it (window mode, the only one), SCORE_WINDOWS windows per call."""
        mode = self._mode(mode)
        ids, maxlen = self.vocab.encode(text, on_unknown), self.vocab.maxlen
        if len(ids) <= maxlen:
            raise InputError(f"the text needs more than {maxlen} characters to be scored, it has {len(ids)}")
        total_log_p = 0.0
        for first in range(maxlen, len(ids), SCORE_WINDOWS):
            targets = np.arange(first, min(first + SCORE_WINDOWS, len(ids)))
            windows = ids[targets[:, None] - maxlen + np.arange(maxlen)]
            with np.errstate(divide="ignore"):
                total_log_p += float(np.log(self.distributions(windows)[np.arange(len(targets)),
                                                                         ids[targets]]).sum())
            if progress:
                progress(int(targets[-1]) + 1, len(ids))
        bits = -total_log_p / (len(ids) - maxlen) / np.log(2)
        return {"mode": mode, "chars_scored": len(ids) - maxlen, "bits_per_char": float(bits),
                "perplexity": float(2**bits)}
