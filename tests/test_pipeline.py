"""Tiny train -> export -> generate, for real: TensorFlow, tf2onnx and onnxruntime."""

import json
import re

import numpy as np
import pytest

from charsdk import Generator
from charsdk.generator import sha256_of
from tests.conftest import TINY


def test_training_writes_checkpoints_and_a_log(trained_dir):
    assert (trained_dir / "best.keras").stat().st_size > 0
    assert (trained_dir / "last.keras").stat().st_size > 0
    log = json.loads((trained_dir / "log.json").read_text())
    assert [e["epoch"] for e in log["epochs"]] == [1, 2]
    for entry in log["epochs"]:
        assert entry["loss"] > 0 and entry["val_loss"] > 0 and entry["wall_s"] > 0
        assert entry["val_bits_per_char"] == pytest.approx(entry["val_loss"] / np.log(2))
    best = min(log["epochs"], key=lambda e: e["val_loss"])
    assert log["best_epoch"] == best["epoch"]


def test_export_writes_a_consistent_pair(trained_dir):
    vocab = json.loads((trained_dir / "vocab.json").read_text())
    for key in ("onnx", "sampler"):
        assert vocab[key]["sha256"] == sha256_of(trained_dir / vocab[key]["file"])
        assert vocab[key]["file"] == f"{'model' if key == 'onnx' else key}-{vocab[key]['sha256'][:12]}.onnx"
    assert len(list(trained_dir.glob("*.onnx"))) == 2
    assert vocab["training"]["checkpoint_sha256"] == sha256_of(trained_dir / "best.keras")
    assert vocab["maxlen"] == 20 and vocab["lowercase"] is True
    log = json.loads((trained_dir / "log.json").read_text())
    assert vocab["chars"] == log["corpus"]["vocab"]
    summary = vocab["training"]
    assert summary["best_epoch"] == log["best_epoch"]
    best = log["epochs"][log["best_epoch"] - 1]["val_bits_per_char"]
    assert summary["holdout_bits_per_char_during_training"] == pytest.approx(best, abs=1e-4)
    # onnxruntime scoring every held-out window agrees with TensorFlow's figure during training
    assert summary["holdout_bits_per_char_window"] == pytest.approx(best, abs=1e-3)
    assert summary["holdout_bits_per_char_stateful"] > 0
    assert [s["input"] for s in vocab["onnx"]["states"]] == ["h0", "c0"]
    assert not (trained_dir / ".export-staging").exists()


def test_onnxruntime_matches_keras(trained_dir, small_corpus):
    import keras

    from train.corpus import load_corpus
    from train.export import check_parity

    corpus = load_corpus(small_corpus, maxlen=20, holdout=0.1)
    model = keras.models.load_model(trained_dir / "best.keras")
    parity = check_parity(model, Generator.load(trained_dir), corpus)
    assert parity["window_max_abs_diff"] <= 1e-5
    assert parity["step_max_abs_diff"] <= 1e-5
    assert parity["sampler_mismatches"] == 0


def model_files(model_dir):
    return {p.name: p.read_bytes() for p in [*model_dir.glob("*.onnx"), model_dir / "vocab.json"]}


def dense_bias(graph):
    """The initializer of the bias added just before the softmax (the last layer's)."""
    softmax = next(n for n in graph.node if n.op_type == "Softmax")
    add = next(n for n in graph.node if softmax.input[0] in n.output)
    return next(t for t in graph.initializer if t.name in add.input)


def bump_dense_bias(proto, by: float):
    """One weight changed by `by`: the output bias of the first character."""
    from onnx import numpy_helper

    tensor = dense_bias(proto.graph) if any(n.op_type == "Softmax" for n in proto.graph.node) else next(
        t for t in proto.graph.initializer if t.name == "dense_b")  # sampler.onnx names its weights
    bias = numpy_helper.to_array(tensor).copy()
    bias[0] += by
    tensor.CopyFrom(numpy_helper.from_array(bias, tensor.name))
    return proto


def test_export_refuses_an_onnx_graph_that_disagrees_with_keras(trained_dir, monkeypatch):
    import tf2onnx

    from train import export

    real = tf2onnx.convert.from_function

    def perturbed(*args, **kwargs):
        proto, storage = real(*args, **kwargs)
        return bump_dense_bias(proto, 0.05), storage

    before = model_files(trained_dir)
    monkeypatch.setattr(tf2onnx.convert, "from_function", perturbed)
    with pytest.raises(export.ExportError, match="disagree"):
        export.export(trained_dir)
    assert model_files(trained_dir) == before
    assert not (trained_dir / ".export-staging").exists()


