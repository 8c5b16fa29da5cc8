"""The app: the routes (the completions API, models, health, metrics, the OpenAPI document, the
playground), the bearer keys and CORS, over one batcher set per served model. The server keeps nothing
between requests: run as many replicas as you like behind any load balancer."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import mimetypes
import os
import secrets
import time
from collections.abc import Sequence
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import __version__
from ..batcher import Batchers
from ..errors import InputError, ModelError
from ..generator import Generator
from .admission import Limits, Slots
from .bridge import EventStream, Run
from .completion import api_spelling, check_completion, items_answer, read_json, served_model, text_of
from .errors import APIError
from .metrics import Metrics
from .schema import DetokenizeRequest, TokenizeRequest, openapi, parse


class Service:
    """What the routes share: the models and their batches (started with the app), the stream slots,
    the limits, the metrics, and whether the server is draining. Each route is a method; create_app
    lists them."""

    def __init__(self, generators: Sequence[Generator], limits: Limits, chunk_seconds: float,
                 batcher_count: int):
        self.models: dict[str, Generator] = {}
        for generator in generators:
            if generator.path.name in self.models:
                raise ModelError(f"two models are named {generator.path.name!r}: serve models whose "
                                 "directories have different names")
            self.models[generator.path.name] = generator
        self.limits, self.chunk_seconds, self.batcher_count = limits, chunk_seconds, batcher_count
        self.created = int(time.time())
        self.ids = (f"{secrets.token_hex(6)}{i:x}" for i in itertools.count())  # unique across replicas too
        self.slots = Slots(limits)
        self.batchers: dict[str, Batchers] = {}
        self.body_limit = 4 * limits.max_prompt_chars * 4 + 65_536  # JSON escapes, several prompts: generous
        self.draining = False
        self.metrics = Metrics(lambda: limits.max_streams - self.slots.free, lambda: self.slots.waiting)

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        self.batchers = {name: Batchers(generator, self.chunk_seconds, self.batcher_count,
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

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi(__version__))

    async def body(self, request: Request):
        return await read_json(request, self.body_limit, self.limits.request_timeout_s)

    async def tokenizer_info(self, request: Request) -> Response:
        """vLLM's GET /tokenizer_info, which lm-evaluation-harness reads: a character is a token. A character
        model has no end-of-text token; the newline stands for it (what a harness puts before a rolling
        window's first character and stops generation at), or null where the model has no newline."""
        name = served_model(self.models, request.query_params.get("model"))
        vocab = self.models[name].vocab
        newline = "\n" if "\n" in vocab.chars else None
        return JSONResponse({"model": name, "tokenizer_class": "charsdk.Vocab", "vocab_size": vocab.size,
                             "tokens": list(vocab.chars), "eos_token": newline, "bos_token": None,
                             "pad_token": None, "lowercase": vocab.lowercase, "max_model_len": None})

    async def tokenize(self, request: Request) -> Response:
        form = parse(TokenizeRequest, await self.body(request))
        name = served_model(self.models, form.model)
        try:
            ids = self.models[name].vocab.encode(form.prompt, form.on_unknown)
        except InputError as exc:
            raise APIError(400, api_spelling(exc), "prompt") from None
        return JSONResponse({"tokens": ids.tolist(), "count": len(ids), "max_model_len": None})

    async def detokenize(self, request: Request) -> Response:
        form = parse(DetokenizeRequest, await self.body(request))
        generator = self.models[served_model(self.models, form.model)]
        return JSONResponse({"prompt": text_of(generator, form.tokens, "tokens")})

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
        completion = check_completion(await self.body(request), self.models, self.limits)
        try:
            await self.slots.acquire(completion.streams)
        except APIError as exc:
            if exc.status in (429, 503):
                self.metrics.refused.labels(str(exc.status)).inc()
            raise
        head = {"id": f"cmpl-{next(self.ids)}", "object": "text_completion", "created": int(time.time()),
                "model": completion.model}
        if completion.new_only:
            try:
                return JSONResponse(await asyncio.to_thread(items_answer, self.models[completion.model],
                                                            completion, head))
            finally:
                self.slots.release(completion.streams)
        run = Run(completion, self.models[completion.model], self.batchers[completion.model], request, head,
                  self.metrics, lambda: self.slots.release(completion.streams), started)
        if completion.stream:
            return EventStream(run.sse(), run.end)
        return await run.whole()


async def api_error(request: Request, exc: APIError) -> Response:
    return exc.response()


async def http_error(request: Request, exc: HTTPException) -> Response:
    messages = {404: f"no such endpoint: {request.method} {request.url.path} (see GET /v1/models, "
                     "POST /v1/completions, GET /health, GET /openapi.json)",
                405: f"{request.method} is not allowed on {request.url.path}"}
    message = messages.get(exc.status_code, exc.detail)
    return APIError(exc.status_code, message).response()


async def server_error(request: Request, exc: Exception) -> Response:
    return APIError(500, f"internal error: {type(exc).__name__}", kind="server_error").response()


def create_app(generators: Generator | Sequence[Generator], limits: Limits = Limits(),
               chunk_seconds: float = 0.05, batchers: int = 1, api_keys: Sequence[str] = (),
               allow_origins: Sequence[str] = ()) -> Starlette:
    """The ASGI app serving `generators` (the first is the default model). With `api_keys`, every /v1/
    route needs one of them as a bearer token; with `allow_origins`, browsers on those origins may call
    the API (CORS). app.state.service is the Service (draining: see charsdk.cli)."""
    service = Service([generators] if isinstance(generators, Generator) else generators, limits,
                      chunk_seconds, batchers)
    middleware = [Middleware(CORSMiddleware, allow_origins=list(allow_origins), allow_methods=["GET", "POST"],
                             allow_headers=["Authorization", "Content-Type"])] if allow_origins else []
    middleware.append(Middleware(service.metrics.middleware))  # inside CORS: preflights are not API calls
    if api_keys:
        middleware.append(Middleware(BearerKeys, keys=tuple(api_keys)))
    app = Starlette(
        routes=[Route("/health", service.health), Route("/metrics", service.metrics.endpoint),
                Route("/v1/models", service.list_models), Route("/openapi.json", service.openapi),
                Route("/v1/completions", service.completions, methods=["POST"]),
                Route("/tokenizer_info", service.tokenizer_info), Route("/tokenize", service.tokenize,
                                                                        methods=["POST"]),
                Route("/detokenize", service.detokenize, methods=["POST"]),
                *playground_routes(service)],
        middleware=middleware,
        exception_handlers={APIError: api_error, HTTPException: http_error, Exception: server_error},
        lifespan=service.lifespan,
    )
    app.state.service = service
    return app


PLAYGROUND = Path(__file__).parents[1] / "playground"  # charsdk/playground
ONNXRUNTIME_WEB = Path("node_modules") / "onnxruntime-web" / "dist"
mimetypes.add_type("text/javascript", ".mjs")  # module scripts and workers need a JavaScript type
mimetypes.add_type("application/wasm", ".wasm")


def javascript_package() -> Path | None:
    """The JavaScript runtime (js/ with its npm packages) for the playground's in-browser mode: $CHARSDK_JS,
    else the repository's js/ beside this package (a checkout); None: the page runs on the server's API."""
    found = Path(os.environ.get("CHARSDK_JS") or Path(__file__).resolve().parents[2] / "js")
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
