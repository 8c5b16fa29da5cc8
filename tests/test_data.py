import numpy as np
import pytest

from train.corpus import load_corpus
from train.data import Lanes, Windows, cut, holdout_starts, permute, window_count


@pytest.mark.parametrize("n", [1, 2, 3, 17, 1000, 4097])
def test_each_pass_visits_every_window_once_in_its_own_order(n):
    orders = [permute(np.arange(n), n, seed=7, pass_number=p) for p in range(3)]
    for order in orders:
        np.testing.assert_array_equal(np.sort(order), np.arange(n))
    if n > 3:
        assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[0], np.arange(n))
    np.testing.assert_array_equal(orders[0], permute(np.arange(n), n, seed=7, pass_number=0))
    assert not np.array_equal(orders[0], permute(np.arange(n), n, seed=8, pass_number=0)) or n <= 3


@pytest.mark.parametrize("on_disk", [False, True])
def test_batches_cover_every_window_once_per_pass_across_replicas(small_corpus, tmp_path, on_disk):
    corpus = load_corpus(small_corpus, maxlen=20, holdout=0.1, cache_dir=tmp_path if on_disk else None)
    assert (corpus.ids_path is not None) == on_disk  # windows read with pread from the ids file, or not
    windows = Windows(corpus, maxlen=20, step=3, batch_size=64, seed=1, loss_at="all")
    n = windows.count
    starts = {tuple(corpus.train_ids[s : s + 21]): s for s in np.arange(n) * 3}
    assert len(starts) == n  # every window's text is distinct in this corpus, so texts identify windows

    seen = []
    for k in range(2 * n // 64 + 2):  # a little past two passes; batches straddle the pass ends
        parts = [windows.batch(k, replica=r, replicas=4) for r in range(4)]
        for x, y in parts:
            assert x.shape == (16, 20) and y.shape == (16, 20) and x.dtype == np.int32
            np.testing.assert_array_equal(x[:, 1:], y[:, :-1])  # the targets are the inputs shifted
        for x, y in parts:
            seen += [starts[(*row, last)] for row, last in zip(x.tolist(), y[:, -1].tolist(), strict=True)]
        alone = windows.batch(k)  # one replica gets the concatenation of the four shares
        np.testing.assert_array_equal(alone[0], np.concatenate([x for x, _ in parts]))
    assert sorted(seen[:n]) == sorted(seen[n : 2 * n]) == list(np.arange(n) * 3)
    assert seen[:n] != seen[n : 2 * n]  # each pass in its own order


@pytest.mark.parametrize("on_disk", [False, True])
def test_windows_predict_the_character_after_them(small_corpus, tmp_path, on_disk):
    corpus = load_corpus(small_corpus, maxlen=20, holdout=0.1, cache_dir=tmp_path if on_disk else None)
    for holdout, ids in [(False, corpus.train_ids), (True, corpus.holdout_ids)]:
        x, y = cut(corpus, np.array([0, 3, 30]), maxlen=20, holdout=holdout)
        np.testing.assert_array_equal(x[2], ids[30:50])
        np.testing.assert_array_equal(y, ids[[20, 23, 50]])


def test_the_held_out_sample_is_fixed_and_capped():
    assert list(holdout_starts(200, 60, 10, 0)) == list(range(0, 140, 10))
    capped = holdout_starts(10_000_000, 60, 1, 1000)
    assert len(capped) == 1000 and capped[0] == 0 and capped[-1] == window_count(10_000_000, 60, 1) - 1
    np.testing.assert_array_equal(capped, holdout_starts(10_000_000, 60, 1, 1000))


def test_lanes_read_the_text_on_where_the_last_window_ended(small_corpus):
    corpus = load_corpus(small_corpus, maxlen=20, holdout=0.1)
    lanes = Lanes(corpus, maxlen=20, batch_size=8, seed=1)
    ids, lane = corpus.train_ids, lanes.lane_chars
    assert lanes.steps >= 2 and lane == corpus.split // 8

    def start_in(text, window):  # where `window` occurs in `text` (the corpus' sentences do not repeat)
        return int(np.flatnonzero((np.lib.stride_tricks.sliding_window_view(text, 20) == window).all(1))[0])

    offsets = set()
    for p in range(4):  # four passes
        first = p * lanes.steps
        assert lanes.starts_pass(first) and not lanes.starts_pass(first + 1)
        windows = [lanes.batch(first + k) for k in range(lanes.steps)]
        x = np.concatenate([x for x, _ in windows], axis=1)  # each lane's inputs over the whole pass
        y = np.concatenate([y for _, y in windows], axis=1)
        assert x.shape == (8, 20 * lanes.steps)
        for j in range(8):  # lane j: one contiguous run of its own part of the text, then its targets
            own = ids[j * lane : (j + 1) * lane]
            start = start_in(own, x[j, :20])
            np.testing.assert_array_equal(x[j], own[start : start + x.shape[1]])
            np.testing.assert_array_equal(y[j], own[start + 1 : start + 1 + x.shape[1]])
            offsets.add(start)
        parts = [lanes.batch(first, replica=r, replicas=2) for r in range(2)]  # replicas split the lanes
        np.testing.assert_array_equal(np.concatenate([x for x, _ in parts]), windows[0][0])
    assert len(offsets) > 1 and max(offsets) < 20  # each pass starts the lanes at its own offset


def list_corpus(tmp_path):
    names = [f"{a}{b}{c}" for a in "bdkmt" for b in "aeiou" for c in ("n", "la", "rix", "")]
    path = tmp_path / "names.txt"
    path.write_text("\n".join(names) + "\n", encoding="utf-8")
    return load_corpus(path, maxlen=10, holdout=0.1), names


def test_a_list_holds_out_whole_items_and_baselines_code_the_same_split(tmp_path):
    from bench.baselines import split_as_training

    corpus, names = list_corpus(tmp_path)
    train, held = corpus.decode(corpus.train_ids), corpus.decode(corpus.holdout_ids)
    assert train.endswith("\n") and held.endswith("\n")
    train_items, held_items = train.split("\n")[:-1], held.split("\n")[:-1]
    assert sorted(train_items + held_items) == sorted(names) and len(held_items) == 10
    assert held_items != names[-10:]  # a sample of the items, not the list's end
    text, split = split_as_training("\n".join(names) + "\n", 0.1)
    assert (text[:split], text[split:]) == (train, held)


def test_a_list_s_items_come_in_a_new_order_each_pass_and_the_same_on_a_resume(tmp_path):
    corpus, _ = list_corpus(tmp_path)
    lanes = Lanes(corpus, 10, 4, seed=5, shuffle_items=True)
    items = [corpus.decode(lanes.pass_ids(p)).split("\n") for p in (0, 1, 0)]
    assert sorted(items[0]) == sorted(items[1]) == sorted(corpus.decode(corpus.train_ids).split("\n"))
    assert items[0] != items[1] and items[0] == items[2]
    x, y = lanes.batch(lanes.steps)  # the first step of pass 1 reads pass 1's order
    text = corpus.decode(lanes.pass_ids(1))
    read = corpus.decode(x[0])
    assert read in text and corpus.decode(y[0])[-1] == text[text.index(read) + 10]
    unshuffled = Lanes(corpus, 10, 4, seed=5)
    assert corpus.decode(unshuffled.batch(0)[0][0]) in corpus.decode(corpus.train_ids)
