"""`charsdk serve`: the completions API (as llama.cpp's server, vLLM and TGI speak it) over HTTP.

Every request's streams join a batch (charsdk.batcher, one batch per core): one model call per chunk
for all the streams of a batch.
Starlette routes and validates, uvicorn speaks HTTP. A request is checked field by field (400 naming
the field), then waits for stream slots (at most `max_streams` generating, at most `max_waiting`
requests waiting, each at most `max_wait_s`: then 429 or 503 with Retry-After), then streams
server-sent events or answers once. A client that goes away frees its slots at once and its streams
leave the batch at the next chunk. The server keeps nothing between requests: run as many replicas
as you like behind any load balancer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import json
import mimetypes
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .batcher import Batchers, Job
from .errors import InputError, ModelError
from .generator import Generator, Plan
from .metrics import Metrics

UNSUPPORTED = {"logprobs": None, "suffix": None, "best_of": 1, "logit_bias": None,
               "presence_penalty": 0, "frequency_penalty": 0}  # fields taken only at these values


@dataclass(frozen=True)
class Limits:
    max_streams: int = 256  # streams generating at once (a request with n=4 takes 4)
    max_waiting: int = 256  # requests waiting for free streams; beyond: 429
    max_wait_s: float = 5.0  # how long a request waits for free streams; then: 503
    max_prompt_chars: int = 20_000  # characters per prompt
    max_tokens: int = 100_000  # characters per completion (max_tokens)
    retry_after_s: int = 1  # the Retry-After of a 429 or 503
    request_timeout_s: float = 10.0  # a request's headers, then its body, must each arrive within this: 408


class APIError(Exception):
    """An error answer in the API's JSON form: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 kind: str = "invalid_request_error", code: str | None = None,
                 retry_after: int | None = None):
        super().__init__(message)
        self.status, self.param, self.kind, self.code = status, param, kind, code
        self.retry_after = retry_after

    def response(self) -> JSONResponse:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else None
        body = {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, self.status, headers=headers)


class Slots:
    """Admission: streams are granted first come, first served; a request waits for its streams
    (bounded in count and in time) and gives them back when it ends, however it ends."""

    def __init__(self, limits: Limits):
        self.limits, self.free = limits, limits.max_streams
        self._waiting: deque[tuple[int, asyncio.Future]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def acquire(self, n: int) -> None:
        limits = self.limits
        if n > limits.max_streams:
            raise APIError(400, f"this request asks for {n} streams (n times the prompts); this server "
                                f"runs at most {limits.max_streams} at once", "n")
        if not self._waiting and self.free >= n:
            self.free -= n
            return
        if len(self._waiting) >= limits.max_waiting:
            raise APIError(429, f"too many requests: {len(self._waiting)} are already waiting for a free "
                                "stream; retry later", kind="rate_limit_exceeded",
                           retry_after=limits.retry_after_s)
        entry = (n, asyncio.get_running_loop().create_future())
        self._waiting.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(entry[1]), limits.max_wait_s)
        except (TimeoutError, asyncio.CancelledError) as exc:
            if entry in self._waiting:
                self._waiting.remove(entry)
            elif entry[1].done():  # granted just as the wait ended: give the streams back
                self.release(n)
            if isinstance(exc, TimeoutError):
                raise APIError(503, f"the server is busy: all {limits.max_streams} streams stayed in use for "
                                    f"{limits.max_wait_s:g} s; retry later", kind="server_busy",
                               retry_after=limits.retry_after_s) from None
            raise

    def release(self, n: int) -> None:
        self.free += n
        while self._waiting and self._waiting[0][0] <= self.free:
            wanted, future = self._waiting.popleft()
            self.free -= wanted
            future.set_result(None)


@dataclass
class Completion:
    """A checked request: one plan per prompt, each with n streams, for one of the served models."""

    model: str
    prompts: list[str]
    plans: list[Plan]
    stream: bool
    echo: bool
    include_usage: bool

    @property
    def streams(self) -> int:
        return sum(len(p.options) for p in self.plans)


def _field(body: dict, name: str, default, kinds: tuple[type, ...], what: str):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise APIError(400, f"{name} must be {what}, got {json.dumps(value)[:80]}", name)
    return value


def _integer(body: dict, name: str, default: int, low: int, high: int) -> int:
    value = _field(body, name, default, (int,), f"an integer from {low} to {high:,}")
    if not low <= value <= high:
        raise APIError(400, f"{name} must be an integer from {low} to {high:,}, got {value}", name)
    return value


