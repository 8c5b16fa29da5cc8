"""charsdk.engine: one batch of streams that requests join and leave between chunks, each stream drawing
exactly what `Generator.generate` draws for it alone, in either mode and over either backend."""

import numpy as np
import pytest

from charsdk import Generator
from charsdk.engine import Engine


@pytest.fixture(scope="module")
def generator():
    return Generator.load("nietzsche-book")


def run_to_end(engine, texts, k=7):
    while engine.streams:
        for stream, piece, _ in engine.step(k):
            texts[id(stream)] = texts.get(id(stream), "") + piece


@pytest.mark.parametrize("mode", ["stateful", "window"])
def test_streams_that_join_a_running_batch_get_generate_s_text(generator, mode):
    """Window mode on charsdk's graph steps streams that have read different counts in separate calls."""
    engine = Engine(generator.backend, mode)
    first = generator.request("the will to power ", 150, 0.8, n=2, seed=1, mode=mode)
    (early,) = engine.add([first])
    texts = {}
    for _ in range(3):  # the first streams are 3 chunks ahead when the next ones join
        for stream, piece, _ in engine.step(13):
            texts[id(stream)] = texts.get(id(stream), "") + piece
    late = generator.request("what is noble? ", 120, 0.6, seed=2, top_k=5, mode=mode)
    (joined,) = engine.add([late])
    for _ in range(10):  # past maxlen characters read: window mode's windows have wrapped
        for stream, piece, _ in engine.step(7):
            texts[id(stream)] = texts.get(id(stream), "") + piece
    alone = Engine(generator.backend, mode)
    alone.add([late])
    alone.step(70)  # what the joined stream carries now is what it would carry alone, to the bit
    row = engine.streams.index(joined[0])
    assert all(np.array_equal(engine.rows[name][row], alone.rows[name][0]) for name in alone.rows.arrays)
    run_to_end(engine, texts)
    assert [texts[id(s)] for s in early] == generator.generate("the will to power ", 150, 0.8, n=2, seed=1,
                                                               mode=mode)
    assert texts[id(joined[0])] == generator.generate("what is noble? ", 120, 0.6, seed=2, top_k=5, mode=mode)


def test_stepping_some_streams_leaves_the_others_where_they_were(generator):
    engine = Engine(generator.backend)
    a, b = engine.add([generator.request("the ", 60, 1.0, seed=3), generator.request("we ", 60, 1.0, seed=4)])
    texts = {}
    for _ in range(4):
        for stream, piece, _ in engine.step(5, a):  # b waits (a paused reader, in the server)
            texts[id(stream)] = texts.get(id(stream), "") + piece
    assert id(b[0]) not in texts and b[0].left == 60
    run_to_end(engine, texts)
    assert texts[id(a[0])] == generator.generate("the ", 60, 1.0, seed=3)
    assert texts[id(b[0])] == generator.generate("we ", 60, 1.0, seed=4)


def test_a_dropped_stream_leaves_and_the_others_go_on(generator):
    engine = Engine(generator.backend)
    (streams,) = engine.add([generator.request("the ", 80, 0.9, n=3, seed=5)])
    texts = {}
    for stream, piece, _ in engine.step(10):
        texts[id(stream)] = piece
    engine.drop([streams[1]])
    assert engine.streams == [streams[0], streams[2]] and len(engine.rows) == 2
    run_to_end(engine, texts)
    expected = generator.generate("the ", 80, 0.9, n=3, seed=5)
    assert [texts[id(streams[0])], texts[id(streams[2])]] == [expected[0], expected[2]]


@pytest.mark.parametrize("mode", ["stateful", "window"])
def test_log_probs_are_each_character_s_score_given_the_ones_before(generator, mode):
    text = "it is the business of the very few to be independent; it is a privilege of the strong. " * 2
    ids, maxlen = generator.vocab.encode(text), generator.vocab.maxlen
    log_p = Engine(generator.backend, mode).log_probs(ids, 1)
    assert log_p.shape == (len(ids) - 1,) and (log_p <= 0).all()
    bits = -log_p[maxlen - 1 :].mean() / np.log(2)  # what evaluate scores: the characters after maxlen
    assert bits == pytest.approx(generator.evaluate(text, mode=mode)["bits_per_char"], abs=1e-9)
