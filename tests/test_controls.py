"""Penalties and biases (charsdk.controls): what each does to seeded samples, in Python, the engine's
mixed batches, the CLI and the server, and every value checked."""

from collections import Counter

import numpy as np
import pytest

from charsdk import Generator, InputError
from charsdk.controls import Controls
from charsdk.engine import Engine


@pytest.fixture(scope="module")
def generator():
    return Generator.load("nietzsche-book")


def test_a_banned_character_never_appears_in_ten_thousand_drawn(generator):
    texts = generator.generate("the ", 1000, 1.2, n=10, seed=1, logit_bias={"e": -100, " ": -100})
    assert sum(map(len, texts)) == 10_000 and not any("e" in t or " " in t for t in texts)
    plain = generator.generate("the ", 1000, 1.2, n=10, seed=1)
    assert sum(t.count("e") for t in plain) > 500  # what the ban removed
    by_id = generator.generate("the ", 200, 1.0, seed=2, logit_bias={generator.vocab.chars.index("e"): -100})
    assert "e" not in by_id


def test_a_positive_bias_makes_a_character_more_frequent(generator):
    plain = "".join(generator.generate("the ", 500, 0.8, n=4, seed=3))
    biased = "".join(generator.generate("the ", 500, 0.8, n=4, seed=3, logit_bias={"z": 5.0}))
    assert biased.count("z") > 10 * max(plain.count("z"), 1)


def test_a_frequency_penalty_lowers_repetition_measurably(generator):
    """The most common characters of a sample get rarer as the penalty grows (OpenAI's definition)."""
    def top_share(texts):
        counts = Counter("".join(texts))
        return sum(n for _, n in counts.most_common(3)) / sum(counts.values())
    shares = [top_share(generator.generate("the ", 400, 0.7, n=8, seed=4, frequency_penalty=f))
              for f in (0.0, 0.05, 0.2)]
    assert shares[0] > shares[1] > shares[2], shares


def test_a_presence_penalty_brings_in_characters_not_yet_used(generator):
    plain = generator.generate("the ", 150, 0.7, n=8, seed=5)
    present = generator.generate("the ", 150, 0.7, n=8, seed=5, presence_penalty=2.0)
    assert np.mean([len(set(t)) for t in present]) > np.mean([len(set(t)) for t in plain]) + 3


def test_a_repetition_penalty_breaks_a_greedy_loop(generator):
    def repeated(text, n=12):
        grams = [text[i : i + n] for i in range(len(text) - n)]
        return len(grams) - len(set(grams))
    greedy = generator.generate("the ", 600, 0)
    penalised = generator.generate("the ", 600, 0, repetition_penalty=1.5)
    assert repeated(greedy) > 100 and repeated(penalised) < repeated(greedy) / 4


def test_the_rules_are_the_documented_ones(generator):
    vocab = generator.vocab
    controls = Controls.check(vocab, {"a": 2.0, "b": -100}, presence_penalty=0.5, frequency_penalty=0.25,
                              repetition_penalty=2.0, repetition_window=2)
    z = np.linspace(-3, 3, vocab.size)
    counts = np.zeros(vocab.size)
    counts[0], counts[1] = 1, 2  # generated so far: id 0 once, id 1 twice
    recent = [5, 7, 9]  # the window of 2 sees 7 and 9
    out = controls.apply(z, counts, recent)
    expected = z.copy()
    for i in (7, 9):
        expected[i] = expected[i] / 2 if expected[i] > 0 else expected[i] * 2
    expected -= 0.25 * counts + 0.5 * (counts > 0)
    expected[vocab.chars.index("a")] += 2.0
    expected[vocab.chars.index("b")] = -np.inf
    assert np.array_equal(out, expected)
    assert Controls.check(vocab) is None  # neutral: drawn inside the graph as before


@pytest.mark.parametrize("mode", ["stateful", "window"])
def test_controlled_and_plain_streams_share_a_batch_and_each_gets_its_own_text(generator, mode):
    engine = Engine(generator.backend, mode)
    plain = generator.request("the ", 120, 0.9, n=2, seed=6, mode=mode)
    banned = generator.request("we ", 120, 0.9, seed=7, mode=mode, logit_bias={"e": -100}, logprobs=1)
    a, b = engine.add([plain, banned])
    texts = {}
    while engine.streams:
        for stream, piece, _ in engine.step(9):
            texts[id(stream)] = texts.get(id(stream), "") + piece
    assert [texts[id(s)] for s in a] == generator.generate("the ", 120, 0.9, n=2, seed=6, mode=mode)
    alone = generator.generate("we ", 120, 0.9, seed=7, mode=mode, logit_bias={"e": -100}, logprobs=1)
    assert texts[id(b[0])] == alone.text and "e" not in alone.text
    assert all(s.logprob <= 0 for s in alone.scores)  # the model's own distribution, before the ban


@pytest.mark.parametrize(("arguments", "message"), [
    ({"presence_penalty": 2.5}, "presence_penalty must be a number from -2 to 2"),
    ({"frequency_penalty": "lots"}, "frequency_penalty must be a number"),
    ({"repetition_penalty": 0}, "repetition_penalty must be a number > 0"),
    ({"repetition_window": 0}, "repetition_window must be an integer >= 1"),
    ({"logit_bias": {"e": 101}}, "logit_bias must be a number from -100 to 100"),
    ({"logit_bias": {"\u2603": 1}}, "neither one of this model's characters"),
    ({"logit_bias": {999: 1}}, "this model's ids are 0 to"),
    ({"logit_bias": ["e"]}, "logit_bias must be a mapping"),
])
def test_bad_controls_are_one_clear_error_naming_the_argument(generator, arguments, message):
    with pytest.raises(InputError, match=message) as caught:
        generator.generate("the ", 10, **arguments)
    assert caught.value.argument == next(iter(arguments))


def test_banning_every_character_is_refused(generator):
    with pytest.raises(InputError, match="bans every character"):
        generator.generate("the ", 10, logit_bias={c: -100 for c in generator.vocab.chars})


def test_the_cli_and_the_server_take_the_same_controls(generator, tmp_path):
    from typer.testing import CliRunner

    from charsdk.cli import app
    from tests.conftest import ApiServer

    expected = generator.generate("the ", 200, 0.8, seed=8, logit_bias={"e": -100, "a": 2.0},
                                  frequency_penalty=0.3, repetition_penalty=1.2)
    flags = ["--model", "nietzsche-book", "--seed-text", "the ", "-l", "200", "-t", "0.8", "--seed", "8",
             "--logit-bias", "e=-100", "--logit-bias", "a=2", "--frequency-penalty", "0.3",
             "--repetition-penalty", "1.2", "--no-echo"]
    result = CliRunner().invoke(app, ["gen", *flags])
    assert result.exit_code == 0 and result.stdout == expected + "\n"
    server = ApiServer("--model", "nietzsche-book")
    try:
        body = {"prompt": "the ", "max_tokens": 200, "temperature": 0.8, "seed": 8, "frequency_penalty": 0.3,
                "logit_bias": {"e": -100, str(generator.vocab.chars.index("a")).zfill(2): 2},
                "repetition_penalty": 1.2}
        assert server.post(body).json()["choices"][0]["text"] == expected
        refused = server.post({"prompt": "the ", "presence_penalty": 9}).json()["error"]
        assert refused["param"] == "presence_penalty" and "from -2 to 2" in refused["message"]
    finally:
        server.stop()