def parse_completion(body, models: dict[str, Generator], limits: Limits) -> Completion:
    """The request's fields, checked as the API checks them (APIError naming the field); `model` picks
    one of `models` (default: the first)."""
    if not isinstance(body, dict):
        raise APIError(400, "the body must be a JSON object")
    model_id = body.get("model")
    model_id = next(iter(models)) if model_id is None else model_id
    if not isinstance(model_id, str) or model_id not in models:
        served = ", ".join(json.dumps(m) for m in models)
        raise APIError(404, f"model {json.dumps(model_id)[:80]} does not exist; this server serves "
                            f"{served} (GET /v1/models)", "model", code="model_not_found")
    generator = models[model_id]
    for name, allowed in UNSUPPORTED.items():
        if body.get(name, allowed) not in (allowed, None):
            raise APIError(400, f"{name} is not supported by this server", name)
    if "prompt" not in body:
        raise APIError(400, "prompt is required (a string, or a list of strings)", "prompt")
    prompts = body["prompt"]
    prompts = [prompts] if isinstance(prompts, str) else prompts
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise APIError(400, "prompt must be a string or a non-empty list of strings", "prompt")
    for p in prompts:
        if len(p) > limits.max_prompt_chars:
            raise APIError(400, f"prompt has {len(p):,} characters; this server takes at most "
                                f"{limits.max_prompt_chars:,}", "prompt")
    max_tokens = _integer(body, "max_tokens", 16, 0, limits.max_tokens)
    n = _integer(body, "n", 1, 1, limits.max_streams)
    if n * len(prompts) > limits.max_streams:
        raise APIError(400, f"this request asks for {n * len(prompts)} streams (n times the prompts); this "
                            f"server runs at most {limits.max_streams} at once", "n")
    temperature = _field(body, "temperature", 1.0, (int, float), "a number >= 0")
    top_p = _field(body, "top_p", 1.0, (int, float), "a number in (0, 1]")
    top_k = _field(body, "top_k", 0, (int,), "an integer >= 0")
    seed = _field(body, "seed", None, (int,), "an integer >= 0")
    stop = _field(body, "stop", [], (str, list), "a string or a list of strings")
    if isinstance(stop, list) and len(stop) > MAX_STOP:
        raise APIError(400, f"stop has {len(stop)} strings; this server takes at most {MAX_STOP}", "stop")
    stream = _field(body, "stream", False, (bool,), "true or false")
    echo = _field(body, "echo", False, (bool,), "true or false")
    on_unknown = _field(body, "on_unknown", "error", (str,), '"error" or "skip"')
    stream_options = _field(body, "stream_options", {}, (dict,), "an object")
    include_usage = _field(stream_options, "include_usage", False, (bool,), "true or false")
    plans = []
    for p in prompts:
        try:
            plans.append(generator._plan(p, max_tokens, [temperature], n, top_k, top_p, stop, seed,
                                         "stateful", on_unknown))
        except InputError as exc:
            param = "prompt" if exc.argument in (None, "seed_text") else exc.argument
            message = (str(exc).replace("(on_unknown='skip', --on-unknown skip)", '("on_unknown": "skip")')
                       .replace("(or None for a fresh one)", "(or null for a fresh one)"))
            raise APIError(400, message, param) from None
    return Completion(model_id, prompts, plans, stream, echo, include_usage)


MAX_STOP = 16  # stop strings per request


async def read_json(request: Request, limit: int, timeout_s: float):
    """The body as JSON, read up to `limit` bytes (413 beyond) within `timeout_s` (408 beyond)."""
    body = bytearray()

    async def read():
        async for part in request.stream():
            body.extend(part)
            if len(body) > limit:
                raise APIError(413, f"the body is over {limit:,} bytes", kind="invalid_request_error")
    try:
        await asyncio.wait_for(read(), timeout_s)
    except TimeoutError:
        raise APIError(408, f"the body took over {timeout_s:g} s to arrive") from None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise APIError(400, "the body's JSON is nested too deeply") from None


