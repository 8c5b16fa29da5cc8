"""Bring your own Keras model (make export KERAS=): the book's notebook model, a GRU, an Embedding model,
trained a little in plain Keras, saved, exported, and run by charsdk as the book's loop runs them."""

import json
import re

import numpy as np
import pytest

from charsdk import Generator, InputError
from tests.conftest import ROOT, ApiServer, make_text
from tests.test_constraints import PATTERNS
from train import export
from train.keras_onnx import keras

MAXLEN = 20


@pytest.fixture(scope="module")
def book_text(tmp_path_factory):
    path = tmp_path_factory.mktemp("keras") / "text.txt"
    path.write_text(make_text(12000, seed=21), encoding="utf-8")
    return path


def book_data(text: str, step: int = 3):
    """The notebook's arrays: one-hot windows of MAXLEN characters and the one-hot next character."""
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    starts = range(0, len(text) - MAXLEN, step)
    x = np.zeros((len(starts), MAXLEN, len(chars)), np.float32)
    y = np.zeros((len(starts), len(chars)), np.float32)
    for i, s in enumerate(starts):
        for t, c in enumerate(text[s : s + MAXLEN]):
            x[i, t, index[c]] = 1
        y[i, index[text[s + MAXLEN]]] = 1
    return chars, x, y


def trained(layers, text: str, ids: bool = False, logits: bool = False, epochs: int = 3):
    """A model of `layers` fitted as the notebook fits its own: RMSprop 0.01, batch 128."""
    keras.utils.set_random_seed(0)
    chars, x, y = book_data(text)
    model = keras.Sequential([keras.Input((MAXLEN,) if ids else (MAXLEN, len(chars)),
                                          dtype="int32" if ids else "float32"), *layers])
    model.compile(loss=keras.losses.CategoricalCrossentropy(from_logits=logits),
                  optimizer=keras.optimizers.RMSprop(learning_rate=0.01))
    model.fit(x.argmax(-1).astype(np.int32) if ids else x, y, batch_size=128, epochs=epochs, verbose=0)
    return model


def book_loop(model, text: str, seed: str, length: int, ids: bool = False) -> str:
    """The notebook's generation loop, greedy: the one-hot window of the last MAXLEN characters, predict,
    take the most likely character."""
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    generated = seed
    for _ in range(length):
        window = [index[c] for c in generated[-MAXLEN:]]
        x = np.array([window], np.int32) if ids else np.eye(len(chars), dtype=np.float32)[[window]]
        generated += chars[int(np.argmax(model.predict(x, verbose=0)[0]))]
    return generated[len(seed):]


def export_keras(model_path, corpus, artifacts, name, *extra, capsys=None):
    code = export.main(["--keras", str(model_path), "--corpus", str(corpus), "--name", name, "--artifacts",
                        str(artifacts), *extra])
    return code, capsys.readouterr() if capsys else None


CASES = {
    "book-lstm": (lambda v: [keras.layers.LSTM(32), keras.layers.Dense(v, activation="softmax")], False,
                  False),
    "gru": (lambda v: [keras.layers.GRU(32), keras.layers.Dense(v, activation="softmax")], False, False),
    "embedding-2-lstm-logits": (lambda v: [keras.layers.Embedding(v, 16),
                                           keras.layers.LSTM(32, return_sequences=True),
                                           keras.layers.LSTM(32), keras.layers.Dense(v)], True, True),
}


@pytest.mark.parametrize("case", CASES)
def test_a_keras_model_exported_generates_as_the_book_s_loop_greedily(case, book_text, tmp_path, capsys):
    text = book_text.read_text(encoding="utf-8")
    layers, ids, logits = CASES[case]
    model = trained(layers(len(set(text))), text, ids=ids, logits=logits)
    path = tmp_path / ("model.h5" if case == "gru" else "model.keras")  # the legacy format too
    model.save(path)
    code, out = export_keras(path, book_text, tmp_path, "mine", "--precision", "fp32", capsys=capsys)
    assert code == 0, out.err
    generator = Generator.load(tmp_path / "mine")
    seed = text[5000 : 5000 + MAXLEN]
    expected = book_loop(model, text, seed, 100, ids)
    assert generator.generate(seed, length=100, temperature=0, mode="window") == expected
    assert generator.vocab.chars == tuple(sorted(set(text)))
    if case == "book-lstm":  # charsdk's own graph: both modes, checked against tf2onnx's conversion
        assert generator.vocab.window is None and "tf2onnx vs the graph" in out.out
        assert len(generator.generate(seed, length=50, temperature=0.5, seed=1)) == 50
    else:  # a window model: window mode only, and it says so
        assert generator.vocab.window.output_is == ("logits" if logits else "probs")
        assert json.loads((tmp_path / "mine" / "vocab.json").read_text())["format_version"] == 3
        assert generator.generate(seed, length=30, temperature=0.7, seed=3) == generator.generate(
            seed, length=30, temperature=0.7, seed=3, mode="window")
        with pytest.raises(InputError, match="window mode only"):
            generator.generate(seed, length=10, mode="stateful")
        from typer.testing import CliRunner

        from charsdk.cli import app

        info = CliRunner().invoke(app, ["info", "--model", str(tmp_path / "mine")]).stdout
        assert "a window model (model" in info and "window mode only" in info


