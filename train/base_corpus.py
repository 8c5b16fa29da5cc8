"""The base model's corpus, built offline from Debian's packages: `python -m train.base_corpus --out FILE`.

Public-domain and freely licensed English (docs/base-model.md lists sources, sizes and licences): the
1913 Webster's with its literary quotations (dict-gcide, a sample of it: it would otherwise be most of
the corpus), the King James Bible (bible-kjv), Bierce's Devil's Dictionary (dict-devil), the Jargon File
(dict-jargon), FOLDOC (dict-foldoc), the fortune cookies of fortunes and fortune-anarchism; fiction: Jane
Austen's six novels (r-cran-janeaustenr) and Moby-Dick (r-cran-tokenizers); modern prose: the Debian
Administrator's Handbook, the Debian Reference and the Debian FAQ; code: a sample of Python's standard
library (libpython3.11-stdlib) and of Perl's modules with their documentation (perl-modules-5.36).
Each source is cut into documents (a dictionary entry, a chapter, a page, a module), its markup removed
and its lines wrapped as prose (code and verse keep their lines); the documents of all sources are
shuffled together (so the held-out tail is a mix), a third of the prose set in typographic quotes and dashes
(so that the base knows ‘ ’ “ ” — …, which users' texts have and these sources hardly do), and every
character outside BASE_CHARS dropped. Documents that share an 8-word run with an --exclude file (the texts
the tests and figures score, e.g. Nietzsche) are left out.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import re
import shutil
import subprocess
import sys
import textwrap
import unicodedata
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

from charsdk.vocab import write_atomic

from .config import BASE_CHARS

SEED = 2026  # the shuffle and the typographic third
TYPOGRAPHIC = 1 / 3  # the share of documents set in curly quotes, em dashes and ellipses
WIDTH = 72  # long lines (a verse, a one-line fortune) are wrapped to this width, as most books are
SHINGLE_WORDS = 8  # an --exclude text shares a run of this many words with a document: leave it out
GCIDE_CHARS = 10_000_000  # the dictionary's sample: 29 M characters whole, which would drown the rest
CODE_CHARS = 4_000_000  # each code source's sample of whole files

DICTD = Path("/usr/share/dictd")
FORTUNES = Path("/usr/share/games/fortunes")
HANDBOOK = Path("/usr/share/doc/debian-handbook/html/en-US")
REFERENCE = Path("/usr/share/debian-reference")
DEBIAN_FAQ = Path("/usr/share/doc/debian/FAQ/debian-faq.en.txt.gz")
PYTHON_STDLIB = Path("/usr/lib/python3.11")
PERL_MODULES = Path("/usr/share/perl/5.36.0")
# GCIDE's ASCII codes for accented letters (the rest of its codes mark pronunciation: kept as the letter).
GCIDE_LETTERS = {"['e]": "é", "['a]": "á", "['o]": "ó", "['i]": "í", "['u]": "ú", "[`e]": "è", "[`a]": "à",
                 '["o]': "ö", '["e]': "ë", '["u]': "ü", '["i]': "ï", '["a]': "ä", "[^o]": "ô", "[^u]": "û",
                 "[^a]": "â", "[^e]": "ê", "[~n]": "ñ", "[,c]": "ç", "[ae]": "æ", "[AE]": "Æ", "[deg]": "°"}


class SourceMissing(Exception):
    """A Debian package the corpus needs is not installed."""


def need(path: Path, package: str) -> Path:
    if not path.exists():
        raise SourceMissing(f"{path} not found: install Debian's {package} (apt-get install {package})")
    return path


def dictd_entries(name: str, package: str) -> Iterator[str]:
    """Each entry of a dictd dictionary (its .index gives each entry's offset and length, base64)."""
    data = gzip.open(need(DICTD / f"{name}.dict.dz", package)).read()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

    def number(b64: str) -> int:
        value = 0
        for ch in b64:
            value = value * 64 + alphabet.index(ch)
        return value

    seen = set()
    index = need(DICTD / f"{name}.index", package).read_text(encoding="utf-8", errors="replace")
    for line in index.splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or parts[0].startswith("00") or (parts[1], parts[2]) in seen:
            continue
        seen.add((parts[1], parts[2]))
        start, length = number(parts[1]), number(parts[2])
        yield data[start : start + length].decode("utf-8", errors="replace")


def clean_lines(text: str) -> str:
    """Indentation and runs of spaces collapsed, line by line; blank lines kept as paragraph breaks."""
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def gcide() -> Iterator[str]:
    for entry in dictd_entries("gcide", "dict-gcide"):
        entry = re.sub(r"\s*\\[^\\\n]*\\", "", entry)  # pronunciations: \Ar*rive"\
        entry = re.sub(r"^\s*\[[^\]\n]*\]\s*$", "", entry, flags=re.M)  # source lines: [1913 Webster]
        for code, letter in GCIDE_LETTERS.items():
            entry = entry.replace(code, letter)
        entry = re.sub(r"\[[^\]\sA-Za-z]?([A-Za-z]{1,2})[^\]\sA-Za-z]?\]", r"\1", entry)  # [=a], [i^]: a, i
        yield clean_lines(entry.replace("{", "").replace("}", ""))


def glossary(name: str, package: str) -> Iterator[str]:
    """The Jargon File, FOLDOC, the Devil's Dictionary: cross-references {x} become x; FOLDOC's dates go."""
    for entry in dictd_entries(name, package):
        entry = re.sub(r"^\s*\(\d{4}-\d\d-\d\d\)\s*$", "", entry, flags=re.M)
        yield clean_lines(entry.replace("{", "").replace("}", ""))


def bible() -> Iterator[str]:
    """The King James text a chapter at a time, without verse references."""
    if not shutil.which("bible"):
        raise SourceMissing("the bible command was not found: install Debian's bible-kjv "
                            "(apt-get install bible-kjv)")
    text = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], capture_output=True, text=True,
                          check=True).stdout
    chapter, verses = None, []
    for line in text.splitlines():
        match = re.match(r"(\S+?\d+):\d+ (.*)", line)
        if not match:
            continue
        if match[1] != chapter and verses:
            yield "\n".join(verses)
            verses = []
        chapter = match[1]
        verses.append(match[2])
    if verses:
        yield "\n".join(verses)