class Run:
    """One completion's streams in the batches: their text as it arrives, and one end however the request
    ends (its streams leave the batch, its slots are free)."""

    def __init__(self, service: Service, completion: Completion, request: Request, started: float):
        self.service, self.completion, self.streams = service, completion, completion.streams
        self.started, self.first_sent = started, False
        self.per_prompt = self.streams // len(completion.prompts)
        self.prompt_chars = sum(len(p) for p in completion.prompts) * self.per_prompt
        self.events: asyncio.Queue = asyncio.Queue()
        self.released = False
        loop = asyncio.get_running_loop()
        self.jobs, base = [], 0
        for plan in completion.plans:
            self.jobs.append(service.batchers[completion.model].submit(
                Job(plan, self._emitter(loop, len(self.jobs), base), self._error_emitter(loop))))
            base += len(plan.options)
        self.watcher = asyncio.ensure_future(self._watch_disconnect(request))
        self.head = {"id": f"cmpl-{next(service.ids)}", "object": "text_completion",
                     "created": int(time.time()), "model": completion.model}

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
                raise _ClientGone
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
        metrics = self.service.metrics
        if chars and not self.first_sent:
            self.first_sent = True
            metrics.first_character.observe(time.perf_counter() - self.started)
        metrics.characters.inc(chars)

    def end(self):
        self.watcher.cancel()
        for job in self.jobs:
            job.cancel()
        if not self.released:
            self.released = True
            self.service.slots.release(self.streams)

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
                yield _event({**self.head, "choices": [_choice(i, self.prompt_of(i), None)
                                                       for i in range(self.streams)]})
            while left:
                try:
                    batch = await self.next_events()
                except APIError as exc:
                    yield _event({"error": {"message": str(exc), "type": exc.kind, "param": None,
                                            "code": None}})
                    return
                left -= sum(1 for _, _, f in batch if f)
                produced += sum(len(t) for _, t, _ in batch)
                yield _event({**self.head, "choices": [_choice(*e) for e in batch]})
            if self.completion.include_usage:
                yield _event({**self.head, "choices": [], "usage": self.usage(produced)})
            yield b"data: [DONE]\n\n"
        except _ClientGone:
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
        except _ClientGone:
            return Response(status_code=499)  # no one reads this
        finally:
            self.end()
        prefix = [self.prompt_of(i) if self.completion.echo else "" for i in range(self.streams)]
        choices = [_choice(i, prefix[i] + t, f) for i, (t, f) in enumerate(zip(texts, finishes, strict=True))]
        usage = self.usage(sum(len(t) for t in texts))
        return JSONResponse({**self.head, "choices": choices, "usage": usage})


def _choice(index: int, text: str, finish: str | None) -> dict:
    return {"text": text, "index": index, "logprobs": None, "finish_reason": finish}


class Service:
    """What the routes share: the models and their batches (started with the app), the stream slots,
    the limits, the metrics, and whether the server is draining. Each route is a method; create_app
    lists them."""

    def __init__(self, generators: Sequence[Generator], limits: Limits, chunk_seconds: float, parts: int):
        self.models: dict[str, Generator] = {}
        for generator in generators:
            if generator.path.name in self.models:
                raise ModelError(f"two models are named {generator.path.name!r}: serve models whose "
                                 "directories have different names")
            self.models[generator.path.name] = generator
        self.limits, self.chunk_seconds, self.parts = limits, chunk_seconds, parts
        self.created = int(time.time())
        self.ids = (f"{secrets.token_hex(6)}{i:x}" for i in itertools.count())  # unique across replicas too
        self.slots = Slots(limits)
        self.batchers: dict[str, Batchers] = {}
        self.body_limit = 4 * limits.max_prompt_chars * 4 + 65_536  # JSON escapes, several prompts: generous
        self.draining = False
        self.metrics = Metrics(lambda: limits.max_streams - self.slots.free, lambda: self.slots.waiting)

    @property
    def busy(self) -> bool:
        """Whether any request holds or waits for streams (what a drain waits for)."""
        return self.slots.free < self.limits.max_streams or self.slots.waiting > 0

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        self.batchers = {name: Batchers(generator, self.chunk_seconds, self.parts,
                                        on_chunk=self.metrics.batch.observe)
                         for name, generator in self.models.items()}
        yield
        for batchers in self.batchers.values():
            batchers.close()

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "draining" if self.draining else "ok",
                             "model": next(iter(self.models)), "models": list(self.models),
                             "streams": sum(b.streams for b in self.batchers.values()),
                             "paused_streams": sum(b.paused for b in self.batchers.values()),
                             "free_streams": self.slots.free, "waiting_requests": self.slots.waiting,
                             "max_streams": self.limits.max_streams}, 503 if self.draining else 200)

    async def list_models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": name, "object": "model", "created": self.created, "owned_by": "charsdk",
             "max_model_len": None, "vocabulary": generator.vocab.size}
            for name, generator in self.models.items()]})

    async def completions(self, request: Request) -> Response:
        started = time.perf_counter()
        if self.draining:
            self.metrics.refused.labels("503").inc()
            raise APIError(503, "the server is shutting down: retry on another replica",
                           kind="server_shutting_down", retry_after=self.limits.retry_after_s)
        body = await read_json(request, self.body_limit, self.limits.request_timeout_s)
        completion = parse_completion(body, self.models, self.limits)
        try:
            await self.slots.acquire(completion.streams)
        except APIError as exc:
            if exc.status in (429, 503):
                self.metrics.refused.labels(str(exc.status)).inc()
            raise
        run = Run(self, completion, request, started)
        if completion.stream:
            return EventStream(run.sse(), run.end)
        return await run.whole()


