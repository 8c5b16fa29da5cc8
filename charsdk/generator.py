"""Text generation and scoring with onnxruntime: one graph reads characters and draws new ones.

Every use is a call of model.onnx: prime on a seed (read it), sample (draw K characters, feeding
each back), score a text (read it, keeping every step's logits). Many characters per call: one call
per character would cost more in onnxruntime overhead than the LSTM step itself."""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .cpu import int16_pair_products
from .errors import InputError, ModelError
from .sampling import SamplingOptions, is_integer, log_softmax
from .vocab import Vocab

DEFAULT_MODEL = "nietzsche"
MODES = ("stateful", "window")
FIRST_CHUNK = 16  # characters in the first onnxruntime call: the first ones show quickly
CHUNK = 1024  # at most per call after that (each call 4x the one before): ~75 µs of overhead per call
UNIFORMS_PER_CALL = 1 << 21  # 8 MB of float32 per call, whatever n is (n=4096 would need 240 MB)
GRAPH_INPUTS = {"ids", "logits", "uniforms", "temperature", "top_k", "top_p", "use_filter", "window", "start"}
SCORE_CHUNK = 4096  # characters read per call when scoring a text


def shipped_models_dir() -> Path:
    return Path(str(resources.files("charsdk") / "models"))


def default_model_dir() -> Path:
    """The default model shipped inside the package."""
    return shipped_models_dir() / DEFAULT_MODEL


