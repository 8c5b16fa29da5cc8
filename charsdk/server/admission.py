"""Admission: how many streams generate at once, and how many requests may wait for them, for how long."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

from .errors import APIError


@dataclass(frozen=True)
class Limits:
    max_streams: int = 256  # streams generating at once (a request with n=4 takes 4)
    max_waiting: int = 256  # requests waiting for free streams; beyond: 429
    max_wait_s: float = 5.0  # how long a request waits for free streams; then: 503
    max_prompt_chars: int = 20_000  # characters per prompt
    max_tokens: int = 100_000  # characters per completion (max_tokens)
    retry_after_s: int = 1  # the Retry-After of a 429 or 503
    request_timeout_s: float = 10.0  # a request's headers, then its body, must each arrive within this: 408


class Slots:
    """Streams are granted first come, first served; a request waits for its streams (bounded in count and
    in time) and gives them back when it ends, however it ends."""

    def __init__(self, limits: Limits):
        self.limits, self.free = limits, limits.max_streams
        self._waiting: deque[tuple[int, asyncio.Future]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def busy(self) -> bool:
        """Whether any request holds or waits for streams (what a drain waits for)."""
        return self.free < self.limits.max_streams or bool(self._waiting)

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
