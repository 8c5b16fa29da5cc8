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


def test_export_refuses_a_mismatch_and_keeps_the_previous_pair(trained_dir, monkeypatch):
    from train import export

    def files():
        return {p.name: p.read_bytes() for p in [*trained_dir.glob("*.onnx"), trained_dir / "vocab.json"]}

    before = files()
    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # any difference at all now counts as a mismatch
    with pytest.raises(export.ExportError, match="disagree"):
        export.export(trained_dir)
    assert files() == before
    assert not (trained_dir / ".export-staging").exists()


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
    import shutil

    import keras

    from tests.conftest import run_python

    model_dir = tmp_path / "tiny"
    shutil.copytree(trained_dir, model_dir)
    old = Generator.load(model_dir).vocab.onnx_sha256
    model = keras.models.load_model(model_dir / "best.keras")  # a different model to export
    model.set_weights([w + 0.01 for w in model.get_weights()])
    model.save(model_dir / "best.keras")

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