def chunk_sizes(length: int, streams: int = 1, vocab_size: int = 1) -> Iterator[int]:
    """FIRST_CHUNK, then 4x as many per call up to CHUNK, adding up to `length`; fewer per call for
    many streams, so that one call's uniform numbers (streams x chunk x vocabulary) stay under
    UNIFORMS_PER_CALL."""
    limit = max(1, UNIFORMS_PER_CALL // (streams * vocab_size))
    done, size = 0, FIRST_CHUNK
    while done < length:
        step = min(size, limit, length - done)
        yield step
        done, size = done + step, min(4 * size, CHUNK)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stream_generators(seed: int | None, count: int) -> list[np.random.Generator]:
    """One generator per stream: stream i's numbers depend on (seed, i) only. SFC64: making the numbers
    is the cost here (one per vocabulary character per step), and it makes them twice as fast as PCG64."""
    return [np.random.Generator(np.random.SFC64(s)) for s in np.random.SeedSequence(seed).spawn(count)]


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


def warn_if_saturating(vocab: Vocab, path: Path) -> None:
    """An int8 export from before the pair limit gives wrong products on x86 without VNNI: say so."""
    if vocab.precision == "int8" and not vocab.window and not vocab.int8_pair_limit and int16_pair_products():
        warnings.warn(f"{path}: this int8 export predates the int8 pair limit, and this CPU (AVX2, no VNNI) "
                      "adds its integer products in int16, where they saturate: its text is not the model's. "
                      "Export it again, or run python -m train.requantize on it",
                      RuntimeWarning, stacklevel=3)


@dataclass(frozen=True)
class Plan:
    """A checked request for len(options) streams: what generate, stream and the server's batcher run."""

    ids: np.ndarray  # the seed text, encoded
    options: list[SamplingOptions]  # one per stream
    rngs: list[np.random.Generator]  # one per stream (stream_generators)
    length: int  # characters to draw per stream, at most
    stop: list[str]
    mode: str


class TextDecoder:
    """One stream's text as its drawn ids arrive: `length` characters at most, cut before the first
    stop string; the last characters are held back while they could be the start of a stop string
    that the next ids complete. `finish_reason` becomes "stop" or "length" when the stream is done."""

    def __init__(self, codes: np.ndarray, length: int, stop: Sequence[str]):
        self.codes, self.length, self.stop = codes, length, list(stop)
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.text, self.sent, self.drawn = "", 0, 0
        self.finish_reason: str | None = None

    def feed(self, ids: np.ndarray) -> str:
        """The text that is now certain, from ids drawn after the previous ones ("" once done)."""
        if self.finish_reason:
            return ""
        ids = ids[: self.length - self.drawn]
        self.drawn += len(ids)
        searched = max(len(self.text) - self.hold, 0)
        self.text += np.ascontiguousarray(self.codes[ids]).tobytes().decode("utf-32-le")
        cuts = [i for i in (self.text.find(s, searched) for s in self.stop) if i >= 0]
        if cuts:
            self.text, self.finish_reason = self.text[: min(cuts)], "stop"
        elif self.drawn == self.length:
            self.finish_reason = "length"
        end = len(self.text) if self.finish_reason else len(self.text) - self.hold
        piece = self.text[self.sent : max(end, self.sent)]
        self.sent = max(end, self.sent)
        return piece


class Generator:
    """A loaded model: `Generator.load(dir).generate("seed text")`. Safe to share between threads."""

    modes = MODES  # the modes this model runs in; the first is its default

    def __init__(self, vocab: Vocab, session: ort.InferenceSession, path: Path):
        self.vocab = vocab
        self.session = session  # model.onnx: read ids, then draw characters (see train/graph.py)
        self.path = path
        self._codes = np.array([ord(c) for c in vocab.chars], dtype=np.uint32)
        self._outputs = ["logits_out", *[s.output for s in vocab.states], "ids_out", "read_logits"]

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, *, threads: int = 1,
             providers: Sequence[str] | None = None) -> Generator:
        """Load a model directory, or a shipped model by name ("nietzsche", the default, or
        "nietzsche-book", the book's recipe).

        `threads`: onnxruntime intra-op threads (one is fastest for one stream);
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
                             "vocab.json and the ONNX file it names")
        vocab = Vocab.load(path / "vocab.json")
        session = _open_session(path / vocab.onnx_file, vocab.onnx_sha256, threads, providers)
        warn_if_saturating(vocab, path)
        if vocab.window:
            from .window import WindowGenerator

            return WindowGenerator.checked(vocab, session, path)
        inputs = {i.name: i for i in session.get_inputs()}
        if set(inputs) != GRAPH_INPUTS | {s.input for s in vocab.states}:
            raise ModelError(f"{vocab.onnx_file} does not take the inputs this charsdk gives it "
                             "(an export by another version): re-export the model with make export")
        if inputs["logits"].shape[-1] != vocab.size:
            raise ModelError(
                f"vocab.json lists {vocab.size} characters but {vocab.onnx_file} has "
                f"{inputs['logits'].shape[-1]}: the files do not belong together; re-export the model")
        return cls(vocab, session, path)

    # -- the graph ----------------------------------------------------------------------------

    def _zero_state(self, rows: int) -> dict[str, np.ndarray]:
        return {s.input: np.zeros((rows, s.size), np.float32) for s in self.vocab.states}

    def run(self, ids: np.ndarray, state: dict[str, np.ndarray], logits: np.ndarray | None = None,
            uniforms: np.ndarray | None = None, options: Sequence[SamplingOptions] | None = None,
            window: int = 0, start: int = 0):
        """One call of model.onnx for B streams: read ids [B, T], then draw uniforms.shape[1] characters.

        Returns (logits after the last character [B, V], the state after it, drawn ids [K, B], the
        logits after each read character [T, B, V]). Window mode (window = maxlen): the states hold
        maxlen rows per stream and `start` counts the characters they have read."""
        streams, size = len(ids), self.vocab.size
        options = options or [SamplingOptions()] * streams
        feed = {
            "ids": np.asarray(ids, np.int64).reshape(streams, -1),
            "logits": np.zeros((streams, size), np.float32) if logits is None else logits,
            **state,
            "uniforms": np.zeros((streams, 0, size), np.float32) if uniforms is None else uniforms,
            "temperature": np.array([o.temperature for o in options], np.float32),
            "top_k": np.array([o.top_k for o in options], np.int64),
            # top_p 1 (no limit) as +inf: in a batch where other streams filter, the graph's cumulative
            # sum may reach 1.0 by rounding before the last character and would drop it
            "top_p": np.array([o.top_p if o.top_p < 1 else np.inf for o in options], np.float32),
            "use_filter": np.array(any(o.filters for o in options)),
            "window": np.array(window, np.int64),
            "start": np.array(start, np.int64),
        }
        logits, *new, drawn, read = self.session.run(self._outputs, feed)
        return logits, dict(zip([s.input for s in self.vocab.states], new, strict=True)), drawn, read

    def _stateful_seed(self, ids: np.ndarray) -> np.ndarray:
        """What stateful priming reads: the seed, or for an empty one the "no character" id (one zero
        input from the zero state)."""
        return ids if len(ids) else np.array([self.vocab.no_char_id])

    def _prime(self, ids: np.ndarray, streams: int, mode: str):
        """Read the seed once (one stream) and copy the result to every stream: (logits, state, start)."""
        maxlen = self.vocab.maxlen
        if mode == "window" and len(ids):
            seed = ids[-maxlen:]
            logits, state, _, _ = self.run(seed[None], self._zero_state(maxlen), window=maxlen)
            return (np.repeat(logits, streams, 0), {k: np.tile(v, (streams, 1)) for k, v in state.items()},
                    len(seed))
        logits, state, _, _ = self.run(self._stateful_seed(ids)[None], self._zero_state(1))
        if mode == "window":  # an empty seed: every window still empty
            return np.repeat(logits, streams, 0), self._zero_state(streams * maxlen), 0
        return np.repeat(logits, streams, 0), {k: np.repeat(v, streams, 0) for k, v in state.items()}, 0

    def _draws(self, ids, options, uniform_chunks, mode: str) -> Iterator[np.ndarray]:
        """Chunks of drawn ids [k, B], one call per chunk of uniforms [B, k, V].

        Window mode predicts each character from the last maxlen characters and a zero state. Rather
        than rerunning maxlen LSTM steps per character, each stream keeps maxlen staggered windows
        (state rows) advanced together: before character t, window t mod maxlen restarts from zero;
        every window then reads character t; the one that started maxlen characters ago (or at the
        start of the text) gives the next distribution. The same arithmetic as the book's loop, one
        batched step per character."""
        logits, state, read = self._prime(ids, len(options), mode)
        window = self.vocab.maxlen if mode == "window" else 0
        no_ids = np.zeros((len(options), 0), np.int64)
        for uniforms in uniform_chunks:
            logits, state, drawn, _ = self.run(no_ids, state, logits, uniforms, options, window, read)
            read += len(drawn)
            yield drawn

    # -- the public API -----------------------------------------------------------------------

    def _mode(self, mode: str | None) -> str:
        """The mode asked for (None: the model's default), checked."""
        if mode is None:
            return self.modes[0]
        if mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}", "mode")
        if mode not in self.modes:
            raise InputError(f"mode {mode!r}: this is a window model (a Keras model converted by tf2onnx), "
                             "which runs in window mode only: use mode='window' or leave mode out", "mode")
        return mode

    def _plan(self, seed_text, length, temperatures, n, top_k, top_p, stop, seed, mode,
              on_unknown) -> Plan:
        """Check every argument (InputError naming the argument) and say what to run."""
        if not is_integer(length) or length < 0:
            raise InputError(f"length must be an integer >= 0, got {length!r}", "length")
        if not is_integer(n) or n < 1:
            raise InputError(f"n must be an integer >= 1, got {n!r}", "n")
        if seed is not None and (not is_integer(seed) or seed < 0):
            raise InputError(f"seed must be an integer >= 0 (or None for a fresh one), got {seed!r}", "seed")
        if seed_text is not None and not isinstance(seed_text, str):
            raise InputError(f"seed_text must be a string (or None for the model's own), got "
                             f"{type(seed_text).__name__}", "seed_text")
        mode = self._mode(mode)
        stop = [stop] if isinstance(stop, str) else list(stop or ())
        if any(not isinstance(s, str) or not s for s in stop):
            raise InputError("stop must be a list of non-empty strings", "stop")
        options = [SamplingOptions.check(t, top_k, top_p) for t in temperatures for _ in range(n)]
        seed_text = self.vocab.default_seed_text if seed_text is None else seed_text
        ids = self.vocab.encode(seed_text, on_unknown)
        # One generator per stream: stream i's text depends on (seed, i) only, not on chunking.
        return Plan(ids, options, stream_generators(seed, len(options)), length, stop, mode)

    def _texts(self, plan: Plan) -> Iterator[list[str]]:
        """The new text of every stream of the plan, chunk by chunk (one model call per chunk)."""
        if plan.length == 0:
            return
        decoders = [TextDecoder(self._codes, plan.length, plan.stop) for _ in plan.options]
        sizes = chunk_sizes(plan.length, len(plan.rngs), self.vocab.size)
        for drawn in self._draws(plan.ids, plan.options, (self._uniforms(plan.rngs, k) for k in sizes),
                                 plan.mode):
            yield [d.feed(drawn[:, b]) for b, d in enumerate(decoders)]
            if all(d.finish_reason for d in decoders):
                return

    def _uniforms(self, rngs, k: int) -> np.ndarray:
        """[B, k, V] uniform numbers in [0, 1), row b from stream b's generator."""
        uniforms = np.empty((len(rngs), k, self.vocab.size), np.float32)
        for rng, row in zip(rngs, uniforms, strict=True):
            rng.random(out=row, dtype=np.float32)
        return uniforms

    def stream(self, seed_text: str | None = None, length: int = 400, temperature: float = 0.5,
               *, top_k: int = 0, top_p: float = 1.0, stop: str | Sequence[str] = (),
               seed: int | None = None, mode: str | None = None,
               on_unknown: str = "error") -> Iterator[str]:
        """The generated characters, one by one as they are produced (see `generate`)."""
        plan = self._plan(seed_text, length, [temperature], 1, top_k, top_p, stop, seed, mode, on_unknown)
        return (char for (piece,) in self._texts(plan) for char in piece)

    def generate(self, seed_text: str | None = None, length: int = 400,
                 temperature: float | Sequence[float] = 0.5, *, n: int = 1, top_k: int = 0,
                 top_p: float = 1.0, stop: str | Sequence[str] = (), seed: int | None = None,
                 mode: str | None = None, on_unknown: str = "error") -> str | list[str]:
        """The `length` characters that follow `seed_text` (None: the model's stored seed).

        temperature: 0 is greedy; a list gives `n` samples per temperature. n > 1 or a list of
        temperatures returns a list, all streams sampled together in batched calls.
        top_k / top_p: keep only the k most likely characters / the smallest set of mass p.
        stop: strings that end a sample (not included). seed: same seed, same text.
        on_unknown: "error" (default) names seed characters the model does not know; "skip" drops them.
        mode: "stateful" carries the LSTM state (one step per character); "window" predicts each
        character from the last `maxlen` characters and a zero state, as the model was trained. None:
        the model's default (stateful; a window model runs in window mode only).
        """
        temperatures = [temperature] if np.isscalar(temperature) else list(temperature)
        if not temperatures:
            raise InputError("temperature must be a number or a non-empty list of numbers", "temperature")
        plan = self._plan(seed_text, length, temperatures, n, top_k, top_p, stop, seed, mode, on_unknown)
        texts = [""] * len(plan.options)
        for pieces in self._texts(plan):
            texts = [t + p for t, p in zip(texts, pieces, strict=True)]
        return texts[0] if np.isscalar(temperature) and n == 1 else texts

    def evaluate(self, text: str, mode: str | None = None, on_unknown: str = "error",
                 progress: Callable[[int, int], None] | None = None) -> dict:
        """Bits per character on `text`, scoring every position that has `maxlen` characters before it.

        "stateful" reads the text from its start, carrying the state (as `generate` does by default);
        "window" predicts each from exactly those characters and a zero state (as in training).
        The text is read SCORE_CHUNK characters per call; `progress(done, total)` is called after each.
        """
        mode = self._mode(mode)
        ids, maxlen = self.vocab.encode(text, on_unknown), self.vocab.maxlen
        if len(ids) <= maxlen:
            raise InputError(f"the text needs more than {maxlen} characters to be scored, "
                             f"it has {len(ids)}")
        window = maxlen if mode == "window" else 0
        state = self._zero_state(maxlen if window else 1)
        total_log_p, read = 0.0, 0
        while read < len(ids) - 1:  # the logits after character t score character t + 1
            chunk = ids[read : min(read + SCORE_CHUNK, len(ids) - 1)]
            _, state, _, logits = self.run(chunk[None], state, window=window, start=read)
            log_p = log_softmax(logits[:, 0])
            targets = np.arange(read + 1, read + 1 + len(chunk))
            scored = targets >= maxlen
            total_log_p += float(log_p[scored, ids[targets[scored]]].sum())
            read += len(chunk)
            if progress:
                progress(read + 1, len(ids))
        scored = len(ids) - maxlen
        bits = -total_log_p / scored / np.log(2)
        return {"mode": mode, "chars_scored": int(scored), "bits_per_char": float(bits),
                "perplexity": float(2**bits)}
