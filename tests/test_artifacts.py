"""artifacts/ as its README says: each shipped model names the run it was exported from, and that run's log
is committed and matches the model; the README lists every folder there is."""

import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest

from charsdk import Vocab
from charsdk.generator import shipped_models_dir
from tests.conftest import ROOT

ARTIFACTS = ROOT / "artifacts"
SHIPPED = sorted(p.name for p in shipped_models_dir().iterdir() if (p / "vocab.json").exists())


@pytest.mark.parametrize("model", SHIPPED)
def test_a_shipped_model_names_its_run_and_the_run_s_log_is_its_training(model):
    training = Vocab.load(shipped_models_dir() / model / "vocab.json").training
    log = json.loads((ARTIFACTS / training["run"] / "log.json").read_text())
    best = log["epochs"][log["best_epoch"] - 1]
    assert log["recipe_name"] == training["recipe_name"]
    assert log["corpus"]["sha256"] == training["corpus_sha256"]
    assert (log["best_epoch"], len(log["epochs"])) == (training["best_epoch"], training["epochs_trained"])
    assert round(best["val_bits_per_char"], 4) == training["holdout_bits_per_char_during_training"]
    checkpoint = ARTIFACTS / training["run"] / "best.keras"
    if checkpoint.exists():  # kept for the base and the book's model
        assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() == training["checkpoint_sha256"]


def test_the_readme_names_every_folder_and_every_earlier_run_is_linked_from_the_docs():
    readme = (ARTIFACTS / "README.md").read_text()
    named = set(re.findall(r"^\| `([\w.-]+)/", readme, re.M))
    listed = subprocess.run(["git", "ls-files", "artifacts"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode:
        pytest.skip("needs a git checkout: what is committed under artifacts/")
    committed = {Path(p).parts[1] for p in listed.stdout.split() if len(Path(p).parts) > 2}
    assert committed == named, f"folders committed: {sorted(committed)}; the README names: {sorted(named)}"
    docs = "".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    unlinked = [run.name for run in (ARTIFACTS / "runs").iterdir()
                if f"../artifacts/runs/{run.name}/log.json" not in docs]
    assert not unlinked, f"runs in artifacts/runs/ that no doc links to: {unlinked}"
