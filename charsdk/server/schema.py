"""The completions API's forms: the request as a pydantic model (validation, and the OpenAPI document at
/openapi.json), the answers as typed dicts (plain dicts when sent: no cost per streamed chunk).

Field names and defaults are OpenAI's (llama.cpp's server, vLLM and TGI speak the same); `top_k` and
`on_unknown` are charsdk's. A field sent as null takes its default, as OpenAI's API does.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from typing_extensions import (  # pydantic reads typing's TypedDict only from Python 3.12
    NotRequired,
    TypedDict,
)

from .errors import APIError

MAX_STOP = 16  # stop strings per request


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True)
    include_usage: bool = Field(False, description="true or false")


class StructuredOutputs(BaseModel):
    """vLLM's structured_outputs: one of a regular expression or a list of choices."""

    model_config = ConfigDict(strict=True, extra="forbid")

    regex: str | None = Field(None, description="a regular expression every choice's text obeys")
    choice: list[str] | None = Field(None, description="a list of strings, one of which each choice is")


class CompletionRequest(BaseModel):
    """POST /v1/completions. Each description is also what an error says the field must be. A field it does
    not name is refused (400 naming it), as OpenAI's API refuses one, rather than silently ignored."""

    model_config = ConfigDict(strict=True, extra="forbid")

    model: str | None = Field(None, description="a served model's id (GET /v1/models; default: the first)")
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="a string, a non-empty list of strings, or token ids (the model's character ids: "
                    "POST /tokenize): a list of them or a list of such lists")
    max_tokens: int = Field(16, ge=0, description="an integer >= 0: characters to generate per choice")
    n: int = Field(1, ge=1, description="an integer >= 1: choices per prompt")
    temperature: float = Field(1.0, description="a number >= 0 (0 = greedy)")
    top_p: float = Field(1.0, description="a number in (0, 1] (1 = no limit)")
    top_k: int = Field(0, description="an integer >= 0 (0 = no limit)")
    seed: int | None = Field(None, description="an integer >= 0: the same seed gives the same text")
    stop: str | list[str] = Field([], description="a string or a list of strings that end a choice")
    stream: bool = Field(False, description="true or false: server-sent events as the text is produced")
    echo: bool = Field(False, description="true or false: the prompt before each choice's text")
    on_unknown: Literal["error", "skip"] = Field("error", description='"error" or "skip": prompt characters '
                                                                     "the model does not know")
    stream_options: StreamOptions = Field(StreamOptions(), description="an object")
    logprobs: int | None = Field(None, ge=0, le=20, description="an integer from 0 to 20: each character's "
                                 "log-probability and that many likeliest characters at its place")
    user: str | None = Field(None, description="a string: accepted, not used (nothing is kept per user)")
    structured_outputs: StructuredOutputs | None = Field(
        None, description='an object: {"regex": ...} or {"choice": [...]} (vLLM\'s; json and grammar are not '
                          "supported)")
    guided_regex: str | None = Field(None, description="a string (vLLM's older spelling of "
                                                       "structured_outputs.regex)")
    guided_choice: list[str] | None = Field(None, description="a list of strings (vLLM's older spelling of "
                                                              "structured_outputs.choice)")
    items: bool = Field(False, description="true or false: each choice one complete item of a list model (a "
                        'line, drawn after the model\'s own lines: give the prompt ""), with in_training '
                        "saying whether it is a line of the training list")
    new_only: bool = Field(False, description="true or false: with items, only items not in the training "
                           "list (drawn as Generator.items draws them, the answer at once: no stream)")
    logit_bias: dict[str, float] | None = Field(None, description="an object of characters (or ids, as "
                                                "strings of two or more digits) to biases from -100 to 100")
    presence_penalty: float = Field(0.0, description="a number from -2 to 2 (OpenAI's)")
    frequency_penalty: float = Field(0.0, description="a number from -2 to 2 (OpenAI's)")
    repetition_penalty: float = Field(1.0, description="a number > 0 (1 = off; Hugging Face's, llama.cpp's)")
    repetition_window: int = Field(64, description="an integer >= 1: the characters repetition_penalty "
                                                   "looks back over (llama.cpp's repeat_last_n)")
    # taken only at their neutral values
    suffix: Literal[None] = Field(None, description="null: a character model continues a text, it does not "
                                                    "fill one in")
    best_of: Literal[1] = Field(1, description="1: draw n choices and pick with logprobs instead")

    @model_validator(mode="before")
    @classmethod
    def nulls_are_defaults(cls, data: Any) -> Any:
        return without_nulls(data)


class TokenizeRequest(BaseModel):
    """POST /tokenize (vLLM's form): a character is a token, its id the model's character id."""

    model_config = ConfigDict(strict=True, extra="forbid")

    model: str | None = Field(None, description="a served model's id (default: the first)")
    prompt: str = Field(description="a string")
    add_special_tokens: bool = Field(False, description="true or false (a character model has none to add)")
    on_unknown: Literal["error", "skip"] = Field("error", description='"error" or "skip"')


