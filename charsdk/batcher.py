"""Cross-request batching: the active streams of all requests advance together in one engine, one model
call per chunk for a whole batch (`Batchers`: one batch per core, each on its own thread).

A step for many streams costs little more than a step for one (book model: 108,000 chars/s for one
stream, 1,200,000 for 256 together), so a server should not run each request on its own. A batcher's
engine (charsdk.engine, the one `Generator.generate` runs) keeps the batch; new requests join it at
the next chunk and a finished or cancelled one leaves. So a request with a seed gets exactly the text of
`Generator.generate(..., seed=...)`, alone or under load.

Chunks are sized to take about `chunk_seconds`: long enough that the per-call overhead is paid
rarely, short enough that a request arriving mid-chunk starts soon. A batcher runs in its own
thread (onnxruntime releases the GIL); `emit` callbacks carry each chunk's text back.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .engine import CharScore, Engine, Request, Stream
from .generator import Generator

MAX_CHUNK = 256  # characters per call at most, whatever the speed
MAX_UNREAD = 4  # chunks emitted to a request and not yet taken by it: beyond, its streams pause
# (stream index in its request, new text, finish reason or None, the new text's scores: logprobs asked)
Event = tuple[int, str, str | None, list[CharScore]]


@dataclass(eq=False)
class Job:
    """One request's streams. `emit(events)` is called from the batcher's thread after each chunk with
    the streams that have new text or have finished; `emit_error(message)` if the model call fails.
    The reader calls `taken()` for each emitted list it has consumed: a request whose reader falls
    MAX_UNREAD lists behind (a client that does not read) pauses instead of piling up text."""

    request: Request
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

    def send(self, events: list[Event]) -> None:
        self.emitted += 1
        self.emit(events)


class Batcher:
    def __init__(self, generator: Generator, chunk_seconds: float = 0.05,
                 on_chunk: Callable[[int], None] | None = None):
        self.engine = Engine(generator.backend)  # the model's default mode
        self.chunk_seconds = chunk_seconds
        self.on_chunk = on_chunk  # told each model call's batch size (the server's metrics)
        self._incoming: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.wake = threading.Event()  # a new request, a reader that caught up, a cancel
        self._queued = 0  # streams submitted and not yet in the batch
        self._queued_lock = threading.Lock()
        # seconds per character per row in the last call: sizes the next chunk. Per row, so that a batch
        # that grows is first given short chunks (a row costs less in a larger batch, never more)
        self._row_step_s = 1e-4
        self._thread = threading.Thread(target=self._loop, name="charsdk-batcher", daemon=True)
        self._thread.start()

    @property
    def mode(self) -> str:
        return self.engine.mode

    @property
    def streams(self) -> int:
        """Rows in the batch now (for /health)."""
        return len(self.engine.streams)

    @property
    def paused(self) -> int:
        """Rows waiting for their reader (for /health)."""
        return sum(s.owner.paused for s in list(self.engine.streams))

    @property
    def load(self) -> int:
        """Streams in the batch or about to join it."""
        return len(self.engine.streams) + self._queued

    def submit(self, job: Job) -> Job:
        if job.request.mode != self.mode:
            raise ValueError(f"this batcher runs {self.mode} streams, not {job.request.mode}")
        job.wake = self.wake
        with self._queued_lock:
            self._queued += job.request.streams
        self._incoming.put(job)
        self.wake.set()
        return job

    def close(self) -> None:
        self._incoming.put(None)
        self.wake.set()
        self._thread.join(timeout=10)

    # -- the batcher's thread -----------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            self.wake.clear()
            arrived = []
            try:
                while True:
                    arrived.append(self._incoming.get_nowait())
            except queue.Empty:
                pass
            if None in arrived:
                return
            self._join([job for job in arrived if not job.cancelled])
            with self._queued_lock:
                self._queued -= sum(job.request.streams for job in arrived)
            self.engine.drop([s for s in self.engine.streams if s.owner.cancelled])
            running = [s for s in self.engine.streams if not s.owner.paused]
            if running:
                self._chunk(running)
            else:  # nothing to run, or every reader behind: wait for one of them or a new request
                self.wake.wait()

    def _join(self, jobs: list[Job]) -> None:
        """Start the new requests' streams in the engine (their prompts read together); if that fails,
        each alone, so that a request the model fails on does not fail the others."""
        try:
            added = self.engine.add([job.request for job in jobs], jobs)
        except Exception:
            added = []
            for job in jobs:
                try:
                    added += self.engine.add([job.request], [job])
                except Exception as exc:  # onnxruntime failing on this request must not stop the others
                    job.emit_error(f"the model failed on this request: {exc}")
        for streams in added:
            if streams and streams[0].finish_reason:  # finished when added: max_tokens 0, a choice made
                streams[0].owner.send([(s.index, s.pending.text if s.pending else "", s.finish_reason,
                                        s.pending.scores if s.pending else []) for s in streams])

    def _chunk(self, running: list[Stream]) -> None:
        """One model call for the streams that are not paused, then each request's new text."""
        lefts = [s.left for s in running]
        k = int(min(max(1, self.chunk_seconds / (self._row_step_s * len(running))), MAX_CHUNK, max(lefts)))
        ending = [left for left in lefts if left < k]
        if ending and min(ending) >= k // 2:  # end the chunk where a stream ends: no steps drawn for naught
            k = min(ending)
        try:
            stepped = self.engine.step(k, running)
        except Exception as exc:
            failed = {s.owner for s in running}
            for job in failed:
                job.emit_error(f"the model failed on this request: {exc}")
            self.engine.drop([s for s in self.engine.streams if s.owner in failed])
            return
        self._row_step_s = self.engine.call_s / (k * len(running))
        if self.on_chunk:
            self.on_chunk(len(running))
        events: dict[Job, list[Event]] = {}
        for stream, piece, scores in stepped:
            events.setdefault(stream.owner, []).append((stream.index, piece, stream.finish_reason, scores))
        for job, job_events in events.items():
            job.send(job_events)


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
