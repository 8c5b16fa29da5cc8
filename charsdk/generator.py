"""Text generation with onnxruntime: prime on the seed text, then sample one character at a time."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .errors import InputError, ModelError
from .sampling import check_temperature, sample
from .vocab import Vocab

DEFAULT_MODEL = "nietzsche"
MODES = ("stateful", "window")


def default_model_dir() -> Path:
    """The model shipped inside the package."""
    return Path(str(resources.files("charsdk") / "models" / DEFAULT_MODEL))


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Generator:
    """A loaded model: `Generator.load(dir).generate("seed text")`."""

    def __init__(self, vocab: Vocab, session: ort.InferenceSession, path: Path):
        self.vocab = vocab
        self.session = session
        self.path = path

    @classmethod
    def load(
        cls, path: str | os.PathLike | None = None, *, threads: int = 1, providers=None
    ) -> Generator:
        """Load model.onnx + vocab.json from `path` (default: the shipped Nietzsche model).

        `threads` sets onnxruntime's intra-op threads: one is fastest for a single small LSTM.
        """
        path = Path(path) if path is not None else default_model_dir()
        if not path.is_dir():
            raise ModelError(f"model directory {path} does not exist: pass a directory that holds "
                             "model.onnx and vocab.json")
        vocab = Vocab.load(path / "vocab.json")
        onnx_path = path / vocab.onnx_file
        if not onnx_path.is_file():
            raise ModelError(f"{onnx_path} is missing: re-export the model")
        if sha256_of(onnx_path) != vocab.onnx_sha256:
            raise ModelError(
                f"{onnx_path} does not match the sha256 recorded in vocab.json: the two files come "
                "from different exports; re-export the model so they belong together"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(
                str(onnx_path), options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own types for corrupt files
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{onnx_path} cannot be loaded by onnxruntime: {first_line}") from None
        width = session.get_inputs()[0].shape[-1]
        if width != vocab.size:
            raise ModelError(
                f"vocab.json lists {vocab.size} characters but {onnx_path.name} takes {width}: "
                "the two files do not belong together; re-export the model"
            )
        return cls(vocab, session, path)

    def _zero_state(self, batch: int) -> dict[str, np.ndarray]:
        return {s.input: np.zeros((batch, s.size), np.float32) for s in self.vocab.states}

    def _run(self, x: np.ndarray, state: dict[str, np.ndarray]):
        """One graph call: distribution after the last step of `x`, and the state it leaves."""
        names = [self.vocab.probs_name] + [s.output for s in self.vocab.states]
        probs, *new = self.session.run(names, {self.vocab.input_name: x, **state})
        return probs[0], {s.input: v for s, v in zip(self.vocab.states, new)}

    def stream(
        self,
        seed_text: str | None = None,
        length: int = 400,
        temperature: float = 0.5,
        seed: int | None = None,
        mode: str = "stateful",
    ) -> Iterator[str]:
        """Yield generated characters one by one as they are produced.

        mode "stateful" runs the seed once and carries the LSTM state (one step per character);
        "window" predicts every character from the last `maxlen` characters and a zero state,
        exactly as the model was trained.
        """
        temperature = check_temperature(temperature)
        if length < 0:
            raise InputError(f"length must be >= 0, got {length}")
        if mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if seed_text is None:
            seed_text = self.vocab.default_seed_text
        ids = self.vocab.encode(seed_text)
        rng = np.random.default_rng(seed)
        steps = self._window_steps if mode == "window" else self._stateful_steps
        return self._sample_chars(steps(ids), length, temperature, rng)

    def _sample_chars(self, steps, length, temperature, rng) -> Iterator[str]:
        if length == 0:
            return
        probs = next(steps)
        for n in range(length):
            index = sample(probs, temperature, rng)
            yield self.vocab.chars[index]
            if n + 1 < length:
                probs = steps.send(index)

    def _stateful_steps(self, ids: np.ndarray):
        """Coroutine: yields a distribution, receives the character drawn from it."""
        # An empty seed is one all-zero input from the zero state: "no character yet".
        x = self.vocab.one_hot(ids) if len(ids) else np.zeros((1, 1, self.vocab.size), np.float32)
        probs, state = self._run(x, self._zero_state(1))
        step = np.zeros((1, 1, self.vocab.size), np.float32)
        previous = 0
        while True:
            index = yield probs
            step[0, 0, previous] = 0.0
            step[0, 0, index] = 1.0
            previous = index
            probs, state = self._run(step, state)

    def _window_steps(self, ids: np.ndarray):
        maxlen, size = self.vocab.maxlen, self.vocab.size
        context = list(ids[-maxlen:])
        window = np.zeros((1, maxlen, size), np.float32)
        zero = self._zero_state(1)
        while True:
            n = max(len(context), 1)
            window[:] = 0.0
            window[0, np.arange(len(context)), context] = 1.0
            probs, _ = self._run(window[:, :n], zero)
            context.append((yield probs))
            del context[:-maxlen]

    def generate(
        self,
        seed_text: str | None = None,
        length: int = 400,
        temperature: float = 0.5,
        seed: int | None = None,
        mode: str = "stateful",
    ) -> str:
        """The `length` characters that follow `seed_text` (the model's default seed if None).

        temperature 0 is greedy; the same `seed` gives the same text.
        """
        return "".join(self.stream(seed_text, length, temperature, seed, mode))
