"""Window models: any Keras character model converted by tf2onnx, run exactly as the book's loop runs it.

Each character is predicted from the last `maxlen` characters: numpy encodes every stream's window
(one-hot, or ids for a model that starts with an Embedding), one onnxruntime call gives every stream's
next distribution, and charsdk.sampling draws from it with the same rules and the same seeded uniform
numbers as charsdk's own graph. A window shorter than `maxlen` (a short seed) is padded on the left with
"no character": zero rows one-hot, id 0 for an id model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnxruntime as ort

from .errors import ModelError
from .rows import Rows
from .sampling import SamplingOptions, draw_rows, log_softmax
from .vocab import Vocab

SCORE_WINDOWS = 512  # windows per onnxruntime call when scoring a text
ONNX_TYPES = {"float32": "tensor(float)", "int32": "tensor(int32)", "int64": "tensor(int64)"}
NO_CHAR = -1  # a window position before the text's start


class WindowBackend:
    modes = ("window",)
    draws_in_call = False  # step draws in numpy, one model call per character
    masks_in_call = False  # and takes no automaton

    def __init__(self, vocab: Vocab, session: ort.InferenceSession):
        self.vocab, self.session = vocab, session
        self._dtype = np.dtype(vocab.window.input_type)

    @classmethod
    def checked(cls, vocab: Vocab, session: ort.InferenceSession) -> WindowBackend:
        io, size = vocab.window, vocab.size
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = {o.name: o for o in session.get_outputs()}
        if io.input not in inputs or io.output not in outputs or len(inputs) != 1:
            raise ModelError(f"{vocab.onnx_file} does not have the input {io.input!r} and output "
                             f"{io.output!r} vocab.json names: the files do not belong together; "
                             "re-export the model")
        shape = inputs[io.input].shape
        want = [vocab.maxlen, size] if io.encoding == "one_hot" else [vocab.maxlen]
        if shape[1:] != want or inputs[io.input].type != ONNX_TYPES[io.input_type]:
            raise ModelError(f"{vocab.onnx_file} reads {inputs[io.input].type} {shape}, not the "
                             f"{io.encoding} windows of {vocab.maxlen} x {size} characters vocab.json says; "
                             "re-export the model")
        if outputs[io.output].shape[-1] != size:
            raise ModelError(f"vocab.json lists {size} characters but {vocab.onnx_file} predicts "
                             f"{outputs[io.output].shape[-1]}: the files do not belong together; "
                             "re-export the model")
        return cls(vocab, session)

    def _encode_windows(self, windows: np.ndarray) -> np.ndarray:
        """The model's input for ids [B, maxlen] (NO_CHAR: no character yet)."""
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

    # -- the engine's backend -----------------------------------------------------------------

    def empty(self, mode: str) -> Rows:
        return Rows({"window": np.full((0, self.vocab.maxlen), NO_CHAR, np.int64)})

    def start(self, prompts: Sequence[np.ndarray], mode: str) -> Rows:
        """A window per prompt, its last maxlen characters: nothing to run until the first draw."""
        maxlen = self.vocab.maxlen
        windows = np.full((len(prompts), maxlen), NO_CHAR, np.int64)
        for row, prompt in zip(windows, prompts, strict=True):
            seed = prompt[-maxlen:]
            row[maxlen - len(seed):] = seed
        return Rows({"window": windows})

    def step(self, rows: Rows, uniforms: np.ndarray, options: Sequence[SamplingOptions],
             scored: bool = False, automaton=None) -> tuple[np.ndarray, Rows, np.ndarray | None]:
        """Per character, one call for every stream's window, then the draw."""
        windows, k = rows["window"], uniforms.shape[1]
        drawn = np.empty((k, len(rows)), np.int64)
        log_p = np.empty((k, len(rows), self.vocab.size)) if scored else None
        for step in range(k):
            probs = self.distributions(windows)
            drawn[step] = draw_rows(probs, uniforms[:, step], options)
            if scored:
                log_p[step] = log(probs)
            windows = np.concatenate([windows[:, 1:], drawn[step][:, None]], axis=1)
        return drawn, Rows({"window": windows}), log_p

    def next_log_probs(self, rows: Rows) -> np.ndarray:
        return log(self.distributions(rows["window"]))

    def next_logits(self, rows: Rows) -> np.ndarray:
        """Log-probabilities as logits: the same distribution, whether the model outputs logits or not."""
        return self.next_log_probs(rows)

    def advance(self, rows: Rows, ids: np.ndarray) -> Rows:
        maxlen = rows["window"].shape[1]
        return Rows({"window": np.concatenate([rows["window"], ids], axis=1)[:, -maxlen:]})

    def _read(self, ids: np.ndarray, first: int, progress: Callable[[int, int], None] | None):
        """(positions, log-probabilities [n, V]) from `first` on: each character from the `maxlen` before it
        (fewer near the start), SCORE_WINDOWS per call."""
        maxlen = self.vocab.maxlen
        padded = np.concatenate([np.full(maxlen, NO_CHAR, np.int64), ids])
        for start in range(first, len(ids), SCORE_WINDOWS):
            targets = np.arange(start, min(start + SCORE_WINDOWS, len(ids)))
            windows = padded[targets[:, None] + np.arange(maxlen)]  # padded[t + j] is ids[t + j - maxlen]
            yield targets, log(self.distributions(windows))
            if progress:
                progress(int(targets[-1]) + 1, len(ids))

    def log_probs(self, ids: np.ndarray, mode: str, first: int,
                  progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        out = np.empty(max(len(ids) - first, 0))
        for targets, log_p in self._read(ids, first, progress):
            out[targets - first] = log_p[np.arange(len(targets)), ids[targets]]
        return out

    def log_distributions(self, ids: np.ndarray, mode: str, first: int) -> np.ndarray:
        parts = [log_p for _, log_p in self._read(ids, first, None)]
        return np.concatenate(parts) if parts else np.zeros((0, self.vocab.size))


def log(probs: np.ndarray) -> np.ndarray:
    """Natural log of probabilities, -inf for 0 without a warning."""
    with np.errstate(divide="ignore"):
        return np.log(probs)
