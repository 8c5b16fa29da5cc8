"""charsdk's own graph (model.onnx, built by train/graph.py): one onnxruntime call reads characters, keeps
the logits after each, and draws new ones inside the graph, many characters per call (one call per
character would cost more in onnxruntime overhead than the LSTM step itself).

Stateful mode carries each stream's LSTM state. Window mode predicts each character from the last maxlen
characters and a zero state: rather than rerunning maxlen LSTM steps per character, each stream keeps
maxlen staggered windows (state rows) advanced together; before character t, window t mod maxlen restarts
from zero, every window reads character t, and the one that started maxlen characters ago (or at the
start of the text) gives the next distribution. The same arithmetic as the book's loop, one batched step
per character. The graph takes one count of characters read (`start`) per call, so window streams that
have read different counts are stepped in separate calls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnxruntime as ort

from .constraints import Automaton
from .errors import ModelError
from .rows import Rows
from .sampling import SamplingOptions, log_softmax
from .vocab import Vocab

GRAPH_INPUTS = {"ids", "logits", "uniforms", "temperature", "top_k", "top_p", "use_filter", "window", "start"}
PATTERN_INPUTS = {"pattern_mask", "pattern_next", "pattern_state"}  # graphs built since 2026-12-03
SCORE_CHUNK = 4096  # characters read per call when scoring a text


class GraphBackend:
    modes = ("stateful", "window")
    draws_in_call = True  # step draws every character inside one model call

    def __init__(self, vocab: Vocab, session: ort.InferenceSession):
        self.vocab, self.session = vocab, session
        # a graph built since the pattern inputs: a pattern's streams are drawn masked inside the call
        self.masks_in_call = PATTERN_INPUTS <= {i.name for i in session.get_inputs()}
        self._no_pattern = Automaton.everything(vocab.size) if self.masks_in_call else None  # what it is fed
        self.state_names = [s.input for s in vocab.states]
        self._outputs = ["logits_out", *[s.output for s in vocab.states], "ids_out", "read_logits"]

    @classmethod
    def checked(cls, vocab: Vocab, session: ort.InferenceSession) -> GraphBackend:
        inputs = {i.name: i for i in session.get_inputs()}
        if set(inputs) - PATTERN_INPUTS != GRAPH_INPUTS | {s.input for s in vocab.states}:
            raise ModelError(f"{vocab.onnx_file} does not take the inputs this charsdk gives it "
                             "(an export by another charsdk version): load it with that version, or "
                             "re-export it")
        if inputs["logits"].shape[-1] != vocab.size:
            raise ModelError(
                f"vocab.json lists {vocab.size} characters but {vocab.onnx_file} has "
                f"{inputs['logits'].shape[-1]}: the files do not belong together; re-export the model")
        return cls(vocab, session)

    # -- the graph ----------------------------------------------------------------------------

    def zero_state(self, rows: int) -> dict[str, np.ndarray]:
        return {s.input: np.zeros((rows, s.size), np.float32) for s in self.vocab.states}

    def run(self, ids: np.ndarray, state: dict[str, np.ndarray], logits: np.ndarray | None = None,
            uniforms: np.ndarray | None = None, options: Sequence[SamplingOptions] | None = None,
            window: int = 0, start: int = 0, automaton: Automaton | None = None):
        """One call of model.onnx for B streams: read ids [B, T], then draw uniforms.shape[1] characters,
        each masked by its stream's state of `automaton` (None: every character allowed).

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
        if self._no_pattern is not None:
            feed.update((automaton or self._no_pattern).feed())
        logits, *new, drawn, read = self.session.run(self._outputs, feed)
        return logits, dict(zip(self.state_names, new, strict=True)), drawn, read

    # -- the engine's backend -----------------------------------------------------------------

    def empty(self, mode: str) -> Rows:
        return self._rows(np.zeros((0, self.vocab.size), np.float32), self.zero_state(0), mode,
                          np.zeros(0, np.int64))

    def _rows(self, logits, state, mode: str, read) -> Rows:
        """Rows from the graph's outputs: window mode's [B * maxlen, size] states as [B, maxlen, size]."""
        if mode == "stateful":
            return Rows({"logits": logits, **state})
        shaped = {s.input: state[s.input].reshape(len(logits), self.vocab.maxlen, s.size)
                  for s in self.vocab.states}
        return Rows({"logits": logits, **shaped, "read": np.broadcast_to(read, len(logits)).copy()})

    def _read_first(self, prompt: np.ndarray, mode: str) -> np.ndarray:
        """What a stream reads first: the prompt (window mode: its last maxlen characters); for an empty
        one in stateful mode the "no character" id (one zero input from the zero state)."""
        if mode == "window":
            return prompt[-self.vocab.maxlen:]
        return prompt if len(prompt) else np.array([self.vocab.no_char_id])

    def start(self, prompts: Sequence[np.ndarray], mode: str) -> Rows:
        """Every prompt read from a zero state, one call per length of what is read."""
        seeds = [self._read_first(p, mode) for p in prompts]
        order = sorted(range(len(seeds)), key=lambda i: len(seeds[i]))
        parts, done = [], 0
        while done < len(order):
            length = len(seeds[order[done]])
            group = [i for i in order[done:] if len(seeds[i]) == length]
            parts.append(self._start_group(np.stack([seeds[i] for i in group]), mode))
            done += len(group)
        return Rows.concat(parts).take(np.argsort(order))

    def _start_group(self, seeds: np.ndarray, mode: str) -> Rows:
        count, maxlen = len(seeds), self.vocab.maxlen
        if mode == "stateful":
            logits, state, _, _ = self.run(seeds, self.zero_state(count))
            return self._rows(logits, state, mode, 0)
        if seeds.shape[1] == 0:  # an empty prompt: every window still empty, the "no character" logits
            logits, _, _, _ = self.run(np.full((count, 1), self.vocab.no_char_id), self.zero_state(count))
            return self._rows(logits, self.zero_state(count * maxlen), mode, 0)
        logits, state, _, _ = self.run(seeds, self.zero_state(count * maxlen), window=maxlen)
        return self._rows(logits, state, mode, seeds.shape[1])

    def step(self, rows: Rows, uniforms: np.ndarray, options: Sequence[SamplingOptions],
             scored: bool = False,
             automaton: Automaton | None = None) -> tuple[np.ndarray, Rows, np.ndarray | None]:
        if "read" not in rows.arrays:
            state = {k: rows[k] for k in self.state_names}
            logits, after, drawn, _ = self.run(np.zeros((len(rows), 0), np.int64), state, rows["logits"],
                                               uniforms, options, automaton=automaton)
            return drawn, Rows({"logits": logits, **after}), self._drawn_from(rows, state, drawn, 0, 0) \
                if scored else None
        reads = rows["read"]
        if (reads == reads[0]).all():
            return self._step_window(rows, uniforms, options, scored, automaton)
        k = uniforms.shape[1]
        drawn, after = np.empty((k, len(rows)), np.int64), rows.take(slice(None))
        log_p = np.empty((k, len(rows), self.vocab.size)) if scored else None
        for read in np.unique(reads):
            index = np.flatnonzero(reads == read)
            part_drawn, part, part_log_p = self._step_window(rows.take(index), uniforms[index],
                                                             [options[i] for i in index], scored,
                                                             automaton and automaton.take(index))
            drawn[:, index] = part_drawn
            after.put(index, part)
            if scored:
                log_p[:, index] = part_log_p
        return drawn, after, log_p

    def _step_window(self, rows: Rows, uniforms: np.ndarray, options, scored: bool,
                     automaton: Automaton | None = None):
        """Window streams that have all read the same count of characters: one call."""
        maxlen, read = self.vocab.maxlen, int(rows["read"][0])
        state = {k: rows[k].reshape(len(rows) * maxlen, -1) for k in self.state_names}
        logits, after, drawn, _ = self.run(np.zeros((len(rows), 0), np.int64), state, rows["logits"],
                                           uniforms, options, maxlen, read, automaton)
        log_p = self._drawn_from(rows, state, drawn, maxlen, read) if scored else None
        return drawn, self._rows(logits, after, "window", read + uniforms.shape[1]), log_p

    def _drawn_from(self, rows: Rows, state, drawn: np.ndarray, window: int, read: int) -> np.ndarray:
        """The log-probabilities [k, B, V] each drawn character was drawn from: the rows' own logits for the
        first, then those after reading the drawn ones again from the same state (one more call, made only
        when a request asks for scores)."""
        _, _, _, after = self.run(drawn[:-1].T, state, rows["logits"], window=window, start=read)
        return log_softmax(np.concatenate([rows["logits"][None], after]))

    def next_log_probs(self, rows: Rows) -> np.ndarray:
        return log_softmax(rows["logits"])

    def next_logits(self, rows: Rows) -> np.ndarray:
        return rows["logits"]

    def advance(self, rows: Rows, ids: np.ndarray) -> Rows:
        if "read" not in rows.arrays:
            logits, state, _, _ = self.run(ids, {k: rows[k] for k in self.state_names})
            return Rows({"logits": logits, **state})
        maxlen, after = self.vocab.maxlen, rows.take(slice(None))
        for read in np.unique(rows["read"]):  # one call per count of characters read (see step)
            index = np.flatnonzero(rows["read"] == read)
            state = {k: rows[k][index].reshape(len(index) * maxlen, -1) for k in self.state_names}
            logits, state, _, _ = self.run(ids[index], state, window=maxlen, start=int(read))
            after.put(index, self._rows(logits, state, "window", read + ids.shape[1]))
        return after

    def _read(self, ids: np.ndarray, mode: str, progress: Callable[[int, int], None] | None):
        """(positions, log-probabilities [n, V]) of the characters at those positions given the ones before,
        SCORE_CHUNK characters read per call (the logits after character t score character t + 1)."""
        window = self.vocab.maxlen if mode == "window" else 0
        state, read = self.zero_state(window or 1), 0
        while read < len(ids) - 1:
            chunk = ids[read : min(read + SCORE_CHUNK, len(ids) - 1)]
            _, state, _, logits = self.run(chunk[None], state, window=window, start=read)
            yield np.arange(read + 1, read + 1 + len(chunk)), log_softmax(logits[:, 0])
            read += len(chunk)
            if progress:
                progress(read + 1, len(ids))

    def log_probs(self, ids: np.ndarray, mode: str, first: int,
                  progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        out = np.empty(max(len(ids) - first, 0))
        for targets, log_p in self._read(ids, mode, progress):
            scored = targets >= first
            out[targets[scored] - first] = log_p[scored, ids[targets[scored]]]
        return out

    def log_distributions(self, ids: np.ndarray, mode: str, first: int) -> np.ndarray:
        parts = [log_p[targets >= first] for targets, log_p in self._read(ids, mode, None)]
        return np.concatenate(parts) if parts else np.zeros((0, self.vocab.size))
