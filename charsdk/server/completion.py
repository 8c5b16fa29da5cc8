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
    logprobs: int | None
    items: bool = False  # each choice an item of a list model, told in or not in its training list
    new_only: bool = False  # and only new ones: Generator.items runs it (`items_answer`)

    @property
    def streams(self) -> int:
        return sum(r.streams for r in self.requests)


def api_spelling(exc: InputError) -> str:
    """The library's message in the API's words: its suggested `argument='value'` as `"argument": "value"`."""
    return (re.sub(r"\b(\w+)='([^']*)'", r'"\1": "\2"', str(exc))
            .replace("(or None for a fresh one)", "(or null for a fresh one)"))


def served_model(models: dict[str, Generator], model_id: str | None) -> str:
    """The model a request names (None: the first served), or a 404 naming those there are."""
    model_id = next(iter(models)) if model_id is None else model_id
    if model_id not in models:
        served = ", ".join(json.dumps(m) for m in models)
        raise APIError(404, f"model {json.dumps(model_id)[:80]} does not exist; this server serves "
                            f"{served} (GET /v1/models)", "model", code="model_not_found")
    return model_id


def text_of(generator: Generator, ids: list[int], param: str) -> str:
    """The text of token ids (the model's character ids), or a 400 naming an id it does not have."""
    size = generator.vocab.size
    wrong = next((i for i in ids if not 0 <= i < size), None)
    if wrong is not None:
        raise APIError(400, f"{param} has the token id {wrong}; this model's ids are 0 to {size - 1}, one "
                            "per character (POST /tokenize)", param)
    return generator.vocab.decode(ids)


def prompt_texts(form, generator: Generator) -> list[str]:
    """The prompts as text: a string, strings, token ids, or lists of token ids."""
    prompt = form.prompt
    if isinstance(prompt, str):
        return [prompt]
    if prompt and isinstance(prompt[0], int):
        return [text_of(generator, prompt, "prompt")]
    return [p if isinstance(p, str) else text_of(generator, p, "prompt") for p in prompt]


def check_completion(body, models: dict[str, Generator], limits: Limits) -> Completion:
    """The request's fields, checked as the API checks them (APIError naming the field); `model` picks
    one of `models` (default: the first)."""
    form = parse_request(body)
    model_id = served_model(models, form.model)
    prompts = prompt_texts(form, models[model_id])
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
    outputs = form.structured_outputs
    regex = outputs.regex if outputs and outputs.regex is not None else form.guided_regex
    choice = outputs.choice if outputs and outputs.choice is not None else form.guided_choice
    if form.new_only and not form.items:
        raise APIError(400, 'new_only draws items: add "items": true', "new_only")
    if form.items:
        return item_completion(form, model_id, models[model_id], prompts)
    requests = []
    for p in prompts:
        try:
            requests.append(models[model_id].request(
                p, form.max_tokens, form.temperature, n=form.n, top_k=form.top_k, top_p=form.top_p,
                stop=form.stop, seed=form.seed, on_unknown=form.on_unknown, logprobs=form.logprobs,
                logit_bias=form.logit_bias, presence_penalty=form.presence_penalty,
                frequency_penalty=form.frequency_penalty, repetition_penalty=form.repetition_penalty,
                repetition_window=form.repetition_window, regex=regex, choice=choice))
        except InputError as exc:
            param = {None: "prompt", "seed_text": "prompt", "regex": "structured_outputs",
                     "choice": "structured_outputs"}.get(exc.argument, exc.argument)
            raise APIError(400, api_spelling(exc), param) from None
    return Completion(model_id, prompts, requests, form.stream, form.echo, form.stream_options.include_usage,
                      form.logprobs)


def item_completion(form, model_id: str, generator: Generator, prompts: list[str]) -> Completion:
    """`"items": true`: n items of a list model, drawn as `Generator.items` draws them (its item_request)."""
    if prompts != [""]:
        raise APIError(400, 'items are drawn after the model\'s own lines: give "prompt": ""', "prompt")
    patterned = form.structured_outputs or form.guided_regex is not None or form.guided_choice is not None
    if patterned or form.stop:
        raise APIError(400, "items cannot be combined with structured_outputs or stop: an item is a line",
                       "items")
    if form.new_only and (form.stream or form.echo or form.logprobs is not None):
        raise APIError(400, "new_only answers at once with the items' text: leave out stream, echo and "
                            "logprobs", "new_only")
    if form.new_only and generator.training_items is None:
        raise APIError(400, "new_only needs a record of the training items, which this model has none of (an "
                            "export of a one-item-per-line corpus writes one)", "new_only")
    try:
        request = generator.item_request(form.n, form.temperature, seed=form.seed, max_length=form.max_tokens)
    except InputError as exc:
        raise APIError(400, api_spelling(exc), exc.argument) from None
    return Completion(model_id, [generator.item_prompt], [request], form.stream, form.echo,
                      form.stream_options.include_usage, form.logprobs, items=True, new_only=form.new_only)


def items_answer(generator: Generator, completion: Completion, head: dict) -> dict:
    """A new_only answer: `Generator.items` with the request's settings (its engine's own batches, in
    the caller's worker thread), each choice a new item, and how many items it drew to find them."""
    request = completion.requests[0]
    option = request.options[0]
    found = generator.items(request.streams, option.temperature, new_only=True, seed=request.seed,
                            max_length=request.length)
    choices = [{"text": item, "index": i, "logprobs": None, "finish_reason": "stop", "in_training": False}
               for i, item in enumerate(found.items)]
    prompt_chars = len(completion.prompts[0]) * len(choices)
    completion_chars = sum(len(item) for item in found.items)
    return {**head, "choices": choices,
            "usage": {"prompt_tokens": prompt_chars, "completion_tokens": completion_chars,
                      "total_tokens": prompt_chars + completion_chars},
            "items": {"drawn": found.in_training + found.new, "in_training": found.in_training,
                      "new": found.new}}


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
