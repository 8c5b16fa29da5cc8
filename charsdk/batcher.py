"""Cross-request batching: the active streams of all requests advance together, one model call per
chunk for a whole batch (`Batchers`: one batch per core, each on its own thread).

A step for many streams costs little more than a step for one (book model: 108,000 chars/s for one
stream, 1,200,000 for 256 together), so a server should not run each request on its own. The batcher
keeps one batch of rows (logits and LSTM state per stream); new requests are primed on their prompts
(one call for all prompts of a length) and join at the next chunk; a finished or cancelled one leaves.
It drives the Generator's own code (`run`, `_stateful_seed`, `_uniforms`, `TextDecoder`), so a
request with a seed gets exactly the text of `Generator.generate(..., seed=...)`, alone or under load:
each stream draws its own uniform numbers, and int8 rows are computed independently.

Chunks are sized to take about `chunk_seconds`: long enough that the per-call overhead is paid
rarely, short enough that a request arriving mid-chunk starts soon. A batcher runs in its own
thread (onnxruntime releases the GIL); `emit` callbacks carry each chunk's text back.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .generator import Generator, Plan, TextDecoder

MAX_CHUNK = 256  # characters per call at most, whatever the speed
MAX_UNREAD = 4  # chunks emitted to a request and not yet taken by it: beyond, its streams pause
PRIMED_CACHE = 1024  # prompts whose state after reading them is kept (least recently used dropped)
Event = tuple[int, str, str | None]  # (stream index in its request, new text, finish reason or None)


@dataclass(eq=False)
class Job:
    """One request's streams. `emit(events)` is called from the batcher's thread after each chunk with
    the streams that have new text or have finished; `emit_error(message)` if the model call fails.
    The reader calls `taken()` for each emitted list it has consumed: a request whose reader falls
    MAX_UNREAD lists behind (a client that does not read) pauses instead of piling up text."""

    plan: Plan
    emit: Callable[[list[Event]], None]
    emit_error: Callable[[str], None]
    cancelled: bool = False  # set by the reader; the batcher drops the job's streams at the next chunk
    emitted: int = 0  # written by the batcher's thread only
    consumed: int = 0  # written by the reader only
    wake: threading.Event | None = None  # the batcher's, set by submit

    def cancel(self) -> None:
        """Leave the batch at the next chunk (a client that went away)."""
        self.cancelled = True
        self.wake.set()

    def taken(self) -> None:
        self.consumed += 1
        self.wake.set()

    @property
    def paused(self) -> bool:
        return self.emitted - self.consumed >= MAX_UNREAD


@dataclass(eq=False)
class _Row:
    job: Job
    index: int
    rng: np.random.Generator
    decoder: TextDecoder


class Batcher:
    def __init__(self, generator: Generator, chunk_seconds: float = 0.05,
                 on_chunk: Callable[[int], None] | None = None):
        self.generator = generator
        self.chunk_seconds = chunk_seconds
        self.on_chunk = on_chunk  # told each model call's batch size (the server's metrics)
        self._incoming: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._wake = threading.Event()  # a new request, a reader that caught up, a cancel
        self._rows: list[_Row] = []
        self._queued = 0  # streams submitted and not yet in the batch
        self._queued_lock = threading.Lock()
        self._logits = np.zeros((0, generator.vocab.size), np.float32)
        self._state = generator._zero_state(0)
        self._primed: OrderedDict[bytes, tuple[np.ndarray, dict[str, np.ndarray]]] = OrderedDict()
        # seconds per character per row in the last call: sizes the next chunk. Per row, so that a batch
        # that grows is first given short chunks (a row costs less in a larger batch, never more)
        self._row_step_s = 1e-4
        self._thread = threading.Thread(target=self._loop, name="charsdk-batcher", daemon=True)
        self._thread.start()

    @property
    def streams(self) -> int:
        """Rows in the batch now (for /health)."""
        return len(self._rows)

    @property
    def paused(self) -> int:
        """Rows waiting for their reader (for /health)."""
        return sum(r.job.paused for r in list(self._rows))

    @property
    def load(self) -> int:
        """Streams in the batch or about to join it."""
        return len(self._rows) + self._queued

    def submit(self, job: Job) -> Job:
        if job.plan.mode != "stateful":
            raise ValueError("the batcher runs stateful streams only")
        job.wake = self._wake
        with self._queued_lock:
            self._queued += len(job.plan.options)
        self._incoming.put(job)
        self._wake.set()
        return job

    def close(self) -> None:
        self._incoming.put(None)
        self._wake.set()
        self._thread.join(timeout=10)

    # -- the batcher's thread -----------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            self._wake.clear()
            arrived = []
            try:
                while True:
                    arrived.append(self._incoming.get_nowait())
            except queue.Empty:
                pass
            if None in arrived:
                return
            self._join(arrived)
            with self._queued_lock:
                self._queued -= sum(len(job.plan.options) for job in arrived)
            self._keep([not r.job.cancelled for r in self._rows])
            running = [b for b, r in enumerate(self._rows) if not r.job.paused]
            if running:
                self._chunk(running)
            else:  # nothing to run, or every reader behind: wait for one of them or a new request
                self._wake.wait()

    def _join(self, jobs: list[Job]) -> None:
        """Prime the new requests on their prompts and append their streams to the batch. A prompt read
        recently is not read again (an LSTM's state after a prompt is all it needs: PRIMED_CACHE of
        them are kept); the others are read in one model call per prompt length."""
        waiting: dict[bytes, list[Job]] = {}
        seeds: dict[bytes, np.ndarray] = {}
        for job in jobs:
            if job.cancelled:
                continue
            if job.plan.length == 0:
                job.emitted += 1
                job.emit([(i, "", "length") for i in range(len(job.plan.options))])
                continue
            seed = self.generator._stateful_seed(job.plan.ids)
            key = seed.tobytes()
            waiting.setdefault(key, []).append(job)
            seeds[key] = seed
        by_length: dict[int, list[bytes]] = {}
        for key in waiting:
            if key not in self._primed:
                by_length.setdefault(len(seeds[key]), []).append(key)
        for keys in by_length.values():
            try:
                logits, state, _, _ = self.generator.run(np.stack([seeds[k] for k in keys]),
                                                         self.generator._zero_state(len(keys)))
            except Exception as exc:  # onnxruntime failing on these requests must not stop the others
                for key in keys:
                    for job in waiting.pop(key):
                        job.emit_error(f"the model failed on this request: {exc}")
                continue
            for i, key in enumerate(keys):
                self._primed[key] = (logits[i : i + 1], {k: v[i : i + 1] for k, v in state.items()})
        codes = self.generator._codes
        logits, states = [self._logits], {k: [v] for k, v in self._state.items()}
        for key, key_jobs in waiting.items():
            self._primed.move_to_end(key)
            primed_logits, primed_state = self._primed[key]
            for job in key_jobs:
                copies = len(job.plan.options)  # the prompt's state, once per stream
                logits.append(np.repeat(primed_logits, copies, 0))
                for k, v in primed_state.items():
                    states[k].append(np.repeat(v, copies, 0))
                self._rows += [_Row(job, i, rng, TextDecoder(codes, job.plan.length, job.plan.stop))
                               for i, rng in enumerate(job.plan.rngs)]
        while len(self._primed) > PRIMED_CACHE:
            self._primed.popitem(last=False)
        self._logits = np.concatenate(logits)
        self._state = {k: np.concatenate(v) for k, v in states.items()}

    def _keep(self, keep: list[bool]) -> None:
        if all(keep):
            return
        self._rows = [r for r, k in zip(self._rows, keep, strict=True) if k]
        self._logits = self._logits[keep]
        self._state = {k: v[keep] for k, v in self._state.items()}

    def _chunk(self, running: list[int]) -> None:
        """One model call for the rows that are not paused, then each request's new text."""
        rows = [self._rows[b] for b in running]
        every = len(running) == len(self._rows)
        select = slice(None) if every else np.array(running)
        lefts = [r.decoder.length - r.decoder.drawn for r in rows]
        k = int(min(max(1, self.chunk_seconds / (self._row_step_s * len(rows))), MAX_CHUNK, max(lefts)))
        ending = [left for left in lefts if left < k]
        if ending and min(ending) >= k // 2:  # end the chunk where a stream ends: no steps drawn for naught
            k = min(ending)
        uniforms = self.generator._uniforms([r.rng for r in rows], k)
        start = time.perf_counter()
        try:
            logits, state, drawn, _ = self.generator.run(
                np.zeros((len(rows), 0), np.int64), {name: v[select] for name, v in self._state.items()},
                self._logits[select], uniforms, [r.job.plan.options[r.index] for r in rows])
        except Exception as exc:
            failed = {r.job for r in rows}
            for job in failed:
                job.emit_error(f"the model failed on this request: {exc}")
            self._keep([r.job not in failed for r in self._rows])
            return
        if every:
            self._logits, self._state = logits, state
        else:
            self._logits[select] = logits
            for name, value in state.items():
                self._state[name][select] = value
        self._row_step_s = (time.perf_counter() - start) / (k * len(rows))
        if self.on_chunk:
            self.on_chunk(len(rows))
        events: dict[Job, list[Event]] = {}
        for b, row in enumerate(rows):
            piece = row.decoder.feed(drawn[:, b])
            if piece or row.decoder.finish_reason:
                events.setdefault(row.job, []).append((row.index, piece, row.decoder.finish_reason))
        for job, job_events in events.items():
            job.emitted += 1
            job.emit(job_events)
        self._keep([r.decoder.finish_reason is None for r in self._rows])


class Batchers:
    """`count` batchers, each with its own batch and its own thread: a new request joins the one with
    the fewest streams. Run with one onnxruntime thread per model call, two batchers on two cores beat
    one batch on two threads under a server's load: a thread that the HTTP side holds up stalls only
    its own batch, not every kernel of a shared one (default model, 256 streams, another thread busy
    60% of a core: 271,000 chars/s against 215,000)."""

    def __init__(self, generator: Generator, chunk_seconds: float = 0.05, count: int = 1,
                 on_chunk: Callable[[int], None] | None = None):
        self.batchers = [Batcher(generator, chunk_seconds, on_chunk) for _ in range(count)]

    @property
    def streams(self) -> int:
        return sum(b.streams for b in self.batchers)

    @property
    def paused(self) -> int:
        return sum(b.paused for b in self.batchers)

    def submit(self, job: Job) -> Job:
        return min(self.batchers, key=lambda b: b.load).submit(job)

    def close(self) -> None:
        for batcher in self.batchers:
            batcher.close()
