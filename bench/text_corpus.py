"""`python -m bench.text_corpus NAME --out FILE`: a prose corpus from files a Debian package installs, for
the five-minute fine-tunes of docs/base-model.md (each scored beside PPMd on the same split by
`make baselines`). `make base` leaves them out of the base corpus, and nothing of them is committed.

- licences: Debian's licence texts, /usr/share/common-licenses (base-files): its files, not the links to
  them, 237,320 characters on Debian 12.
- perl-faq: the Perl FAQ, perlfaq*.pod of perl-doc (apt-get install perl-doc): 372,818 characters of
  POD on Debian 12 (Perl 5.36).
- python-tutorial: the Python tutorial and FAQ, the reStructuredText sources that python3-doc installs
  (apt-get install python3-doc): 448,761 characters on Debian 12 (Python 3.11).
- python-whatsnew: "What's New in Python" 2.0 to 3.11, the reStructuredText sources that python3-doc
  installs: 1,687,777 characters on Debian 12, a megabyte corpus of one kind. The shipped base was
  trained before it was chosen, on a corpus that holds 244 of its 226,726 8-word runs (the standard
  library's docstrings and warnings that it quotes); `make base` leaves those documents out now.

Each is its files concatenated in name order.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from charsdk.vocab import write_atomic

# name: (the Debian package that installs it, the folder, the file patterns under it)
CORPORA = {
    "licences": ("base-files", Path("/usr/share/common-licenses"), ["*"]),
    "perl-faq": ("perl-doc", Path("/usr/share/perl").glob("5.*/pod"), ["perlfaq*.pod"]),
    "python-tutorial": ("python3-doc", Path("/usr/share/doc").glob("python3.*/html/_sources"),
                        ["tutorial/*.rst.txt", "faq/*.rst.txt"]),
    "python-whatsnew": ("python3-doc", Path("/usr/share/doc").glob("python3.*/html/_sources"),
                        ["whatsnew/[0-9]*.rst.txt"]),
}


def corpus_files(name: str) -> list[Path]:
    """The files of corpus `name`, in name order (none if its package is not installed)."""
    _, folders, patterns = CORPORA[name]
    folder = max([folders] if isinstance(folders, Path) else folders, default=None)  # the newest version
    if folder is None:
        return []
    files = (f for pattern in patterns for f in folder.glob(pattern))
    return sorted(f for f in files if f.is_file() and not f.is_symlink())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.text_corpus", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=sorted(CORPORA))
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    files = corpus_files(args.name)
    if not files:
        package = CORPORA[args.name][0]
        print(f"text_corpus: error: no files of {args.name} found: install Debian's {package} "
              f"(apt-get install {package})", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f.read_text(encoding="utf-8") for f in files)
    write_atomic(args.out, text)
    print(f"{args.out}: {len(text):,} characters from {len(files)} files of {args.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
