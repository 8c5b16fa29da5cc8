"""The one generation engine: a batch of streams, started on prompts, stepped a chunk at a time, decoded,
finished and dropped, over either kind of model (a backend: charsdk.graph_backend for charsdk's own
graph, charsdk.window_backend for a Keras model converted by tf2onnx).

`Generator.generate`, `stream` and `evaluate` run one engine per call; the server's batchers keep one
each, and requests join and leave it between chunks. Each stream draws its own seeded uniform numbers
and a backend computes each row independently, so a stream's text depends on its request only: the same
alone, beside others, or chunked differently.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np

from .constraints import Automaton, Pattern, choice_ids
from .controls import REPETITION_WINDOW, Controls
from .errors import InputError
from .rows import Rows
from .sampling import SamplingOptions, draw_rows, gumbel_noise, is_integer, log_softmax
from .vocab import Vocab

MODES = ("stateful", "window")
FIRST_CHUNK = 16  # characters in the first model call: the first ones show quickly
CHUNK = 1024  # at most per call after that (each call 4x the one before): ~75 µs of overhead per call
UNIFORMS_PER_CALL = 1 << 21  # 8 MB of float32 per call, whatever n is (n=4096 would need 240 MB)
PRIMED_CACHE = 1024  # prompts whose rows after reading them an engine keeps (least recently used dropped)
GUESS_FIRST = 16  # a pattern's stream guesses this many characters in the backend's call, 4x more after each
GUESS_MIN = 4  # a guess that fails sooner than this: the rest of the chunk one character per call
MAX_LOGPROBS = 20  # alternatives per character at most (OpenAI's completions API allows 0 to 5; vLLM 20)


class Backend(Protocol):
    """What the engine needs of a kind of model. Rows hold whatever the backend carries per stream."""

    vocab: Vocab
    modes: tuple[str, ...]  # the modes it runs; the first is its default
    draws_in_call: bool  # whether `step` draws all its characters in one model call (else one call each)
    masks_in_call: bool  # whether `step` takes an automaton that masks its draws (charsdk.constraints)

    def start(self, prompts: Sequence[np.ndarray], mode: str) -> Rows:
        """One row per prompt (character ids), after reading it."""

    def empty(self, mode: str) -> Rows:
        """No rows: an engine's batch before any stream joins."""

    def step(self, rows: Rows, uniforms: np.ndarray, options: Sequence[SamplingOptions],
             scored: bool = False,
             automaton: Automaton | None = None) -> tuple[np.ndarray, Rows, np.ndarray | None]:
        """Draw uniforms.shape[1] characters per row (uniforms [B, k, V]), each masked by the row's state of
        `automaton` (masks_in_call): ids [k, B], the rows after, and (`scored`) the log-probabilities
        [k, B, V] (the model's own, unmasked) each drawn character was drawn from (else None)."""

    def log_probs(self, ids: np.ndarray, mode: str, first: int,
                  progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """log p (natural) of ids[first:], each given the characters before it."""

    def next_log_probs(self, rows: Rows) -> np.ndarray:
        """log p [B, V] of each row's next character."""

    def next_logits(self, rows: Rows) -> np.ndarray:
        """The logits [B, V] of each row's next character, as the model gives them (what controls change)."""

    def advance(self, rows: Rows, ids: np.ndarray) -> Rows:
        """The rows after reading T more characters each (ids [B, T]): a controlled stream's step."""

    def log_distributions(self, ids: np.ndarray, mode: str, first: int) -> np.ndarray:
        """The log-probabilities [len(ids) - first, V] of the character at each position from `first` on,
        given the ones before it (a prompt's: its size is bounded)."""


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


def stream_generators(seed: int | None, count: int) -> list[np.random.Generator]:
    """One generator per stream: stream i's numbers depend on (seed, i) only. SFC64: making the numbers
    is the cost here (one per vocabulary character per step), and it makes them twice as fast as PCG64."""
    return [np.random.Generator(np.random.SFC64(s)) for s in np.random.SeedSequence(seed).spawn(count)]


def uniforms(rngs: Sequence[np.random.Generator], k: int, vocab_size: int) -> np.ndarray:
    """[B, k, V] uniform numbers in [0, 1), row b from stream b's generator: what k draws of B streams use."""
    out = np.empty((len(rngs), k, vocab_size), np.float32)
    for rng, row in zip(rngs, out, strict=True):
        rng.random(out=row, dtype=np.float32)
    return out


@dataclass(frozen=True, eq=False)
class Request:
    """A checked request: len(options) streams continuing one prompt (`make_request` builds it)."""

    ids: np.ndarray  # the prompt, encoded
    options: tuple[SamplingOptions, ...]  # one per stream
    seed: int | None  # stream i draws from stream_generators(seed, streams)[i]
    length: int  # characters to draw per stream, at most
    stop: tuple[str, ...]
    mode: str
    logprobs: int | None = None  # None: no scores; N: each drawn character's score and the N likeliest
    controls: Controls | None = None  # penalties and biases (charsdk.controls); None: none
    pattern: Pattern | None = None  # a regular expression every sample obeys (charsdk.constraints)
    choices: tuple[np.ndarray, ...] | None = None  # or the strings, as ids, one of which each sample is

    @property
    def streams(self) -> int:
        return len(self.options)


def check_mode(mode: str | None, modes: Sequence[str]) -> str:
    """The mode asked for (None: the model's default, modes[0]), checked."""
    if mode is None:
        return modes[0]
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}", "mode")
    if mode not in modes:
        raise InputError(f"mode {mode!r}: this is a window model (a Keras model converted by tf2onnx), "
                         "which runs in window mode only: use mode='window' or leave mode out", "mode")
    return mode


