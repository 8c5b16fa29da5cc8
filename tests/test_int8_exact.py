"""int8 products that are exact on every CPU: no pair of neighbouring weights along the input axis over
train.graph.PAIR_LIMIT (onnxruntime's u8 x s8 kernels without VNNI add each two products in int16), in
the shipped models and in a fresh export; and onnxruntime's product of each shipped matrix equal to
numpy's exact one on this machine's kernel."""

import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from onnx import TensorProto, helper, numpy_helper

from charsdk import Generator
from train.graph import (
    PAIR_LIMIT,
    overflowing_pairs,
    product_weights,
    quantize_per_channel,
    within_pair_limit,
)

MODELS = Path(__file__).resolve().parents[1] / "charsdk" / "models"
SHIPPED = sorted(p.name for p in MODELS.iterdir() if (p / "vocab.json").exists())


def shipped_matrices(name: str) -> dict[str, np.ndarray]:
    generator = Generator.load(name)
    return product_weights(onnx.load(generator.path / generator.vocab.onnx_file))


@pytest.mark.parametrize("name", SHIPPED)
def test_no_int8_matrix_of_a_shipped_model_can_overflow_a_pair(name):
    matrices = shipped_matrices(name)
    assert matrices, f"{name} has no integer products to check"
    assert Generator.load(name).vocab.int8_pair_limit == PAIR_LIMIT  # vocab.json records the bound
    assert {k: overflowing_pairs(q) for k, q in matrices.items()} == dict.fromkeys(matrices, 0)


def test_no_int8_matrix_of_a_fresh_export_can_overflow_a_pair(trained_dir):
    generator = Generator.load(trained_dir)
    matrices = product_weights(onnx.load(trained_dir / generator.vocab.onnx_file))
    assert len(matrices) == 2  # the recurrent product and the dense layer's
    assert generator.vocab.int8_pair_limit == PAIR_LIMIT
    assert {k: overflowing_pairs(q) for k, q in matrices.items()} == dict.fromkeys(matrices, 0)


def integer_product(a: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """onnxruntime's MatMulInteger(a uint8 around 128, weights int8 around 0), as the graph multiplies."""
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w", "a_zero"], ["y"])], "product",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, ["B", weights.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, ["B", weights.shape[1]])],
        initializer=[numpy_helper.from_array(weights, "w"), numpy_helper.from_array(np.array(128, np.uint8),
                                                                                   "a_zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"a": a})[0]


def worst_activations(weights: np.ndarray, seed: int = 0) -> np.ndarray:
    """For each column, the activations that push its pairs furthest (255 where a weight is positive,
    0 where negative, as a saturated LSTM output can), then uniform ones."""
    rng = np.random.default_rng(seed)
    worst = np.where(weights.T > 0, 255, 0)
    return np.vstack([worst, 255 - worst, rng.integers(0, 256, (32, len(weights)))]).astype(np.uint8)


@pytest.mark.parametrize("name", SHIPPED)
def test_onnxruntime_multiplies_the_shipped_matrices_exactly(name):
    for matrix, weights in shipped_matrices(name).items():
        a = worst_activations(weights)
        exact = (a.astype(np.int64) - 128) @ weights.astype(np.int64)
        wrong = (integer_product(a, weights) != exact).mean()
        assert wrong == 0, f"{name} {matrix}: {wrong:.1%} of onnxruntime's integer products are wrong"


def test_the_exactness_check_catches_full_range_weights_on_every_cpu():
    """Weights quantized without the limit (as exports were before it) are refused by the pair count,
    whatever this CPU's kernel makes of them."""
    weights = np.random.default_rng(1).standard_normal((64, 32)).astype(np.float32)
    full, _ = quantize_per_channel(weights)
    limited, _ = quantize_per_channel(weights, PAIR_LIMIT)
    assert overflowing_pairs(full) > 0 and overflowing_pairs(limited) == 0


@settings(max_examples=200, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 9), st.integers(1, 5)),
              elements=st.floats(-127, 127, allow_nan=False)))
def test_within_pair_limit_moves_only_the_pairs_over_it(units):
    q = within_pair_limit(units)
    assert overflowing_pairs(q.astype(np.int8)) == 0 and np.abs(q).max() <= 127
    rounded = np.round(units)
    rows = len(units) - len(units) % 2
    pair_sums = np.abs(rounded[0:rows:2]) + np.abs(rounded[1:rows:2])
    kept = np.ones_like(units, bool)
    kept[0:rows:2] = kept[1:rows:2] = pair_sums <= PAIR_LIMIT
    np.testing.assert_array_equal(q[kept], rounded[kept])
    assert np.all(np.abs(q - units)[~kept] < 64)  # moved no further than the limit needs: half a pair


def test_the_limit_costs_little_weight_error():
    """Heavy-tailed columns (many neighbours near +-127): the chosen level loses far less than clipping
    each pair at 127's scale, and stays within 3x the unlimited rounding error."""
    weights = np.random.default_rng(2).standard_t(3, (256, 128))
    free, free_scale = quantize_per_channel(weights)
    limited, scale = quantize_per_channel(weights, PAIR_LIMIT)
    largest = np.abs(weights).max(axis=0)
    clipped = within_pair_limit(weights / largest * 127) * largest / 127
    error = lambda q: ((weights - q) ** 2).sum()  # noqa: E731
    assert error(limited * scale) < 3 * error(free * free_scale)
    assert error(limited * scale) <= error(clipped)


def test_export_refuses_a_matrix_that_could_overflow_a_pair(trained_dir, monkeypatch, capsys):
    from train import export, graph

    real = graph.quantize_per_channel
    monkeypatch.setattr(graph, "quantize_per_channel", lambda weights, pair_limit=None: real(weights))
    before = sorted(p.name for p in trained_dir.iterdir())
    assert export.main(["--name", trained_dir.name, "--artifacts", str(trained_dir.parent)]) == 1
    error = capsys.readouterr().err.strip()
    assert re.fullmatch(r"export: error: int8 matrix \S+ has \d+ pairs? of neighbouring weights over 128 .*",
                        error), error
    assert sorted(p.name for p in trained_dir.iterdir()) == before


def test_an_int8_export_from_before_the_limit_warns_where_its_products_saturate(trained_dir, tmp_path,
                                                                                 monkeypatch):
    """An export whose vocab.json records no pair limit (written before it) loads with one warning on an
    x86 CPU without VNNI, and silently where its products are exact."""
    import dataclasses
    import shutil
    import warnings

    from charsdk import Vocab, session

    old = tmp_path / "old"
    shutil.copytree(trained_dir, old)
    vocab = Vocab.load(old / "vocab.json")
    dataclasses.replace(vocab, int8_pair_limit=0).save(old / "vocab.json")
    monkeypatch.setattr(session, "int16_pair_products", lambda: True)
    with pytest.warns(RuntimeWarning, match="predates the int8 pair limit.*train.requantize"):
        Generator.load(old)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Generator.load(trained_dir)  # records the limit
        monkeypatch.setattr(session, "int16_pair_products", lambda: False)
        Generator.load(old)  # VNNI, Arm: exact anyway
