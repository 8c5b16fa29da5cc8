"""Two workers on 127.0.0.1 under MultiWorkerMirroredStrategy: the same loop as one process."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from charsdk import Generator
from tests.conftest import ROOT, TINY


def fit_args(corpus, artifacts, epochs):
    return ["--corpus", str(corpus), "--name", "c", "--artifacts", str(artifacts), "--recipe", "book", *TINY,
            "--epochs", str(epochs)]


def cluster_command(corpus, artifacts, epochs):
    return [sys.executable, "-m", "train.cluster", "--workers", "2", *fit_args(corpus, artifacts, epochs)]


def worker_digests(run: Path) -> dict[int, str]:
    """Worker 1's weights fingerprint after each epoch, from its log."""
    text = (run / "worker-1.log").read_text()
    return {int(e): d for e, d in re.findall(r"worker 1: epoch (\d+): weights sha256 (\w+)", text)}


def test_two_workers_train_to_identical_weights_and_the_export_loads(small_corpus, tmp_path):
    from train import export

    result = subprocess.run(cluster_command(small_corpus, tmp_path, 2), cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    run = tmp_path / "c"
    log = json.loads((run / "log.json").read_text())
    assert log["workers"] == 2 and [e["epoch"] for e in log["epochs"]] == [1, 2]
    # the global batch of 64 is shared: a pass takes as many steps as on one worker
    assert log["steps_per_epoch"] == -(-log["training_windows"] // 64)
    assert worker_digests(run) == {e["epoch"]: e["weights_sha256"] for e in log["epochs"]}
    # each worker trains its half of every batch: summed, the same steps as one process taking it whole
    command = [sys.executable, "-m", "train.fit", *fit_args(small_corpus, tmp_path / "alone", 2)]
    alone = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert alone.returncode == 0, alone.stderr[-2000:]
    one = json.loads((tmp_path / "alone" / "c" / "log.json").read_text())
    assert [e["loss"] for e in log["epochs"]] == pytest.approx([e["loss"] for e in one["epochs"]], rel=1e-3)
    assert export.main(["--name", "c", "--artifacts", str(tmp_path)]) == 0
    assert len(Generator.load(run).generate("the ", length=40, seed=0)) == 40


def test_two_workers_carry_their_lanes_states_as_one_process_does(small_corpus, tmp_path):
    """--carry-state: each worker carries the states of its half of the lanes from step to step."""
    carry = ["--carry-state", "--loss-at", "all", "--batch-size", "8"]
    logs = []
    for command in (["train.cluster", "--workers", "2"], ["train.fit"]):
        artifacts = tmp_path / str(len(logs))
        args = [*fit_args(small_corpus, artifacts, 2), *carry]
        result = subprocess.run([sys.executable, "-m", *command, *args], cwd=ROOT, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        logs.append(json.loads((artifacts / "c" / "log.json").read_text()))
    assert [log["workers"] for log in logs] == [2, 1]
    for key in ("loss", "val_loss"):
        two, one = ([e[key] for e in log["epochs"]] for log in logs)
        assert two == pytest.approx(one, rel=1e-5)


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_a_killed_worker_stops_the_cluster_and_the_same_command_resumes_it(small_corpus, tmp_path):
    command = cluster_command(small_corpus, tmp_path, 30)
    launcher = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
    log_path = tmp_path / "c" / "log.json"
    try:
        deadline = time.monotonic() + 300
        while not (log_path.exists() and json.loads(log_path.read_text())["epochs"]):
            assert launcher.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        workers = {int(re.search(rb'"index": (\d+)', Path(f"/proc/{c}/environ").read_bytes())[1]): c
                   for c in children(launcher.pid)}
        os.kill(workers[1], signal.SIGKILL)
        _, stderr = launcher.communicate(timeout=120)
    finally:
        launcher.kill()
    assert launcher.returncode != 0
    assert "worker 1 was killed by signal 9" in stderr and "run the same command again" in stderr
    finished = len(json.loads(log_path.read_text())["epochs"])

    resumed = subprocess.run([*command[:-1], str(finished + 1)], cwd=ROOT, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    # the chief was stopped too: perhaps between its log and its checkpoint, which costs that epoch
    assert re.search(rf"Resuming \S+ after epoch ({finished - 1}|{finished})\n", resumed.stdout)
    log = json.loads(log_path.read_text())
    assert [e["epoch"] for e in log["epochs"]] == list(range(1, finished + 2))
    assert worker_digests(tmp_path / "c")[finished + 1] == log["epochs"][-1]["weights_sha256"]