def make_request(backend: Backend, seed_text: str | None = None, length: int = 400,
                 temperature: float | Sequence[float] = 0.5, *, n: int = 1, top_k: int = 0,
                 top_p: float = 1.0, stop: str | Sequence[str] = (), seed: int | None = None,
                 mode: str | None = None, on_unknown: str = "error", logprobs: int | None = None,
                 logit_bias: Mapping | None = None, presence_penalty: float = 0.0,
                 frequency_penalty: float = 0.0, repetition_penalty: float = 1.0,
                 repetition_window: int = REPETITION_WINDOW, regex: str | None = None,
                 choice: Sequence[str] | None = None) -> Request:
    """Every argument checked (InputError naming the argument), as `Generator.generate` documents them:
    n streams per temperature."""
    if not is_integer(length) or length < 0:
        raise InputError(f"length must be an integer >= 0, got {length!r}", "length")
    if not is_integer(n) or n < 1:
        raise InputError(f"n must be an integer >= 1, got {n!r}", "n")
    if seed is not None and (not is_integer(seed) or seed < 0):
        raise InputError(f"seed must be an integer >= 0 (or None for a fresh one), got {seed!r}", "seed")
    if seed_text is not None and not isinstance(seed_text, str):
        raise InputError(f"seed_text must be a string (or None for the model's own), got "
                         f"{type(seed_text).__name__}", "seed_text")
    temperatures = [temperature] if np.isscalar(temperature) else list(temperature)
    if not temperatures:
        raise InputError("temperature must be a number or a non-empty list of numbers", "temperature")
    mode = check_mode(mode, backend.modes)
    stop = [stop] if isinstance(stop, str) else list(stop or ())
    if any(not isinstance(s, str) or not s for s in stop):
        raise InputError("stop must be a list of non-empty strings", "stop")
    if logprobs is not None and (not is_integer(logprobs) or not 0 <= logprobs <= MAX_LOGPROBS):
        raise InputError(f"logprobs must be an integer from 0 to {MAX_LOGPROBS} (or None for no scores), got "
                         f"{logprobs!r}", "logprobs")
    options = tuple(SamplingOptions.check(t, top_k, top_p) for t in temperatures for _ in range(n))
    vocab = backend.vocab
    ids = vocab.encode(vocab.default_seed_text if seed_text is None else seed_text, on_unknown)
    controls = Controls.check(vocab, logit_bias, presence_penalty, frequency_penalty, repetition_penalty,
                              repetition_window)
    if controls is not None and controls.banned is not None and controls.banned.all():
        raise InputError("logit_bias bans every character: leave at least one above -100", "logit_bias")
    if regex is not None and choice is not None:
        raise InputError("regex and choice cannot be combined: give one of them", "regex")
    pattern = Pattern.compile(regex, vocab) if regex is not None else None
    if pattern is not None and pattern.distance[pattern.start] > length:
        raise InputError(f"regex {regex!r} needs at least {pattern.distance[pattern.start]} characters, more "
                         f"than length={length}", "length")
    choices = tuple(choice_ids(choice, vocab)) if choice is not None else None
    return Request(ids, options, seed, length, tuple(stop), mode, logprobs, controls, pattern, choices)


