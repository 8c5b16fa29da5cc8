"""The corpus as integer ids: read and encoded in chunks, cached beside the run, memory-mapped.

A corpus of any size goes through here without being held in memory: the file is decoded 16 MB at a
time (characters split between chunks are carried over; invalid UTF-8 anywhere is reported with its
byte, line and column), once to find the characters and once to encode them with a lookup table (no
Python loop per character). The ids go to a file keyed by the corpus sha256, which later runs and
resumes memory-map instead of encoding again, and from which training reads its windows (Corpus.read).
Everything here is checked before TensorFlow is imported.
"""

from __future__ import annotations

import functools
import hashlib
import json
import mmap
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from charsdk.items import list_items
from charsdk.vocab import write_atomic

# The file Deep Learning with Python (section 8.1) trains on.
BOOK_URL = "https://s3.amazonaws.com/text-datasets/nietzsche.txt"
CHUNK_BYTES = 16 << 20  # bytes decoded at a time
CACHE_FORMAT = 1  # bump when the ids file layout changes
PROGRESS_BYTES = 64 << 20  # larger files show progress while they are read
LONGEST_WORD = 1 << 20  # characters carried to the next chunk at most, looking for whitespace to cut at


class CorpusError(Exception):
    """A corpus the user must fix; the message says what is wrong."""


@dataclass(frozen=True)
class Corpus:
    chars: tuple[str, ...]  # sorted: the model's character index
    ids: np.ndarray  # uint8 (uint16, uint32 past 256, 65,536 characters), one per character; memory-mapped
    split: int  # ids[:split] trains, ids[split:] is held out
    sha256: str  # of the file's bytes
    path: str

    @property
    def train_ids(self) -> np.ndarray:
        return self.ids[: self.split]

    @property
    def holdout_ids(self) -> np.ndarray:
        return self.ids[self.split :]

    ids_path: str | None = None  # the file behind `ids`, when they are cached on disk
    # A one-item-per-line list (charsdk.items): where each training item starts in ids (its newline ends
    # it; one more entry, `split`, closes the last), the held-out part whole items. None: running text
    items: np.ndarray | None = None

    @functools.cached_property
    def _ids_file(self):
        return open(self.ids_path, "rb")  # noqa: SIM115 - open as long as the corpus

    def read(self, starts: np.ndarray, length: int, holdout: bool = False) -> np.ndarray:
        """ids[s : s + length] of the training (or held-out) part for each start: int32 [len(starts), length].

        From the ids file with pread when there is one, rather than through the memory map: a page
        touched through the map stays counted in the process's resident memory (the kernel maps whole
        folios of up to 2 MB per touch), so a pass over a 1 GB corpus would end with all of it resident."""
        starts = np.asarray(starts, np.int64) + (self.split if holdout else 0)
        if self.ids_path is None:
            return np.asarray(self.ids[starts[:, None] + np.arange(length)], np.int32)
        size, fd = self.ids.itemsize, self._ids_file.fileno()
        data = b"".join(os.pread(fd, length * size, int(start) * size) for start in starts)
        return np.frombuffer(data, self.ids.dtype).reshape(len(starts), length).astype(np.int32)

    def id_chunks(self) -> Iterator[np.ndarray]:
        """All the ids, CHUNK_BYTES of them at a time, read as `read` reads (flat in memory)."""
        for start in range(0, len(self.ids), CHUNK_BYTES):
            yield self.read(np.array([start]), min(CHUNK_BYTES, len(self.ids) - start))[0]

    def used_only(self, directory: Path) -> Corpus:
        """The corpus with only the characters its text uses, in the same order (a fine-tune's vocabulary
        is its base's, most of which a corpus may not use); itself when it uses them all. The renumbered
        ids are written to `directory` chunk by chunk and memory-mapped, as the corpus's own are."""
        counts = sum(np.bincount(chunk, minlength=len(self.chars)) for chunk in self.id_chunks())
        used = counts > 0
        if used.all():
            return self
        renumber = (np.cumsum(used) - 1).astype(self.ids.dtype)
        path = directory / "ids-used.bin"
        with open(path, "wb") as f:
            for chunk in self.id_chunks():
                f.write(renumber[chunk].tobytes())
        chars = tuple(c for c, keep in zip(self.chars, used, strict=True) if keep)
        return replace(self, chars=chars, ids=np.memmap(path, self.ids.dtype, "r"), ids_path=str(path))

    def decode(self, ids) -> str:
        """The text of some ids (after lower-casing, if the recipe asks for it)."""
        codes = np.array([ord(c) for c in self.chars], np.uint32)
        return codes[np.asarray(ids, np.int64)].tobytes().decode("utf-32-le")


