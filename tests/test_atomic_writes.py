"""Files written for users are replaced atomically: a fault at any write leaves the old file or the new one.

A child process runs with tests/write_faults.c preloaded: it counts every write system call into the run's
directory, from whichever library makes it (Python, zipfile, HDF5, protobuf), and tears the n-th one (half
of its bytes land, then the call fails as on a full disk). The child tears write 1, then 2, then 3 … of
the same operation until one attempt finishes, and after each fault checks that every file it names is
complete: vocab.json and log.json parse, the ONNX files match the sha256 in vocab.json and load, and the
checkpoints load in Keras.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT, TINY, changed_copy

CHILD = r"""
import ctypes, json, shutil, sys
from dataclasses import replace
from pathlib import Path

import keras

from charsdk import Generator, Vocab
from train import export, fit

faults = ctypes.CDLL(sys.argv[1])
operation, directory, args = sys.argv[2], Path(sys.argv[3]), json.loads(sys.argv[4])
faults.fault_arm.argtypes = [ctypes.c_char_p, ctypes.c_long, ctypes.c_int]
faults.fault_count.restype = ctypes.c_long


def check_complete():
    # log.json and the checkpoints (training), vocab.json and the ONNX files it names (export)
    if (directory / "log.json").exists():
        json.loads((directory / "log.json").read_text())
    for name in ("last.keras", "best.keras"):
        if (directory / name).exists():
            keras.models.load_model(directory / name)
    if (directory / "vocab.json").exists():
        return Generator.load(directory).vocab.onnx_sha256  # sha256 of the ONNX file checked


def run():
    if operation == "export":
        export.export(directory)
    elif operation == "save":  # a description saved over the old one, as tools that edit it would
        vocab = Vocab.load(directory / "vocab.json")
        replace(vocab, default_seed_text=args[0]).save(directory / "vocab.json")
    else:
        return fit.main(args)


faults_seen = 0
for n in range(1, 500):
    faults.fault_arm(str(directory).encode(), n, 0)
    try:
        result = run()
    except Exception as exc:  # the torn write surfaces as an error somewhere up the stack
        faults_seen += 1
        print(f"write {n}: {type(exc).__name__}: {str(exc)[:120]}", file=sys.stderr)
    else:
        assert faults.fault_count() < n, "an operation ignored a failed write and reported success"
        assert result in (None, 0), result
        break
    finally:
        faults.fault_arm(b"", 0, 0)
    check_complete()
print(json.dumps({"faults": faults_seen, "model": check_complete()}))
"""


@pytest.fixture(scope="session")
def write_faults(tmp_path_factory):
    library = tmp_path_factory.mktemp("faults") / "write_faults.so"
    compiler = shutil.which("cc") or shutil.which("gcc")
    assert compiler, "a C compiler (cc) is needed to build tests/write_faults.c"
    source = ROOT / "tests" / "write_faults.c"
    subprocess.run([compiler, "-shared", "-fPIC", "-O1", "-o", str(library), str(source), "-ldl"], check=True)
    return library


def tear_every_write(write_faults, operation, directory, args=()) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(write_faults), operation, str(directory), json.dumps(list(args))],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**os.environ, "LD_PRELOAD": str(write_faults), "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_training_writes_checkpoints_and_log_atomically(write_faults, small_corpus, tmp_path):
    from train import fit

    args = ["--corpus", str(small_corpus), "--name", "run", "--artifacts", str(tmp_path), "--recipe", "book",
            *TINY, "--sample-length", "5"]
    assert fit.main([*args, "--epochs", "1"]) == 0  # the old files, which each fault must leave or replace
    outcome = tear_every_write(write_faults, "fit", tmp_path / "run", [*args, "--epochs", "2"])
    assert outcome["faults"] >= 3  # at least log.json, last.keras and best.keras were each torn
    log = json.loads((tmp_path / "run" / "log.json").read_text())
    assert [e["epoch"] for e in log["epochs"]] == [1, 2]


def test_export_writes_vocab_and_onnx_files_atomically(write_faults, trained_dir, tmp_path):
    model_dir = tmp_path / "tiny"
    old = changed_copy(trained_dir, model_dir)
    outcome = tear_every_write(write_faults, "export", model_dir)
    assert outcome["faults"] >= 4  # the float32 and int8 graphs, each with its vocab.json, then vocab.json
    assert outcome["model"] != old and len(list(model_dir.glob("*.onnx"))) == 1


def test_vocab_json_is_saved_over_atomically(write_faults, trained_dir, tmp_path):
    from charsdk import Generator

    model_dir = tmp_path / "tiny"
    shutil.copytree(trained_dir, model_dir)
    outcome = tear_every_write(write_faults, "save", model_dir, ["a new seed"])
    assert outcome["faults"] >= 1
    assert Generator.load(model_dir).vocab.default_seed_text == "a new seed"
