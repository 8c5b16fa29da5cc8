import numpy as np
import pytest

from train.corpus import CorpusError, load_corpus
from train.data import window_starts


def test_ids_decode_to_the_lower_cased_text(small_corpus):
    corpus = load_corpus(small_corpus, maxlen=20, holdout=0.1)
    text = small_corpus.read_text().lower()
    assert corpus.text == text
    assert list(corpus.chars) == sorted(set(text))
    assert corpus.ids.dtype == np.uint8
    assert "".join(corpus.chars[i] for i in corpus.ids) == text
    assert corpus.split == int(len(text) * 0.9)
    assert len(corpus.train_ids) + len(corpus.holdout_ids) == len(text)


def test_case_is_kept_when_asked(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("Hello World. " * 50)
    assert "H" in load_corpus(path, maxlen=10, holdout=0.1, lowercase=False).chars
    assert "H" not in load_corpus(path, maxlen=10, holdout=0.1).chars


def test_large_alphabets_get_wider_ids(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("".join(chr(0x4E00 + i) for i in range(300)) * 3)
    assert load_corpus(path, maxlen=10, holdout=0.1).ids.dtype == np.uint16


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        (b"", "is empty"),
        (b"abc def", "needs at least"),
        (b"good text\nbad \xff byte" * 40, "not UTF-8: byte 14 (line 2, column 5)"),
    ],
)
def test_bad_corpus_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CorpusError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_corpus(path, maxlen=20, holdout=0.1)


def test_window_count_matches_the_book():
    assert len(window_starts(600893, 60, 3)) == 200278


def test_a_bad_corpus_is_refused_before_tensorflow_is_imported(tmp_path):
    from tests.conftest import run_python

    result = run_python(
        "import sys\n"
        "from train import fit\n"
        f"code = fit.main(['--corpus', {str(tmp_path / 'missing.txt')!r},"
        f" '--artifacts', {str(tmp_path)!r}])\n"
        "assert code == 2, code\n"
        "assert 'tensorflow' not in sys.modules\n"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train: error:") and "does not exist" in lines[0]
