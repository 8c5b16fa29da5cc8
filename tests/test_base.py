"""Starting from a pretrained base: fine-tuning, new characters, BASE=none, resuming, the base corpus."""

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, SHARED_CORPUS, TINY, make_text
from train import fit

CASED = [*TINY, "--recipe", "book", "--no-lowercase"]  # the book's tiny model, case kept


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny base: trained from scratch for two epochs on mixed-case text."""
    artifacts = tmp_path_factory.mktemp("base")
    corpus = artifacts / "base.txt"
    corpus.write_text(make_text(15000, seed=11), encoding="utf-8")
    assert fit.main(["--corpus", str(corpus), "--name", "base", "--artifacts", str(artifacts),
                     "--base", "none", "--epochs", "2", *CASED]) == 0
    return artifacts / "base"


@pytest.fixture(scope="module")
def other_text(tmp_path_factory):
    path = tmp_path_factory.mktemp("other") / "other.txt"
    path.write_text(make_text(15000, seed=12), encoding="utf-8")
    return path


def weights(path):
    from train.model import load_checkpoint

    return load_checkpoint(path).get_weights()


def train(corpus, artifacts, name, *extra, capsys=None):
    code = fit.main(["--corpus", str(corpus), "--name", name, "--artifacts", str(artifacts), *extra])
    out = capsys.readouterr() if capsys else None
    return code, out


def test_a_fine_tune_starts_from_the_base_weights_and_its_first_figure_is_the_base_s(
        base_dir, other_text, tmp_path, capsys):
    from train.corpus import load_corpus
    from train.data import cut, holdout_starts
    from train.model import last_step_probs, load_checkpoint

    code, out = train(other_text, tmp_path, "ft", "--base", str(base_dir), *CASED, "--epochs", "1",
                      "--steps-per-epoch", "1", "--learning-rate", "0", capsys=capsys)
    assert code == 0, out.err
    assert out.out.splitlines()[0].startswith(f"train: fine-tuning from {base_dir / 'best.keras'}")
    log = json.loads((tmp_path / "ft" / "log.json").read_text())
    assert log["base"]["checkpoint"] == str(base_dir / "best.keras")
    # With a learning rate of 0 the one step changes nothing: the run's weights are the base's.
    for mine, base in zip(weights(tmp_path / "ft" / "last.keras"), weights(base_dir / "best.keras"),
                          strict=True):
        np.testing.assert_array_equal(mine, base)
    # The figure logged before training is the base's on the same held-out windows, computed here.
    base_log = json.loads((base_dir / "log.json").read_text())
    corpus = load_corpus(other_text, maxlen=20, holdout=0.1, lowercase=False,
                         known_chars="".join(base_log["corpus"]["vocab"]))
    starts = holdout_starts(len(corpus.holdout_ids), 20, 1, 10_000)
    x, y = cut(corpus, starts, 20, holdout=True)
    probs = last_step_probs(load_checkpoint(base_dir / "best.keras"), np.eye(len(corpus.chars))[x])
    nats = -np.mean(np.log(probs[np.arange(len(y)), y]))
    assert math.isclose(log["start"]["val_loss"], nats, rel_tol=1e-4)


def test_new_characters_extend_the_vocabulary_without_changing_the_base_s_predictions(base_dir, tmp_path,
                                                                                   capsys):
    from train.model import load_checkpoint

    corpus = tmp_path / "extra.txt"
    corpus.write_text(make_text(15000, seed=13) + " Zq@ xQ@ " * 50, encoding="utf-8")
    code, out = train(corpus, tmp_path, "extra", "--base", str(base_dir), *CASED, "--epochs", "1",
                      "--steps-per-epoch", "1", "--learning-rate", "0", capsys=capsys)
    assert code == 0, out.err
    base_vocab = json.loads((base_dir / "log.json").read_text())["corpus"]["vocab"]
    vocab = json.loads((tmp_path / "extra" / "log.json").read_text())["corpus"]["vocab"]
    new = sorted(set("Zq@xQ") - set(base_vocab))
    assert new and vocab == base_vocab + new  # the base's characters in its order, then the new ones
    assert f"{len(new)} new: {''.join(new)}" in out.out.splitlines()[0]
    base, model = load_checkpoint(base_dir / "best.keras"), load_checkpoint(tmp_path / "extra" / "last.keras")
    ids = np.random.default_rng(0).integers(0, len(base_vocab), (16, 20))
    before = base.predict(np.eye(len(base_vocab))[ids], verbose=0)
    after = model.predict(np.eye(len(vocab))[ids], verbose=0)
    np.testing.assert_allclose(after[..., : len(base_vocab)], before, rtol=1e-3, atol=1e-6)
    assert after[..., len(base_vocab):].max() < 1e-3
    # The export keeps that vocabulary's order (the characters the text uses: test_an_export_keeps_only…)
    # and the ids training cached (no second encoding).
    from charsdk import Generator
    from train import export

    cached = sorted(p.name for p in (tmp_path / "extra").glob("ids-*"))
    assert export.main(["--name", "extra", "--artifacts", str(tmp_path), "--precision", "fp32"]) == 0
    generator = Generator.load(tmp_path / "extra")
    text = corpus.read_text(encoding="utf-8")
    assert list(generator.vocab.chars) == [c for c in vocab if c in text] and not generator.vocab.lowercase
    assert sorted(p.name for p in (tmp_path / "extra").glob("ids-*")) == cached
    assert len(generator.generate("The Zq@", length=20, seed=1)) == 20
    # Reading a new character moves nothing: as if the base had read no character there.
    ids[:, ::3] = len(base_vocab)  # the first new character
    nothing = np.eye(len(base_vocab) + 1)[np.minimum(ids, len(base_vocab))][..., : len(base_vocab)]
    np.testing.assert_allclose(model.predict(np.eye(len(vocab))[ids], verbose=0)[..., : len(base_vocab)],
                               base.predict(nothing, verbose=0), rtol=1e-3, atol=1e-6)


def test_an_export_keeps_only_the_characters_its_corpus_uses_predicting_as_the_model_does(base_dir,
                                                                                          tmp_path):
    """A fine-tune's vocabulary is its base's; its export drops the characters the text never uses
    (here the capitals), and predicts over the rest as the model does, renormalised."""
    from charsdk import Generator
    from train import export
    from train.model import keep_chars, load_checkpoint

    corpus = tmp_path / "lower.txt"
    corpus.write_text(make_text(15000, seed=14).lower(), encoding="utf-8")
    code, _ = train(corpus, tmp_path, "lower", "--base", str(base_dir), *CASED, "--epochs", "1",
                    "--steps-per-epoch", "2")
    assert code == 0
    chars = json.loads((tmp_path / "lower" / "log.json").read_text())["corpus"]["vocab"]
    kept = sorted(set(corpus.read_text(encoding="utf-8")), key=chars.index)
    assert len(kept) < len(chars) and any(c.isupper() for c in chars)
    # The export's own checks hold its graph to the narrowed Keras model (export_graph).
    assert export.main(["--name", "lower", "--artifacts", str(tmp_path), "--precision", "fp32"]) == 0
    vocab = Generator.load(tmp_path / "lower").vocab
    assert list(vocab.chars) == kept and vocab.training["chars_trained"] == len(chars)
    model = load_checkpoint(tmp_path / "lower" / "best.keras")
    narrow = keep_chars(model, chars, kept)
    ids = np.random.default_rng(0).integers(0, len(kept), (8, 20))
    full = model.predict(np.eye(len(chars))[np.array([chars.index(c) for c in kept])[ids]], verbose=0)
    full = full[..., [chars.index(c) for c in kept]]
    np.testing.assert_allclose(narrow.predict(np.eye(len(kept))[ids], verbose=0),
                               full / full.sum(-1, keepdims=True), rtol=1e-4, atol=1e-7)


def test_a_recipe_that_names_its_vocabulary_exports_all_of_it(other_text, tmp_path):
    """The base's recipe names its characters (BASE_CHARS): its export keeps those the text never uses."""
    from charsdk import Generator
    from train import export

    code, _ = train(other_text, tmp_path, "named", "--base", "none", *CASED, "--vocab", "QXZ@", "--epochs",
                    "1", "--steps-per-epoch", "1")
    assert code == 0 and "@" not in other_text.read_text(encoding="utf-8")
    assert export.main(["--name", "named", "--artifacts", str(tmp_path), "--precision", "fp32"]) == 0
    chars = Generator.load(tmp_path / "named").vocab.chars
    text = other_text.read_text(encoding="utf-8")
    assert "".join(chars[:4]) == "QXZ@" and len(chars) == 4 + len(set(text) - set("QXZ"))


