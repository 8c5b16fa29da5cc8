"""The corpus as integer ids, checked before TensorFlow starts any work."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# The file Deep Learning with Python (section 8.1) trains on.
BOOK_URL = "https://s3.amazonaws.com/text-datasets/nietzsche.txt"


class CorpusError(Exception):
    """A corpus the user must fix; the message says what is wrong."""


@dataclass(frozen=True)
class Corpus:
    text: str  # after lower-casing, if the recipe asks for it
    chars: tuple[str, ...]  # sorted: the model's character index
    ids: np.ndarray  # uint8 (or uint16 past 256 characters), one per character of `text`
    split: int  # ids[:split] trains, ids[split:] is held out
    sha256: str  # of the file's bytes
    path: str

    @property
    def train_ids(self) -> np.ndarray:
        return self.ids[: self.split]

    @property
    def holdout_ids(self) -> np.ndarray:
        return self.ids[self.split :]


def download_book_corpus() -> Path:
    """Fetch the book's Nietzsche text once into Keras's cache (~/.keras/datasets)."""
    import keras  # only here: a corpus given by path needs no TensorFlow to be checked

    return Path(keras.utils.get_file("nietzsche.txt", origin=BOOK_URL))


def read_text(path: Path) -> tuple[str, str]:
    """The file's text and the sha256 of its bytes; a clear CorpusError for a bad file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CorpusError(f"corpus file {path} does not exist: pass CORPUS=path/to/text.txt") from None
    except IsADirectoryError:
        raise CorpusError(f"corpus {path} is a directory: pass a UTF-8 text file") from None
    except OSError as exc:
        raise CorpusError(f"corpus file {path} cannot be read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise CorpusError(
            f"corpus file {path} is not UTF-8: byte {exc.start} (line {line}, column {column}) "
            f"is {data[exc.start:exc.start + 1]!r}; convert it, e.g. iconv -t UTF-8"
        ) from None
    return text.removeprefix("\ufeff"), hashlib.sha256(data).hexdigest()


def load_corpus(
    path: str | Path | None, *, maxlen: int, holdout: float, lowercase: bool = True
) -> Corpus:
    """Read, check and encode a corpus; `path=None` downloads the book's text."""
    path = Path(path) if path else download_book_corpus()
    text, sha256 = read_text(path)
    if lowercase:
        text = text.lower()
    if not text:
        raise CorpusError(f"corpus file {path} is empty: give it some text to learn from")
    split = int(len(text) * (1 - holdout))
    # Both parts need at least one window of maxlen characters plus the one to predict.
    needed = int(np.ceil((maxlen + 1) / min(holdout, 1 - holdout)))
    if min(split, len(text) - split) < maxlen + 1:
        raise CorpusError(
            f"corpus file {path} has {len(text)} characters; with a context of {maxlen} and "
            f"{holdout:.0%} held out it needs at least {needed}: give a longer text or a smaller MAXLEN"
        )
    chars = tuple(sorted(set(text)))
    dtype = np.uint8 if len(chars) <= 256 else np.uint16 if len(chars) <= 65536 else np.uint32
    index = {c: i for i, c in enumerate(chars)}
    ids = np.fromiter((index[c] for c in text), dtype=dtype, count=len(text))
    return Corpus(text, chars, ids, split, sha256, str(path))
