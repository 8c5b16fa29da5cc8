"""List corpora: a one-item-per-line corpus trained and exported for real; the export writes a record of
the training items; complete items are drawn from a line start to the newline; --new-only never prints a
training item, and says how many of the drawn were in the training list."""

import random

import pytest
from typer.testing import CliRunner

from charsdk import Generator, InputError
from charsdk.cli import app
from charsdk.items import ItemRecord, item_hash, list_items
from tests.conftest import TINY
from tests.test_js import needs_node, node
from train.corpus import holdout_choice

SYLLABLES = ["ka", "ri", "mo", "lu", "te", "sa", "no", "vi", "da", "re", "po", "mi"]


@pytest.fixture(scope="module")
def names_model(tmp_path_factory):
    from train import export, fit

    rng = random.Random(3)
    names = sorted({"".join(rng.choices(SYLLABLES, k=rng.randint(2, 3))) for _ in range(3000)})
    rng.shuffle(names)
    root = tmp_path_factory.mktemp("names")
    (root / "names.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    args = ["--corpus", str(root / "names.txt"), "--name", "names", "--artifacts", str(root), "--epochs", "3",
            "--recipe", "book", "--base", "none", *TINY]
    assert fit.main(args) == 0 and export.main(["--name", "names", "--artifacts", str(root)]) == 0
    held = holdout_choice(len(names), 0.1)  # the items train.corpus holds out
    training = [name for name, h in zip(names, held, strict=True) if not h]
    return Generator.load(root / "names"), set(training), set(names)


def test_the_export_writes_a_record_of_the_training_items(names_model):
    generator, training, names = names_model
    items = generator.vocab.items
    assert items["hash"] == "blake2b-64" and items["count"] == len(training)
    record = generator.training_items
    assert all(name in record for name in training) and not any(name in record for name in names - training)
    assert "kakakakakaka" not in record and record.false_positive_rate < 1e-15


def test_items_are_complete_lines_and_new_only_never_prints_a_training_item(names_model):
    generator, training, names = names_model
    drawn = generator.items(30, seed=1)
    assert len(drawn.items) == 30 and all(i and "\n" not in i for i in drawn.items)
    assert drawn.known and drawn.in_training + drawn.new >= 30
    fresh = generator.items(30, seed=2, new_only=True)
    assert len(fresh.items) == 30 and not set(fresh.items) & training
    result = CliRunner().invoke(app, ["gen", "--model", str(generator.path), "--items", "20", "--new-only",
                                      "--seed", "4"])
    printed = result.stdout.splitlines()
    assert result.exit_code == 0 and len(printed) == 20 and not set(printed) & training
    (summary,) = [line for line in result.stderr.splitlines() if "complete items drawn" in line]
    assert "in the training list" in summary and "new" in summary


def test_running_text_is_not_a_list_and_new_only_needs_a_record():
    assert list_items("a long line of running text, " * 50) is None
    assert list_items("\n".join(f"name{i}" for i in range(60))) is not None
    record = ItemRecord.of(["alpha", "beta"])
    assert "alpha" in record and "gamma" not in record and len(record.hashes) == 2
    assert item_hash("alpha") != item_hash("Alpha")
    with pytest.raises(InputError, match="new_only needs a record"):
        Generator.load("nietzsche-book").items(5, new_only=True)


@needs_node
def test_node_draws_python_s_items_and_tells_the_same_ones_new(names_model):
    """The JavaScript package reads the record (BLAKE2b in @noble/hashes) and draws the same items."""
    generator, training, _ = names_model
    cases = [{"model": generator.path.name, "items": 12, "options": {"seed": seed, "newOnly": new_only}}
             for seed, new_only in ((1, False), (2, True))]
    got = node("node.mjs", str(generator.path.parent), payload=cases)
    for case, answer in zip(cases, got, strict=True):
        ours = generator.items(12, seed=case["options"]["seed"], new_only=case["options"]["newOnly"])
        assert answer["items"] == {"items": ours.items, "inTraining": ours.in_training, "new": ours.new,
                                   "known": True}, case
    assert not set(got[1]["items"]["items"]) & training


def test_the_server_draws_the_same_items_and_says_which_are_in_training(names_model, servers):
    """`"items": true`: each choice is what Generator.items draws in its first round, told in or not in the
    training list; with `"new_only": true`, what Generator.items draws, new ones only, and how many it
    drew; a prompt or a pattern beside it, or new_only alone or streamed, is one clear 400."""
    generator, training, _ = names_model
    server = servers("--model", str(generator.path))
    answer = server.post({"prompt": "", "items": True, "n": 8, "seed": 5, "max_tokens": 40,
                          "temperature": 1.0}).json()
    ours = [p.stream for p in list(generator.pieces(generator.item_request(8, seed=5, max_length=40)))[-1]]
    assert [c["text"] for c in answer["choices"]] == [s.decoder.text for s in ours]
    for c in answer["choices"]:
        assert c["in_training"] == (c["text"] in training if c["finish_reason"] == "stop" else None)
    assert {c["in_training"] for c in answer["choices"]} - {None}  # complete items, told
    fresh = server.post({"prompt": "", "items": True, "new_only": True, "n": 12, "seed": 2,
                         "temperature": 1.0, "max_tokens": 200}).json()
    ours = generator.items(12, seed=2, new_only=True)
    assert [c["text"] for c in fresh["choices"]] == ours.items and not set(ours.items) & training
    assert fresh["items"] == {"drawn": ours.in_training + ours.new, "in_training": ours.in_training,
                              "new": ours.new}
    for body, field in (({"prompt": "ka", "items": True}, "prompt"),
                        ({"prompt": "", "items": True, "guided_regex": "[a-z]+"}, "items"),
                        ({"prompt": "", "new_only": True}, "new_only"),
                        ({"prompt": "", "items": True, "new_only": True, "stream": True}, "new_only")):
        refused = server.post(body)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == field, refused.text


def test_regraph_rebuilds_a_graph_around_its_weights_and_keeps_the_items_record(names_model, tmp_path):
    """`python -m train.regraph DIR`: the graph built again by this train/graph.py from the export's own
    initializers, installed only as the same scores and text; a list model keeps its record."""
    import shutil

    from train import regraph

    generator, training, _ = names_model
    copy = tmp_path / "names"
    shutil.copytree(generator.path, copy)
    assert regraph.main([str(copy)]) == 0
    again = Generator.load(copy)
    assert again.backend.masks_in_call and again.vocab.items == generator.vocab.items
    assert again.items(10, seed=3) == generator.items(10, seed=3)
    assert regraph.main([str(tmp_path / "missing")]) == 1
