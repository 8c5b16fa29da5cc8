"""`GET /metrics`: the server's figures in Prometheus' text format, from prometheus_client.

Each app has its own registry (two servers in one process do not share counters). Requests are counted
by status and timed by an ASGI middleware around the API; the completion code adds the characters it
sends and the time to its first one; the batchers report each chunk's batch size; the admission gauges
read the stream slots when scraped.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import Response

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self, active_streams: Callable[[], float], waiting_requests: Callable[[], float]):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("charsdk_requests", "API requests answered, by HTTP status", ["status"],
                                registry=registry)
        self.characters = Counter("charsdk_characters_generated", "Characters sent to clients",
                                  registry=registry)
        self.refused = Counter("charsdk_requests_refused", "Requests refused for capacity: 429 (waiting room "
                               "full) or 503 (waited too long, or draining)", ["status"], registry=registry)
        self.first_character = Histogram("charsdk_time_to_first_character_seconds",
                                         "From a completion's arrival to its first character",
                                         buckets=LATENCY_BUCKETS, registry=registry)
        self.latency = Histogram("charsdk_request_seconds", "From a request's arrival to its answer's end",
                                 buckets=LATENCY_BUCKETS, registry=registry)
        self.batch = Histogram("charsdk_batch_streams", "Streams advanced by one model call (a chunk)",
                               buckets=BATCH_BUCKETS, registry=registry)
        Gauge("charsdk_streams_active", "Streams holding a slot (generating, or about to)",
              registry=registry).set_function(active_streams)
        Gauge("charsdk_requests_waiting", "Requests waiting for free streams",
              registry=registry).set_function(waiting_requests)

    async def endpoint(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    def middleware(self, app):
        """ASGI middleware: every /v1/ request counted by its status and timed to the end of its answer."""
        async def counted(scope, receive, send):
            if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
                return await app(scope, receive, send)
            start, status = time.perf_counter(), [500]

            async def sending(message):
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                await send(message)
            try:
                await app(scope, receive, sending)
            finally:
                self.requests.labels(str(status[0])).inc()
                self.latency.observe(time.perf_counter() - start)
        return counted
