import numpy as np
import pytest

from train import corpus as corpus_module
from train.corpus import CorpusError, load_corpus
from train.data import window_count


def test_ids_decode_to_the_lower_cased_text(small_corpus):
    corpus = load_corpus(small_corpus, maxlen=20, holdout=0.1)
    text = small_corpus.read_text().lower()
    assert corpus.decode(corpus.ids) == text
    assert list(corpus.chars) == sorted(set(text))
    assert corpus.ids.dtype == np.uint8
    assert "".join(corpus.chars[i] for i in corpus.ids) == text
    assert corpus.split == int(len(text) * 0.9)
    assert len(corpus.train_ids) + len(corpus.holdout_ids) == len(text)


def whole_text_ids(text: str, lowercase: bool = True):
    """The obvious encoding, all at once: the reference for the chunked one."""
    text = text.lower() if lowercase else text
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    return tuple(chars), np.array([index[c] for c in text])


# 300 CJK characters (ids past 255), 4-byte emoji and 2-byte accents cut by every chunk size below, a
# final sigma whose lower case depends on the next character, a byte order mark, CRLF line ends.
AWKWARD = ("\ufeff" + "".join(chr(0x4E00 + i) for i in range(300)) + " ΟΔΟΣ ΣΟΦΟΣ\r\n"
           + "caf\u00e9 na\u00efve \U0001F600 \u00c9T\u00c9 " * 40 + "ΌΣΟΣ" + " x" * 10)


@pytest.mark.parametrize("chunk_bytes", [1, 2, 3, 5, 7, 64, 1 << 20])
@pytest.mark.parametrize("lowercase", [True, False])
def test_chunked_encoding_equals_whole_text_encoding(tmp_path, monkeypatch, chunk_bytes, lowercase):
    path = tmp_path / "awkward.txt"
    path.write_text(AWKWARD, encoding="utf-8")
    monkeypatch.setattr(corpus_module, "CHUNK_BYTES", chunk_bytes)
    chars, ids = whole_text_ids(AWKWARD.removeprefix("\ufeff"), lowercase)
    for cache_dir in (None, tmp_path / "run"):  # in memory, and written to the cache file
        corpus = load_corpus(path, maxlen=10, holdout=0.1, lowercase=lowercase, cache_dir=cache_dir)
        assert corpus.chars == chars and len(chars) > 256 and corpus.ids.dtype == np.uint16
        np.testing.assert_array_equal(corpus.ids, ids)
        starts = np.array([0, 5, len(corpus.holdout_ids) - 11])  # windows read back, 2 bytes per id
        np.testing.assert_array_equal(corpus.read(starts, 11, holdout=True),
                                      ids[corpus.split + starts[:, None] + np.arange(11)])


def test_the_ids_are_cached_by_the_corpus_sha256_and_not_encoded_again(small_corpus, tmp_path, monkeypatch):
    first = load_corpus(small_corpus, maxlen=20, holdout=0.1, cache_dir=tmp_path)
    assert not first.ids.flags.writeable and len(first.ids) == first.split + len(first.holdout_ids)
    (cached,) = tmp_path.glob("ids-*.bin")
    assert cached.name.startswith(f"ids-{first.sha256[:16]}")

    def no_encoding(*args, **kwargs):
        raise AssertionError("encoded again")

    monkeypatch.setattr(corpus_module, "text_chunks", no_encoding)
    again = load_corpus(small_corpus, maxlen=20, holdout=0.1, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.ids, first.ids)
    assert again.chars == first.chars

    changed = tmp_path / "changed.txt"
    changed.write_text(small_corpus.read_text() + " more")
    with pytest.raises(AssertionError, match="encoded again"):  # another sha256: not the cached ids
        load_corpus(changed, maxlen=20, holdout=0.1, cache_dir=tmp_path)


@pytest.mark.parametrize("chunk_bytes", [3, 64, 4096])
def test_invalid_utf8_in_a_later_chunk_is_located(tmp_path, monkeypatch, chunk_bytes):
    monkeypatch.setattr(corpus_module, "CHUNK_BYTES", chunk_bytes)
    path = tmp_path / "late.txt"
    good = ("caf\u00e9 line\n" * 500).encode()  # 6,000 bytes, 500 lines
    for bad, column in [(b"ab\xff", 3), (b"ab\xe2\x28\xa1", 3), (b"abc\xf0\x9f\x98", 4)]:
        path.write_bytes(good + bad + b"\nmore text")
        byte = len(good) + column - 1
        with pytest.raises(CorpusError, match=rf"byte {byte} \(line 501, column {column}\)"):
            load_corpus(path, maxlen=20, holdout=0.1)


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
    assert window_count(600893, 60, 3) == 200278


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


def test_a_failed_download_is_one_clear_line(tmp_path):
    from tests.conftest import run_python

    result = run_python(
        "from train import corpus, fit\n"
        "corpus.BOOK_URL = 'http://127.0.0.1:9/nietzsche.txt'  # nothing listens there\n"
        f"raise SystemExit(fit.main(['--name', 'n', '--artifacts', {str(tmp_path)!r}]))\n",
        env_home=str(tmp_path))  # no cached copy of the book's text in ~/.keras
    # (one line of progress, then the error; TensorFlow never started, so none of its start-up lines)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "Downloading http://127.0.0.1:9/nietzsche.txt"
    assert len(lines) == 2 and lines[1].startswith("train: error: could not download the book's corpus")
    assert not list(tmp_path.rglob("*.tmp"))