class TextDecoder:
    """One stream's text as its drawn ids arrive: `length` characters at most, cut before the first
    stop string; the last characters are held back while they could be the start of a stop string
    that the next ids complete. `finish_reason` becomes "stop" or "length" when the stream is done."""

    def __init__(self, codes: np.ndarray, length: int, stop: Sequence[str]):
        self.codes, self.length, self.stop = codes, length, list(stop)
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.text, self.sent, self.drawn = "", 0, 0
        self.finish_reason: str | None = None if length else "length"

    def feed(self, ids: np.ndarray, end: bool = False) -> str:
        """The text that is now certain, from ids drawn after the previous ones ("" once done); `end`: the
        stream ends after them ("stop": a pattern's end, a choice made), its held characters sent."""
        if self.finish_reason:
            return ""
        end = end and len(ids) <= self.length - self.drawn  # else `length` cuts it first
        if end:
            self.length = self.drawn + len(ids)  # it ends here: at "length", named "stop" below
        ids = ids[: self.length - self.drawn]
        self.drawn += len(ids)
        searched = max(len(self.text) - self.hold, 0)
        self.text += np.ascontiguousarray(self.codes[ids]).tobytes().decode("utf-32-le")
        cuts = [i for i in (self.text.find(s, searched) for s in self.stop) if i >= 0]
        if cuts:
            self.text, self.finish_reason = self.text[: min(cuts)], "stop"
        elif self.drawn == self.length:
            self.finish_reason = "stop" if end else "length"
        end = len(self.text) if self.finish_reason else len(self.text) - self.hold
        piece = self.text[self.sent : max(end, self.sent)]
        self.sent = max(end, self.sent)
        return piece


class CharScore(NamedTuple):
    """A character with its log-probability (natural log, under the model's own distribution: before
    temperature, top-k, top-p, penalties and biases) and the likeliest characters at its place, most likely
    first, the character itself among them (last, if it is not one of the likeliest)."""

    char: str
    logprob: float
    top: tuple[tuple[str, float], ...]


def char_scores(vocab: Vocab, ids: np.ndarray, log_p: np.ndarray, top: int) -> list[CharScore]:
    """CharScore of each id [T] under its log-probabilities [T, V], with the `top` likeliest characters and,
    where it is not among them, the character itself last (vLLM's rule: the alternatives hold it)."""
    chosen = log_p[np.arange(len(ids)), ids]
    ranked = np.argsort(-log_p, axis=1, kind="stable")[:, :top]
    chars = vocab.chars
    return [CharScore(chars[i], float(p), tuple((chars[j], float(row[j])) for j in best)
                      + (() if i in best else ((chars[i], float(p)),)))
            for i, p, best, row in zip(ids, chosen, ranked, log_p, strict=True)]


class Piece(NamedTuple):
    """A stream's new text from one step, and (logprobs asked) each of its characters' scores."""

    stream: Stream
    text: str
    scores: list[CharScore]