def download_book_corpus() -> Path:
    """Fetch the book's Nietzsche text once into Keras's dataset cache (~/.keras/datasets), with the
    standard library: TensorFlow is not imported before the corpus is ready."""
    import urllib.error
    import urllib.request

    path = Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser() / "datasets" / "nietzsche.txt"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    print(f"Downloading {BOOK_URL}", file=sys.stderr)
    try:
        with urllib.request.urlopen(BOOK_URL, timeout=60) as response, open(tmp, "wb") as f:
            while block := response.read(CHUNK_BYTES):
                f.write(block)
        os.replace(tmp, path)
    except (urllib.error.URLError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or exc.strerror or exc
        raise CorpusError(f"could not download the book's corpus from {BOOK_URL} ({reason}): "
                          "pass CORPUS=path/to/text.txt, or try again online") from None
    return path


def open_corpus(path: Path):
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise CorpusError(f"corpus file {path} does not exist: pass CORPUS=path/to/text.txt") from None
    except IsADirectoryError:
        raise CorpusError(f"corpus {path} is a directory: pass a UTF-8 text file") from None
    except OSError as exc:
        raise CorpusError(f"corpus file {path} cannot be read: {exc.strerror}") from None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open_corpus(path) as f:
        while block := f.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


class Progress:
    """'reading corpus …: 42%' on stderr, at most once a second, for files that take a while."""

    def __init__(self, label: str, total: int):
        self.label, self.total, self.shown = label, total, time.monotonic()

    def __call__(self, done: int, final: bool = False):
        if not self.label or self.total < PROGRESS_BYTES or not (final or time.monotonic() - self.shown > 1):
            return
        self.shown = time.monotonic()
        end = "\n" if final else ("\r" if sys.stderr.isatty() else "\n")
        print(f"{self.label}: {done / self.total:.0%} of {self.total / 1e6:,.0f} MB", end=end,
              file=sys.stderr, flush=True)


def text_chunks(path: Path, lowercase: bool, label: str) -> Iterator[str]:
    """The file's text, chunk by chunk: each chunk ends at whitespace where it can (so that lower-casing,
    e.g. a final sigma, sees the same context as in the whole text) and never inside a character."""
    size, done = path.stat().st_size, 0
    progress = Progress(label, size)
    line, line_start = 1, 0  # line number and byte offset where it starts, before this chunk
    pending_bytes, pending_text = b"", ""
    with open_corpus(path) as f:
        while True:
            block = f.read(CHUNK_BYTES)
            data = pending_bytes + block
            offset = done - len(pending_bytes)  # the file offset of data[0]
            try:
                text = data.decode("utf-8")
                pending_bytes = b""
            except UnicodeDecodeError as exc:
                # Only a character cut by the chunk's end may wait for the next block.
                if block and exc.reason == "unexpected end of data" and exc.end == len(data):
                    text, pending_bytes = data[: exc.start].decode("utf-8"), data[exc.start :]
                else:
                    at = offset + exc.start
                    line += data.count(b"\n", 0, exc.start)
                    newline = data.rfind(b"\n", 0, exc.start)
                    column = at - (offset + newline + 1 if newline >= 0 else line_start) + 1
                    raise CorpusError(
                        f"corpus file {path} is not UTF-8: byte {at} (line {line}, column {column}) "
                        f"is {data[exc.start:exc.start + 1]!r}; convert it, e.g. iconv -t UTF-8"
                    ) from None
            decoded = data[: len(data) - len(pending_bytes)]
            line += decoded.count(b"\n")
            if (newline := decoded.rfind(b"\n")) >= 0:
                line_start = offset + newline + 1
            done += len(block)
            progress(done, final=not block)
            if offset == 0:
                text = text.removeprefix("\ufeff")
            text = pending_text + text
            cut = max(text.rfind(" "), text.rfind("\n")) + 1 if block else len(text)
            if cut == 0 and len(text) > LONGEST_WORD:  # no whitespace for that long: cut anyway
                cut = len(text)
            text, pending_text = text[:cut], text[cut:]
            if text:
                yield text.lower() if lowercase else text
            if not block:
                return


def id_dtype(n_chars: int):
    return np.uint8 if n_chars <= 1 << 8 else np.uint16 if n_chars <= 1 << 16 else np.uint32


def encode(chunks: Iterator[str], chars: tuple[str, ...]) -> Iterator[np.ndarray]:
    """Each chunk's ids, through a table from code point to id (vectorised)."""
    codes = np.array([ord(c) for c in chars], np.int64)
    table = np.zeros(int(codes.max()) + 1, id_dtype(len(chars)))
    table[codes] = np.arange(len(chars))
    for text in chunks:
        yield table[np.frombuffer(text.encode("utf-32-le"), np.uint32)]


def load_corpus(path: str | Path | None, *, maxlen: int, holdout: float, lowercase: bool = True,
                cache_dir: Path | None = None, known_chars: str = "") -> Corpus:
    """Read, check and encode a corpus (`path=None` downloads the book's text). The characters are
    `known_chars` (a base model's) followed by the corpus's others, sorted. With `cache_dir`, the ids
    are kept there in a file named after the corpus sha256 and memory-mapped, and a later call with the
    same corpus reads that file instead of encoding again."""
    path = Path(path) if path else download_book_corpus()
    sha256 = file_sha256(path)
    key = f"ids-{sha256[:16]}-{'lower' if lowercase else 'cased'}"
    cached = read_cache(cache_dir, key, sha256) if cache_dir else None
    if cached and not starts_with(cached[0], known_chars):
        cached = None  # encoded for another vocabulary order
    if cached:
        chars, ids, ids_path = cached
    else:
        seen: set[str] = set()
        for text in text_chunks(path, lowercase, f"reading {path.name}"):
            seen.update(text)
        if not seen:
            raise CorpusError(f"corpus file {path} is empty: give it some text to learn from")
        chars = tuple(known_chars) + tuple(sorted(seen - set(known_chars)))
        if cache_dir:
            ids_path = cache_dir / f"{key}.bin"
            ids = write_cache(cache_dir, key, sha256, chars, path, lowercase)
        else:
            ids, ids_path = np.concatenate(list(encode(text_chunks(path, lowercase, ""), chars))), None
    split = int(len(ids) * (1 - holdout))
    items = None
    if is_list(chars, ids):  # held out: whole items, a sample of them; the ids then in memory
        ids, split, items = held_out_items(np.asarray(ids), chars.index("\n"), holdout)
        ids_path = None
    # Both parts need at least one window of maxlen characters plus the one to predict.
    needed = int(np.ceil((maxlen + 1) / min(holdout, 1 - holdout)))
    if min(split, len(ids) - split) < maxlen + 1:
        raise CorpusError(
            f"corpus file {path} has {len(ids)} characters; with a context of {maxlen} and "
            f"{holdout:.0%} held out it needs at least {needed}: give a longer text or a smaller MAXLEN"
        )
    return Corpus(chars, ids, split, sha256, str(path), ids_path and str(ids_path), items)


ITEM_PROBE = 100_000  # characters read to tell a one-item-per-line list from running text
HOLDOUT_ITEMS_SEED = 0  # which items a list holds out (the same in every run and in make baselines)


def is_list(chars: tuple[str, ...], ids: np.ndarray) -> bool:
    """Whether the text is a one-item-per-line list (charsdk.items.list_items), by its first characters."""
    codes = np.array([ord(c) for c in chars], np.uint32)
    return "\n" in chars and list_items(codes[np.asarray(ids[:ITEM_PROBE], np.int64)].tobytes()
                                         .decode("utf-32-le")) is not None


def holdout_choice(count: int, holdout: float) -> np.ndarray:
    """[count] bool: the items a list holds out, a seeded sample of them (a sorted list's last 10% would
    be its Zs)."""
    held = np.zeros(count, bool)
    order = np.random.default_rng(HOLDOUT_ITEMS_SEED).permutation(count)
    held[order[: max(1, round(count * holdout))]] = True
    return held


def held_out_items(ids: np.ndarray, newline: int, holdout: float) -> tuple[np.ndarray, int, np.ndarray]:
    """A list's ids as its training items (in their order) then its held-out ones, each item ended by a
    newline (blank lines dropped), the split between them, and where each training item starts."""
    ends = np.flatnonzero(ids == newline)
    starts = np.concatenate([[0], ends + 1])
    ends = np.concatenate([ends, [len(ids)]])
    lines = [ids[a:b] for a, b in zip(starts, ends, strict=True) if b > a]
    held = holdout_choice(len(lines), holdout)
    end = np.array([newline], ids.dtype)
    train = [piece for line, h in zip(lines, held, strict=True) if not h for piece in (line, end)]
    test = [piece for line, h in zip(lines, held, strict=True) if h for piece in (line, end)]
    item_starts = np.cumsum([0] + [len(line) + 1 for line, h in zip(lines, held, strict=True) if not h])
    split = int(item_starts[-1])
    return np.concatenate(train + test), split, item_starts


def starts_with(chars: tuple[str, ...], known_chars: str) -> bool:
    """Whether a corpus's vocabulary is what `known_chars` followed by the corpus's others, sorted, gives
    (a fine-tune's export names the new characters too: the same vocabulary, the same cached ids)."""
    rest = chars[len(known_chars):]
    return "".join(chars[: len(known_chars)]) == known_chars and list(rest) == sorted(rest)


def read_cache(cache_dir: Path, key: str, sha256: str):
    try:
        meta = json.loads((cache_dir / f"{key}.json").read_text(encoding="utf-8"))
        if meta["format"] != CACHE_FORMAT or meta["sha256"] != sha256:
            return None
        ids = map_ids(cache_dir / f"{key}.bin", meta["dtype"])
    except (OSError, ValueError, KeyError):
        return None  # absent or damaged: encode again
    return (tuple(meta["chars"]), ids, cache_dir / f"{key}.bin") if len(ids) == meta["n_chars"] else None


def write_cache(cache_dir: Path, key: str, sha256: str, chars, path: Path, lowercase: bool) -> np.ndarray:
    """Encode into cache_dir/<key>.bin (renamed into place when complete), then memory-map it."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    for stale in cache_dir.glob("ids-*"):  # an earlier corpus of this run: its ids are no use now
        if not stale.name.startswith(key):
            stale.unlink()
    # Workers of one cluster on one machine may encode at once: each into its own file, renamed whole.
    target, tmp = cache_dir / f"{key}.bin", cache_dir / f".{key}.bin.{os.getpid()}.tmp"
    n_chars = 0
    try:
        with open(tmp, "wb") as f:
            for ids in encode(text_chunks(path, lowercase, f"encoding {path.name}"), chars):
                f.write(ids.tobytes())
                n_chars += len(ids)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CorpusError(f"cannot write the corpus ids to {target}: {exc.strerror}; free some space "
                          "or choose another ARTIFACTS directory") from None
    write_atomic(cache_dir / f"{key}.json", json.dumps({
        "format": CACHE_FORMAT, "sha256": sha256, "corpus": str(path), "n_chars": n_chars,
        "dtype": np.dtype(id_dtype(len(chars))).name, "chars": list(chars)}, ensure_ascii=False) + "\n")
    return map_ids(target, id_dtype(len(chars)))


def map_ids(path: Path, dtype) -> np.ndarray:
    """The ids file as a read-only array, memory-mapped."""
    with open(path, "rb") as f:
        return np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), dtype)