async def api_error(request: Request, exc: APIError) -> Response:
    return exc.response()


async def http_error(request: Request, exc: HTTPException) -> Response:
    messages = {404: f"no such endpoint: {request.method} {request.url.path} (see GET /v1/models, "
                     "POST /v1/completions, GET /health)",
                405: f"{request.method} is not allowed on {request.url.path}"}
    message = messages.get(exc.status_code, exc.detail)
    return APIError(exc.status_code, message).response()


async def server_error(request: Request, exc: Exception) -> Response:
    return APIError(500, f"internal error: {type(exc).__name__}", kind="server_error").response()


def create_app(generators: Generator | Sequence[Generator], limits: Limits = Limits(),
               chunk_seconds: float = 0.05, parts: int = 1, api_keys: Sequence[str] = (),
               allow_origins: Sequence[str] = ()) -> Starlette:
    """The ASGI app serving `generators` (the first is the default model). With `api_keys`, every /v1/
    route needs one of them as a bearer token; with `allow_origins`, browsers on those origins may call
    the API (CORS). app.state.service is the Service (draining: see charsdk.cli)."""
    service = Service([generators] if isinstance(generators, Generator) else generators, limits,
                      chunk_seconds, parts)
    middleware = [Middleware(CORSMiddleware, allow_origins=list(allow_origins), allow_methods=["GET", "POST"],
                             allow_headers=["Authorization", "Content-Type"])] if allow_origins else []
    middleware.append(Middleware(service.metrics.middleware))  # inside CORS: preflights are not API calls
    if api_keys:
        middleware.append(Middleware(BearerKeys, keys=tuple(api_keys)))
    app = Starlette(
        routes=[Route("/health", service.health), Route("/metrics", service.metrics.endpoint),
                Route("/v1/models", service.list_models),
                Route("/v1/completions", service.completions, methods=["POST"]),
                *playground_routes(service)],
        middleware=middleware,
        exception_handlers={APIError: api_error, HTTPException: http_error, Exception: server_error},
        lifespan=service.lifespan,
    )
    app.state.service = service
    return app


PLAYGROUND = Path(__file__).with_name("playground")
ONNXRUNTIME_WEB = Path("node_modules") / "onnxruntime-web" / "dist"
mimetypes.add_type("text/javascript", ".mjs")  # module scripts and workers need a JavaScript type
mimetypes.add_type("application/wasm", ".wasm")


def javascript_package() -> Path | None:
    """The JavaScript runtime (js/ with its npm packages) for the playground's in-browser mode: $CHARSDK_JS,
    else the repository's js/ beside this package (a checkout); None: the page runs on the server's API."""
    found = Path(os.environ.get("CHARSDK_JS") or Path(__file__).resolve().parents[1] / "js")
    complete = (found / "src" / "generator.js").is_file() and (found / ONNXRUNTIME_WEB).is_dir()
    return found if complete else None


def playground_routes(service: Service) -> list:
    """The playground at / (charsdk/playground/), the served models' files for its in-browser mode, and
    the JavaScript runtime where there is one: at the same paths as in the repository, so that the page's
    relative addresses work from this server and from any static file server at the repository's root."""
    async def model_file(request: Request) -> Response:
        generator = service.models.get(request.path_params["name"])
        wanted = request.path_params["file"]
        if generator is None or wanted not in ("vocab.json", generator.vocab.onnx_file):
            raise HTTPException(404)
        return FileResponse(generator.path / wanted)

    routes = [Route("/", lambda request: RedirectResponse("/charsdk/playground/")),
              Mount("/charsdk/playground", StaticFiles(directory=PLAYGROUND, html=True)),
              Route("/models/{name}/{file}", model_file)]
    js = javascript_package()
    if js:
        routes += [Mount("/js/src", StaticFiles(directory=js / "src")),
                   Mount(f"/js/{ONNXRUNTIME_WEB.as_posix()}", StaticFiles(directory=js / ONNXRUNTIME_WEB))]
    return routes


