"""A completions request checked against this server: its model, its limits, and one engine request per
prompt (built by `Generator.request`, so the server runs exactly what `generate` runs)."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass

from starlette.requests import Request

from ..engine import Request as EngineRequest
from ..errors import InputError
from ..generator import Generator
from .admission import Limits
from .errors import APIError
from .schema import parse_request


@dataclass
class Completion:
    model: str
    prompts: list[str]
    requests: list[EngineRequest]  # one per prompt, each with n streams
    stream: bool
    echo: bool
    include_usage: bool

    @property
    def streams(self) -> int:
        return sum(r.streams for r in self.requests)


def api_spelling(exc: InputError) -> str:
    """The library's message in the API's words: its suggested `argument='value'` as `"argument": "value"`."""
    return (re.sub(r"\b(\w+)='([^']*)'", r'"\1": "\2"', str(exc))
            .replace("(or None for a fresh one)", "(or null for a fresh one)"))


def check_completion(body, models: dict[str, Generator], limits: Limits) -> Completion:
    """The request's fields, checked as the API checks them (APIError naming the field); `model` picks
    one of `models` (default: the first)."""
    form = parse_request(body)
    model_id = next(iter(models)) if form.model is None else form.model
    if model_id not in models:
        served = ", ".join(json.dumps(m) for m in models)
        raise APIError(404, f"model {json.dumps(model_id)[:80]} does not exist; this server serves "
                            f"{served} (GET /v1/models)", "model", code="model_not_found")
    prompts = [form.prompt] if isinstance(form.prompt, str) else form.prompt
    for p in prompts:
        if len(p) > limits.max_prompt_chars:
            raise APIError(400, f"prompt has {len(p):,} characters; this server takes at most "
                                f"{limits.max_prompt_chars:,}", "prompt")
    if form.max_tokens > limits.max_tokens:
        raise APIError(400, f"max_tokens must be an integer from 0 to {limits.max_tokens:,}, got "
                            f"{form.max_tokens}", "max_tokens")
    if form.n * len(prompts) > limits.max_streams:
        raise APIError(400, f"this request asks for {form.n * len(prompts)} streams (n times the prompts); "
                            f"this server runs at most {limits.max_streams} at once", "n")
    requests = []
    for p in prompts:
        try:
            requests.append(models[model_id].request(
                p, form.max_tokens, form.temperature, n=form.n, top_k=form.top_k, top_p=form.top_p,
                stop=form.stop, seed=form.seed, on_unknown=form.on_unknown))
        except InputError as exc:
            param = "prompt" if exc.argument in (None, "seed_text") else exc.argument
            raise APIError(400, api_spelling(exc), param) from None
    return Completion(model_id, prompts, requests, form.stream, form.echo, form.stream_options.include_usage)


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
