"""Scores from the one engine: each drawn character's log-probability and its likeliest alternatives,
the next character's distribution after a text (predict), and a prompt's own scores, all agreeing with
what `evaluate` reads."""

import math

import numpy as np
import pytest

from charsdk import Generator, InputError
from charsdk.engine import CharScore, Engine

TEXT = ("it is the business of the very few to be independent; it is a privilege of the strong. and "
        "whoever attempts it, even with the best right, but without being obliged to do so, ")


@pytest.fixture(scope="module")
def generator():
    return Generator.load("nietzsche-book")


@pytest.mark.parametrize("mode", ["stateful", "window"])
def test_a_sample_s_scores_are_what_reading_its_text_gives(generator, mode):
    """The log-probability each character was drawn with is the one `evaluate` reads at its place."""
    plain = generator.generate("the will ", 150, 0.8, n=2, seed=3, mode=mode)
    samples = generator.generate("the will ", 150, 0.8, n=2, seed=3, mode=mode, logprobs=3)
    assert [s.text for s in samples] == plain  # asking for scores changes no character
    for sample in samples:
        assert "".join(s.char for s in sample.scores) == sample.text and sample.finish_reason == "length"
        for score in sample.scores:
            ranked = [p for _, p in score.top[:3]]
            assert ranked == sorted(ranked, reverse=True) and score.logprob <= 0
            assert (score.char, score.logprob) in score.top  # the drawn character is among them, always
            assert len(score.top) == (3 if (score.char, score.logprob) in score.top[:3] else 4)
        ids = generator.vocab.encode("the will " + sample.text)
        read = Engine(generator.backend, mode).prompt_scores(ids, 0)
        expected = [s.logprob for s in read[len("the will ") - 1 :]]
        assert [s.logprob for s in sample.scores] == pytest.approx(expected, abs=1e-4)


def test_a_greedy_character_is_its_own_first_alternative_and_stream_scores_as_generate(generator):
    greedy = generator.generate("the ", 60, 0, logprobs=2)
    assert all(s.top[0] == (s.char, s.logprob) for s in greedy.scores)
    streamed = list(generator.stream("the ", 60, 0.7, seed=4, logprobs=1))
    assert all(isinstance(s, CharScore) for s in streamed)
    assert streamed == generator.generate("the ", 60, 0.7, seed=4, logprobs=1).scores
    assert "".join(generator.stream("the ", 60, 0.7, seed=4)) == "".join(s.char for s in streamed)


def test_scores_stop_where_the_text_stops(generator):
    full = generator.generate("the ", 300, 1.0, seed=8)
    stop = full[100:103]
    cut = generator.generate("the ", 300, 1.0, seed=8, stop=stop, logprobs=0)
    assert cut.text == full[: full.index(stop)] and cut.finish_reason == "stop"
    assert len(cut.scores) == len(cut.text) and all(s.top == ((s.char, s.logprob),) for s in cut.scores)


def test_predict_is_the_next_character_s_distribution(generator):
    after = generator.predict("the will to power ")
    assert math.isclose(sum(after.values()), 1, abs_tol=1e-6) and len(after) == generator.vocab.size
    assert list(after.values()) == sorted(after.values(), reverse=True)
    assert next(iter(after)) == generator.generate("the will to power ", 1, 0)
    top = generator.predict("the will to power ", top_k=3)
    assert list(top) == list(after)[:3]
    log_p = generator.prompt_scores(generator.request("the will to power a", logprobs=0))[-1].logprob
    assert math.log(after["a"]) == pytest.approx(log_p, abs=1e-6)
    with pytest.raises(InputError, match="top_k must be"):
        generator.predict("the ", top_k=-1)


def test_logprobs_are_checked(generator):
    for wrong in (-1, 21, 2.5, True):
        with pytest.raises(InputError, match="logprobs must be an integer from 0 to 20"):
            generator.generate("the ", 10, logprobs=wrong)


@pytest.mark.parametrize("mode", ["stateful", "window"])
def test_a_prompt_s_scores_are_evaluate_s_per_character(generator, mode):
    scores = generator.prompt_scores(generator.request(TEXT, mode=mode, logprobs=2))
    assert len(scores) == len(TEXT) - 1 and "".join(s.char for s in scores) == TEXT[1:]
    maxlen = generator.vocab.maxlen
    bits = -np.mean([s.logprob for s in scores[maxlen - 1 :]]) / np.log(2)
    assert bits == pytest.approx(generator.evaluate(TEXT, mode=mode)["bits_per_char"], abs=1e-9)
