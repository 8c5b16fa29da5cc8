"""`make bench-serve`: `charsdk serve` under load, on loopback only, every loop bounded in count and time.

A real server process (`charsdk serve`) and a load generator in this process (asyncio + aiohttp, streaming
requests as the completions API's clients send them). Rows:
- 1, 16, 64 and 256 concurrent clients, each sending streaming requests of 400 characters one after the
  other for a few seconds: aggregate characters per second, p50/p99 time to the first character, and the
  CPU used by the load generator and by the server (they share the machine's cores); against in-process
  `Generator.generate(n=256)`, timed in the same run.
- overload: more clients than a small server admits: how many got 200, 429 and 503 (with Retry-After).
- soak: clients in a loop for `--soak` seconds; the server's resident memory sampled every few seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import aiohttp

from charsdk import Generator

from . import machine
from .generation import SEED_TEXT, TEMPERATURE
from .server import Server

LENGTH = 400  # characters per request
CLIENTS = (1, 16, 64, 256)


async def one_request(session: aiohttp.ClientSession, base: str, seed: int) -> dict:
    """A streaming completion: seconds to the first character, characters, and the status."""
    body = {"prompt": SEED_TEXT, "max_tokens": LENGTH, "temperature": TEMPERATURE, "seed": seed,
            "stream": True}
    start = time.perf_counter()
    first, chars = None, 0
    async with session.post(base + "/completions", json=body) as response:
        if response.status != 200:
            return {"status": response.status, "retry_after": response.headers.get("Retry-After"),
                    "error": (await response.json())["error"]["type"]}
        async for line in response.content:
            if line.startswith(b"data: {"):
                text = "".join(c["text"] for c in json.loads(line[6:])["choices"])
                if text and first is None:
                    first = time.perf_counter() - start
                chars += len(text)
    return {"status": 200, "first_s": first, "chars": chars}


def _session(clients: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients + 8),
                                 timeout=aiohttp.ClientTimeout(total=120))


async def wave(base: str, clients: int, seed: int = 0) -> list[dict]:
    """`clients` requests at once."""
    async with _session(clients) as session:
        return await asyncio.gather(*(one_request(session, base, seed + i) for i in range(clients)))


async def sustained(base: str, clients: int, seconds: float, on_tick=None) -> list[dict]:
    """`clients` clients, each sending one request after the other until `seconds` have passed;
    `on_tick()` is awaited every 5 s meanwhile."""
    deadline = time.monotonic() + seconds
    results: list[dict] = []

    async def client_loop(session, index):
        k = 0
        while time.monotonic() < deadline:
            results.append(await one_request(session, base, seed=index * 1_000_000 + k))
            k += 1

    async def ticks():
        while on_tick and time.monotonic() + 5 < deadline:
            await asyncio.sleep(5)
            on_tick()

    async with _session(clients) as session:
        await asyncio.gather(ticks(), *(client_loop(session, i) for i in range(clients)))
    return results


def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load_row(server: Server, clients: int, rounds: int, seconds: float) -> dict:
    """Medians over rounds of `clients` concurrent clients sending requests for `seconds`."""
    rates, firsts, client_cores, server_cores = [], [], [], []
    for _ in range(rounds):
        cpu0, server0, start = cpu_self(), server.cpu_s(), time.perf_counter()
        results = asyncio.run(sustained(server.base, clients, seconds))
        wall = time.perf_counter() - start
        assert all(x["status"] == 200 and x["chars"] == LENGTH for x in results), results[:3]
        rates.append(sum(x["chars"] for x in results) / wall)
        firsts += [x["first_s"] for x in results]
        client_cores.append((cpu_self() - cpu0) / wall)
        server_cores.append((server.cpu_s() - server0) / wall)
    firsts.sort()
    return {"clients": clients, "chars_per_s": statistics.median(rates),
            "first_char_p50_s": firsts[len(firsts) // 2],
            "first_char_p99_s": firsts[min(len(firsts) - 1, int(0.99 * len(firsts)))],
            "load_generator_cores": statistics.median(client_cores),
            "server_cores": statistics.median(server_cores)}


def in_process_rate(model: str, rounds: int) -> float:
    generator = Generator.load(model, threads=os.cpu_count())
    generator.generate(SEED_TEXT, 50, TEMPERATURE, n=256, seed=1)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        generator.generate(SEED_TEXT, LENGTH, TEMPERATURE, n=256, seed=1)
        times.append(time.perf_counter() - start)
    return 256 * LENGTH / statistics.median(times)


def overload(model: str) -> dict:
    """64 clients at a server admitting 16 streams, 16 waiting, for at most 0.5 s."""
    server = Server("--model", model, "--max-streams", "16", "--max-waiting", "16", "--max-wait-s", "0.5")
    try:
        results = asyncio.run(wave(server.base, 64))
    finally:
        server.stop()
    counts: dict[str, int] = {}
    for x in results:
        key = str(x["status"])
        if x["status"] != 200:
            key += f" {x['error']}, Retry-After {x['retry_after']}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def soak(server: Server, seconds: float, clients: int = 64) -> dict:
    """`clients` clients sending requests for `seconds`; the server's RSS sampled every 5 s after a
    warm-up of a tenth of the soak."""
    start, samples = time.monotonic(), []

    def sample():
        if time.monotonic() - start >= seconds / 10:
            samples.append(server.rss_mb())

    results = asyncio.run(sustained(server.base, clients, seconds, sample))
    assert all(x["status"] == 200 for x in results)
    first, peak, last = samples[0], max(samples), samples[-1]
    return {"seconds": seconds, "clients": clients, "requests": len(results), "rss_mb_first": first,
            "rss_mb_peak": peak, "rss_mb_last": last, "growth": peak / first - 1}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_serve", description=__doc__)
    p.add_argument("--model", default="nietzsche")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--server-flags", nargs="*", default=[], help="more flags for charsdk serve")
    p.add_argument("--seconds", type=float, default=5.0, help="seconds of load per row and round")
    p.add_argument("--soak", type=float, default=300.0, help="seconds of the soak (0: none)")
    p.add_argument("--out", required=True, help="JSON file for the results")
    args = p.parse_args(argv)

    reference = in_process_rate(args.model, args.rounds)
    server = Server("--model", args.model, "--max-streams", "256", *args.server_flags)
    try:
        asyncio.run(wave(server.base, 16))  # warm-up
        rows = [load_row(server, clients, args.rounds, args.seconds) for clients in CLIENTS]
        reference_after = in_process_rate(args.model, args.rounds)  # the machine drifts: both sides
        soaked = soak(server, args.soak) if args.soak else None
    finally:
        server.stop()
    refused = overload(args.model)
    in_process = (reference + reference_after) / 2
    print(f"\ncharsdk serve, {args.model} model, {os.cpu_count()} cores shared by server and load generator; "
          f"streaming requests of {LENGTH} characters, {args.seconds:g} s of load per row, medians of "
          f"{args.rounds} rounds\n{machine.line()}\n")
    print("| clients | chars/s | of in-process n=256 | first char p50 | p99 | load generator CPU "
          "| server CPU |")
    print("| ---:| ---:| ---:| ---:| ---:| ---:| ---:|")
    for r in rows:
        print(f"| {r['clients']} | {r['chars_per_s']:,.0f} | {r['chars_per_s'] / in_process:.0%} | "
              f"{r['first_char_p50_s'] * 1e3:.0f} ms | {r['first_char_p99_s'] * 1e3:.0f} ms | "
              f"{r['load_generator_cores']:.2f} cores | {r['server_cores']:.2f} cores |")
    print(f"\nin-process Generator.generate(n=256): {reference:,.0f} chars/s before, "
          f"{reference_after:,.0f} after")
    print(f"overload, 64 clients at --max-streams 16 --max-waiting 16 --max-wait-s 0.5: {refused}")
    if soaked:
        print(f"soak: {soaked['clients']} clients for {soaked['seconds']:.0f} s, {soaked['requests']:,} "
              f"requests; server RSS {soaked['rss_mb_first']:.0f} MB after warm-up, peak "
              f"{soaked['rss_mb_peak']:.0f} MB, last {soaked['rss_mb_last']:.0f} MB "
              f"({soaked['growth']:+.1%})")
    result = {"model": args.model, "machine": machine.describe(), "cpus": os.cpu_count(), "length": LENGTH,
              "rounds": args.rounds,
              "in_process_n256_chars_per_s": [reference, reference_after], "rows": rows,
              "overload": refused, "soak": soaked}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