def fortunes() -> Iterator[str]:
    """Every fortune file but the ASCII-art ones, a fortune at a time (overstrikes removed)."""
    files = sorted(p for p in need(FORTUNES, "fortunes").iterdir()
                   if p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8")
                   and p.name not in ("art", "ascii-art"))
    need(FORTUNES / "fortunes", "fortunes")
    need(FORTUNES / "anarchism", "fortune-anarchism")
    for path in files:
        text = re.sub(r".\x08", "", path.read_text(encoding="utf-8", errors="replace"))
        for fortune in re.split(r"^%$", text, flags=re.M):
            if fortune.strip():
                yield clean_lines(fortune)


def sample(documents: Iterator[str], most_chars: int) -> Iterator[str]:
    """A seeded sample of whole documents, about `most_chars` characters of them, in their own order."""
    documents = list(documents)
    total = sum(map(len, documents))
    if total <= most_chars:
        yield from documents
        return
    rng = random.Random(SEED)
    yield from (d for d in documents if rng.random() < most_chars / total)


def r_text(expression: str, package: str) -> str:
    """What an R expression prints (the texts that R's packages carry as data)."""
    if not shutil.which("Rscript"):
        raise SourceMissing(f"Rscript was not found: install Debian's {package} (apt-get install {package})")
    result = subprocess.run(["Rscript", "-e", expression], capture_output=True, text=True)
    if result.returncode:
        raise SourceMissing(f"R could not read {package}: install Debian's {package} "
                            f"(apt-get install {package})")
    return result.stdout


def chapters(text: str) -> Iterator[str]:
    """A novel a chapter at a time (its lines kept as the book wraps them)."""
    for chapter in re.split(r"^(?=CHAPTER |Chapter )", text, flags=re.M):
        if chapter.strip():
            yield chapter.strip()


def austen() -> Iterator[str]:
    """Jane Austen's six novels, each a line of R's character vector."""
    text = r_text("library(janeaustenr); b <- austen_books(); "
                  "for (k in unique(b$book)) writeLines(c(as.character(b$text[b$book == k]), '\\f'))",
                  "r-cran-janeaustenr")
    for book in text.split("\f\n"):
        yield from chapters(book)


