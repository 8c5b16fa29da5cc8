"""Generator: a loaded model and the Python API over the engine (generate, stream, evaluate).

`Generator.load` opens the model's ONNX file, checks it against vocab.json and picks its backend:
charsdk's own graph (charsdk.graph_backend) or a Keras model converted by tf2onnx (charsdk.window_backend).
Each call runs its own engine (charsdk.engine), so one Generator is safe to share between threads.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .controls import REPETITION_WINDOW
from .engine import Backend, CharScore, Engine, Piece, Request, chunk_sizes, make_request
from .errors import InputError, ModelError
from .graph_backend import GraphBackend
from .items import ItemRecord
from .memory import Memory
from .memory_backend import MemoryBackend
from .sampling import is_integer
from .session import check_session_arguments, open_session
from .vocab import Vocab
from .window_backend import WindowBackend

DEFAULT_MODEL = "nietzsche"


def shipped_models_dir() -> Path:
    return Path(str(resources.files("charsdk") / "models"))


def default_model_dir() -> Path:
    """The default model shipped inside the package."""
    return shipped_models_dir() / DEFAULT_MODEL


def model_dir(path: str | os.PathLike | None) -> Path:
    """A model directory, or a shipped model's name (None: the default), as a directory that exists."""
    path = Path(path) if path is not None else default_model_dir()
    if not path.is_dir() and path.name == str(path) and (shipped_models_dir() / path).is_dir():
        path = shipped_models_dir() / path
    if not path.is_dir():
        raise ModelError(f"model directory {path} does not exist: pass a directory that holds "
                         "vocab.json and the ONNX file it names")
    return path


@dataclass(frozen=True)
class Sample:
    """A generated text with its characters' scores: what `generate(..., logprobs=N)` returns."""

    text: str
    scores: list[CharScore]  # one per character of text
    finish_reason: str  # "length" or "stop"


@dataclass(frozen=True)
class Items:
    """Complete items of a list model (`Generator.items`): each from a line start to its newline."""

    items: list[str]
    in_training: int  # of the items drawn, how many are lines of the training list (by the model's record)
    new: int  # and how many are not
    known: bool  # whether the model has a record of its training items (else in_training and new are 0)


ITEM_ROUNDS = 20  # batches drawn at most to find the items asked for


