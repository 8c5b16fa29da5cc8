"""Resuming a run: after its last epoch, after a SIGKILL with its optimizer state, with its own corpus and
recipe; another recipe is refused."""

import json
import re
import sys

import pytest

from tests.conftest import ROOT, TINY, train_args


def test_training_again_resumes_after_the_last_epoch(small_corpus, tmp_path):
    from train import fit

    args = ["--corpus", str(small_corpus), "--name", "r", "--artifacts", str(tmp_path), "--recipe", "book",
            *TINY]
    assert fit.main([*args, "--epochs", "1"]) == 0
    assert fit.main([*args, "--epochs", "2"]) == 0
    log = json.loads((tmp_path / "r" / "log.json").read_text())
    assert [e["epoch"] for e in log["epochs"]] == [1, 2]
    assert log["epochs"][1]["wall_s"] > log["epochs"][0]["wall_s"]


def test_resuming_with_another_recipe_is_refused_and_an_older_log_resumes(small_corpus, tmp_path, capsys):
    from train import fit

    args = ["--corpus", str(small_corpus), "--name", "r", "--artifacts", str(tmp_path), "--recipe", "book",
            *TINY]
    assert fit.main([*args, "--epochs", "1"]) == 0
    assert fit.main([*args, "--epochs", "1", "--maxlen", "10"]) == 2
    assert "another recipe or corpus" in capsys.readouterr().err

    # a run logged before a setting existed resumes: the missing setting counts with its default
    log_path = tmp_path / "r" / "log.json"
    log = json.loads(log_path.read_text())
    del log["recipe"]["locked_dropout"], log["recipe"]["ema"]
    log_path.write_text(json.dumps(log))
    assert fit.main([*args, "--epochs", "2"]) == 0
    assert f"Resuming {tmp_path / 'r'} after epoch 1" in capsys.readouterr().out


def test_training_killed_with_sigkill_resumes_with_its_optimizer_state(small_corpus, tmp_path):
    import signal
    import subprocess
    import time

    import keras

    import train.model  # noqa: F401 - registers WeightDropLSTM and the schedule for load_model

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