def test_baselines_code_the_held_out_part_after_the_training_part(small_corpus, tmp_path):
    import json
    import zlib

    from bench.baselines import main

    out = tmp_path / "baselines.json"
    assert main(["--corpus", str(small_corpus), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    text = small_corpus.read_text().lower()
    split = int(len(text) * 0.9)
    assert result["holdout_chars"] == len(text) - split
    by_hand = (len(zlib.compress(text.encode(), 9)) - len(zlib.compress(text[:split].encode(), 9))) * 8
    bits = result["bits_per_char"]
    assert bits["zlib -9"] == pytest.approx(by_hand / (len(text) - split))
    # on this repetitive text every compressor beats 8 bits per character, and PPMd beats zlib
    assert 0 < bits["PPMd order 6, 256 MB"] < bits["zlib -9"] < 8


def test_known_characters_come_first_and_a_cache_of_another_order_is_not_reused(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("a quick brown fox jumps over the lazy dog. " * 20, encoding="utf-8")
    sorted_corpus = load_corpus(path, maxlen=10, holdout=0.1, cache_dir=tmp_path / "run")
    assert list(sorted_corpus.chars) == sorted(sorted_corpus.chars)
    based = load_corpus(path, maxlen=10, holdout=0.1, cache_dir=tmp_path / "run", known_chars="zyQ")
    assert based.chars[:3] == ("z", "y", "Q") and list(based.chars[3:]) == sorted(set(based.chars[3:]))
    assert based.decode(based.ids) == sorted_corpus.decode(sorted_corpus.ids) == path.read_text()
    extended = load_corpus(path, maxlen=10, holdout=0.1, cache_dir=tmp_path / "run", known_chars="zyQ .a")
    assert extended.chars == based.chars  # the same vocabulary: the cached ids are reused
    assert extended.ids_path == based.ids_path


def test_a_package_corpus_is_its_files_in_order_and_a_missing_package_one_clear_line(
        tmp_path, monkeypatch, capsys):
    from pathlib import Path

    from bench import text_corpus

    folder = tmp_path / "pod"
    folder.mkdir()
    for name, text in (("perlfaq2.pod", "two\n"), ("perlfaq1.pod", "one\n"), ("perlop.pod", "not a faq\n")):
        (folder / name).write_text(text, encoding="utf-8")
    (folder / "perlfaq3.pod").symlink_to(folder / "perlop.pod")  # a link is not one of its files
    monkeypatch.setitem(text_corpus.CORPORA, "perl-faq", ("perl-doc", folder, ["perlfaq*.pod"]))
    assert text_corpus.main(["perl-faq", "--out", str(tmp_path / "faq.txt")]) == 0
    assert (tmp_path / "faq.txt").read_text(encoding="utf-8") == "one\ntwo\n"

    monkeypatch.setitem(text_corpus.CORPORA, "perl-faq", ("perl-doc", Path(tmp_path / "none").glob("*"),
                                                         ["perlfaq*.pod"]))
    assert text_corpus.main(["perl-faq", "--out", str(tmp_path / "other.txt")]) == 2
    assert capsys.readouterr().err == ("text_corpus: error: no files of perl-faq found: install Debian's "
                                       "perl-doc (apt-get install perl-doc)\n")
    assert not (tmp_path / "other.txt").exists()


def test_a_character_continues_a_run_when_it_and_the_k_before_it_were_read_before():
    from bench.repeats import continues_a_run

    # "cdef" and "defg" occur in the training text; "xcde" and "efgz" do not
    assert continues_a_run("abcdefgh", "xxcdefgzz", 3).tolist() == [False] * 5 + [True, True, False, False]
    # within the text itself: "abc" at 3..5 repeats 0..2, and so do "bca", "cab" after it
    assert continues_a_run("", "abcabcab", 2, within=True).tolist() == [False] * 5 + [True] * 3
    assert not continues_a_run("abcabcab", "abcabcab", 2, within=True)[:5].any()  # `before` not read then


def test_repeats_splits_the_model_s_held_out_bits_by_repeated_runs(tmp_path, capsys):
    from bench.repeats import main

    novel = "".join(f"the {n} spirits wander where no ear has heard them; " for n in range(60))
    corpus = tmp_path / "text.txt"
    corpus.write_text(novel + novel[: len(novel) // 9], encoding="utf-8")  # the held-out part: a copy
    assert main(["nietzsche", str(corpus)]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {line[:35].strip(): line[35:].split() for line in out[2:]}  # share, bits there, elsewhere
    held_out_bits = float(out[0].split(": ")[1].split()[0])
    # every scored character repeats a 64-character run of the training text: all its bits are "there"
    assert rows["k=64  of the training text"] == ["100.0%", f"{held_out_bits:.3f}", "-"]
    within = rows["k=16  earlier in the held-out text"]  # the copy repeats itself less, and some of it
    assert within[0] not in ("0.0%", "100.0%") and float(within[1]) < float(within[2])  # is cheaper
    assert main(["nietzsche", str(tmp_path / "none.txt")]) == 2
    assert capsys.readouterr().err.startswith("repeats: error: ")
