"""`charsdk serve` as a subprocess on a free loopback port, for tests and benchmarks: started, its address
read from the line it prints on stdout for programs, ready once /health answers, and stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence


class Server:
    """`charsdk serve --port 0 FLAGS`, run by `command` (default: this Python's `-m charsdk`)."""

    def __init__(self, *flags: str, command: Sequence[str] = (sys.executable, "-m", "charsdk"),
                 env: dict | None = None, ready_s: float = 60.0):
        self.process = subprocess.Popen([*command, "serve", "--host", "127.0.0.1", "--port", "0", *flags],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env={**os.environ, **(env or {})})
        line = self.process.stdout.readline()  # {"listening": "http://127.0.0.1:PORT", ...}
        if not line.startswith("{"):
            self.process.wait(timeout=30)
            raise RuntimeError(f"charsdk serve did not start: {self.process.stderr.read().strip()}")
        self.started = json.loads(line)
        self.root = self.started["listening"]  # http://127.0.0.1:PORT
        self.base = self.root + "/v1"
        self.host, self.port = self.root.removeprefix("http://").rsplit(":", 1)
        deadline = time.monotonic() + ready_s
        while not self._healthy():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"charsdk serve did not answer /health: {self.stop()}")
            time.sleep(0.05)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.root + "/health", timeout=1):
                return True
        except (urllib.error.URLError, OSError):
            return False

    def cpu_s(self) -> float:
        """CPU seconds the server process has used (Linux)."""
        fields = open(f"/proc/{self.process.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        """The server process's resident memory (Linux)."""
        for line in open(f"/proc/{self.process.pid}/status").read().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> str:
        """Stop it (if it still runs) and return what it wrote on stderr."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return self.process.stderr.read()
