import random
import sys
from pathlib import Path

import pytest

from bench.server import Server

WORDS = (
    "the of and to a in that it is was he for on are as with his they at be this from have or by "
    "one had not but what all were when we there can an your which their said if do will each "
    "about how up out them then she many some so these would other into has more her two like him "
    "see time could no make than first been its who now people my made over did down only way find "
    "use may water long little very after words called just where most know"
).split()


def make_text(n_chars: int, seed: int = 0) -> str:
    """Sentences of common words: small, varied, deterministic training text."""
    rng = random.Random(seed)
    sentences, size = [], 0
    while size < n_chars:
        words = rng.choices(WORDS, k=rng.randint(4, 12))
        sentence = " ".join(words).capitalize() + rng.choice([". ", ", ", "! ", "? "])
        sentences.append(sentence)
        size += len(sentence)
    return "".join(sentences)[:n_chars]


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text(make_text(15000), encoding="utf-8")
    return path


TINY = ["--maxlen", "20", "--step", "3", "--units", "32", "--batch-size", "64",
        "--learning-rate", "0.01", "--sample-length", "40"]


@pytest.fixture(scope="session")
def trained_dir(small_corpus, tmp_path_factory) -> Path:
    """A tiny model trained for 2 epochs on the small corpus and exported (real TF, real onnxruntime)."""
    from train import export, fit

    artifacts = tmp_path_factory.mktemp("artifacts")
    args = ["--corpus", str(small_corpus), "--name", "tiny", "--artifacts", str(artifacts),
            "--epochs", "2", "--recipe", "book", *TINY]
    assert fit.main(args) == 0
    assert export.main(["--name", "tiny", "--artifacts", str(artifacts)]) == 0
    return artifacts / "tiny"


def changed_copy(trained_dir: Path, target: Path) -> str:
    """A copy of an exported run whose best.keras now holds other weights, so that exporting it again
    gives a new model; returns the copy's current ONNX sha256."""
    import shutil

    import keras

    from charsdk import Generator

    shutil.copytree(trained_dir, target)
    old = Generator.load(target).vocab.onnx_sha256
    model = keras.models.load_model(target / "best.keras")
    model.set_weights([w + 0.01 for w in model.get_weights()])
    model.save(target / "best.keras")
    return old


class ApiServer(Server):
    """`charsdk serve FLAGS` (bench/server.py) with an HTTP client's conveniences."""

    def health(self) -> dict:
        import httpx

        return httpx.get(self.root + "/health", timeout=5).json()

    def post(self, body, **kwargs):
        import json

        import httpx

        content = body if isinstance(body, str | bytes) else json.dumps(body)
        return httpx.post(self.base + "/completions", content=content, timeout=30, **kwargs)


@pytest.fixture
def servers():
    """Start servers with servers(*flags); each is stopped after the test."""
    started = []
    yield lambda *flags, **kwargs: started.append(ApiServer(*flags, **kwargs)) or started[-1]
    for server in started:
        server.stop()


ROOT = Path(__file__).resolve().parents[1]
SHARED_CORPUS = ROOT.parent / "shared" / "corpora" / "nietzsche.txt"  # beside the checkout, not for users


def run_python(code: str, *args, executable=sys.executable, env_home=None):
    import os
    import subprocess

    env = {**os.environ, "HOME": env_home} if env_home else None
    return subprocess.run([executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env=env)


def train_args(corpus, artifacts, *extra):
    return ["--corpus", str(corpus), "--name", "run", "--artifacts", str(artifacts), "--recipe", "book",
            *TINY, *extra]


@pytest.fixture(scope="session")
def worsening_corpus(tmp_path_factory):
    """Trained on "abcabc…", held out "acbacb…": every epoch learns the training order better and
    so scores the held-out text worse (7.5, 8.5, 9.2, 9.8 bits/char when this test was written)."""
    path = tmp_path_factory.mktemp("worse") / "worse.txt"
    path.write_text("abc" * 1000 + "acb" * 111, encoding="utf-8")
    return path