def test_a_window_model_samples_with_the_shared_rules_for_any_n(book_text, tmp_path, capsys):
    """Seeded samples of a window model: the same text alone or among others (each stream's numbers
    depend on (seed, i) only), top-k 1 is greedy."""
    text = book_text.read_text(encoding="utf-8")
    model = trained(CASES["gru"][0](len(set(text))), text, epochs=1)
    model.save(tmp_path / "gru.keras")
    assert export_keras(tmp_path / "gru.keras", book_text, tmp_path, "gru", capsys=capsys)[0] == 0
    generator = Generator.load(tmp_path / "gru")
    together = generator.generate("the ", length=40, temperature=[0.5, 1.0], n=2, seed=9)
    assert together[0] == generator.generate("the ", length=40, temperature=0.5, seed=9)
    assert generator.generate("the ", length=40, top_k=1, temperature=1.0, seed=4) == generator.generate(
        "the ", length=40, temperature=0)
    result = generator.evaluate(text[-2000:])
    assert result["mode"] == "window" and result["bits_per_char"] < np.log2(generator.vocab.size)
    scored = generator.generate("the ", length=40, temperature=0.7, seed=9, logprobs=2)  # window backend's
    assert scored.text == generator.generate("the ", length=40, temperature=0.7, seed=9)
    read = generator.prompt_scores(generator.request("the " + scored.text, logprobs=0))[len("the ") - 1 :]
    assert [s.logprob for s in scored.scores] == pytest.approx([s.logprob for s in read], abs=1e-5)
    assert sum(generator.predict("the ").values()) == pytest.approx(1)
    for i, pattern in enumerate(PATTERNS):  # 1,020 samples of the window backend, masked in numpy
        constrained = generator.generate("the ", 60, 1.0, n=340, seed=i, regex=pattern)
        assert all(re.fullmatch(pattern, t) for t in constrained), pattern
    server = ApiServer("--model", str(tmp_path / "gru"))  # the same engine: the same text
    try:
        answer = server.post({"prompt": ["the ", "we "], "max_tokens": 40, "temperature": 0.8, "n": 2,
                              "seed": 5}).json()
        expected = [text for prompt in ("the ", "we ")
                    for text in generator.generate(prompt, 40, 0.8, n=2, seed=5)]
        assert [c["text"] for c in answer["choices"]] == expected
    finally:
        server.stop()


def test_models_and_corpora_that_do_not_fit_each_get_one_line_and_nothing_is_written(book_text, tmp_path,
                                                                                    capsys):
    text = book_text.read_text(encoding="utf-8")
    width = len(set(text))
    model = trained([keras.layers.LSTM(16), keras.layers.Dense(width, activation="softmax")], text,
                    epochs=2)
    model.save(tmp_path / "book.keras")
    wide = keras.Sequential([keras.Input((MAXLEN, width + 1)), keras.layers.LSTM(8),
                             keras.layers.Dense(width + 1, activation="softmax")])
    wide.save(tmp_path / "wide.keras")
    classifier = keras.Sequential([keras.Input((784,)), keras.layers.Dense(10, activation="softmax")])
    classifier.save(tmp_path / "classifier.keras")
    other = tmp_path / "other.txt"  # as many characters, other ones: each letter an accented one, in
    other.write_text(text.translate({c: 0x200 - c for c in range(0x41, 0x7B)}), encoding="utf-8")  # reverse
    extra = tmp_path / "extra.txt"
    extra.write_text(text + "~", encoding="utf-8")
    assert len(set(other.read_text(encoding="utf-8"))) == width
    (tmp_path / "garbage.keras").write_bytes(b"not a model")
    cases = [("wide.keras", book_text, f"reads and predicts {width + 1} characters, but"),
             ("classifier.keras", book_text, "not a character model: it takes input (None, 784)"),
             ("book.keras", other, "no better than guessing"),
             ("book.keras", extra, f"reads and predicts {width} characters, but"),
             ("garbage.keras", book_text, "is not a Keras model this Keras can load"),
             ("missing.keras", book_text, "does not exist")]
    for model_file, corpus, message in cases:
        code, out = export_keras(tmp_path / model_file, corpus, tmp_path / "artifacts", "mine", capsys=capsys)
        lines = out.err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("export: error:"), (model_file, out.err)
        assert message in lines[0], lines[0]
        assert not (tmp_path / "artifacts" / "mine").exists()
    # as users run it (python -m train.export, as make export KERAS= does): one line, no traceback
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "train.export", "--keras", str(tmp_path / "book.keras"),
                          "--corpus", str(other), "--name", "mine", "--artifacts", str(tmp_path / "a")],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1 and "no better than guessing" in lines[0], run.stderr


def test_one_keras_model_as_window_model_and_as_charsdk_s_graph_draws_the_same_seeded_text(
        book_text, tmp_path, capsys, monkeypatch):
    """The window model's draw and the graph's are one set of rules on the same seeded uniform numbers."""
    from train import convert

    text = book_text.read_text(encoding="utf-8")
    model = trained(CASES["book-lstm"][0](len(set(text))), text, epochs=2)
    model.save(tmp_path / "book.keras")
    assert export_keras(tmp_path / "book.keras", book_text, tmp_path, "graph", "--precision", "fp32")[0] == 0
    monkeypatch.setattr(convert, "graph_can_build", lambda model: False)
    assert export_keras(tmp_path / "book.keras", book_text, tmp_path, "window")[0] == 0
    graph, window = Generator.load(tmp_path / "graph"), Generator.load(tmp_path / "window")
    assert graph.vocab.window is None and window.vocab.window is not None
    seed = text[3000 : 3000 + MAXLEN]
    for options in ({"temperature": 0.8}, {"temperature": 1.2, "top_p": 0.9},
                    {"temperature": 1.0, "top_k": 3}, {"temperature": 1.0, "regex": "[a-z ]{20,60}\\."},
                    {"temperature": 0.8, "top_p": 0.9, "regex": "(the|a) [a-z ,]+"}):
        assert (window.generate(seed, length=150, seed=5, n=2, **options)
                == graph.generate(seed, length=150, seed=5, n=2, mode="window", **options)), options