def moby_dick() -> Iterator[str]:
    """Moby-Dick without Project Gutenberg's header and licence."""
    text = r_text('data(mobydick, package = "tokenizers"); cat(mobydick)', "r-cran-tokenizers")
    start, end = text.find("*** START OF"), text.find("*** END OF")
    if start < 0 or end < 0:
        raise SourceMissing("r-cran-tokenizers' Moby-Dick has no Gutenberg markers: reinstall "
                            "r-cran-tokenizers (apt-get install --reinstall r-cran-tokenizers)")
    yield from chapters(text[text.index("\n", start) : end])


class PageText(HTMLParser):
    """An HTML page's text: paragraphs and headings as prose, <pre> blocks as they are, navigation left
    out (DocBook's navheader, navfooter and table of contents)."""

    SKIP_CLASSES = {"navheader", "navfooter", "toc", "list-of-tables", "list-of-examples", "list-of-figures",
                    "docnav"}
    SKIP_IDS = {"banner", "title"}  # the Handbook's download banner and logo links
    BLOCKS = {"p", "div", "pre", "h1", "h2", "h3", "h4", "h5", "li", "dt", "dd", "tr", "table", "br"}

    def __init__(self):
        super().__init__()
        self.parts, self.pre, self.skip = [], 0, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if (tag in ("script", "style", "title") or attrs.get("id") in self.SKIP_IDS
                or set((attrs.get("class") or "").split()) & self.SKIP_CLASSES):
            self.skip.append(tag)
        elif self.skip and tag == self.skip[-1]:
            self.skip.append(tag)
        self.pre += tag == "pre"
        if tag in self.BLOCKS:
            self.parts.append("\n\n" if tag != "br" else "\n")

    def handle_endtag(self, tag):
        if self.skip and tag == self.skip[-1]:
            self.skip.pop()
        self.pre -= tag == "pre" and self.pre > 0
        if tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data):
        if not self.skip and not self.pre:
            data = re.sub(r"\s+", " ", data)
            data = data.lstrip() if not self.parts or self.parts[-1].endswith("\n") else data
        if not self.skip and data:
            self.parts.append(data)

    def text(self) -> str:
        text = "".join(self.parts)
        return re.sub(r"\n[ \t]*\n(\s*\n)+", "\n\n", re.sub(r"[ \t]+\n", "\n", text)).strip()


def html_pages(folder: Path, pattern: str, package: str) -> Iterator[str]:
    for path in sorted(need(folder, package).glob(pattern)):
        page = PageText()
        page.feed(path.read_text(encoding="utf-8", errors="replace"))
        if page.text():
            yield page.text()


def debian_faq() -> Iterator[str]:
    """The Debian FAQ's text version, a chapter at a time (its title page and contents left out)."""
    text = gzip.open(need(DEBIAN_FAQ, "debian-faq")).read().decode("utf-8", errors="replace")
    for chapter in re.split(r"^(?=Chapter\s\d+\.)", text, flags=re.M)[1:]:
        yield clean_lines(chapter)


def code_files(folder: Path, pattern: str, package: str) -> Iterator[str]:
    """Source files as they are (tabs as four spaces), a sample of CODE_CHARS characters."""
    files = sorted(need(folder, package).glob(pattern))
    yield from sample((p.read_text(encoding="utf-8", errors="replace").expandtabs(4).strip()
                       for p in files), CODE_CHARS)


