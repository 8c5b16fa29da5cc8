"""The small corpus of docs/base-model.md's five-minute runs: `python -m bench.licences_corpus --out FILE`.

Debian's licence texts, /usr/share/common-licenses: its files (not the links to them) concatenated in
name order, 237,320 characters on Debian 12 (sha256 e702fc12...). On every Debian system, in no test and
not in the base corpus; nothing of it is committed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from charsdk.vocab import write_atomic

LICENCES = Path("/usr/share/common-licenses")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.licences_corpus", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("artifacts/small/licences.txt"))
    args = p.parse_args(argv)
    files = sorted(f for f in LICENCES.glob("*") if f.is_file() and not f.is_symlink())
    if not files:
        print(f"licences_corpus: error: {LICENCES} has no licence files: this needs a Debian system",
              file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f.read_text(encoding="utf-8") for f in files)
    write_atomic(args.out, text)
    print(f"{args.out}: {len(text):,} characters from {len(files)} licence files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
