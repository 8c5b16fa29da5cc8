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
from ..engine import CharScore
from ..generator import Generator
from .completion import Completion
from .errors import APIError
from .metrics import Metrics
from .schema import Choice, Logprobs
from .schema import Completion as CompletionAnswer

_GONE = object()  # put in a request's event queue when its client disconnects


class ClientGone(Exception):
    pass


def event(data: dict) -> bytes:
    return ServerSentEvent(json.dumps(data, ensure_ascii=False), sep="\n").encode()


DONE = ServerSentEvent("[DONE]", sep="\n").encode()


LOGPROB_FLOOR = -9999.0  # what -inf is sent as (JSON has no infinity), as vLLM sends it


def choice(index: int, text: str, finish: str | None, logprobs: Logprobs | None = None) -> Choice:
    return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish}


def logprobs_of(scores: list[CharScore], offset: int, first_unscored: str | None = None) -> Logprobs:
    """OpenAI's logprobs of characters that start at `offset` in the choice's text; an echoed prompt's
    first character (`first_unscored`), which nothing predicts, with nulls."""
    head = [] if first_unscored is None else [first_unscored]
    nulls = [None] * len(head)
    return {"tokens": head + [s.char for s in scores],
            "token_logprobs": nulls + [max(s.logprob, LOGPROB_FLOOR) for s in scores],
            "top_logprobs": nulls + [{c: max(p, LOGPROB_FLOOR) for c, p in s.top} for s in scores],
            "text_offset": list(range(offset, offset + len(head) + len(scores)))}


def joined(a: Logprobs, b: Logprobs) -> Logprobs:
    return {key: a[key] + b[key] for key in a}


class Run:
    """One completion's streams in the batches: their text as it arrives, and one end however the request
    ends (its streams leave the batch; `on_end` frees its slots)."""

    def __init__(self, completion: Completion, generator: Generator, batchers: Batchers, request: Request,
                 head: dict, metrics: Metrics, on_end: Callable[[], None], started: float):
        self.completion, self.streams, self.metrics = completion, completion.streams, metrics
        self.generator, self.echoed = generator, None
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
                                          (job_index, [(base + i, t, f, s) for i, t, f, s in batch]))
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

    async def next_events(self) -> list[tuple[int, str, str | None, list[CharScore]]]:
        """Every (choice index, new text, finish reason, its scores) that has arrived, merged per choice: a
        reader that fell behind sends one event for several chunks. The batcher may go on."""
        items = [await self.events.get()]
        while not self.events.empty():
            items.append(self.events.get_nowait())
        merged: dict[int, tuple[int, str, str | None, list[CharScore]]] = {}
        for item in items:
            if item is _GONE:
                raise ClientGone
            if isinstance(item, str):
                raise APIError(500, item, kind="server_error")
            job_index, batch = item
            self.jobs[job_index].taken()
            for index, text, finish, scores in batch:
                _, before, _, scored = merged.get(index, (index, "", None, []))
                merged[index] = (index, before + text, finish, scored + scores)
        self.count(sum(len(text) for _, text, _, _ in merged.values()))
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

    async def echoes(self) -> list[tuple[str, Logprobs | None]]:
        """Each choice's echoed prompt and (logprobs asked) its scores: the prompt as the model reads it,
        each character after the first scored as `Generator.evaluate` scores it (read in a worker thread,
        once per prompt)."""
        if self.completion.logprobs is None:
            return [(self.prompt_of(i), None) for i in range(self.streams)]
        if self.echoed is None:
            self.echoed = await asyncio.gather(*(asyncio.to_thread(self.generator.prompt_scores, r)
                                                 for r in self.completion.requests))
        out = []
        for i in range(self.streams):
            prompt = i // self.per_prompt
            request, scores = self.completion.requests[prompt], self.echoed[prompt]
            text = self.generator.vocab.decode(request.ids)
            out.append((text, logprobs_of(scores, 0, text[:1]) if text else logprobs_of([], 0)))
        return out

    def scored(self, scores: list[CharScore], offset: int) -> Logprobs | None:
        return None if self.completion.logprobs is None else logprobs_of(scores, offset)

    def told(self, answer: Choice, text: str, finish: str | None) -> Choice:
        """An items request's choice, once finished, with in_training: whether its text is a line of the
        training list (null for an incomplete item, or a model without a record of them)."""
        if self.completion.items and finish is not None:
            record = self.generator.training_items
            answer["in_training"] = None if finish != "stop" or record is None else text in record
        return answer

    async def sse(self) -> AsyncGenerator[bytes, None]:
        """The stream=true answer: a chunk event per batch of new text, then [DONE]."""
        try:
            produced, left, offsets, texts = 0, self.streams, [0] * self.streams, [""] * self.streams
            if self.completion.echo:
                echoes = await self.echoes()
                offsets = [len(text) for text, _ in echoes]
                yield event({**self.head, "choices": [choice(i, text, None, scores)
                                                      for i, (text, scores) in enumerate(echoes)]})
            while left:
                try:
                    batch = await self.next_events()
                except APIError as exc:
                    yield event({"error": {**exc.body()["error"], "param": None}})
                    return
                left -= sum(1 for _, _, f, _ in batch if f)
                produced += sum(len(t) for _, t, _, _ in batch)
                for i, t, _, _ in batch:
                    texts[i] += t
                choices = [self.told(choice(i, t, f, self.scored(s, offsets[i])), texts[i], f)
                           for i, t, f, s in batch]
                for i, t, _, _ in batch:
                    offsets[i] += len(t)
                yield event({**self.head, "choices": choices})
            if self.completion.include_usage:
                yield event({**self.head, "choices": [], "usage": self.usage(produced)})
            yield DONE
        except ClientGone:
            return

    async def whole(self) -> Response:
        """The stream=false answer: every choice's whole text in one JSON body."""
        texts, finishes, left = [""] * self.streams, [None] * self.streams, self.streams
        scores = [[] for _ in range(self.streams)]
        try:
            echoes = await self.echoes() if self.completion.echo else [("", None)] * self.streams
            while left:
                for index, text, finish, scored in await self.next_events():
                    texts[index] += text
                    scores[index] += scored
                    finishes[index] = finish or finishes[index]
                    left -= finish is not None
        except ClientGone:
            return Response(status_code=499)  # no one reads this
        finally:
            self.end()
        choices = []
        for i, ((prefix, echoed), text, finish) in enumerate(zip(echoes, texts, finishes, strict=True)):
            drawn = self.scored(scores[i], len(prefix))
            logprobs = joined(echoed, drawn) if echoed and drawn else drawn
            choices.append(self.told(choice(i, prefix + text, finish, logprobs), text, finish))
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
