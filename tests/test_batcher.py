"""charsdk.batcher: requests' streams in one batch, each exactly as Generator.generate draws it alone."""

import threading
import time

import pytest

from charsdk import Generator
from charsdk.batcher import MAX_UNREAD, Batcher, Batchers, Job


@pytest.fixture(scope="module")
def generator():
    return Generator.load("nietzsche-book")


def plan(generator, prompt, length, seed, temperature=0.8, n=1, top_k=0, stop=()):
    return generator.request(prompt, length, temperature, n=n, top_k=top_k, stop=stop, seed=seed)


class Reader:
    """A request's reader: collects each stream's text; reads as it comes unless told not to."""

    def __init__(self, streams: int, reads: bool = True):
        self.texts, self.finished, self.reads = [""] * streams, [None] * streams, reads
        self.done = threading.Event()
        self.job: Job | None = None

    def emit(self, events):
        for index, text, finish, _ in events:
            self.texts[index] += text
            self.finished[index] = finish
        if all(self.finished):
            self.done.set()
        if self.reads:
            self.job.taken()

    def error(self, message):
        raise AssertionError(message)

    def submit(self, batcher, the_plan) -> Job:
        self.job = Job(the_plan, self.emit, self.error)
        return batcher.submit(self.job)


def wait_until(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_a_reader_that_falls_behind_pauses_and_the_others_run_exactly(generator):
    batcher = Batcher(generator)
    try:
        slow = Reader(1, reads=False)
        slow.submit(batcher, plan(generator, "the ", 1_000_000, seed=1))
        wait_until(lambda: slow.job.emitted == MAX_UNREAD)
        time.sleep(0.1)
        assert slow.job.emitted == MAX_UNREAD and batcher.paused == 1  # paused, not piling up text
        fast = Reader(2)
        fast.submit(batcher, plan(generator, "what ", 700, seed=2, n=2, top_k=4))
        assert fast.done.wait(10)  # while the slow one stays in the batch, paused
        assert fast.texts == generator.generate("what ", 700, 0.8, n=2, seed=2, top_k=4)
        assert fast.finished == ["length", "length"] and batcher.streams == 1
        slow.job.taken()  # the reader catches up: the stream goes on, from where it paused
        wait_until(lambda: slow.job.emitted > MAX_UNREAD)
        assert generator.generate("the ", len(slow.texts[0]), 0.8, seed=1) == slow.texts[0]
        slow.job.cancel()
        wait_until(lambda: batcher.streams == 0)
    finally:
        batcher.close()


def test_requests_joining_and_leaving_mid_stream_get_their_own_texts(generator):
    batcher = Batchers(generator, chunk_seconds=0.002, count=2)  # short chunks: joins land between calls
    try:
        readers = []
        for i in range(12):
            reader = Reader(1 + i % 3)
            reader.submit(batcher, plan(generator, f"{i} the ", 150 + 40 * i, seed=i,
                                        temperature=0.3 * (i % 4), n=1 + i % 3,
                                        stop=["ce"] if i % 5 == 0 else ()))
            readers.append(reader)
            time.sleep(0.003)
        assert {r.job.wake for r in readers} == {b.wake for b in batcher.batchers}  # both batches used
        for i, reader in enumerate(readers):
            assert reader.done.wait(20)
            expected = generator.generate(f"{i} the ", 150 + 40 * i, [0.3 * (i % 4)], n=1 + i % 3, seed=i,
                                          stop=["ce"] if i % 5 == 0 else ())
            assert reader.texts == expected
        wait_until(lambda: [b.load for b in batcher.batchers] == [0, 0])  # what joins the least loaded sees
    finally:
        batcher.close()
