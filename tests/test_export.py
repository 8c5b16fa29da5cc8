"""Export, for real: a tiny trained model's graph checked against Keras, tf2onnx and numpy's draws, refused
when a check fails, installed so that a kill leaves the old model or the new one."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from charsdk import Generator
from charsdk.session import sha256_of


def test_export_writes_one_graph_named_by_vocab_json(trained_dir):
    vocab = json.loads((trained_dir / "vocab.json").read_text())
    assert vocab["format_version"] == 2 and vocab["onnx"]["precision"] == "int8"
    assert vocab["onnx"]["sha256"] == sha256_of(trained_dir / vocab["onnx"]["file"])
    assert vocab["onnx"]["file"] == f"model-{vocab['onnx']['sha256'][:12]}.onnx"
    assert len(list(trained_dir.glob("*.onnx"))) == 1
    assert vocab["training"]["checkpoint_sha256"] == sha256_of(trained_dir / "best.keras")
    assert vocab["maxlen"] == 20 and vocab["lowercase"] is True
    log = json.loads((trained_dir / "log.json").read_text())
    assert vocab["chars"] == log["corpus"]["vocab"]
    summary = vocab["training"]
    assert summary["best_epoch"] == log["best_epoch"]
    best = log["epochs"][log["best_epoch"] - 1]["val_bits_per_char"]
    assert summary["holdout_bits_per_char_during_training"] == pytest.approx(best, abs=1e-4)
    # the float32 graph scoring every held-out window agrees with TensorFlow's figure during training
    assert summary["holdout_bits_per_char_window_fp32"] == pytest.approx(best, abs=1e-3)
    for mode in ("stateful", "window"):
        int8, fp32 = summary[f"holdout_bits_per_char_{mode}"], summary[f"holdout_bits_per_char_{mode}_fp32"]
        assert int8 <= fp32 + 0.005
    assert [s["input"] for s in vocab["onnx"]["states"]] == ["h0", "c0"]
    assert not (trained_dir / ".export-staging").exists()


def test_the_int8_graph_stores_int8_weights_once(trained_dir):
    import onnx

    vocab = Generator.load(trained_dir).vocab
    graph = onnx.load(str(trained_dir / vocab.onnx_file)).graph
    matrices = {t.name: t for t in graph.initializer if len(t.dims) == 2 and min(t.dims) > 1}
    assert all(t.data_type == onnx.TensorProto.INT8 for t in matrices.values())
    weights = {name: int(np.prod(t.dims)) for name, t in matrices.items()}
    units, V = 32, vocab.size
    assert sum(weights.values()) == (V + 1) * 4 * units + units * 4 * units + units * V  # each matrix once


def test_onnxruntime_matches_keras(trained_dir, small_corpus):
    import keras

    from train.corpus import load_corpus
    from train.graph_export import check_parity

    corpus = load_corpus(small_corpus, maxlen=20, holdout=0.1)
    model = keras.models.load_model(trained_dir / "best.keras")
    parity = check_parity(model, fp32_generator(trained_dir), corpus)
    assert parity["window_max_abs_diff"] <= 1e-5
    assert parity["step_max_abs_diff"] <= 1e-5


def fp32_generator(trained_dir) -> Generator:
    """The float32 graph of the tiny model, loaded as users load a model."""
    import dataclasses
    import tempfile

    import keras

    from charsdk.vocab import Vocab
    from train.graph import build_graph
    from train.install import save_content_addressed
    from train.model import graph_weights

    directory = Path(tempfile.mkdtemp())
    layers, dense, states = graph_weights(keras.models.load_model(trained_dir / "best.keras"))
    path, sha256 = save_content_addressed(build_graph(layers, dense, states, "fp32"), directory, "model")
    vocab = Vocab.load(trained_dir / "vocab.json")
    dataclasses.replace(vocab, onnx_file=path.name, onnx_sha256=sha256, precision="fp32").save(
        directory / "vocab.json")
    return Generator.load(directory)


def test_the_graph_draws_what_numpy_draws_from_its_own_distributions(trained_dir):
    from train.graph_export import sampler_mismatches

    generator = Generator.load(trained_dir)
    seed = generator.vocab.encode(generator.vocab.default_seed_text)
    assert sampler_mismatches(generator, seed) == 0


def model_files(model_dir):
    return {p.name: p.read_bytes() for p in [*model_dir.glob("*.onnx"), model_dir / "vocab.json"]}


def changed_graph(real, change):
    """build_graph whose float32 (or every) graph gets `change` applied to it."""
    def build(*args, **kwargs):
        return change(real(*args, **kwargs))
    return build


def bump_dense_bias(proto, by: float):
    """One weight changed by `by`: the output bias of the first character."""
    from onnx import numpy_helper

    tensor = next(t for t in proto.graph.initializer if t.name == "dense_b")
    bias = numpy_helper.to_array(tensor).copy()
    bias[0] += by
    tensor.CopyFrom(numpy_helper.from_array(bias, tensor.name))
    return proto


def negate_noise(proto):
    """Draw with the Gumbel noise's sign flipped: argmax(logits - T·g). Reading is untouched."""
    node = next(n for n in proto.graph.node if n.op_type == "Neg" and n.input[0] == "temperature")
    node.op_type = "Identity"
    return proto


