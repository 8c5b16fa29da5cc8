"""The HTTP stack's specifics, kept apart because they are what breaks on a uvicorn upgrade: a deadline and
a size limit for a request's headers (a subclass of uvicorn's httptools protocol), and a server that
drains on SIGTERM as load balancers expect."""

from __future__ import annotations

import json
import signal
import threading
import time

import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Limits the HTTP server does not set by itself (uvicorn bounds connections and idle keep-alive; bodies
# are bounded by read_json): a request's line and headers must arrive within Limits.request_timeout_s
# and take at most MAX_HEADER_BYTES, else 408 or 431 and the connection closes.
MAX_HEADER_BYTES = 16_384  # what h11 and nginx allow by default
KEEP_ALIVE_S = 5.0  # an idle keep-alive connection closes after this (uvicorn's own timeout)


def guarded_protocol(header_timeout_s: float):
    """uvicorn's httptools protocol with a deadline for a request's headers and the size limit above."""
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
    service = app.state.service
    config = uvicorn.Config(app, log_level="warning", access_log=False,
                            http=guarded_protocol(service.limits.request_timeout_s),
                            limit_concurrency=max_connections, timeout_keep_alive=KEEP_ALIVE_S,
                            timeout_graceful_shutdown=5)
    draining_server(config, service, drain_s).run(sockets=[sock])


def draining_server(config, service, drain_s: float):
    """A uvicorn server that on SIGTERM or SIGINT drains as load balancers expect: new requests get 503
    and /health says "draining" while the requests in flight finish (at most drain_s), then it exits
    with 0. A second signal exits at once."""
    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame):
            if service.draining:  # the second signal: the default action, at once (the exit status says it)
                signal.signal(sig, signal.SIG_DFL)
                signal.raise_signal(sig)
            service.draining = True
            threading.Thread(target=self.drain, name="charsdk-drain", daemon=True).start()

        def drain(self):
            deadline = time.monotonic() + drain_s
            while service.slots.busy and time.monotonic() < deadline:
                time.sleep(0.05)
            self.should_exit = True

    return DrainingServer(config)