SOURCES = {  # name: (documents, Debian package, licence)
    "gcide": (lambda: sample(gcide(), GCIDE_CHARS), "dict-gcide",
              "GPL-2+ (the 1913 Webster's: public domain)"),
    "bible": (bible, "bible-kjv", "the King James text: public domain (package GPL-2+)"),
    "devil": (lambda: glossary("devil", "dict-devil"), "dict-devil", "public domain"),
    "jargon": (lambda: glossary("jargon", "dict-jargon"), "dict-jargon", "public domain"),
    "foldoc": (lambda: glossary("foldoc", "dict-foldoc"), "dict-foldoc", "GFDL-1.1+"),
    "fortunes": (fortunes, "fortunes, fortune-anarchism", "BSD-3-Clause; quotations"),
    "austen": (austen, "r-cran-janeaustenr", "the novels (1811-1818): public domain (package MIT)"),
    "moby-dick": (moby_dick, "r-cran-tokenizers", "the novel (1851): public domain (package MIT)"),
    "handbook": (lambda: html_pages(HANDBOOK, "*.html", "debian-handbook"), "debian-handbook",
                 "GPL-2+ or CC-BY-SA-3.0"),
    "reference": (lambda: html_pages(REFERENCE, "*.en.html", "debian-reference-en"), "debian-reference-en",
                  "GPL-2+"),
    "debian-faq": (debian_faq, "debian-faq", "GPL-2+"),
    "python": (lambda: code_files(PYTHON_STDLIB, "*.py", "libpython3.11-stdlib"), "libpython3.11-stdlib",
               "PSF-2.0"),
    "perl": (lambda: code_files(PERL_MODULES, "**/*.pm", "perl-modules-5.36"), "perl-modules-5.36",
             "Artistic or GPL-1+"),
}
CODE = {"python", "perl"}  # sources whose lines are kept as they are (indentation is their syntax)


def wrap(document: str) -> str:
    """Lines longer than a book's wrapped to WIDTH; shorter ones (verse, tables) kept as they are."""
    return "\n".join(textwrap.fill(line, WIDTH, break_on_hyphens=False) if len(line) > WIDTH + 8 else line
                     for line in document.split("\n"))


def typographic(text: str) -> str:
    """Straight quotes curled, -- as an em dash, ... as an ellipsis."""
    text = re.sub(r'"(?=\w)', "“", text).replace('"', "”")
    text = re.sub(r"(?<![\w.,!?])'(?=\w)", "‘", text).replace("'", "’")
    return text.replace("...", "…").replace(" -- ", "—").replace("--", "—")


SPACES = {ord("\xa0"): " ", ord("\t"): " "}


def keep_base_chars(text: str) -> str:
    text = unicodedata.normalize("NFC", text).translate(SPACES)
    allowed = set(BASE_CHARS)
    return "".join(ch for ch in text if ch in allowed) if not set(text) <= allowed else text


def shingles(text: str) -> set[int]:
    words = re.findall(r"\w+", text.lower())
    return {hash(tuple(words[i : i + SHINGLE_WORDS])) for i in range(len(words) - SHINGLE_WORDS + 1)}


def build(out: Path, exclude: list[Path]) -> dict:
    excluded = set().union(*(shingles(p.read_text(encoding="utf-8")) for p in exclude))
    documents, counts = [], {}
    for name, (source, package, licence) in SOURCES.items():
        kept = dropped = chars = 0
        for document in source():
            document = document if name in CODE else wrap(document)
            if not document or (excluded and shingles(document) & excluded):
                dropped += bool(document)
                continue
            documents.append((document, name in CODE))
            kept, chars = kept + 1, chars + len(document)
        counts[name] = {"package": package, "licence": licence, "documents": kept, "characters": chars,
                        "left_out": dropped}
        print(f"{name:9} {kept:8,} documents {chars / 1e6:6.1f} M characters ({dropped} left out)",
              file=sys.stderr)
    rng = random.Random(SEED)
    rng.shuffle(documents)
    text = "\n\n".join(keep_base_chars(typographic(d) if rng.random() < TYPOGRAPHIC and not code else d)
                       for d, code in documents) + "\n"
    write_atomic(out, text)
    manifest = {"sources": counts, "characters": len(text), "distinct": len(set(text)),
                "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
                "excluded": [str(p) for p in exclude], "base_chars": BASE_CHARS}
    write_atomic(out.with_suffix(".json"), json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    print(f"{out}: {len(text):,} characters, {len(set(text))} distinct of the base's {len(BASE_CHARS)}",
          file=sys.stderr)
    return manifest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.base_corpus", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="the corpus file to write (and FILE.json)")
    p.add_argument("--exclude", type=Path, action="append", default=[],
                   help="leave out documents sharing an 8-word run with this text (repeatable)")
    args = p.parse_args(argv)
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        build(args.out, args.exclude)
    except SourceMissing as exc:
        print(f"base corpus: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"base corpus: error: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