class DetokenizeRequest(BaseModel):
    """POST /detokenize (vLLM's form)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    model: str | None = Field(None, description="a served model's id (default: the first)")
    tokens: list[int] = Field(description="a list of the model's character ids")


def without_nulls(data: Any) -> Any:
    """A field sent as null takes its default, as in OpenAI's API."""
    return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


def parse(form: type[BaseModel], body: Any) -> BaseModel:
    """`form` from the body, or an APIError (400) naming the first field that is wrong and what it must be."""
    try:
        return form.model_validate(body)
    except ValidationError as exc:
        unknown = [str(e["loc"][0]) for e in exc.errors()
                   if e["type"] == "extra_forbidden" and len(e["loc"]) == 1]
        if unknown:
            raise APIError(400, f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: this "
                                "server takes the fields GET /openapi.json lists (docs/serving.md)",
                           unknown[0]) from None
        raise field_error(form, exc.errors()[0]) from None


def parse_request(body: Any) -> CompletionRequest:
    """The completions request, checked (APIError 400 naming the field)."""
    request = parse(CompletionRequest, body)
    if isinstance(request.prompt, list) and not request.prompt:
        raise APIError(400, "prompt must be a string or a non-empty list of strings", "prompt")
    if isinstance(request.stop, list) and len(request.stop) > MAX_STOP:
        raise APIError(400, f"stop has {len(request.stop)} strings; this server takes at most {MAX_STOP}",
                       "stop")
    return request


def field_error(form: type[BaseModel], error: dict) -> APIError:
    if not error["loc"]:
        return APIError(400, "the body must be a JSON object")
    name = str(error["loc"][0])
    field = form.model_fields.get(name)
    if error["type"] == "missing":
        return APIError(400, f"{name} is required ({field.description})", name)
    if name == "stream_options" and len(error["loc"]) > 1:  # stream_options.include_usage
        inner = str(error["loc"][1])
        return APIError(400, f"{inner} must be {StreamOptions.model_fields[inner].description}, got "
                             f"{shown(error['input'])}", inner)
    if name == "structured_outputs" and len(error["loc"]) > 1:
        inner = str(error["loc"][1])
        if inner not in StructuredOutputs.model_fields:
            return APIError(400, f"structured_outputs.{inner} is not supported by this server (regex and "
                                 "choice are)", "structured_outputs")
        return APIError(400, f"structured_outputs.{inner} must be "
                             f"{StructuredOutputs.model_fields[inner].description}", "structured_outputs")
    if name in ("suffix", "best_of"):
        return APIError(400, f"{name} must be {field.description}", name)
    return APIError(400, f"{name} must be {field.description}, got {shown(error['input'])}", name)


def shown(value: Any) -> str:
    try:
        return json.dumps(value)[:80]
    except (TypeError, ValueError):
        return repr(value)[:80]


class Usage(TypedDict):
    prompt_tokens: int  # characters of the prompts, once per choice
    completion_tokens: int  # characters generated
    total_tokens: int


class Logprobs(TypedDict):
    """OpenAI's completions form; a character is a token. An echoed prompt's first character has null
    scores (nothing predicts it); a log-probability of -inf (a window model's zero) is sent as -9999."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]  # where each token starts in the choice's text (an echoed prompt included)


class Choice(TypedDict):
    text: str
    index: int
    logprobs: Logprobs | None  # null unless the request asked for logprobs
    finish_reason: Literal["stop", "length"] | None  # None in a streamed chunk while the choice goes on
    # "items": true: whether the item is a line of the training list (null: incomplete, or no record)
    in_training: NotRequired[bool | None]


class Completion(TypedDict, total=False):
    """An answer, or (stream=true) one server-sent event of it; `usage` ends a non-streamed answer."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    items: ItemCounts  # "new_only": how many complete items were drawn to find the choices


class ItemCounts(TypedDict):
    drawn: int
    in_training: int
    new: int


class ErrorBody(TypedDict):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorAnswer(TypedDict):
    error: ErrorBody


def openapi(version: str) -> dict:
    """The OpenAPI document of POST /v1/completions, from the forms above."""
    request = CompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    answer = TypeAdapter(Completion).json_schema(ref_template="#/components/schemas/{model}")
    error = TypeAdapter(ErrorAnswer).json_schema(ref_template="#/components/schemas/{model}")
    schemas = {**request.pop("$defs", {}), **answer.pop("$defs", {}), **error.pop("$defs", {}),
               "CompletionRequest": request, "Completion": answer, "ErrorAnswer": error}
    json_body = {"application/json": {"schema": {"$ref": "#/components/schemas/Completion"}}}
    errors = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorAnswer"}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "charsdk completions API", "version": version},
        "paths": {"/v1/completions": {"post": {
            "summary": "Continue a prompt (stream=true: text/event-stream of Completion chunks, then [DONE])",
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/CompletionRequest"}}}},
            "responses": {"200": {"description": "the completion", "content": json_body},
                          **{code: {"description": what, "content": errors} for code, what in (
                              ("400", "a field that is wrong, named in param"), ("401", "no valid API key"),
                              ("404", "no such model"), ("429", "too many requests waiting"),
                              ("503", "busy or shutting down; see Retry-After"))}}}}},
        "components": {"schemas": schemas},
    }