@dataclass(eq=False)
class Stream:
    """One stream of a request in an engine: `owner` is the caller's (the server's job)."""

    request: Request
    index: int  # in its request
    rng: np.random.Generator
    decoder: TextDecoder
    owner: object = field(default=None, repr=False)
    scores: list[CharScore] = field(default_factory=list, repr=False)  # one per character drawn (logprobs)
    counts: np.ndarray | None = field(default=None, repr=False)  # controls: each character's count, generated
    recent: list[int] = field(default_factory=list, repr=False)  # controls: the last ids read (its window)
    state: int = 0  # pattern: the automaton's state
    ends_at: int | None = None  # pattern: where in the chunk being drawn the sample ended
    pending: Piece | None = None  # a stream finished when added (a choice made): its one piece

    def drew(self, char: int) -> None:
        """A controlled stream's bookkeeping after each character it draws."""
        self.counts[char] += 1
        self.recent.append(int(char))
        del self.recent[: -self.request.controls.window]

    @property
    def finish_reason(self) -> str | None:
        return self.decoder.finish_reason

    @property
    def left(self) -> int:
        """Characters still to draw, at most (a stop string may end it sooner)."""
        return self.decoder.length - self.decoder.drawn


class Engine:
    """A batch of streams of one backend, in one mode. Not thread-safe: one owner steps it."""

    def __init__(self, backend: Backend, mode: str | None = None):
        self.backend, self.mode = backend, check_mode(mode, backend.modes)
        self.streams: list[Stream] = []  # stream i is row i of self.rows
        self.rows = backend.empty(self.mode)
        self.codes = np.array([ord(c) for c in backend.vocab.chars], dtype=np.uint32)
        self._primed: OrderedDict[bytes, Rows] = OrderedDict()  # prompt -> its row after reading it
        self.call_s = 0.0  # seconds the last step's model call took (what sizes a batcher's next chunk)

    def add(self, requests: Sequence[Request], owners: Sequence[object] | None = None) -> list[list[Stream]]:
        """Start every request's streams on its prompt and add them to the batch: each request's streams,
        in order. A prompt read recently is not read again (an LSTM's state after a prompt is all it
        needs: PRIMED_CACHE of them are kept); the others are read together. A request with length 0 gets
        streams that are already finished and never join the batch."""
        owners = list(owners) if owners is not None else [None] * len(requests)
        for request in requests:
            if request.mode != self.mode:
                raise InputError(f"this engine runs {self.mode} streams, not {request.mode}", "mode")
        unread = list({r.ids.tobytes(): r.ids for r in requests if r.length and r.ids.tobytes()
                       not in self._primed}.values())  # a choice's prompt too: it is read to score them
        if unread:
            started = self.backend.start(unread, self.mode)
            for i, ids in enumerate(unread):
                self._primed[ids.tobytes()] = started.take(slice(i, i + 1))
        added, parts = [], [self.rows]
        for request, owner in zip(requests, owners, strict=True):
            rngs = stream_generators(request.seed, request.streams)
            streams = [Stream(request, i, rng, TextDecoder(self.codes, request.length, request.stop), owner)
                       for i, rng in enumerate(rngs)]
            if request.controls:
                for stream in streams:
                    stream.counts = np.zeros(self.backend.vocab.size)
                    stream.recent = request.ids[-request.controls.window:].tolist()
            if request.pattern:
                for stream in streams:
                    stream.state = request.pattern.start
            if request.choices and request.length:
                self._choose(request, streams)
                added.append(streams)
                continue
            added.append(streams)
            if request.length and not request.choices:
                key = request.ids.tobytes()
                self._primed.move_to_end(key)
                parts.append(self._primed[key].repeat(request.streams))
                self.streams += streams
        while len(self._primed) > PRIMED_CACHE:
            self._primed.popitem(last=False)
        if len(parts) > 1:
            self.rows = Rows.concat(parts)
        return added

    def step(self, k: int, streams: Sequence[Stream] | None = None) -> list[Piece]:
        """Draw k characters for `streams` (default: every one in the batch) in one model call: a Piece for
        each stream that has new text or has finished. Finished streams leave the batch. If the model call
        raises, nothing has changed but the streams' uniform numbers (drop them)."""
        chosen = self.streams if streams is None else list(streams)
        every = len(chosen) == len(self.streams) and all(
            a is b for a, b in zip(chosen, self.streams, strict=True))
        if every:
            rows = self.rows
        else:
            row_of = {id(s): i for i, s in enumerate(self.streams)}
            index = np.array([row_of[id(s)] for s in chosen], np.int64)
            rows = self.rows.take(index)
        numbers = uniforms([s.rng for s in chosen], k, self.backend.vocab.size)
        started = time.perf_counter()
        drawn, after, log_p = self._draw(rows, numbers, chosen)
        self.call_s = time.perf_counter() - started
        if every:
            self.rows = after
        else:
            self.rows.put(index, after)
        events = []
        for b, stream in enumerate(chosen):
            sent, ends = stream.decoder.sent, stream.ends_at is not None
            ids = drawn[: stream.ends_at, b]
            if stream.request.logprobs is not None:
                kept = ids[: stream.left]
                stream.scores += char_scores(self.backend.vocab, kept, log_p[: len(kept), b],
                                             stream.request.logprobs)
            piece = stream.decoder.feed(ids, end=ends)
            if piece or stream.finish_reason:
                events.append(Piece(stream, piece, stream.scores[sent : sent + len(piece)]))
        if any(e.stream.finish_reason for e in events):
            self._keep([s.finish_reason is None for s in self.streams])
        return events

    def _draw(self, rows: Rows, numbers: np.ndarray, chosen: list[Stream]):
        """(drawn [k, B], rows after, log-probabilities [k, B, V] or None): each group of streams as
        `_drawer` says, each group in its own model call(s)."""
        options = [s.request.options[s.index] for s in chosen]
        scored = any(s.request.logprobs is not None for s in chosen)
        groups: dict[Callable, list[int]] = {}
        for b, stream in enumerate(chosen):
            groups.setdefault(self._drawer(stream, options[b]), []).append(b)
        if len(groups) == 1:
            ((drawer, _),) = groups.items()
            return drawer(rows, numbers, options, chosen, scored)
        k, size = numbers.shape[1], self.backend.vocab.size
        drawn, after = np.empty((k, len(chosen)), np.int64), rows.take(slice(None))
        log_p = np.empty((k, len(chosen), size)) if scored else None
        for drawer, part in groups.items():
            index = np.array(part)
            part_drawn, part_after, part_log_p = drawer(rows.take(index), numbers[index],
                                                        [options[b] for b in part], [chosen[b] for b in part],
                                                        scored)
            drawn[:, index] = part_drawn
            after.put(index, part_after)
            if scored:
                log_p[:, index] = part_log_p
        return drawn, after, log_p

    def _drawer(self, stream: Stream, option: SamplingOptions) -> Callable:
        """How a stream's characters are drawn: in the backend's call (no controls, no pattern), guessed
        there and checked against its pattern (a pattern alone, where the backend draws in its call), or
        one per call."""
        request = stream.request
        if not (request.controls or request.pattern):
            return self._draw_plain
        if request.pattern and not request.controls and self.backend.masks_in_call:
            return self._draw_masked
        if request.pattern and not request.controls and not option.filters and self.backend.draws_in_call:
            return self._draw_guessed
        return self._draw_controlled

    def _draw_plain(self, rows: Rows, numbers: np.ndarray, options, streams: list[Stream], scored: bool):
        return self.backend.step(rows, numbers, options, scored)

    def _draw_guessed(self, rows: Rows, numbers: np.ndarray, options, streams: list[Stream], scored: bool):
        """Streams whose only rule is a pattern, many characters per call: the backend draws a guess from
        the model's whole distribution with the streams' own uniform numbers, and the guess stands up to
        the first character the pattern forbids. That is exact: Gumbel-max's winner over every character,
        when the pattern allows it, is also the winner over the allowed ones, the masked draw (with no
        top-k or top-p, whose cut would move with the mask). At the first forbidden character the rows
        read the guess so far, one character is drawn masked (`_draw_controlled`), and guessing goes on;
        a guess that fails within GUESS_MIN characters leaves the rest of the chunk to `_draw_controlled`."""
        k, size = numbers.shape[1], self.backend.vocab.size
        drawn = np.empty((k, len(streams)), np.int64)
        log_p = np.empty((k, len(streams), size)) if scored else None
        done, guess = 0, GUESS_FIRST
        while done < k:
            end = min(done + guess, k)
            guessed, after, guessed_log_p = self.backend.step(rows, numbers[:, done:end], options, scored)
            kept = self._follow(streams, guessed, done, masked=False)
            drawn[done : done + kept] = guessed[:kept]
            if scored:
                log_p[done : done + kept] = guessed_log_p[:kept]
            if kept == end - done:
                rows, done, guess = after, end, min(4 * guess, CHUNK)
                continue
            rows = self.backend.advance(rows, guessed[:kept].T) if kept else rows
            rest = k if kept < GUESS_MIN else done + kept + 1  # guessing does not pay here: one per call
            one, rows, one_log_p = self._draw_controlled(rows, numbers[:, done + kept : rest], options,
                                                         streams, scored, offset=done + kept)
            drawn[done + kept : rest] = one
            if scored:
                log_p[done + kept : rest] = one_log_p
            done, guess = rest, GUESS_FIRST
        return drawn, rows, log_p

    def _draw_masked(self, rows: Rows, numbers: np.ndarray, options, streams: list[Stream], scored: bool):
        """Streams whose only rule is a pattern, drawn inside the backend's call with each one's automaton
        masking its draws where it has not accepted (as `_adjusted` masks them; the top-k / top-p cut
        then on the masked distribution, as there). The graph's mask does not know the room left before
        `length`; where that would narrow it (near the end of a sample whose pattern still needs
        characters) the characters from there are drawn one per call (`_draw_controlled`)."""
        states = [s.state for s in streams]
        automaton = Automaton.of([None if s.ends_at is not None else s.request.pattern for s in streams],
                                 states, self.backend.vocab.size)
        drawn, after, log_p = self.backend.step(rows, numbers, options, scored, automaton)
        kept = self._follow(streams, drawn, 0, masked=True)
        if kept == len(drawn):
            return drawn, after, log_p
        rows = self.backend.advance(rows, drawn[:kept].T) if kept else rows
        rest, rows, rest_log_p = self._draw_controlled(rows, numbers[:, kept:], options, streams, scored,
                                                       offset=kept)
        drawn[kept:] = rest
        if scored:
            log_p[kept:] = rest_log_p
        return drawn, rows, log_p

    @staticmethod
    def _follow(streams: list[Stream], drawn: np.ndarray, offset: int, masked: bool) -> int:
        """How many characters drawn in one call [g, B] stand for every stream (Pattern.walk: a guess up
        to the first its pattern forbids, a masked draw up to where the room left narrows the mask); the
        streams' automata moved over those, and a stream that ends among them ended."""
        walks = [(s, s.request.pattern.walk(s.state, drawn[:, b], s.left - offset, masked))
                 for b, s in enumerate(streams) if s.ends_at is None]
        kept = min([at for _, (at, ends, _) in walks if not ends], default=len(drawn))
        for stream, (at, ends, states) in walks:
            stream.state = states[min(at, kept)]
            if ends and at < kept:
                stream.ends_at = offset + at
        return kept

    def _draw_controlled(self, rows: Rows, numbers: np.ndarray, options, streams: list[Stream], scored: bool,
                         offset: int = 0):
        """One character per model call: the logits, each stream's controls, the draw in numpy (the same
        rules and uniform numbers as the graph's), then the drawn characters read. `offset`: where in the
        chunk the first of these characters is."""
        k = numbers.shape[1]
        drawn = np.empty((k, len(streams)), np.int64)
        log_p = np.empty((k, len(streams), self.backend.vocab.size)) if scored else None
        for step in range(k):
            logits = self.backend.next_logits(rows)
            if scored:
                log_p[step] = log_softmax(logits)
            adjusted = np.stack([self._adjusted(z, s, offset + step)
                                 for z, s in zip(logits, streams, strict=True)])
            drawn[step] = draw_rows(np.exp(log_softmax(adjusted)), numbers[:, step], options)
            for stream, char in zip(streams, drawn[step], strict=True):
                pattern = stream.request.pattern
                if pattern is not None and stream.ends_at is None:
                    if not pattern.allowed(stream.state, stream.left - offset - step)[char]:
                        stream.ends_at = offset + step  # drawn where the pattern accepts, not one it allows
                    stream.state = pattern.table[stream.state, char]
                if stream.request.controls and stream.ends_at is None:
                    stream.drew(char)
            rows = self.backend.advance(rows, drawn[step][:, None])
        return drawn, rows, log_p

    @staticmethod
    def _adjusted(logits: np.ndarray, stream: Stream, step: int) -> np.ndarray:
        """A controlled stream's logits for its next draw: its controls, then its pattern's mask where the
        pattern has not accepted yet (where it has, the model's draw decides whether it goes on)."""
        request = stream.request
        z = request.controls.apply(logits, stream.counts, stream.recent) if request.controls else \
            np.array(logits, np.float64)
        pattern = request.pattern
        if pattern is not None and stream.ends_at is None and not pattern.accepting[stream.state]:
            z[~pattern.allowed(stream.state, stream.left - step)] = -np.inf
        return z

    def _choose(self, request: Request, streams: list[Stream]) -> None:
        """Each stream's choice, drawn exactly from the choices' probabilities after the prompt (each read
        character by character), to the power 1/temperature: the stream ends with it (its `pending` piece)."""
        rows, totals, steps = self._primed[request.ids.tobytes()], [], []
        for ids in request.choices:
            at, log_ps = rows, []
            for char in ids:
                log_ps.append(self.backend.next_log_probs(at)[0])
                at = self.backend.advance(at, np.array([[char]]))
            totals.append(sum(lp[c] for lp, c in zip(log_ps, ids, strict=True)))
            steps.append(np.stack(log_ps))
        for stream in streams:
            option = request.options[stream.index]
            noise = gumbel_noise(stream.rng.random((1, len(totals)), np.float32), [option.temperature])[0]
            pick = int(np.argmax(np.array(totals) + noise))  # Gumbel-max: the T-reweighted choice
            ids = request.choices[pick]
            if request.logprobs is not None:
                stream.scores = char_scores(self.backend.vocab, ids, steps[pick], request.logprobs)
            text = stream.decoder.feed(ids, end=True)
            stream.pending = Piece(stream, text, stream.scores[: len(text)])

    def drop(self, streams: Sequence[Stream]) -> None:
        """Take streams out of the batch (a client that went away, a failed model call)."""
        gone = {id(s) for s in streams}
        self._keep([id(s) not in gone for s in self.streams])

    def _keep(self, keep: list[bool]) -> None:
        if not all(keep):
            self.streams = [s for s, k in zip(self.streams, keep, strict=True) if k]
            self.rows = self.rows.take(np.array(keep, bool))

    def log_probs(self, ids: np.ndarray, first: int,
                  progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """log p of ids[first:], each given the characters before it (in this engine's mode)."""
        return self.backend.log_probs(ids, self.mode, first, progress)

    def prompt_scores(self, ids: np.ndarray, top: int) -> list[CharScore]:
        """The CharScore of each character of a prompt after its first (which nothing predicts)."""
        if len(ids) < 2:
            return []
        log_p = self.backend.log_distributions(ids, self.mode, 1)
        return char_scores(self.backend.vocab, ids[1:], log_p, top)

    def next_log_probs(self, ids: np.ndarray) -> np.ndarray:
        """log p [V] of the next character after `ids` (read from the start, in this engine's mode)."""
        return self.backend.next_log_probs(self.backend.start([ids], self.mode))[0]


def draws(backend: Backend, prompt: np.ndarray, options: Sequence[SamplingOptions], uniforms: np.ndarray,
          mode: str) -> np.ndarray:
    """Ids [k, B] that B streams draw after `prompt` from the given uniform numbers [B, k, V]: what checks
    of the draw (the graph's against numpy's, JavaScript's against Python's) compare."""
    return backend.step(backend.start([prompt], mode).repeat(len(options)), uniforms, options)[0]