class Generator:
    """A loaded model: `Generator.load(dir).generate("seed text")`. Safe to share between threads."""

    def __init__(self, vocab: Vocab, backend: Backend, path: Path):
        self.vocab, self.backend, self.path = vocab, backend, path
        self.modes = backend.modes  # the modes this model runs in; the first is its default
        # a list model's training items (charsdk.items), or None
        self.training_items = ItemRecord.load(path / vocab.items["file"], vocab.items["sha256"]) \
            if vocab.items else None

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, *, threads: int = 1,
             providers: Sequence[str] | None = None, memory: bool = True) -> Generator:
        """Load a model directory, or a shipped model by name ("nietzsche", the default, or
        "nietzsche-book", the book's recipe).

        `threads`: onnxruntime intra-op threads (one is fastest for one stream);
        `providers`: e.g. ["CUDAExecutionProvider", "CPUExecutionProvider"] with onnxruntime-gpu;
        `memory`: False loads a model with an n-gram memory (`make memory`) without it, the network alone.
        """
        check_session_arguments(threads, providers)
        path = model_dir(path)
        vocab = Vocab.load(path / "vocab.json")
        session: ort.InferenceSession = open_session(path, vocab, threads, providers)
        backend = (WindowBackend if vocab.window else GraphBackend).checked(vocab, session)
        if vocab.memory and memory:
            counts = Memory.load(path / vocab.memory["file"], vocab.memory, vocab.size)
            backend = MemoryBackend(backend, counts)
        return cls(vocab, backend, path)

    def request(self, seed_text: str | None = None, length: int = 400,
                temperature: float | Sequence[float] = 0.5, **options) -> Request:
        """A checked request (the arguments of `generate`): what the engine and the server's batchers run."""
        return make_request(self.backend, seed_text, length, temperature, **options)

    def pieces(self, request: Request) -> Iterator[list[Piece]]:
        """Every stream's new text (and scores), chunk by chunk (one model call per chunk), until all have
        finished: what generate and stream return, from one engine."""
        engine = Engine(self.backend, request.mode)
        (streams,) = engine.add([request])
        if any(s.pending for s in streams):  # finished when added: a choice made
            yield [s.pending or Piece(s, "", []) for s in streams]
        if not engine.streams:
            return
        for k in chunk_sizes(request.length, request.streams, self.vocab.size):
            stepped = {piece.stream: piece for piece in engine.step(k)}
            yield [stepped.get(s) or Piece(s, "", []) for s in streams]
            if not engine.streams:
                return

    def stream(self, seed_text: str | None = None, length: int = 400, temperature: float = 0.5,
               *, top_k: int = 0, top_p: float = 1.0, stop: str | Sequence[str] = (),
               seed: int | None = None, mode: str | None = None, on_unknown: str = "error",
               logprobs: int | None = None, **controls) -> Iterator[str] | Iterator[CharScore]:
        """The generated characters, one by one as they are produced (see `generate`); with `logprobs`,
        each as a CharScore (the character, its log-probability, the `logprobs` likeliest). `controls`: the
        penalties, biases, regex and choice of `generate`."""
        if not np.isscalar(temperature):
            raise InputError("temperature must be a number (stream gives one sample)", "temperature")
        request = self.request(seed_text, length, temperature, top_k=top_k, top_p=top_p, stop=stop,
                               seed=seed, mode=mode, on_unknown=on_unknown, logprobs=logprobs, **controls)
        if logprobs is None:
            return (char for (piece,) in self.pieces(request) for char in piece.text)
        return (score for (piece,) in self.pieces(request) for score in piece.scores)

    def generate(self, seed_text: str | None = None, length: int = 400,
                 temperature: float | Sequence[float] = 0.5, *, n: int = 1, top_k: int = 0,
                 top_p: float = 1.0, stop: str | Sequence[str] = (), seed: int | None = None,
                 mode: str | None = None, on_unknown: str = "error", logprobs: int | None = None,
                 logit_bias: Mapping | None = None, presence_penalty: float = 0.0,
                 frequency_penalty: float = 0.0, repetition_penalty: float = 1.0,
                 repetition_window: int = REPETITION_WINDOW, regex: str | None = None,
                 choice: Sequence[str] | None = None) -> str | list[str] | Sample | list[Sample]:
        """The `length` characters that follow `seed_text` (None: the model's stored seed).

        temperature: 0 is greedy; a list gives `n` samples per temperature. n > 1 or a list of
        temperatures returns a list, all streams sampled together in batched calls.
        top_k / top_p: keep only the k most likely characters / the smallest set of mass p.
        stop: strings that end a sample (not included). seed: same seed, same text.
        on_unknown: "error" (default) names seed characters the model does not know; "skip" drops them.
        mode: "stateful" carries the LSTM state (one step per character); "window" predicts each
        character from the last `maxlen` characters and a zero state, as the model was trained. None:
        the model's default (stateful; a window model runs in window mode only).
        logprobs: None (default) returns text; 0 to 20 returns Sample objects: the text, each character's
        log-probability under the model and the `logprobs` likeliest characters at its place, and why it
        ended ("length" or "stop").
        logit_bias ({character or id: bias}, -100 bans), presence_penalty and frequency_penalty (OpenAI's,
        over the generated characters), repetition_penalty over the last repetition_window characters
        (Hugging Face's, llama.cpp's): the rules in charsdk.controls; a stream that uses any is drawn one
        character per model call.
        regex: every sample obeys this regular expression (over the model's characters; it ends, "stop",
        where the pattern accepts and the model's draw leaves it); choice: every sample is one of these
        strings, drawn from their probabilities after the seed text (charsdk.constraints).
        """
        request = self.request(seed_text, length, temperature, n=n, top_k=top_k, top_p=top_p, stop=stop,
                               seed=seed, mode=mode, on_unknown=on_unknown, logprobs=logprobs,
                               logit_bias=logit_bias, presence_penalty=presence_penalty,
                               frequency_penalty=frequency_penalty, repetition_penalty=repetition_penalty,
                               repetition_window=repetition_window, regex=regex, choice=choice)
        texts, scores = [""] * request.streams, [[] for _ in range(request.streams)]
        streams = []
        for pieces in self.pieces(request):
            texts = [t + p.text for t, p in zip(texts, pieces, strict=True)]
            for kept, piece in zip(scores, pieces, strict=True):
                kept += piece.scores
            streams = [p.stream for p in pieces]
        if logprobs is not None:
            finishes = [s.finish_reason for s in streams] or ["length"] * request.streams
            texts = [Sample(t, s, f) for t, s, f in zip(texts, scores, finishes, strict=True)]
        return texts[0] if np.isscalar(temperature) and n == 1 else texts

    def prompt_scores(self, request: Request) -> list[CharScore]:
        """The score of each character of a request's prompt after the first, with its `logprobs`
        likeliest: what evaluate scores, per character (an echoed prompt's log-probabilities)."""
        return Engine(self.backend, request.mode).prompt_scores(request.ids, request.logprobs or 0)

    def items(self, count: int = 20, temperature: float = 1.0, *, new_only: bool = False,
              seed: int | None = None, max_length: int = 200, mode: str | None = None) -> Items:
        """`count` complete items of a list model: each drawn from a line start until the model draws the
        newline (regex [^\\n]+, so never empty); an item longer than `max_length` is dropped. The line
        start is after the items of the model's stored seed text (`item_prompt`), so that the state is
        a list's, not a text's. `new_only`: only items not in the training list (the record:
        charsdk.items)."""
        if new_only and self.training_items is None:
            raise InputError("new_only needs a record of the training items, which this model has none of "
                             "(an export of a one-item-per-line corpus writes one)", "new_only")
        if not is_integer(count) or count < 1:
            raise InputError(f"count must be an integer >= 1, got {count!r}", "count")
        record, found, in_training, new = self.training_items, [], 0, 0
        for round_ in range(ITEM_ROUNDS):
            request = self.item_request(2 * (count - len(found)), temperature,
                                        seed=None if seed is None else seed + round_, max_length=max_length,
                                        mode=mode)
            streams = [piece.stream for piece in list(self.pieces(request))[-1]]
            for stream in streams:
                if stream.finish_reason != "stop":  # longer than max_length: not a complete item
                    continue
                item = stream.decoder.text
                known = record is not None and item in record
                in_training, new = in_training + known, new + (record is not None and not known)
                if not (new_only and known):
                    found.append(item)
                if len(found) == count:
                    break
            if len(found) >= count:
                break
        return Items(found[:count], in_training, new, self.training_items is not None)

    def item_request(self, n: int, temperature: float = 1.0, *, seed: int | None = None,
                     max_length: int = 200, mode: str | None = None) -> Request:
        """n streams that each draw one item ("stop" when the model draws its newline, else "length"):
        one round of `items`, and the server's `"items": true`."""
        if "\n" not in self.vocab.chars:
            raise InputError("this model has no newline: items need a model trained on one item per line",
                             "items")
        return self.request(self.item_prompt, max_length, temperature, n=n, seed=seed, mode=mode,
                            regex="[^\n]+")

    @property
    def item_prompt(self) -> str:
        """What an item is drawn after: the stored seed text's whole lines (a list model's are held-out
        items), else a newline."""
        seed = self.vocab.default_seed_text
        return seed[: seed.rindex("\n") + 1] if "\n" in seed else "\n"

    def predict(self, text: str = "", top_k: int = 0, mode: str | None = None,
                on_unknown: str = "error") -> dict[str, float]:
        """The distribution of the character after `text`: {character: probability}, most likely first;
        `top_k` > 0 keeps the k likeliest (ml5.js charRNN's predict)."""
        if not is_integer(top_k) or top_k < 0:
            raise InputError(f"top_k must be an integer >= 0 (0 = every character), got {top_k!r}", "top_k")
        engine = Engine(self.backend, mode)
        probs = np.exp(engine.next_log_probs(self.vocab.encode(text, on_unknown)))
        ranked = np.argsort(-probs, kind="stable")[: top_k or None]
        return {self.vocab.chars[i]: float(probs[i]) for i in ranked}

    def evaluate(self, text: str, mode: str | None = None, on_unknown: str = "error",
                 progress: Callable[[int, int], None] | None = None) -> dict:
        """Bits per character on `text`, scoring every position that has `maxlen` characters before it.

        "stateful" reads the text from its start, carrying the state (as `generate` does by default);
        "window" predicts each from exactly those characters and a zero state (as in training).
        `progress(done, total)` is called after each model call.
        """
        engine = Engine(self.backend, mode)
        ids, maxlen = self.vocab.encode(text, on_unknown), self.vocab.maxlen
        if len(ids) <= maxlen:
            raise InputError(f"the text needs more than {maxlen} characters to be scored, "
                             f"it has {len(ids)}")
        log_p = engine.log_probs(ids, maxlen, progress)
        bits = -float(log_p.sum()) / len(log_p) / np.log(2)
        return {"mode": engine.mode, "chars_scored": len(log_p), "bits_per_char": float(bits),
                "perplexity": float(2**bits)}
