"""`charsdk serve`: a real server process on a loopback port, real HTTP clients (openai, httpx)."""

import concurrent.futures
import json
import socket
import subprocess
import sys
import time

import httpx
import pytest

from charsdk import Generator
from tests.conftest import ApiServer

MODEL = "nietzsche-book"  # the small shipped model: the fastest real one


@pytest.fixture(scope="module")
def server():
    s = ApiServer("--model", MODEL, "--max-streams", "64", "--batchers", "2")  # two, whatever the cores
    yield s
    s.stop()


@pytest.fixture(scope="module")
def generator():
    return Generator.load(MODEL)


def test_the_openai_client_streams_and_completes(server, generator):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.base, api_key="not-needed", max_retries=0)
    assert [m.id for m in client.models.list()] == [MODEL]
    expected = generator.generate("the free spirit ", 300, 0.7, seed=5)
    chunks = list(client.completions.create(model=MODEL, prompt="the free spirit ", max_tokens=300,
                                            temperature=0.7, seed=5, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.text for chunk in chunks for c in chunk.choices) == expected
    assert [c.finish_reason for chunk in chunks for c in chunk.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 300 and chunks[-1].usage.prompt_tokens == 16
    whole = client.completions.create(model=MODEL, prompt="the free spirit ", max_tokens=300,
                                      temperature=0.7, seed=5)
    assert whole.choices[0].text == expected and whole.usage.total_tokens == 316


def test_stop_strings_echo_and_several_prompts(server, generator):
    body = {"prompt": ["the ", "what is "], "max_tokens": 200, "n": 2, "seed": 3, "temperature": 1.0,
            "stop": ["e s"], "echo": True}
    choices = server.post(body).json()["choices"]
    for prompt_index, prompt in enumerate(body["prompt"]):
        expected = generator.generate(prompt, 200, 1.0, n=2, seed=3, stop="e s")
        for j in range(2):
            choice = choices[prompt_index * 2 + j]
            assert choice["index"] == prompt_index * 2 + j
            assert choice["text"] == prompt + expected[j]
            assert choice["finish_reason"] == ("stop" if len(expected[j]) < 200 else "length")


def test_32_concurrent_seeded_requests_equal_their_sequential_results(server, generator):
    """All 32 share batches (different lengths, temperatures, filters, stop strings, n); each gets the
    text Generator.generate gives it alone."""
    requests = [{"prompt": f"request {i} ", "max_tokens": 100 + 37 * i, "seed": i,
                 "temperature": [0.0, 0.5, 1.0, 1.3][i % 4], "top_k": 5 if i % 3 == 0 else 0,
                 "top_p": 0.9 if i % 5 == 0 else 1.0, "n": 1 + i % 2, "stop": ["xq"] if i % 7 == 0 else [],
                 "stream": i % 2 == 0} for i in range(32)]

    def run(body):
        if not body["stream"]:
            return [c["text"] for c in server.post(body).json()["choices"]]
        texts = [""] * body["n"]
        with httpx.stream("POST", server.base + "/completions", json=body, timeout=60) as response:
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    for choice in json.loads(line[6:])["choices"]:
                        texts[choice["index"]] += choice["text"]
        return texts

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(run, requests))
    for body, texts in zip(requests, results, strict=True):
        expected = generator.generate(body["prompt"], body["max_tokens"], body["temperature"], n=body["n"],
                                      top_k=body["top_k"], top_p=body["top_p"], stop=body["stop"],
                                      seed=body["seed"])
        assert texts == (expected if body["n"] > 1 else [expected]), body


@pytest.mark.parametrize(("body", "param"), [
    ({"prompt": "the ", "max_tokens": -1}, "max_tokens"),
    ({"prompt": "the ", "top_p": 0}, "top_p"),
    ({"prompt": "the ", "top_p": 1.5}, "top_p"),
    ({"prompt": "the ", "temperature": "hot"}, "temperature"),
    ({"prompt": "the ", "temperature": -1}, "temperature"),
    ({"prompt": "the ", "top_k": -2}, "top_k"),
    ({"prompt": "the ", "n": 0}, "n"),
    ({"prompt": "the ", "seed": -1}, "seed"),
    ({"prompt": "the ", "stream": "yes"}, "stream"),
    ({"prompt": "the ", "stop": [""]}, "stop"),
    ({"prompt": "the \u2603"}, "prompt"),
    ({"prompt": 42}, "prompt"),
    ({"max_tokens": 3}, "prompt"),
    ({"prompt": "x" * 20_001}, "prompt"),
    ({"prompt": "the ", "on_unknown": "ignore"}, "on_unknown"),
    ({"prompt": "the ", "logprobs": 21}, "logprobs"),
    ({"prompt": [1, 9999]}, "prompt"),
    ({"prompt": [[1, 2], ["a"]]}, "prompt"),
    ({"prompt": "the ", "best_of": 2}, "best_of"),
    ({"prompt": "the ", "max_new_tokens": 5}, "max_new_tokens"),  # a field of another API: named, not ignored
    ("{not json", None),
    ("[1, 2]", None),
])
def test_bad_requests_get_400_naming_the_field_and_the_server_keeps_serving(server, body, param):
    response = server.post(body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"] and "Traceback" not in response.text
    assert server.post({"prompt": "the ", "max_tokens": 5}).status_code == 200


def test_unknown_characters_can_be_skipped_and_unknown_models_get_404(server, generator):
    response = server.post({"prompt": "the \u2603", "max_tokens": 20, "seed": 1, "on_unknown": "skip"})
    assert response.json()["choices"][0]["text"] == generator.generate("the ", 20, 1.0, seed=1)
    refused = server.post({"prompt": "the \u2603"}).json()["error"]  # the fix, in the API's words
    assert refused["param"] == "prompt" and refused["message"].endswith('skip them ("on_unknown": "skip")')
    response = server.post({"model": "gpt-4", "prompt": "the "})
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
    assert httpx.get(server.root + "/v1/nothing").status_code == 404
    assert httpx.get(server.base + "/completions").status_code == 405


def _open_stream(server: ApiServer, max_tokens: int = 10_000_000) -> httpx.Client:
    """A streaming request that has started producing text, left open."""
    client = httpx.Client(timeout=30)
    request = client.build_request("POST", server.base + "/completions",
                                   json={"prompt": "the ", "max_tokens": max_tokens, "stream": True})
    response = client.send(request, stream=True)
    assert response.status_code == 200
    client.lines = response.iter_lines()  # kept: closing the iterator would close the response
    next(client.lines)
    return client


def _wait_for(condition, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_a_client_that_disconnects_frees_its_streams():
    server = ApiServer("--model", MODEL, "--max-streams", "2", "--max-wait-s", "0.2",
                       "--max-tokens", "10000000")
    try:
        clients = [_open_stream(server) for _ in range(2)]
        assert server.health()["free_streams"] == 0
        assert server.post({"prompt": "the ", "max_tokens": 5}).status_code == 503
        clients[0].close()  # the client goes away mid-stream
        assert _wait_for(lambda: server.health()["free_streams"] == 1)
        assert server.post({"prompt": "the ", "max_tokens": 5}).status_code == 200
        # a non-streaming request whose client gives up frees its streams too
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.base + "/completions", json={"prompt": "the ", "max_tokens": 10_000_000},
                       timeout=0.5)
        assert _wait_for(lambda: server.health()["free_streams"] == 1)
        clients[1].close()
        assert _wait_for(lambda: server.health() == {**server.health(), "free_streams": 2, "streams": 0})
    finally:
        server.stop()


def test_overload_gives_503_after_a_bounded_wait_and_429_beyond_the_waiting_room():
    server = ApiServer("--model", MODEL, "--max-streams", "1", "--max-waiting", "1", "--max-wait-s", "1",
                       "--max-tokens", "10000000")
    try:
        busy = _open_stream(server)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(server.post, {"prompt": "the ", "max_tokens": 5})
            assert _wait_for(lambda: server.health()["waiting_requests"] == 1)
            refused = server.post({"prompt": "the ", "max_tokens": 5})  # the waiting room is full
            assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
            assert refused.json()["error"]["type"] == "rate_limit_exceeded"
            started = time.monotonic()
            timed_out = waiting.result()
        assert timed_out.status_code == 503 and timed_out.headers["Retry-After"] == "1"
        assert "busy" in timed_out.json()["error"]["message"] and time.monotonic() - started < 1.5
        assert server.post({"prompt": "the ", "n": 2}).json()["error"]["param"] == "n"  # more than exist
        busy.close()
        assert server.post({"prompt": "the ", "max_tokens": 5}).status_code == 200
    finally:
        server.stop()


def test_serve_options_are_checked_in_one_line():
    for flags, message in ((["--port", "70000"], "--port"), (["--max-streams", "0"], "--max-streams"),
                           (["--batchers", "-3"], "--batchers"), (["--max-wait-s", "-1"], "--max-wait-s")):
        out = subprocess.run([sys.executable, "-m", "charsdk", "serve", *flags], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 2 and out.stderr.startswith("charsdk: error: " + message), out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
    with socket.create_server(("127.0.0.1", 0)) as taken:
        out = subprocess.run([sys.executable, "-m", "charsdk", "serve", "--port",
                              str(taken.getsockname()[1])], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "cannot listen on" in out.stderr and "Traceback" not in out.stderr


def test_the_old_serve_flags_work_for_a_release_with_a_warning_line_each():
    server = ApiServer("--model", MODEL, "--threads", "1", "--max-wait", "1", "--request-timeout", "5")
    try:
        assert server.post({"prompt": "the ", "max_tokens": 5}).status_code == 200
    finally:
        stderr = server.stop()
    warnings = [line for line in stderr.splitlines() if "is deprecated" in line]
    assert [w.split(" is deprecated")[0] for w in warnings] == [
        "charsdk: warning: --max-wait", "charsdk: warning: --request-timeout", "charsdk: warning: --threads"]
    assert "use --batchers" in warnings[2]


def test_the_server_says_where_it_listens_on_one_line_for_programs(server):
    assert server.started == {"listening": server.root, "models": [MODEL]}
    assert server.root.startswith("http://127.0.0.1:") and int(server.port) > 0


def test_the_openapi_document_describes_the_completions_request(server):
    document = httpx.get(server.root + "/openapi.json", timeout=10).json()
    request = document["components"]["schemas"]["CompletionRequest"]
    assert document["openapi"].startswith("3.") and "/v1/completions" in document["paths"]
    assert request["required"] == ["prompt"] and {"max_tokens", "temperature", "top_k", "stream"} <= set(
        request["properties"])


def test_import_charsdk_does_not_import_the_server_stack():
    code = "import sys, charsdk; print(sorted({'starlette', 'uvicorn'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"
