"""Text generation with onnxruntime: prime on the seed text, then sample characters in chunks."""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .errors import InputError, ModelError
from .sampling import SamplingOptions, is_integer
from .vocab import Vocab

DEFAULT_MODEL = "nietzsche"
MODES = ("stateful", "window")
FIRST_CHUNK = 16  # characters in the first onnxruntime call: the first ones show quickly
CHUNK = 256  # characters per call after that: onnxruntime's per-call overhead is paid once per chunk
UNIFORMS_PER_CALL = 1 << 21  # 8 MB of float32 per call, whatever n is (n=4096 would need 240 MB)
SAMPLER_INPUTS = {"logits", "uniforms", "temperature", "top_k", "top_p", "use_filter", "window", "start"}
PROBABILITY_FLOOR = 1e-30  # float32 softmax can round a probability to 0: score it as 1e-30


def shipped_models_dir() -> Path:
    return Path(str(resources.files("charsdk") / "models"))


def default_model_dir() -> Path:
    """The default model shipped inside the package."""
    return shipped_models_dir() / DEFAULT_MODEL


def chunk_sizes(length: int, streams: int = 1, vocab_size: int = 1) -> Iterator[int]:
    """FIRST_CHUNK, then CHUNK at a time, adding up to `length`; fewer per call for many streams, so
    that one call's uniform numbers (streams x chunk x vocabulary) stay under UNIFORMS_PER_CALL."""
    limit = max(1, UNIFORMS_PER_CALL // (streams * vocab_size))
    done = 0
    while done < length:
        size = min(FIRST_CHUNK if done == 0 else CHUNK, limit, length - done)
        yield size
        done += size


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return options


def _open_session(path: Path, sha256: str, threads: int, providers) -> ort.InferenceSession:
    if not path.is_file():
        raise ModelError(f"{path} is missing: re-export the model")
    if sha256_of(path) != sha256:
        raise ModelError(
            f"{path} does not match the sha256 recorded in vocab.json: the files come from "
            "different exports (a stale or mixed pair); re-export the model so they belong together"
        )
    try:
        return ort.InferenceSession(str(path), session_options(threads),
                                    providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for corrupt files
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"{path} cannot be loaded by onnxruntime: {first_line}") from None


class Generator:
    """A loaded model: `Generator.load(dir).generate("seed text")`. Safe to share between threads."""

    def __init__(self, vocab: Vocab, model: ort.InferenceSession, sampler: ort.InferenceSession,
                 path: Path):
        self.vocab = vocab
        self.model = model  # one step function: (x, state) -> (probs, state)
        self.sampler = sampler  # a Loop of sample-then-step, many characters per call
        self.path = path
        self._codes = np.array([ord(c) for c in vocab.chars], dtype=np.uint32)
        self._model_outputs = [vocab.probs_name] + [s.output for s in vocab.states]

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, *, threads: int = 1,
             providers: Sequence[str] | None = None) -> Generator:
        """Load a model directory, or a shipped model by name ("nietzsche", the default, or
        "nietzsche-book", the book's recipe).

        `threads`: onnxruntime intra-op threads (one is fastest for a small LSTM);
        `providers`: e.g. ["CUDAExecutionProvider", "CPUExecutionProvider"] with onnxruntime-gpu.
        """
        if not is_integer(threads) or threads < 1:
            raise InputError(f"threads must be an integer >= 1, got {threads!r}", "threads")
        unknown = sorted(set(providers or ()) - set(ort.get_available_providers()))
        if unknown:
            raise InputError(f"providers: this onnxruntime has no {', '.join(unknown)}; it has "
                             f"{', '.join(ort.get_available_providers())}", "providers")
        path = Path(path) if path is not None else default_model_dir()
        if not path.is_dir() and path.name == str(path) and (shipped_models_dir() / path).is_dir():
            path = shipped_models_dir() / path
        if not path.is_dir():
            raise ModelError(f"model directory {path} does not exist: pass a directory that holds "
                             "vocab.json and the ONNX files it names")
        vocab = Vocab.load(path / "vocab.json")
        model = _open_session(path / vocab.onnx_file, vocab.onnx_sha256, threads, providers)
        sampler = _open_session(path / vocab.sampler_file, vocab.sampler_sha256, threads, providers)
        width = model.get_inputs()[0].shape[-1]
        if width != vocab.size:
            raise ModelError(
                f"vocab.json lists {vocab.size} characters but {vocab.onnx_file} takes {width}: "
                "the files do not belong together; re-export the model"
            )
        if {i.name for i in sampler.get_inputs()} != SAMPLER_INPUTS | {s.input for s in vocab.states}:
            raise ModelError(f"{vocab.sampler_file} does not take the inputs this charsdk gives it "
                             "(an export by another version): re-export the model with make export")
        return cls(vocab, model, sampler, path)

    # -- the graphs ---------------------------------------------------------------------------

    def _zero_state(self, batch: int) -> dict[str, np.ndarray]:
        return {s.input: np.zeros((batch, s.size), np.float32) for s in self.vocab.states}

    def _run(self, x: np.ndarray, state: dict[str, np.ndarray]):
        """model.onnx: the distribution after the last step of x [B, T, V], and the state it leaves."""
        probs, *new = self.model.run(self._model_outputs, {self.vocab.input_name: x, **state})
        return probs, {s.input: v for s, v in zip(self.vocab.states, new, strict=True)}

    def _prime(self, ids: np.ndarray, batch: int):
        # An empty seed is one all-zero input from the zero state: "no character yet".
        x = self.vocab.one_hot(ids) if len(ids) else np.zeros((1, 1, self.vocab.size), np.float32)
        probs, state = self._run(x, self._zero_state(1))
        return np.repeat(probs, batch, 0), {k: np.repeat(v, batch, 0) for k, v in state.items()}

    def _stateful_ids(self, ids, options, uniform_chunks) -> Iterator[np.ndarray]:
        """Chunks of drawn ids [k, B]: the seed run once, then one LSTM step per character."""
        probs, state = self._prime(ids, len(options))
        return self._sample(probs, state, options, uniform_chunks, window=0, read=0)

    def _window_ids(self, ids, options, uniform_chunks) -> Iterator[np.ndarray]:
        """Chunks of drawn ids [k, B], each predicted from the last maxlen characters and a zero state.

        Rather than rerunning maxlen LSTM steps per character, each stream keeps maxlen staggered
        windows (state rows) advanced together: before character t, window t mod maxlen restarts from
        zero; every window then reads character t; the one that started maxlen characters ago (or at
        the start of the text) gives the next distribution. The same arithmetic as the book's loop,
        one batched step per character. sampler.onnx does this for the generated characters.
        """
        batch, maxlen, size = len(options), self.vocab.maxlen, self.vocab.size
        state = self._zero_state(batch * maxlen)
        x = np.zeros((batch * maxlen, 1, size), np.float32)
        read = 0
        for char in ids[-maxlen:]:
            for value in state.values():
                value.reshape(batch, maxlen, -1)[:, read % maxlen] = 0.0
            x[:] = 0.0
            x[:, 0, char] = 1.0
            probs, state = self._run(x, state)
            read += 1
        if read:
            probs = probs.reshape(batch, maxlen, size)[:, read % maxlen if read >= maxlen else 0]
        else:  # an empty seed: one all-zero input from the zero state, as in stateful mode
            probs, _ = self._prime(ids, batch)
        return self._sample(probs, state, options, uniform_chunks, window=maxlen, read=read)

    def _sample(self, probs, state, options, uniform_chunks, window: int, read: int):
        """sampler.onnx, one call per chunk of uniforms [B, k, V]: draw a character, feed it back, k times."""
        with np.errstate(divide="ignore"):
            logits = np.log(probs)  # log 0 = -inf: that character keeps probability 0
        settings = {
            "temperature": np.array([o.temperature for o in options], np.float32),
            "top_k": np.array([o.top_k for o in options], np.int64),
            "top_p": np.array([o.top_p for o in options], np.float32),
            "use_filter": np.array(any(o.filters for o in options)),
            "window": np.array(window, np.int64),
        }
        names = ["logits_out"] + [s.output for s in self.vocab.states] + ["ids"]
        for uniforms in uniform_chunks:
            logits, *new, drawn = self.sampler.run(names, {
                "logits": logits, **state, "uniforms": uniforms, "start": np.array(read, np.int64),
                **settings})
            state = {s.input: v for s, v in zip(self.vocab.states, new, strict=True)}
            read += len(drawn)
            yield drawn

    # -- the public API -----------------------------------------------------------------------

    def _texts(self, seed_text, length, temperatures, n, top_k, top_p, stop, seed, mode,
               on_unknown) -> Iterator[list[str]]:
        """Check every argument now, then return an iterator over the chunks' new text per stream."""
        if not is_integer(length) or length < 0:
            raise InputError(f"length must be an integer >= 0, got {length!r}", "length")
        if not is_integer(n) or n < 1:
            raise InputError(f"n must be an integer >= 1, got {n!r}", "n")
        if seed is not None and (not is_integer(seed) or seed < 0):
            raise InputError(f"seed must be an integer >= 0 (or None for a fresh one), got {seed!r}", "seed")
        if seed_text is not None and not isinstance(seed_text, str):
            raise InputError(f"seed_text must be a string (or None for the model's own), got "
                             f"{type(seed_text).__name__}", "seed_text")
        if mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}", "mode")
        stop = [stop] if isinstance(stop, str) else list(stop or ())
        if any(not isinstance(s, str) or not s for s in stop):
            raise InputError("stop must be a list of non-empty strings", "stop")
        options = [SamplingOptions.check(t, top_k, top_p) for t in temperatures for _ in range(n)]
        seed_text = self.vocab.default_seed_text if seed_text is None else seed_text
        ids = self.vocab.encode(seed_text, on_unknown)
        if length == 0:
            return iter(())
        # One generator per stream: stream i's text depends on (seed, i) only, not on chunking.
        rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(len(options))]
        uniform_chunks = (self._uniforms(rngs, k) for k in chunk_sizes(length, len(rngs), self.vocab.size))
        steps = self._window_ids if mode == "window" else self._stateful_ids
        return self._decode(steps(ids, options, uniform_chunks), len(options), length, stop)

    def _uniforms(self, rngs, k: int) -> np.ndarray:
        """[B, k, V] uniform numbers in [0, 1), row b from stream b's generator."""
        uniforms = np.empty((len(rngs), k, self.vocab.size), np.float32)
        for rng, row in zip(rngs, uniforms, strict=True):
            rng.random(out=row, dtype=np.float32)
        return uniforms

    def _decode(self, chunks, streams: int, length: int, stop: list[str]) -> Iterator[list[str]]:
        """For each chunk of ids, the new text of every stream (stop strings cut, held back until safe)."""
        hold = max((len(s) for s in stop), default=1) - 1  # a stop string may span two chunks
        texts, sent, done = [""] * streams, [0] * streams, [False] * streams
        produced = 0
        for drawn in chunks:
            produced += len(drawn)
            pieces = np.ascontiguousarray(self._codes[drawn.T])
            out = []
            for b, row in enumerate(pieces):
                if not done[b]:
                    searched = max(len(texts[b]) - hold, 0)
                    texts[b] += row.tobytes().decode("utf-32-le")
                    cuts = [i for i in (texts[b].find(s, searched) for s in stop) if i >= 0]
                    if cuts:
                        texts[b], done[b] = texts[b][: min(cuts)], True
                end = len(texts[b]) if done[b] or produced == length else len(texts[b]) - hold
                out.append(texts[b][sent[b] : max(end, sent[b])])
                sent[b] = max(end, sent[b])
            yield out
            if all(done):
                return

    def stream(self, seed_text: str | None = None, length: int = 400, temperature: float = 0.5,
               *, top_k: int = 0, top_p: float = 1.0, stop: str | Sequence[str] = (),
               seed: int | None = None, mode: str = "stateful",
               on_unknown: str = "error") -> Iterator[str]:
        """The generated characters, one by one as they are produced (see `generate`)."""
        pieces = self._texts(seed_text, length, [temperature], 1, top_k, top_p, stop, seed, mode,
                             on_unknown)
        return (char for (piece,) in pieces for char in piece)

    def generate(self, seed_text: str | None = None, length: int = 400,
                 temperature: float | Sequence[float] = 0.5, *, n: int = 1, top_k: int = 0,
                 top_p: float = 1.0, stop: str | Sequence[str] = (), seed: int | None = None,
                 mode: str = "stateful", on_unknown: str = "error") -> str | list[str]:
        """The `length` characters that follow `seed_text` (None: the model's stored seed).

        temperature: 0 is greedy; a list gives `n` samples per temperature. n > 1 or a list of
        temperatures returns a list, all streams sampled together in batched calls.
        top_k / top_p: keep only the k most likely characters / the smallest set of mass p.
        stop: strings that end a sample (not included). seed: same seed, same text.
        on_unknown: "error" (default) names seed characters the model does not know; "skip" drops them.
        mode: "stateful" carries the LSTM state (one step per character); "window" predicts each
        character from the last `maxlen` characters and a zero state, as the model was trained.
        """
        temperatures = [temperature] if np.isscalar(temperature) else list(temperature)
        if not temperatures:
            raise InputError("temperature must be a number or a non-empty list of numbers", "temperature")
        texts = [""] * (len(temperatures) * n)
        for pieces in self._texts(seed_text, length, temperatures, n, top_k, top_p, stop, seed, mode,
                                  on_unknown):
            texts = [t + p for t, p in zip(texts, pieces, strict=True)]
        return texts[0] if np.isscalar(temperature) and n == 1 else texts

    def evaluate(self, text: str, mode: str = "window", on_unknown: str = "error",
                 batch: int = 256) -> dict:
        """Bits per character on `text`, scoring every position that has `maxlen` characters before it.

        "window" predicts each from exactly those characters and a zero state (as in training);
        "stateful" reads the text from its start, carrying the state.
        """
        if mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        ids, maxlen = self.vocab.encode(text, on_unknown), self.vocab.maxlen
        if len(ids) <= maxlen:
            raise InputError(f"the text needs more than {maxlen} characters to be scored, "
                             f"it has {len(ids)}")
        targets = np.arange(maxlen, len(ids))
        logp = np.empty(len(targets))
        if mode == "window":
            offsets = np.arange(-maxlen, 0)
            for lo in range(0, len(targets), batch):
                positions = targets[lo : lo + batch]
                x = np.zeros((len(positions), maxlen, self.vocab.size), np.float32)
                x[np.arange(len(positions))[:, None], offsets[None, :] + maxlen,
                  ids[positions[:, None] + offsets[None, :]]] = 1.0
                probs, _ = self._run(x, self._zero_state(len(positions)))
                logp[lo : lo + batch] = np.log(np.maximum(
                    probs[np.arange(len(positions)), ids[positions]], PROBABILITY_FLOOR))
        else:
            probs, state = self._run(self.vocab.one_hot(ids[:maxlen]), self._zero_state(1))
            step = np.zeros((1, 1, self.vocab.size), np.float32)
            for i, t in enumerate(targets):
                logp[i] = math.log(max(float(probs[0, ids[t]]), PROBABILITY_FLOOR))
                if t + 1 < len(ids):
                    step[:] = 0.0
                    step[0, 0, ids[t]] = 1.0
                    probs, state = self._run(step, state)
        bits = float(-logp.mean() / math.log(2))
        return {"mode": mode, "chars_scored": int(len(targets)), "bits_per_char": bits,
                "perplexity": float(2**bits)}