def test_export_refuses_a_graph_that_disagrees_with_keras(trained_dir, monkeypatch):
    from train import export, graph_export

    before = model_files(trained_dir)
    bumped = changed_graph(graph_export.build_graph, lambda proto: bump_dense_bias(proto, 0.05))
    monkeypatch.setattr(graph_export, "build_graph", bumped)
    with pytest.raises(export.ExportError, match="disagree"):
        export.export(trained_dir)
    assert model_files(trained_dir) == before
    assert not (trained_dir / ".export-staging").exists()


def test_export_refuses_a_graph_that_tf2onnx_s_conversion_contradicts(trained_dir, monkeypatch):
    """The witness broken on purpose: tf2onnx's graph of the same model with one output bias changed."""
    from train import export, keras_onnx

    real = keras_onnx.to_onnx
    monkeypatch.setattr(keras_onnx, "to_onnx", lambda *args, **kwargs: bump_bias_of(real(*args, **kwargs)))
    before = model_files(trained_dir)
    with pytest.raises(export.ExportError, match="tf2onnx's conversion of the model and charsdk's graph"):
        export.export(trained_dir)
    assert model_files(trained_dir) == before
    assert not (trained_dir / ".export-staging").exists()


def bump_bias_of(proto, by: float = 1.0):
    """tf2onnx's graph with the dense layer's bias (the initializer of the output's width) moved."""
    from onnx import numpy_helper

    width = proto.graph.output[0].type.tensor_type.shape.dim[-1].dim_value
    tensor = next(t for t in proto.graph.initializer if list(t.dims) == [width])
    bias = numpy_helper.to_array(tensor).copy()
    bias[0] += by
    tensor.CopyFrom(numpy_helper.from_array(bias, tensor.name))
    return proto


def test_export_refuses_a_graph_that_draws_what_numpy_would_not(trained_dir, monkeypatch):
    from train import export, graph_export

    monkeypatch.setattr(graph_export, "build_graph", changed_graph(graph_export.build_graph, negate_noise))
    before = model_files(trained_dir)
    with pytest.raises(export.ExportError, match="model.onnx drew"):
        export.export(trained_dir)
    assert model_files(trained_dir) == before


def test_export_refuses_an_int8_graph_much_worse_than_float32(trained_dir, monkeypatch, capsys):
    """Weights rounded to 3 levels per channel instead of 255: the int8 graph loses far more than 0.005."""
    from train import export, graph

    real = graph.quantize_per_channel

    def coarse(weights, pair_limit=None):
        q, scale = real(weights, pair_limit)
        return (np.sign(q) * 64).astype(np.int8), scale  # 3 levels, each pair within the limit

    monkeypatch.setattr(graph, "quantize_per_channel", coarse)
    before = model_files(trained_dir)
    assert export.main(["--name", trained_dir.name, "--artifacts", str(trained_dir.parent)]) == 1
    error = capsys.readouterr().err
    assert re.search(r"int8 graph scores [\d.]+ bits/char .* against [\d.]+ in float32", error), error
    assert "PRECISION=fp32" in error and model_files(trained_dir) == before


def test_generated_text_uses_the_model_vocabulary(trained_dir):
    generator = Generator.load(trained_dir)
    for mode in ("stateful", "window"):
        text = generator.generate("the people", length=200, temperature=0.5, seed=1, mode=mode)
        assert len(text) == 200 and set(text) <= set(generator.vocab.chars)


def test_a_trained_model_beats_uniform_guessing(trained_dir):
    log = json.loads((trained_dir / "log.json").read_text())
    vocab_size = len(log["corpus"]["vocab"])
    assert log["epochs"][-1]["val_bits_per_char"] < np.log2(vocab_size) - 1


KILLED_EXPORT = """
import os, signal, sys
from pathlib import Path
from train import export, graph_export

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
real_install = graph_export.install
def install(*args, **kwargs):
    global installing
    installing = True
    real_install(*args, **kwargs)
graph_export.install = install
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
        assert 1 <= len(list(model_dir.glob("*.onnx"))) <= 2
        if result.returncode == 0:
            break
    assert result.returncode == 0 and len(seen) > 3
    assert seen[0] == old and seen[-1] != old  # killed before the switch: old; finished: new
    assert len(list(model_dir.glob("*.onnx"))) == 1


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
