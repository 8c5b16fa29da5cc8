import numpy as np
import pytest

from bench.limits import PRECISIONS
from charsdk import Generator


def test_the_profile_times_each_weight_matrix_of_the_model(trained_dir):
    from bench.limits import describe, profile

    generator = Generator.load(trained_dir)
    p = profile(generator, batch=2, threads=1, repeats=1)
    names = ["layer 0 recurrent 32x128", f"dense 32x{generator.vocab.size}"]
    assert {k: list(v) for k, v in p["matrix_products_us"].items()} == {k: names for k in PRECISIONS}
    # the stateful draw Scan's body of the int8 graph as onnxruntime runs it: 2 kernels to draw (the
    # step's noise is the Scan's input), a lookup, the cell's 9, h quantized once (for the dense layer and
    # the next step), 2 integer products, and an Add of the looked-up row (the dense layer's constant
    # bias is added inside its product)
    assert p["kernels_per_step"] == 2 + 1 + 9 + 1 + 2 + 1 and p["other_kernels"] == 2 + 1 + 9 + 1 + 1
    timed = [p["sampler_us_per_step"], p["small_kernel_us"],
             *[us for times in p["matrix_products_us"].values() for us in times.values()]]
    assert all(np.isfinite(v) for v in timed)  # no bound on timings: a busy machine makes them noisy
    assert "B=2, 1 thread(s), int8 model" in describe(p)[0] and "DynamicQuantizeMatMul" in describe(p)[-1]


def test_the_timed_product_loop_really_multiplies(trained_dir):
    from bench.limits import loop_session, product_loop

    weights = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    x = np.ones((3, 4), np.float32)
    session = loop_session(product_loop(weights), threads=1)
    x_final, y_final = session.run(None, {"steps": np.array(5, np.int64), "x": x,
                                          "y": np.zeros((3, 6), np.float32)})
    np.testing.assert_allclose(y_final, x @ weights, rtol=1e-6)
    np.testing.assert_array_equal(x_final, x)


@pytest.mark.parametrize("precision", PRECISIONS[1:])
def test_the_timed_int8_product_multiplies_with_per_channel_scales(precision):
    from bench.limits import loop_session, product_loop

    rng = np.random.default_rng(0)
    weights = rng.standard_normal((64, 48)).astype(np.float32) * np.linspace(0.01, 3, 48, dtype=np.float32)
    x = rng.uniform(-1, 1, (3, 64)).astype(np.float32)  # what the model multiplies: LSTM outputs
    graph = product_loop(weights, precision)
    body = next(n for n in graph.graph.node if n.op_type == "Loop").attribute[0].g.node
    portable = precision.endswith("(model.onnx)")
    assert ("DynamicQuantizeMatMul" in {n.op_type for n in body}) != portable
    if portable:  # only standard ONNX ops: other runtimes (onnxruntime-web, -node) can run it
        assert all(n.domain in ("", "ai.onnx") for n in [*graph.graph.node, *body])
    _, y = loop_session(graph, threads=1).run(None, {"steps": np.array(1, np.int64), "x": x,
                                                "y": np.zeros((3, 48), np.float32)})
    exact = x @ weights
    # one scale per output column: each column's error is small against that column's own size
    error = np.abs(y - exact).max(axis=0) / np.abs(exact).max(axis=0)
    assert error.max() < 0.1  # one scale for all columns would make the small ones' errors ~100x that


def test_the_limit_line_measures_large_products(trained_dir):
    from bench.limits import describe_limit, limit_line

    generator = Generator.load(trained_dir)
    line = limit_line(generator, threads=1, repeats=1)
    assert list(line["macs_per_s"]) == list(PRECISIONS)
    assert line["macs_per_char"] == 4 * 32 * (generator.vocab.size + 32) + 32 * generator.vocab.size
    assert all(np.isfinite(v) for v in line["chars_per_s_allowed"].values())
    assert len(describe_limit(line)) == 1 + len(PRECISIONS)


def test_benchmarks_name_the_cpu_flags_their_figures_depend_on():
    from bench.machine import describe, line
    from charsdk.cpu import cpu_flags, int16_pair_products

    zen4 = "flags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16 vaes\n"
    assert cpu_flags(zen4) == ["avx2", "avx512f", "avx512_vnni", "avx512_bf16"]
    assert cpu_flags("flags\t\t: fpu sse2 avx2 fma\n") == ["avx2"]
    assert cpu_flags("Features\t: fp asimd asimddp bf16\n") == ["asimddp", "bf16"]  # Arm
    assert describe()["cpu_flags"] == cpu_flags() and "CPU flags: " in line()
    assert int16_pair_products(["avx2"], "x86_64") and not int16_pair_products(["avx2", "avx_vnni"], "x86_64")
    assert not int16_pair_products(["avx2", "avx512f", "avx512_vnni"], "x86_64")
    assert not int16_pair_products(["asimddp"], "aarch64")


def test_bench_files_are_named_by_the_cpu_kind_that_sets_their_speed():
    """AMX, VNNI and AVX2-only hosts train at different speeds: their figures must not overwrite others."""
    from bench.machine import kind
    from charsdk.cpu import cpu_flags

    sapphire = "flags\t\t: avx2 avx512f avx512_vnni avx_vnni avx512_bf16 amx_bf16 amx_tile\n"
    zen4 = "flags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16 vaes\n"
    assert kind(cpu_flags(sapphire)) == "amx_bf16" and kind(cpu_flags(zen4)) == "avx512_vnni"
    assert kind(["avx2"], "x86_64") == "avx2" and kind([], "aarch64") == "aarch64"
    assert kind() == kind(cpu_flags())


def test_the_training_rate_bench_counts_a_step_and_measures_the_peak(tmp_path):
    """bench/train_rate.py: a step's multiply-adds (forward and backward), its time and the CPU's peak."""
    import json

    from bench import train_rate
    from charsdk.cpu import cpu_flags

    per_char = 4 * 256 * (175 + 256) + 4 * 256 * (256 + 256) + 256 * 175  # the finetune shape, forward
    assert train_rate.step_multiply_adds((256, 256), 175, 32, 100) == 3 * 32 * 100 * per_char
    out = tmp_path / "rate.json"
    assert train_rate.main(["--recipe", "book", "--steps", "2", "--rounds", "1", "--precision", "float32",
                            "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["step_multiply_adds"] == train_rate.step_multiply_adds((128,), 175, 128, 60)
    assert result["multiply_adds_per_s"] == pytest.approx(result["step_multiply_adds"] / result["step_s"])
    assert 0 < result["share_of_peak"] and result["machine"]["cpu_flags"] == cpu_flags()