def test_export_refuses_a_sampler_that_draws_what_numpy_would_not(trained_dir, monkeypatch):
    from train import export

    real = export.build_sampler
    monkeypatch.setattr(export, "build_sampler", lambda *a, **k: bump_dense_bias(real(*a, **k), 2.0))
    before = model_files(trained_dir)
    with pytest.raises(export.ExportError, match="sampler.onnx drew"):
        export.export(trained_dir)
    assert model_files(trained_dir) == before


def test_generated_text_uses_the_model_vocabulary(trained_dir):
    generator = Generator.load(trained_dir)
    for mode in ("stateful", "window"):
        text = generator.generate("the people", length=200, temperature=0.5, seed=1, mode=mode)
        assert len(text) == 200 and set(text) <= set(generator.vocab.chars)


def test_a_trained_model_beats_uniform_guessing(trained_dir):
    log = json.loads((trained_dir / "log.json").read_text())
    vocab_size = len(log["corpus"]["vocab"])
    assert log["epochs"][-1]["val_bits_per_char"] < np.log2(vocab_size) - 1


def test_training_again_resumes_after_the_last_epoch(small_corpus, tmp_path):
    from train import fit

    args = ["--corpus", str(small_corpus), "--name", "r", "--artifacts", str(tmp_path), "--recipe", "book",
            *TINY]
    assert fit.main([*args, "--epochs", "1"]) == 0
    assert fit.main([*args, "--epochs", "2"]) == 0
    log = json.loads((tmp_path / "r" / "log.json").read_text())
    assert [e["epoch"] for e in log["epochs"]] == [1, 2]
    assert log["epochs"][1]["wall_s"] > log["epochs"][0]["wall_s"]


def test_resuming_with_another_recipe_is_refused(small_corpus, tmp_path, capsys):
    from train import fit

    args = ["--corpus", str(small_corpus), "--name", "r", "--artifacts", str(tmp_path), "--recipe", "book",
            *TINY]
    assert fit.main([*args, "--epochs", "1"]) == 0
    assert fit.main([*args, "--epochs", "1", "--maxlen", "10"]) == 2
    assert "another recipe or corpus" in capsys.readouterr().err


KILLED_EXPORT = """
import os, signal, sys
from pathlib import Path
from train import export

kill_at, calls = int(sys.argv[2]), []
def killing(real):
    def call(*args, **kwargs):
        if calls is not None and installing:
            calls.append(real)
            if len(calls) == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return call
installing = False
os.replace, Path.unlink = killing(os.replace), killing(Path.unlink)
real_install = export.install
def install(*args, **kwargs):
    global installing
    installing = True
    real_install(*args, **kwargs)
export.install = install
export.export(Path(sys.argv[1]))
"""


def test_a_killed_export_leaves_the_old_model_or_the_new_one(trained_dir, tmp_path):
    from tests.conftest import changed_copy, run_python

    model_dir = tmp_path / "tiny"
    old = changed_copy(trained_dir, model_dir)

    seen = []
    for kill_at in range(1, 16):
        result = run_python(KILLED_EXPORT, str(model_dir), str(kill_at))
        generator = Generator.load(model_dir)  # always a complete, consistent model
        seen.append(generator.vocab.onnx_sha256)
        assert 2 <= len(list(model_dir.glob("*.onnx"))) <= 4
        if result.returncode == 0:
            break
    assert result.returncode == 0 and len(seen) > 3
    assert seen[0] == old and seen[-1] != old  # killed before the switch: old; finished: new
    assert len(list(model_dir.glob("*.onnx"))) == 2


