import warnings

import numpy as np
import pytest

from charsdk import InputError
from charsdk.sampling import check_temperature, reweight, sample

P = np.array([0.5, 0.25, 0.15, 0.1, 0.0], dtype=np.float32)


def draw(probs, temperature, n, seed=0):
    rng = np.random.default_rng(seed)
    return np.bincount([sample(probs, temperature, rng) for _ in range(n)], minlength=len(probs))


def test_temperature_one_follows_the_distribution():
    counts = draw(P, 1.0, 40000)
    np.testing.assert_allclose(counts / counts.sum(), P, atol=0.01)


def test_low_temperature_concentrates_mass_and_high_spreads_it():
    entropy = [-(q[q > 0] * np.log(q[q > 0])).sum() for q in (reweight(P, t) for t in (0.2, 0.5, 1, 1.2))]
    assert entropy == sorted(entropy)
    assert reweight(P, 0.2)[0] > 0.95
    counts = draw(P, 0.2, 2000)
    assert counts[0] / counts.sum() > 0.95


def test_zero_probabilities_are_never_drawn_and_raise_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for t in (1e-6, 0.2, 1.0, 5.0):
            q = reweight(P, t)
            assert np.isfinite(q).all() and q[-1] == 0 and abs(q.sum() - 1) < 1e-12
        assert draw(P, 5.0, 5000)[-1] == 0


def test_temperature_zero_is_greedy():
    assert all(sample(P, 0, np.random.default_rng(s)) == 0 for s in range(5))


def test_same_seed_same_draws():
    assert (draw(P, 1.0, 200, seed=7) == draw(P, 1.0, 200, seed=7)).all()


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_invalid_temperature_is_refused(bad):
    with pytest.raises(InputError, match="temperature"):
        check_temperature(bad)
