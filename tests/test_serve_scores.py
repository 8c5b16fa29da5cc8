"""The server's scores, as evaluation harnesses read them: logprobs and echo in OpenAI's shape (streaming
too), prompts as token ids, and the tokenizer routes at the root in vLLM's shapes."""

import json
import math

import httpx
import numpy as np
import pytest

from charsdk import Generator
from tests.conftest import ApiServer

MODEL = "nietzsche-book"
TEXT = ("it is the business of the very few to be independent; it is a privilege of the strong. and "
        "whoever attempts it, even with the best right, but without being obliged to do so, ")


@pytest.fixture(scope="module")
def server():
    s = ApiServer("--model", MODEL)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def generator():
    return Generator.load(MODEL)


def test_an_echoed_prompt_s_logprobs_are_evaluate_s(server, generator):
    answer = server.post({"prompt": TEXT, "max_tokens": 0, "echo": True, "logprobs": 2}).json()
    (choice,) = answer["choices"]
    logprobs = choice["logprobs"]
    assert choice["text"] == TEXT and choice["finish_reason"] == "length"
    assert logprobs["tokens"] == list(TEXT) and logprobs["text_offset"] == list(range(len(TEXT)))
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    maxlen = generator.vocab.maxlen
    bits = -np.mean(logprobs["token_logprobs"][maxlen:]) / math.log(2)
    assert bits == pytest.approx(generator.evaluate(TEXT)["bits_per_char"], abs=1e-6)
    for char, top in zip(logprobs["tokens"][1:], logprobs["top_logprobs"][1:], strict=True):
        best = list(top.values())[:2]
        assert char in top and len(top) in (2, 3) and best == sorted(best, reverse=True)


def test_lm_evaluation_harness_s_own_request_is_answered(server, generator):
    """local-completions' log-likelihood request, as it sends it: token ids, one character more, echo."""
    context, continuation = "the will to power ", "is"
    ids = server_tokens(server, context + continuation)
    body = {"model": MODEL, "prompt": [ids], "temperature": 0, "max_tokens": 1, "logprobs": 1, "seed": 1234,
            "echo": True}
    (choice,) = server.post(body).json()["choices"]
    logprobs = choice["logprobs"]
    assert len(logprobs["token_logprobs"]) == len(ids) + 1
    assert choice["text"].startswith(context + continuation)
    ctxlen = len(context)
    scored = logprobs["token_logprobs"][ctxlen:-1]  # what the harness sums: the continuation's characters
    expected = [s.logprob for s in generator.prompt_scores(generator.request(context + continuation,
                                                                             logprobs=0))][ctxlen - 1 :]
    assert scored == pytest.approx(expected, abs=1e-6)
    drawn, top = logprobs["tokens"][-1], logprobs["top_logprobs"][-1]
    assert list(top) == [drawn] and logprobs["token_logprobs"][-1] == pytest.approx(top[drawn])  # greedy


def server_tokens(server, text: str) -> list[int]:
    return httpx.post(server.root + "/tokenize", json={"prompt": text, "add_special_tokens": False},
                      timeout=10).json()["tokens"]


def test_the_tokenizer_routes_speak_vllm_s_shapes(server, generator):
    info = httpx.get(server.root + "/tokenizer_info", timeout=10).json()
    assert info["eos_token"] == "\n" and info["vocab_size"] == generator.vocab.size
    assert info["tokens"] == list(generator.vocab.chars)
    tokens = server_tokens(server, "the will")
    assert tokens == generator.vocab.encode("the will").tolist()
    assert httpx.post(server.root + "/detokenize", json={"tokens": tokens}, timeout=10).json() == {
        "prompt": "the will"}
    bad = httpx.post(server.root + "/detokenize", json={"tokens": [0, 999]}, timeout=10)
    assert bad.status_code == 400 and "token id 999" in bad.json()["error"]["message"]
    unknown = httpx.post(server.root + "/tokenize", json={"prompt": "the \u2603"}, timeout=10)
    assert unknown.status_code == 400 and '"on_unknown": "skip"' in unknown.json()["error"]["message"]


def test_prompts_as_token_ids_are_their_text(server, generator):
    ids = generator.vocab.encode("what is noble? ").tolist()
    by_ids = server.post({"prompt": [ids, ids], "max_tokens": 40, "seed": 2}).json()["choices"]
    by_text = server.post({"prompt": "what is noble? ", "max_tokens": 40, "seed": 2}).json()["choices"]
    assert [c["text"] for c in by_ids] == [by_text[0]["text"]] * 2
    single = server.post({"prompt": ids, "max_tokens": 40, "seed": 2}).json()["choices"]
    assert single[0]["text"] == by_text[0]["text"]


def test_generated_logprobs_stream_in_pieces_that_add_up_and_the_openai_client_reads_them(server, generator):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.base, api_key="not-needed", max_retries=0)
    expected = generator.generate("the free spirit ", 200, 0.8, seed=6, logprobs=3)
    whole = client.completions.create(model=MODEL, prompt="the free spirit ", max_tokens=200, temperature=0.8,
                                      seed=6, logprobs=3)
    logprobs = whole.choices[0].logprobs
    assert whole.choices[0].text == expected.text and logprobs.tokens == list(expected.text)
    assert logprobs.token_logprobs == pytest.approx([s.logprob for s in expected.scores], abs=1e-9)
    assert logprobs.text_offset == list(range(200)) and len(logprobs.top_logprobs[0]) in (3, 4)
    chunks = list(client.completions.create(model=MODEL, prompt="the free spirit ", max_tokens=200,
                                            temperature=0.8, seed=6, logprobs=3, echo=True, stream=True))
    pieces = [c for chunk in chunks for c in chunk.choices]
    assert "".join(p.text for p in pieces) == "the free spirit " + expected.text
    tokens = [t for p in pieces for t in p.logprobs.tokens]
    offsets = [o for p in pieces for o in p.logprobs.text_offset]
    assert "".join(tokens) == "the free spirit " + expected.text and offsets == list(range(len(tokens)))


def test_a_request_without_logprobs_answers_null_scores(server):
    raw = server.post({"prompt": "the ", "max_tokens": 5, "stream": True}).text
    events = [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: {")]
    assert events and all(c["logprobs"] is None for e in events for c in e["choices"])
