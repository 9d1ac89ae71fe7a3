"""Bootstrap confidence intervals for mean quality and paired differences. Pure numpy.

These experts are weak and differences are small, so every quality figure is reported with a 95%
interval, and comparisons use the *paired* bootstrap: the same resampled questions for both
systems, which removes the between-question variance the two share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from der_ray.errors import ConfigError


@dataclass(frozen=True)
class Interval:
    mean: float
    lo: float
    hi: float

    def fmt(self, scale: float = 100.0, digits: int = 1) -> str:
        return f"{self.mean * scale:.{digits}f} [{self.lo * scale:.{digits}f}, {self.hi * scale:.{digits}f}]"


def _indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))  # (B, n)


def bootstrap_ci(values: Sequence[float] | np.ndarray, *, n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> Interval:
    """Percentile bootstrap interval of the mean of ``values``."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ConfigError("bootstrap_ci needs at least one value")
    means = x[_indices(x.size, n_boot, seed)].mean(axis=1)  # (B,)
    a = (1 - level) / 2
    return Interval(float(x.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a)))


Values = Sequence[float] | np.ndarray


def paired_bootstrap(a: Values, b: Values, *, n_boot: int = 2000, level: float = 0.95,
                     seed: int = 0) -> Interval:
    """Interval of mean(a - b) resampling questions jointly (``a[i]`` and ``b[i]`` are one question)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.size == 0:
        raise ConfigError(f"paired_bootstrap needs two equal, non-empty lists, got {x.shape} and {y.shape}")
    return bootstrap_ci(x - y, n_boot=n_boot, level=level, seed=seed)
