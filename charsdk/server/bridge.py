"""The stream bridge: one completion's streams in a batcher's thread, their text carried to the request's
event loop, and answered whole (JSON) or as server-sent events (framed by sse-starlette)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, Callable

from sse_starlette.sse import ServerSentEvent
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..batcher import Batchers, Job
from .completion import Completion
from .errors import APIError
from .metrics import Metrics
from .schema import Choice
from .schema import Completion as CompletionAnswer

_GONE = object()  # put in a request's event queue when its client disconnects


class ClientGone(Exception):
    pass


def event(data: dict) -> bytes:
    return ServerSentEvent(json.dumps(data, ensure_ascii=False), sep="\n").encode()


DONE = ServerSentEvent("[DONE]", sep="\n").encode()


def choice(index: int, text: str, finish: str | None) -> Choice:
    return {"text": text, "index": index, "logprobs": None, "finish_reason": finish}


class Run:
    """One completion's streams in the batches: their text as it arrives, and one end however the request
    ends (its streams leave the batch; `on_end` frees its slots)."""

    def __init__(self, completion: Completion, batchers: Batchers, request: Request, head: dict,
                 metrics: Metrics, on_end: Callable[[], None], started: float):
        self.completion, self.streams, self.metrics = completion, completion.streams, metrics
        self.head, self.on_end, self.started, self.first_sent = head, on_end, started, False
        self.per_prompt = self.streams // len(completion.prompts)
        self.prompt_chars = sum(len(p) for p in completion.prompts) * self.per_prompt
        self.events: asyncio.Queue = asyncio.Queue()
        self.ended = False
        loop = asyncio.get_running_loop()
        self.jobs, base = [], 0
        for engine_request in completion.requests:
            self.jobs.append(batchers.submit(
                Job(engine_request, self._emitter(loop, len(self.jobs), base), self._error_emitter(loop))))
            base += engine_request.streams
        self.watcher = asyncio.ensure_future(self._watch_disconnect(request))

    def _emitter(self, loop, job_index: int, base: int):
        def emit(batch):
            with contextlib.suppress(RuntimeError):  # the event loop has gone (shutdown)
                loop.call_soon_threadsafe(self.events.put_nowait,
                                          (job_index, [(base + i, t, f) for i, t, f in batch]))
        return emit

    def _error_emitter(self, loop):
        def emit_error(message: str):
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.events.put_nowait, message)
        return emit_error

    async def _watch_disconnect(self, request: Request):
        while (await request.receive())["type"] != "http.disconnect":
            pass
        self.events.put_nowait(_GONE)

    async def next_events(self) -> list[tuple[int, str, str | None]]:
        """Every (choice index, new text, finish reason) that has arrived, merged per choice: a
        reader that fell behind sends one event for several chunks. The batcher may go on."""
        items = [await self.events.get()]
        while not self.events.empty():
            items.append(self.events.get_nowait())
        merged: dict[int, tuple[int, str, str | None]] = {}
        for item in items:
            if item is _GONE:
                raise ClientGone
            if isinstance(item, str):
                raise APIError(500, item, kind="server_error")
            job_index, batch = item
            self.jobs[job_index].taken()
            for index, text, finish in batch:
                _, before, _ = merged.get(index, (index, "", None))
                merged[index] = (index, before + text, finish)
        self.count(sum(len(text) for _, text, _ in merged.values()))
        return list(merged.values())

    def count(self, chars: int) -> None:
        """Characters on their way to the client (metrics: the total, and the time to the first)."""
        if chars and not self.first_sent:
            self.first_sent = True
            self.metrics.first_character.observe(time.perf_counter() - self.started)
        self.metrics.characters.inc(chars)

    def end(self):
        self.watcher.cancel()
        for job in self.jobs:
            job.cancel()
        if not self.ended:
            self.ended = True
            self.on_end()

    def usage(self, completion_chars: int) -> dict:
        return {"prompt_tokens": self.prompt_chars, "completion_tokens": completion_chars,
                "total_tokens": self.prompt_chars + completion_chars}

    def prompt_of(self, index: int) -> str:
        return self.completion.prompts[index // self.per_prompt]

    async def sse(self) -> AsyncGenerator[bytes, None]:
        """The stream=true answer: a chunk event per batch of new text, then [DONE]."""
        try:
            produced, left = 0, self.streams
            if self.completion.echo:
                yield event({**self.head, "choices": [choice(i, self.prompt_of(i), None)
                                                      for i in range(self.streams)]})
            while left:
                try:
                    batch = await self.next_events()
                except APIError as exc:
                    yield event({"error": {**exc.body()["error"], "param": None}})
                    return
                left -= sum(1 for _, _, f in batch if f)
                produced += sum(len(t) for _, t, _ in batch)
                yield event({**self.head, "choices": [choice(*e) for e in batch]})
            if self.completion.include_usage:
                yield event({**self.head, "choices": [], "usage": self.usage(produced)})
            yield DONE
        except ClientGone:
            return

    async def whole(self) -> Response:
        """The stream=false answer: every choice's whole text in one JSON body."""
        texts, finishes, left = [""] * self.streams, [None] * self.streams, self.streams
        try:
            while left:
                for index, text, finish in await self.next_events():
                    texts[index] += text
                    finishes[index] = finish or finishes[index]
                    left -= finish is not None
        except ClientGone:
            return Response(status_code=499)  # no one reads this
        finally:
            self.end()
        prefix = [self.prompt_of(i) if self.completion.echo else "" for i in range(self.streams)]
        choices = [choice(i, prefix[i] + t, f) for i, (t, f) in enumerate(zip(texts, finishes, strict=True))]
        usage = self.usage(sum(map(len, texts)))
        answer: CompletionAnswer = {**self.head, "choices": choices, "usage": usage}
        return JSONResponse(answer)


class EventStream(Response):
    """Server-sent events from an async generator of encoded events, written straight to the ASGI send;
    `on_close()` when it ends, however it ends. sse-starlette's EventSourceResponse (as Starlette's
    StreamingResponse) would also watch for a disconnect, with a task group per response: a completion
    already has its own watcher."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncGenerator[bytes, None], on_close: Callable[[], None]):
        self.events, self.on_close, self.status_code, self.background = events, on_close, 200, None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope, receive, send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for data in self.events:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await self.events.aclose()
            self.on_close()
