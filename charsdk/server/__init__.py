"""`charsdk serve`: the completions API (as llama.cpp's server, vLLM and TGI speak it) over HTTP.

Every request's streams join a batch (charsdk.batcher over the one engine, one batch per core): one model
call per chunk for all the streams of a batch. A request is checked field by field (schema: 400 naming
the field), then waits for stream slots (admission: at most `max_streams` generating, at most
`max_waiting` requests waiting, each at most `max_wait_s`: then 429 or 503 with Retry-After), then streams
server-sent events or answers once (bridge). A client that goes away frees its slots at once and its
streams leave the batch at the next chunk. Starlette routes (app), uvicorn speaks HTTP (httpstack).
"""

from .admission import Limits
from .app import create_app
from .httpstack import run_server

__all__ = ["Limits", "create_app", "run_server"]
