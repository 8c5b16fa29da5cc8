import numpy as np

from charsdk import Generator


def test_the_profile_times_each_weight_matrix_of_the_model(trained_dir):
    from train.limits import describe, profile

    generator = Generator.load(trained_dir)
    p = profile(generator, batch=2, threads=1, repeats=1)
    assert list(p["matrix_products_us"]) == ["layer 0 recurrent 32x128", f"dense 32x{generator.vocab.size}"]
    # the stateful loop body: 3 kernels to draw, 11 for the cell (2 of them a lookup and a Gemm), 1 dense
    assert p["kernels_per_step"] == 15 and p["other_kernels"] == 13
    timed = [p["sampler_us_per_step"], p["small_kernel_us"], *p["matrix_products_us"].values()]
    assert all(np.isfinite(v) for v in timed)  # no bound on timings: a busy machine makes them noisy
    assert "B=2, 1 thread(s)" in describe(p)[0]


def test_the_timed_product_loop_really_multiplies(trained_dir):
    from train.limits import _product, _session

    weights = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    x = np.ones((3, 4), np.float32)
    session = _session(_product(weights), threads=1)
    x_final, y_final = session.run(None, {"steps": np.array(5, np.int64), "x": x,
                                          "y": np.zeros((3, 6), np.float32)})
    np.testing.assert_allclose(y_final, x @ weights, rtol=1e-6)
    np.testing.assert_array_equal(x_final, x)
