"""`make baselines`: how classic compressors code the held-out text, the floor a model has to beat.

Each compressor is given the training part (the first 90%, or a list's training items, as the models
train on) and then the whole text; what the held-out part adds is its cost: bits per held-out character =
(size(train + held-out) - size(train)) * 8 / held-out characters. Written as JSON, drawn by make plot.
"""

from __future__ import annotations

import argparse
import bz2
import json
import lzma
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyppmd

from charsdk.items import list_items
from train.corpus import ITEM_PROBE, CorpusError, download_book_corpus, file_sha256, held_out_items

PPMD = "PPMd order 6, 256 MB"  # the best of them, the figure a model is set beside
COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "zlib -9": lambda data: zlib.compress(data, 9),
    "xz -9e": lambda data: lzma.compress(data, preset=9 | lzma.PRESET_EXTREME),
    "bz2 -9": lambda data: bz2.compress(data, 9),
    PPMD: lambda data: pyppmd.compress(data, max_order=6, mem_size=256 << 20),
}


def held_out_bits(text: str, holdout: float = 0.1) -> tuple[int, dict[str, float]]:
    """Held-out characters, and each compressor's bits per held-out character."""
    text, split = split_as_training(text, holdout)
    return len(text) - split, {name: coded_bits(compress, text[:split], text[split:])
                               for name, compress in COMPRESSORS.items()}


def coded_bits(compress: Callable[[bytes], bytes], before: str, text: str) -> float:
    """Bits per character of `text` coded after `before`: what it adds to the compressed size (the
    compressor adapts to everything it has read, as it would coding the two as one file)."""
    whole, head = (before + text).encode("utf-8"), before.encode("utf-8")
    return (len(compress(whole)) - len(compress(head))) * 8 / len(text)


def split_as_training(text: str, holdout: float) -> tuple[str, int]:
    """The text as training orders it, and where its held-out part starts: the last `holdout` of running
    text; a one-item-per-line list's held-out items (train.corpus.held_out_items) after its others."""
    if list_items(text[:ITEM_PROBE]) is None:  # as train.corpus.is_list tells them apart
        return text, int(len(text) * (1 - holdout))
    codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
    ordered, split, _ = held_out_items(codes, ord("\n"), holdout)
    return ordered.tobytes().decode("utf-32-le"), split


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.baselines", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", help="UTF-8 text (default: the book's Nietzsche text)")
    p.add_argument("--no-lowercase", action="store_true",
                   help="code the text as it is (the recipes lower-case it)")
    p.add_argument("--out", default="artifacts/baselines.json")
    args = p.parse_args(argv)
    try:
        path = Path(args.corpus) if args.corpus else download_book_corpus()
        sha256 = file_sha256(path)
        text = path.read_text(encoding="utf-8").removeprefix("\ufeff")
    except CorpusError as exc:
        print(f"baselines: error: {exc}", file=sys.stderr)
        return 2
    except UnicodeDecodeError:
        print(f"baselines: error: {path} is not UTF-8 (train.fit says where)", file=sys.stderr)
        return 2
    held_out, bits = held_out_bits(text if args.no_lowercase else text.lower())
    print(f"{path.name}: the last {held_out:,} characters, coded after the first {len(text) - held_out:,}")
    for name, value in sorted(bits.items(), key=lambda item: item[1]):
        print(f"  {name:<22} {value:.3f} bits/char")
    Path(args.out).write_text(json.dumps({"corpus": {"path": str(path), "sha256": sha256},
                                          "holdout_chars": held_out, "bits_per_char": bits}, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