class BearerKeys:
    """ASGI middleware: every /v1/ request but a CORS preflight must carry `Authorization: Bearer KEY`
    with one of the keys, else a 401 in the API's error form. Each key is compared in constant time
    (hmac.compare_digest), all of them every time; keys are never logged or echoed."""

    def __init__(self, app, keys: tuple[str, ...]):
        self.app, self.keys = app, [key.encode() for key in keys]

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1/") and scope["method"] != "OPTIONS":
            given = dict(scope["headers"]).get(b"authorization", b"")
            token = given[7:].strip() if given[:7].lower() == b"bearer " else None
            if token is None or not sum(hmac.compare_digest(token, key) for key in self.keys):
                message = ("this server needs an API key: send the header Authorization: Bearer <key>"
                           if token is None else "the API key is not valid")
                response = APIError(401, message, code="invalid_api_key").response()
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def _event(data: dict) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


_GONE = object()  # put in a request's event queue when its client disconnects


class _ClientGone(Exception):
    pass


class EventStream(Response):
    """Server-sent events from an async generator of encoded events, written straight to the ASGI send;
    `on_close()` when it ends, however it ends. Starlette's StreamingResponse would also watch for a
    disconnect, with a task group per response: a completion already has its own watcher."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncGenerator[bytes, None], on_close: Callable[[], None]):
        self.events, self.on_close, self.status_code, self.background = events, on_close, 200, None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope, receive, send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for event in self.events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await self.events.aclose()
            self.on_close()


# Limits the HTTP server does not set by itself (uvicorn bounds connections and idle keep-alive; bodies
# are bounded by read_json): a request's line and headers must arrive within Limits.request_timeout_s
# and take at most MAX_HEADER_BYTES, else 408 or 431 and the connection closes.
MAX_HEADER_BYTES = 16_384  # what h11 and nginx allow by default
KEEP_ALIVE_S = 5.0  # an idle keep-alive connection closes after this (uvicorn's own timeout)


def guarded_protocol(header_timeout_s: float):
    """uvicorn's httptools protocol with a deadline for a request's headers and the size limit above."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm()

        def _arm(self):
            self._head_bytes, self._tail = 0, b""
            self._head_timer = self.loop.call_later(header_timeout_s, self._refuse, 408,
                                                    f"the request's headers took over {header_timeout_s:g} s")

        def _disarm(self):
            if getattr(self, "_head_timer", None) is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def data_received(self, data: bytes):
            if self._head_timer is not None:  # reading a request's line and headers: count them
                end = (self._tail + data).find(b"\r\n\r\n")
                self._head_bytes += len(data) if end < 0 else max(0, end + 4 - len(self._tail))
                if self._head_bytes > MAX_HEADER_BYTES:
                    return self._refuse(431, f"the request's headers are over {MAX_HEADER_BYTES:,} bytes")
                self._tail = (self._tail + data)[-3:]
            super().data_received(data)

        def on_headers_complete(self):
            self._disarm()
            super().on_headers_complete()

        def on_response_complete(self):
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request on this connection has its own deadline

        def connection_lost(self, exc):
            self._disarm()
            super().connection_lost(exc)

        def _refuse(self, status: int, message: str):
            self._disarm()
            if self.transport.is_closing():
                return
            if self.cycle is None or self.cycle.response_complete:  # not in the middle of an answer
                body = json.dumps({"error": {"message": message, "type": "invalid_request_error",
                                             "param": None, "code": None}}).encode()
                reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
                self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: "
                                     b"%d\r\nconnection: close\r\n\r\n%s" % (status, reason, len(body), body))
            self.transport.close()

    return GuardedHttpToolsProtocol


def run_server(app: Starlette, sock, drain_s: float = 30.0, max_connections: int = 4096) -> None:
    """Serve `app` on a listening socket until SIGTERM or SIGINT, then drain (DrainingServer)."""
    import uvicorn

    service = app.state.service
    config = uvicorn.Config(app, log_level="warning", access_log=False,
                            http=guarded_protocol(service.limits.request_timeout_s),
                            limit_concurrency=max_connections, timeout_keep_alive=KEEP_ALIVE_S,
                            timeout_graceful_shutdown=5)
    draining_server(config, service, drain_s).run(sockets=[sock])


def draining_server(config, service: Service, drain_s: float):
    """A uvicorn server that on SIGTERM or SIGINT drains as load balancers expect: new requests get 503
    and /health says "draining" while the requests in flight finish (at most drain_s), then it exits
    with 0. A second signal exits at once."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame):
            if service.draining:
                os._exit(128 + sig)  # the second signal
            service.draining = True
            threading.Thread(target=self.drain, name="charsdk-drain", daemon=True).start()

        def drain(self):
            deadline = time.monotonic() + drain_s
            while service.busy and time.monotonic() < deadline:
                time.sleep(0.05)
            self.should_exit = True

    return DrainingServer(config)