def test_base_none_trains_from_scratch(base_dir, other_text, tmp_path, capsys):
    code, out = train(other_text, tmp_path, "scratch", "--base", "none", *CASED, "--epochs", "1",
                      "--steps-per-epoch", "1", "--learning-rate", "0", capsys=capsys)
    assert code == 0
    assert out.out.splitlines()[0] == "train: training from scratch (BASE=none)"
    log = json.loads((tmp_path / "scratch" / "log.json").read_text())
    assert log["base"] is None and "start" not in log
    mine, base = weights(tmp_path / "scratch" / "last.keras"), weights(base_dir / "best.keras")
    assert not any(np.array_equal(a, b) for a, b in zip(mine, base, strict=False) if a.shape == b.shape)


def test_case_is_kept_by_default_and_lower_cased_by_the_book_recipe(other_text, tmp_path):
    code, _ = train(other_text, tmp_path, "cased", "--base", "none", *TINY, "--epochs", "1",
                    "--steps-per-epoch", "1")
    assert code == 0
    log = json.loads((tmp_path / "cased" / "log.json").read_text())
    assert log["recipe_name"] == "default" and "T" in log["corpus"]["vocab"]
    code, _ = train(other_text, tmp_path, "lower", "--base", "none", "--recipe", "book", *TINY, "--epochs",
                    "1", "--steps-per-epoch", "1")
    assert code == 0
    assert "T" not in json.loads((tmp_path / "lower" / "log.json").read_text())["corpus"]["vocab"]


