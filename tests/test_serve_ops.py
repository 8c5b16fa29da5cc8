"""`charsdk serve` for operators: API keys, CORS, /metrics, several models, draining on SIGTERM, and
hostile clients. A real server process on a loopback port each; loops bounded in count and time."""

import json
import signal
import socket
import threading
import time

import httpx
import pytest

from charsdk import Generator

BOOK, DEFAULT = "nietzsche-book", "nietzsche"


def post(server, body: dict, **kwargs) -> httpx.Response:
    return httpx.post(server.base + "/completions", content=json.dumps(body), timeout=60, **kwargs)


REQUEST = {"prompt": "the free spirit ", "max_tokens": 40, "seed": 1}


def test_api_keys_guard_the_api_but_not_health_metrics_or_preflights(servers):
    server = servers("--model", BOOK, "--api-key", "first-key", "--allow-origin", "http://page.example",
                     env={"CHARSDK_API_KEY": "key-from-env"})
    missing = post(server, REQUEST)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    assert "Authorization: Bearer" in missing.json()["error"]["message"]
    wrong = post(server, REQUEST, headers={"Authorization": "Bearer not-a-key"})
    assert wrong.status_code == 401 and wrong.json()["error"]["message"] == "the API key is not valid"
    assert httpx.get(server.root + "/v1/models", timeout=10).status_code == 401
    assert post(server, REQUEST, headers={"Authorization": "Bearer first-key"}).status_code == 200
    assert httpx.get(server.root + "/health", timeout=10).status_code == 200
    assert httpx.get(server.root + "/metrics", timeout=10).status_code == 200
    preflight = httpx.options(server.root + "/v1/completions", timeout=10, headers={
        "Origin": "http://page.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 200
    assert "first-key" not in server.stop()  # never logged


def test_the_api_key_can_come_from_the_environment(servers):
    server = servers("--model", BOOK, env={"CHARSDK_API_KEY": "key-from-env"})
    assert post(server, REQUEST).status_code == 401
    assert post(server, REQUEST, headers={"Authorization": "Bearer key-from-env"}).status_code == 200


def test_cors_answers_allowed_origins_only(servers):
    server = servers("--model", BOOK, "--allow-origin", "http://page.example")
    ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    allowed = httpx.options(server.root + "/v1/completions", timeout=10,
                            headers={"Origin": "http://page.example", **ask})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "http://page.example"
    other = httpx.options(server.root + "/v1/completions", timeout=10,
                          headers={"Origin": "http://elsewhere.example", **ask})
    assert "access-control-allow-origin" not in other.headers
    answer = post(server, REQUEST, headers={"Origin": "http://page.example"})
    assert answer.headers["access-control-allow-origin"] == "http://page.example"
    plain = servers("--model", BOOK)  # no --allow-origin: no CORS headers at all
    assert "access-control-allow-origin" not in post(plain, REQUEST,
                                                           headers={"Origin": "http://page.example"}).headers


def metrics(server) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(server.root + "/metrics", timeout=10).text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_metrics_parse_and_move_with_requests(servers):
    server = servers("--model", BOOK, "--max-streams", "4", "--max-waiting", "0")
    before = metrics(server)
    assert post(server, {**REQUEST, "max_tokens": 300}).status_code == 200
    assert post(server, {**REQUEST, "temperature": -1}).status_code == 400
    streamed = post(server, {**REQUEST, "max_tokens": 100, "stream": True})
    assert streamed.status_code == 200 and "data: [DONE]" in streamed.text
    after = metrics(server)

    def moved(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)
    assert moved("charsdk_requests_total", status="200") == 2
    assert moved("charsdk_requests_total", status="400") == 1
    assert moved("charsdk_characters_generated_total") == 400
    assert moved("charsdk_time_to_first_character_seconds_count") == 2
    assert moved("charsdk_request_seconds_count") == 3
    assert moved("charsdk_batch_streams_count") >= 2
    assert after[("charsdk_streams_active", ())] == 0 and after[("charsdk_requests_waiting", ())] == 0


def test_two_models_each_give_their_own_text(servers):
    server = servers("--model", BOOK, "--model", DEFAULT)
    listed = httpx.get(server.root + "/v1/models", timeout=10).json()["data"]
    assert [m["id"] for m in listed] == [BOOK, DEFAULT]
    texts = {}
    for name in (BOOK, DEFAULT):
        answer = post(server, {**REQUEST, "model": name})
        assert answer.status_code == 200 and answer.json()["model"] == name
        texts[name] = answer.json()["choices"][0]["text"]
        assert texts[name] == Generator.load(name).generate("the free spirit ", 40, 1.0, seed=1)
    assert texts[BOOK] != texts[DEFAULT]
    assert post(server, REQUEST).json()["model"] == BOOK  # the first is the default
    unknown = post(server, {**REQUEST, "model": "nope"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


def read_stream(server, body, out: dict):
    try:
        with httpx.stream("POST", server.root + "/v1/completions", content=json.dumps(body), timeout=60) as r:
            out["status"], out["text"] = r.status_code, ""
            for line in r.iter_lines():
                out.setdefault("first", time.monotonic())
                if line.startswith("data: {"):
                    out["text"] += "".join(c["text"] for c in json.loads(line[6:])["choices"])
                out["done"] = out.get("done") or line == "data: [DONE]"
    except httpx.HTTPError as exc:  # the server went away (the second signal)
        out["error"] = exc


def long_stream(server) -> tuple[dict, threading.Thread]:
    """A streaming request of 100,000 characters, read in a thread; returns once its first chunk came."""
    out = {}
    reader = threading.Thread(target=read_stream, daemon=True,
                              args=(server, {**REQUEST, "max_tokens": 100_000, "stream": True}, out))
    reader.start()
    deadline = time.monotonic() + 20
    while "first" not in out and time.monotonic() < deadline:
        time.sleep(0.01)
    return out, reader


def test_sigterm_drains_streams_in_flight_refuses_new_requests_and_exits_0(servers):
    server = servers("--model", DEFAULT, "--drain-s", "30")
    out, reader = long_stream(server)
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    refused = post(server, REQUEST)
    assert refused.status_code == 503 and refused.json()["error"]["type"] == "server_shutting_down"
    health = httpx.get(server.root + "/health", timeout=10)
    assert health.status_code == 503 and health.json()["status"] == "draining"
    reader.join(timeout=60)
    assert out["status"] == 200 and out["done"] and len(out["text"]) == 100_000
    assert server.process.wait(timeout=30) == 0


def test_a_second_signal_exits_at_once(servers):
    server = servers("--model", DEFAULT, "--drain-s", "60")
    long_stream(server)
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=5) != 0


def raw(server, data: bytes, wait_s: float) -> bytes:
    """Send `data` on a new connection, then read whatever comes back until the server closes it (or
    wait_s passes)."""
    with socket.create_connection((server.host, int(server.port)), timeout=wait_s) as sock:
        sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            received += b"<still open>"
        return received


def test_stalled_idle_and_oversized_clients_fail_alone_while_a_good_request_succeeds(servers):
    server = servers("--model", BOOK, "--request-timeout-s", "1")
    results = {}
    hostile = {
        "stalled headers": b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: appl",
        "idle": b"",
        "stalled body": b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"pro",
        "oversized header": b"GET /health HTTP/1.1\r\nHost: x\r\nCookie: " + b"a" * 40_000 + b"\r\n\r\n",
    }
    threads = [threading.Thread(target=lambda k=k, v=v: results.__setitem__(k, raw(server, v, 8)))
               for k, v in hostile.items()]
    idle = [socket.create_connection((server.host, int(server.port))) for _ in range(2000)]
    for t in threads:
        t.start()
    good = post(server, REQUEST)  # while all of them hang on
    assert good.status_code == 200 and len(good.json()["choices"][0]["text"]) == 40
    for t in threads:
        t.join(timeout=15)
    assert results["stalled headers"].startswith(b"HTTP/1.1 408"), results["stalled headers"]
    assert results["idle"].startswith(b"HTTP/1.1 408"), results["idle"]
    assert results["stalled body"].startswith(b"HTTP/1.1 408"), results["stalled body"]
    assert results["oversized header"].startswith(b"HTTP/1.1 431"), results["oversized header"][:100]
    time.sleep(1.5)
    closed = 0
    for sock in idle:  # each of the 2,000 idle sockets was closed by the server by now
        sock.settimeout(1)
        try:
            closed += sock.recv(65536).startswith(b"HTTP/1.1 408") or True
        except OSError:
            closed += 1
        sock.close()
    assert closed == 2000
    assert post(server, REQUEST).status_code == 200


@pytest.mark.parametrize("body, message", [
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"prompt": "\xff\xfe"}', "not valid JSON"),
    (json.dumps({"prompt": "a", "stop": ["x"] * 100}).encode(), "stop has 100 strings"),
    (json.dumps({"prompt": ["a"] * 5000}).encode(), "asks for 5000 streams"),
])
def test_hostile_bodies_get_a_400_naming_the_problem(servers, body, message):
    server = servers("--model", BOOK)
    answer = httpx.post(server.root + "/v1/completions", content=body, timeout=30)
    assert answer.status_code == 400 and message in answer.json()["error"]["message"]
