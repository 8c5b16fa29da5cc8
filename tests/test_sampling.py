import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from charsdk import InputError
from charsdk.sampling import SamplingOptions, allowed, draw, gumbel_noise, sample

P = np.array([0.5, 0.25, 0.15, 0.1, 0.0], dtype=np.float32)


def frequencies(probs, n, seed=0, **options):
    rng, options = np.random.default_rng(seed), SamplingOptions.check(**options)
    counts = np.bincount([sample(probs, options, rng) for _ in range(n)], minlength=len(probs))
    return counts / n


def books_reweighting(probs, t):
    """Deep Learning with Python's rule, exp(log(p) / T) renormalised, written so as not to overflow."""
    p = np.asarray(probs, np.float64)
    with np.errstate(over="ignore", divide="ignore"):
        w = (p / p.max()) ** (1 / t)
    return w / w.sum()


def test_temperature_one_follows_the_distribution():
    np.testing.assert_allclose(frequencies(P, 40000, temperature=1.0), P, atol=0.01)


@pytest.mark.parametrize("t", [0.2, 0.5, 1.2])
def test_draws_follow_the_books_reweighting(t):
    np.testing.assert_allclose(frequencies(P, 40000, temperature=t), books_reweighting(P, t), atol=0.01)


def test_low_temperature_concentrates_mass_and_high_spreads_it():
    entropy = []
    for t in (0.2, 0.5, 1.0, 1.2):
        q = frequencies(P, 20000, temperature=t)
        entropy.append(-(q[q > 0] * np.log(q[q > 0])).sum())
    assert entropy == sorted(entropy)
    assert frequencies(P, 2000, temperature=0.2)[0] > 0.95


def test_zero_probabilities_are_never_drawn_and_raise_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for t in (1e-6, 0.2, 1.0, 5.0):
            assert frequencies(P, 2000, temperature=t)[-1] == 0
            assert allowed(P, 1 / t, top_k=2, top_p=0.9).sum() >= 1


def test_a_zero_uniform_number_gives_finite_noise_that_loses_and_nothing_at_temperature_zero():
    noise = gumbel_noise(np.array([[0.0, 0.5]], np.float32), [1.0])
    assert np.isfinite(noise).all() and noise[0, 0] < noise[0, 1]
    assert (gumbel_noise(np.array([[0.0, 0.5, 0.999]], np.float32), [0.0]) == 0).all()


def test_temperature_zero_is_greedy():
    assert frequencies(P, 50, temperature=0)[0] == 1


def test_top_k_and_top_p_keep_the_most_likely_characters():
    assert (frequencies(P, 3000, temperature=1, top_k=2)[2:] == 0).all()
    # 0.5 + 0.25 reaches 0.7: the third character is not needed
    assert (frequencies(P, 3000, temperature=1, top_p=0.7)[2:] == 0).all()
    assert frequencies(P, 3000, temperature=1, top_p=0.76)[2] > 0
    kept = frequencies(P, 20000, temperature=1, top_k=3)
    np.testing.assert_allclose(kept[:3], P[:3] / P[:3].sum(), atol=0.015)


def test_same_seed_same_draws():
    assert (frequencies(P, 200, seed=7, temperature=1) == frequencies(P, 200, seed=7, temperature=1)).all()


@pytest.mark.parametrize("options, message", [
    ({"temperature": -0.1}, "temperature"), ({"temperature": float("nan")}, "temperature"),
    ({"temperature": float("inf")}, "temperature"), ({"top_k": -1}, "top_k"), ({"top_k": 1.5}, "top_k"),
    ({"top_p": 0}, "top_p"), ({"top_p": 1.01}, "top_p"), ({"top_p": float("nan")}, "top_p"),
])
def test_invalid_options_are_refused(options, message):
    with pytest.raises(InputError, match=message):
        SamplingOptions.check(**options)


distributions = arrays(np.float64, st.integers(1, 40), elements=st.floats(0, 1)).filter(
    lambda a: a.sum() > 1e-6).map(lambda a: (a / a.sum()).astype(np.float32))


@given(distributions, st.floats(0, 10), st.integers(0, 50), st.floats(0.01, 1), st.integers(0, 2**32 - 1))
def test_a_draw_is_always_a_valid_index_that_the_options_allow(probs, t, top_k, top_p, seed):
    options = SamplingOptions.check(t, top_k, top_p)
    uniforms = np.random.default_rng(seed).random((1, len(probs)), np.float32)
    uniforms[0, seed % len(probs)] = 0.0  # the edge of [0, 1)
    keep = allowed(probs, options.inv_temperature, top_k, top_p)
    (index,) = draw(probs, gumbel_noise(uniforms, [t]), keep)
    assert 0 <= index < len(probs) and probs[index] > 0
    if top_k:
        assert (probs > probs[index]).sum() < top_k
    if t == 0:
        assert probs[index] == probs.max()
    else:  # top-p: the characters more likely than the one drawn hold less than top_p of the (top-k) mass
        q = books_reweighting(probs, t)
        kept = np.sort(q)[::-1][: top_k or len(q)]
        assert q[q > q[index]].sum() / kept.sum() < top_p + 1e-9