def test_make_train_passes_base_budget_and_lowercase_to_the_trainer():
    """`make train BASE= BUDGET= LOWERCASE=1` reaches train.fit as its flags (a dry run: nothing trains)."""
    command = subprocess.run(["make", "-n", "train", "NAME=mine", "CORPUS=my.txt", "BASE=none", "BUDGET=300",
                              "LOWERCASE=1"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    flags = {flag: command[i + 1] for i, flag in enumerate(command[:-1]) if flag.startswith("--")}
    assert flags["--base"] == "none" and flags["--time-budget-s"] == "300" and "--lowercase" in command
    plain = subprocess.run(["make", "-n", "train", "NAME=mine", "CORPUS=my.txt"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    assert not {"--base", "--time-budget-s", "--lowercase"} & set(plain)


def test_a_resumed_fine_tune_continues_from_its_own_checkpoint(base_dir, other_text, tmp_path, capsys):
    from train.model import load_checkpoint

    code, out = train(other_text, tmp_path, "ft", "--base", str(base_dir), *CASED, "--epochs", "1",
                      capsys=capsys)
    assert code == 0 and "before training: held-out" in out.out
    first = load_checkpoint(tmp_path / "ft" / "last.keras")
    steps = int(first.optimizer.iterations.numpy())
    code, out = train(other_text, tmp_path, "ft", "--epochs", "2", capsys=capsys)
    assert code == 0
    assert out.out.splitlines()[0] == f"train: continuing run ft, fine-tuned from {base_dir / 'best.keras'}"
    assert "Resuming" in out.out and "before training" not in out.out
    log = json.loads((tmp_path / "ft" / "log.json").read_text())
    assert len(log["epochs"]) == 2 and log["base"]["checkpoint"] == str(base_dir / "best.keras")
    assert int(load_checkpoint(tmp_path / "ft" / "last.keras").optimizer.iterations.numpy()) == 2 * steps


def test_auto_fine_tunes_from_the_base_only_where_it_covers_the_corpus(base_dir, other_text, tmp_path,
                                                                        capsys):
    shutil.copytree(base_dir, tmp_path / "base")
    code, out = train(other_text, tmp_path, "auto", *TINY, "--epochs", "1", capsys=capsys)
    assert code == 0 and out.out.startswith(f"train: fine-tuning from {tmp_path / 'base' / 'best.keras'}")
    log = json.loads((tmp_path / "auto" / "log.json").read_text())
    assert log["recipe_name"] == "finetune" and log["recipe"]["units"] == [32]  # the base's shape
    assert log["recipe"]["carry_state"] and log["start"]["val_bits_per_char"] > 0  # read as generated
    code, out = train(other_text, tmp_path, "book", "--recipe", "book", *TINY, "--units", "16",
                      "--epochs", "1", "--steps-per-epoch", "1", capsys=capsys)
    assert code == 0 and out.out.startswith("train: training from scratch: the recipe's LSTMs [16] are not")
    chinese = tmp_path / "chinese.txt"
    chinese.write_text("天地玄黄，宇宙洪荒。日月盈昃，辰宿列张。" * 300, encoding="utf-8")
    code, out = train(chinese, tmp_path, "zh", *TINY, "--epochs", "1", "--steps-per-epoch", "1",
                      capsys=capsys)
    assert code == 0
    assert out.out.splitlines()[0].startswith("train: training from scratch: only 0.0% of the corpus's")
    assert json.loads((tmp_path / "zh" / "log.json").read_text())["base"] is None


def test_a_named_base_that_is_not_a_run_is_one_clear_line_and_writes_nothing(other_text, tmp_path, capsys):
    code, out = train(other_text, tmp_path, "x", "--base", "nosuchrun", *TINY, capsys=capsys)
    assert code == 2
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train: error:") and "BASE=none" in lines[0]
    assert not (tmp_path / "x").exists()


def test_the_base_corpus_script_names_a_missing_package_in_one_line(tmp_path, monkeypatch, capsys):
    from train import base_corpus

    monkeypatch.setattr(base_corpus, "DICTD", tmp_path / "nothing")
    assert base_corpus.main(["--out", str(tmp_path / "corpus.txt")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1] == (f"base corpus: error: {tmp_path / 'nothing' / 'gcide.dict.dz'} not found: install "
                         "Debian's dict-gcide (apt-get install dict-gcide)")
    assert not (tmp_path / "corpus.txt").exists()


PACKAGES = [Path(p) for p in ("/usr/share/dictd/gcide.dict.dz", "/usr/share/dictd/jargon.dict.dz",
                               "/usr/share/dictd/devil.dict.dz", "/usr/share/dictd/foldoc.dict.dz",
                               "/usr/share/games/fortunes/anarchism", "/usr/bin/bible",
                               "/usr/lib/R/site-library/janeaustenr", "/usr/lib/R/site-library/tokenizers",
                               "/usr/share/doc/debian-handbook/html/en-US", "/usr/share/debian-reference",
                               "/usr/share/doc/debian/FAQ/debian-faq.en.txt.gz", "/usr/lib/python3.11/os.py",
                               "/usr/share/perl/5.36.0/strict.pm")]
# bench/text_corpus.py's corpora, scored in the docs
SCORED = ("licences", "perl-faq", "python-tutorial", "python-whatsnew")


def test_make_base_leaves_out_every_corpus_that_bench_text_corpus_builds():
    from bench.text_corpus import CORPORA

    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    left_out = re.search(r"^SCORED_CORPORA := ([^#\n]*)", makefile, re.M).group(1).split()
    assert set(left_out) == set(SCORED) == set(CORPORA)


@pytest.mark.skipif(not all(p.exists() for p in PACKAGES),
                    reason="the base corpus's Debian packages are not installed (.ci/run installs them)")
def test_the_base_corpus_builds_offline_from_its_packages_without_the_scored_text(tmp_path):
    from train.base_corpus import SOURCES, shingles
    from train.config import BASE_CHARS

    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "http_proxy": "http://127.0.0.1:9",
           "https_proxy": "http://127.0.0.1:9", "PYTHONPATH": str(ROOT)}  # no network
    scored = [SHARED_CORPUS] if SHARED_CORPUS.exists() else []
    for name in SCORED:  # the docs' small corpora, built as `make base` builds them to leave them out
        made = subprocess.run([sys.executable, "-m", "bench.text_corpus", name,
                               "--out", str(tmp_path / f"{name}.txt")],
                              cwd=ROOT, capture_output=True, text=True, env=env)
        assert made.returncode == 0, made.stderr
        scored.append(tmp_path / f"{name}.txt")
    out = tmp_path / "corpus.txt"
    exclude = [arg for path in scored for arg in ("--exclude", str(path))]
    result = subprocess.run([sys.executable, "-m", "train.base_corpus", "--out", str(out), *exclude],
                            cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert set(manifest["sources"]) == set(SOURCES)
    assert all(source["documents"] > 10 and source["characters"] > 100_000
               for source in manifest["sources"].values())
    text = out.read_text(encoding="utf-8")
    assert set(text) <= set(BASE_CHARS) and len(text) > 30_000_000
    assert "“" in text and "—" in text and "é" in text  # the typographic third, GCIDE's accents
    assert "Elizabeth Bennet" in text and "Queequeg" in text  # the novels
    assert "\n        return self" in text and "\nsub new {" in text  # code keeps its indentation,
    assert max(map(len, text.splitlines())) > 100  # its long lines (prose is wrapped at 72-80),
    assert '””“' not in text and '\n    """' in text  # and its straight quotes (no docstring curled)
    assert "Prev\n" not in text and "Download the ebook" not in text  # the Handbook's navigation left out
    words = shingles(text)
    for path in scored:
        assert not words & shingles(path.read_text(encoding="utf-8")), path
