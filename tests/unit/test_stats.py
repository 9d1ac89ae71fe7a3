import numpy as np
import pytest

from der_ray.errors import ConfigError
from der_ray.evals.stats import bootstrap_ci, paired_bootstrap


def test_interval_contains_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small = bootstrap_ci(rng.binomial(1, 0.3, 50).tolist())
    large = bootstrap_ci(rng.binomial(1, 0.3, 2000).tolist())
    assert small.lo <= small.mean <= small.hi
    assert (large.hi - large.lo) < (small.hi - small.lo) / 3
    assert large.lo < 0.3 < large.hi


def test_paired_is_tighter_than_unpaired_for_correlated_systems():
    rng = np.random.default_rng(1)
    base = rng.binomial(1, 0.5, 300).astype(float)
    better = np.where(rng.random(300) < 0.1, 1.0, base)  # same questions, +~5 points
    diff = paired_bootstrap(better, base)
    assert diff.lo > 0 and diff.mean == pytest.approx(better.mean() - base.mean())
    assert paired_bootstrap(base, base).hi == 0.0
    assert bootstrap_ci([1.0, 1.0]).fmt() == "100.0 [100.0, 100.0]"


def test_errors():
    with pytest.raises(ConfigError):
        bootstrap_ci([])
    with pytest.raises(ConfigError):
        paired_bootstrap([1.0], [1.0, 0.0])