def test_training_killed_with_sigkill_resumes_with_its_optimizer_state(small_corpus, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    import keras

    from tests.conftest import ROOT

    args = [sys.executable, "-m", "train.fit", "--corpus", str(small_corpus), "--name", "k",
            "--artifacts", str(tmp_path), "--recipe", "default", "--epochs", "30", *TINY]
    log_path = tmp_path / "k" / "log.json"
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (log_path.exists() and len(json.loads(log_path.read_text())["epochs"]) >= 2):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        process.kill()
    logged = len(json.loads(log_path.read_text())["epochs"])
    last = keras.models.load_model(tmp_path / "k" / "last.keras")  # never a truncated file
    steps = int(last.optimizer.iterations.numpy())

    result = subprocess.run([*args[:-len(TINY) - 2], "--epochs", str(logged + 1), *TINY], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    # the log is written just before last.keras: a kill between the two costs that epoch
    finished = int(re.search(rf"Resuming {re.escape(str(tmp_path / 'k'))} after epoch (\d+)",
                             result.stdout)[1])
    assert finished in (logged - 1, logged) and steps % finished == 0
    log = json.loads(log_path.read_text())
    assert [e["epoch"] for e in log["epochs"]] == list(range(1, logged + 2))
    resumed = keras.models.load_model(tmp_path / "k" / "last.keras")
    assert int(resumed.optimizer.iterations.numpy()) == steps // finished * (logged + 1)


def test_resuming_drops_a_logged_epoch_whose_checkpoint_never_landed(small_corpus, tmp_path, capsys):
    from train import fit

    args = ["--corpus", str(small_corpus), "--name", "r", "--artifacts", str(tmp_path), "--recipe", "book",
            *TINY]
    assert fit.main([*args, "--epochs", "2"]) == 0
    log_path = tmp_path / "r" / "log.json"
    log = json.loads(log_path.read_text())
    ghost = {**log["epochs"][-1], "epoch": 3, "val_loss": 0.0, "val_bits_per_char": 0.0}
    log_path.write_text(json.dumps({**log, "epochs": [*log["epochs"], ghost], "best_epoch": 3}))

    assert fit.main([*args, "--epochs", "3"]) == 0
    assert f"Resuming {tmp_path / 'r'} after epoch 2" in capsys.readouterr().out
    log = json.loads(log_path.read_text())
    assert [e["epoch"] for e in log["epochs"]] == [1, 2, 3]
    assert log["epochs"][2]["val_loss"] > 0  # trained again, not the ghost's entry
    assert log["best_epoch"] == min(log["epochs"], key=lambda e: e["val_loss"])["epoch"]


def test_a_time_budget_stops_before_an_epoch_that_would_overrun_it():
    from train.fit import next_epoch_overruns

    assert not next_epoch_overruns(990, 110, 1200)  # the tenth epoch of 110 s ends at 1,100 s
    assert next_epoch_overruns(1085, 126, 1200)  # slower epochs: a tenth would end at 1,211 s
    assert not next_epoch_overruns(1e9, 1e9, 0)  # no budget


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


def test_the_export_is_the_best_held_out_epoch_when_later_ones_are_worse(worsening_corpus, tmp_path):
    from train import export, fit

    assert fit.main(train_args(worsening_corpus, tmp_path, "--epochs", "3")) == 0
    log = json.loads((tmp_path / "run" / "log.json").read_text())
    figures = [e["val_bits_per_char"] for e in log["epochs"]]
    assert figures[0] < figures[1] < figures[2]  # the run got worse, as built
    assert export.main(["--name", "run", "--artifacts", str(tmp_path)]) == 0
    generator = Generator.load(tmp_path / "run")
    assert generator.vocab.training["best_epoch"] == 1
    held_out = (worsening_corpus.read_text()[int(3333 * 0.9) :])
    measured = generator.evaluate(held_out, mode="window")["bits_per_char"]
    assert measured == pytest.approx(figures[0], abs=1e-3)


def test_patience_stops_training(worsening_corpus, tmp_path, capsys):
    from train import fit

    assert fit.main(train_args(worsening_corpus, tmp_path, "--epochs", "10", "--patience", "2")) == 0
    log = json.loads((tmp_path / "run" / "log.json").read_text())
    assert [e["epoch"] for e in log["epochs"]] == [1, 2, 3] and log["best_epoch"] == 1
    assert "no better held-out figure for 2 epochs" in capsys.readouterr().out


def test_a_time_budget_stops_training(small_corpus, tmp_path, capsys):
    from train import fit

    assert fit.main(train_args(small_corpus, tmp_path, "--epochs", "5", "--time-budget-s", "0.01")) == 0
    assert len(json.loads((tmp_path / "run" / "log.json").read_text())["epochs"]) == 1
    assert "time budget" in capsys.readouterr().out


def test_a_nan_loss_stops_training(small_corpus, tmp_path, capsys):
    """A learning rate of 1e38 overflows the weights in the first steps: the loss turns NaN."""
    from train import fit

    assert fit.main(train_args(small_corpus, tmp_path, "--epochs", "3", "--learning-rate", "1e38")) == 1
    log = json.loads((tmp_path / "run" / "log.json").read_text())
    assert len(log["epochs"]) == 1 and np.isnan(log["epochs"][0]["loss"])
    assert "best_epoch" not in log and not (tmp_path / "run" / "best.keras").exists()
    assert "the loss became NaN at step" in capsys.readouterr().err


@pytest.mark.parametrize("clipnorm", [0.0, 1e-4])
def test_gradients_are_clipped_when_the_recipe_says_so(small_corpus, tmp_path, monkeypatch, clipnorm):
    """Every gradient the optimizer applies has a norm of at most clipnorm (Keras clips per variable);
    without clipping the same run applies larger ones, so the check can tell."""
    import keras
    import tensorflow as tf

    from train import fit

    largest = tf.Variable(0.0)
    real = keras.optimizers.RMSprop.update_step

    def recording(self, gradient, variable, learning_rate):
        largest.assign(tf.maximum(largest, tf.norm(gradient)))
        return real(self, gradient, variable, learning_rate)

    monkeypatch.setattr(keras.optimizers.RMSprop, "update_step", recording)
    assert fit.main(train_args(small_corpus, tmp_path, "--epochs", "1", "--clipnorm", str(clipnorm))) == 0
    if clipnorm:
        assert 0 < float(largest.numpy()) <= clipnorm * (1 + 1e-3)
    else:
        assert float(largest.numpy()) > 100 * 1e-4


def test_a_resumed_run_continues_the_pass_where_it_stopped(small_corpus, tmp_path):
    """Epochs of 20 steps where a pass is 71: resuming after epoch 1 lands mid-pass, and the run goes on
    with the very batches an uninterrupted run trains on (the same losses, the same weights)."""
    from train import fit

    def run(name, *extra):
        args = train_args(small_corpus, tmp_path, "--steps-per-epoch", "20", *extra)
        args[args.index("--name") + 1] = name
        assert fit.main(args) == 0
        return json.loads((tmp_path / name / "log.json").read_text())

    straight = run("straight", "--epochs", "3")
    run("resumed", "--epochs", "1")
    resumed = run("resumed", "--epochs", "3")
    assert straight["steps_per_epoch"] == 20 and straight["training_windows"] > 20 * 64
    assert [e["loss"] for e in resumed["epochs"]] == pytest.approx([e["loss"] for e in straight["epochs"]],
                                                                    rel=1e-5)
    assert resumed["epochs"][-1]["weights_sha256"] == straight["epochs"][-1]["weights_sha256"]


def test_a_run_named_again_keeps_its_corpus_and_recipe(small_corpus, tmp_path, capsys):
    from train import fit

    assert fit.main(train_args(small_corpus, tmp_path, "--epochs", "1")) == 0
    # no --corpus, no --recipe: the run's own, not the default recipe or a download of the book's text
    assert fit.main(["--name", "run", "--artifacts", str(tmp_path), "--epochs", "2"]) == 0
    assert f"Resuming {tmp_path / 'run'} after epoch 1" in capsys.readouterr().out
    log = json.loads((tmp_path / "run" / "log.json").read_text())
    assert log["recipe_name"] == "book" and log["recipe"]["units"] == [32] and len(log["epochs"]) == 2
    assert log["corpus"]["path"] == str(small_corpus)


def test_make_ship_checks_the_export_before_touching_the_package(trained_dir, tmp_path):
    from train.ship import main as ship

    package = tmp_path / "models" / "mine"
    assert ship([str(trained_dir), str(package)]) == 0
    first = Generator.load(package).vocab.onnx_sha256
    empty = tmp_path / "no-export"
    empty.mkdir()
    assert ship([str(empty), str(package)]) == 2  # nothing to ship: the shipped model stays
    assert Generator.load(package).vocab.onnx_sha256 == first
    assert ship([str(trained_dir), str(package)]) == 0  # over an existing one: swapped whole
    assert sorted(p.name for p in package.parent.iterdir()) == ["mine"]


def test_a_bfloat16_run_trains_in_bfloat16_and_exports_float32(small_corpus, tmp_path):
    import keras

    from train import export, fit

    assert fit.main(train_args(small_corpus, tmp_path, "--epochs", "1", "--bfloat16")) == 0
    model = keras.models.load_model(tmp_path / "run" / "best.keras")
    lstm = next(layer for layer in model.layers if isinstance(layer, keras.layers.LSTM))
    assert lstm.compute_dtype == "bfloat16" and lstm.variable_dtype == "float32"
    assert model.layers[-1].compute_dtype == "float32"  # the softmax
    # the export is float32 and agrees with the float32 computation of the same weights within 1e-5
    assert export.main(["--name", "run", "--artifacts", str(tmp_path)]) == 0
    generator = Generator.load(tmp_path / "run")
    assert generator.vocab.training["recipe"]["bfloat16"] is True
    assert len(generator.generate("the ", length=20, seed=0)) == 20
