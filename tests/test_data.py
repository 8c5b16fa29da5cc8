import numpy as np

from train.corpus import load_corpus
from train.data import window_dataset, window_starts


def test_windows_are_cut_and_one_hot_encoded_on_the_fly(small_corpus):
    corpus = load_corpus(small_corpus, maxlen=20, holdout=0.1)
    ids, vocab = corpus.train_ids, len(corpus.chars)
    dataset = window_dataset(ids, maxlen=20, step=3, vocab_size=vocab, batch_size=50, shuffle=False)
    starts = window_starts(len(ids), 20, 3)
    seen = 0
    for x, y in dataset:
        x, y = x.numpy(), y.numpy()
        assert x.shape[1:] == (20, vocab) and x.dtype == np.float32
        assert (x.sum(axis=-1) == 1).all()
        for row in range(len(x)):
            start = starts[seen + row]
            np.testing.assert_array_equal(x[row].argmax(-1), ids[start : start + 20])
            assert y[row] == ids[start + 20]
        seen += len(x)
    assert seen == len(starts)


def test_shuffling_keeps_every_window_once(small_corpus):
    corpus = load_corpus(small_corpus, maxlen=20, holdout=0.1)
    ids = corpus.train_ids
    kwargs = dict(maxlen=20, step=3, vocab_size=len(corpus.chars), batch_size=64)
    plain = [y for _, ys in window_dataset(ids, shuffle=False, **kwargs) for y in ys.numpy()]
    mixed = [y for _, ys in window_dataset(ids, shuffle=True, seed=1, **kwargs) for y in ys.numpy()]
    assert sorted(plain) == sorted(mixed) and plain != mixed
