"""Aggregation in relative space: the weighted average of the members' anchor distributions.

Contract: ``validate_weights`` accepts a weight vector whose sum is 1 within a tolerance (the official
code asserts an exact float ``sum == 1``, which rejects ``0.7 0.1 0.1 0.1``) and raises ``ConfigError``
naming ``fusion.weights`` otherwise; ``aggregate`` returns ``sum_m w_m p_m``. Uniform weights are
DeePEn-Avg; ``weights_from_scores`` is a DeePEn-Adapt stand-in (weights proportional to dev-set
accuracy; the paper's exact rule is not in the official code, see the spec §7). ``reweight_without``
renormalises the remaining weights when a member is dropped (explicit degradation).
Imports: torch, core.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from der_ray.errors import ConfigError

WEIGHT_TOLERANCE = 1e-6


def uniform_weights(n: int) -> tuple[float, ...]:
    if n <= 0:
        raise ConfigError(f"fusion needs at least one member, got {n}")
    return (1.0 / n,) * n


def validate_weights(weights: Sequence[float] | None, n: int, *,
                     tol: float = WEIGHT_TOLERANCE) -> tuple[float, ...]:
    """The weights as floats, or uniform for None.

    Raises:
        ConfigError: wrong count, a negative or non-finite weight, or ``|sum - 1| > tol``.
    """
    if weights is None:
        return uniform_weights(n)
    w = tuple(float(x) for x in weights)
    if len(w) != n:
        raise ConfigError(f"fusion.weights has {len(w)} entries for {n} members; give one weight per member")
    if any(not math.isfinite(x) or x < 0 for x in w):
        raise ConfigError(f"fusion.weights must be finite and >= 0, got {list(w)}")
    total = math.fsum(w)
    if abs(total - 1.0) > tol:
        raise ConfigError(f"fusion.weights must sum to 1 (within {tol:g}), got {list(w)} "
                          f"summing to {total!r}")
    return w


def weights_from_scores(scores: Sequence[float]) -> tuple[float, ...]:
    """Weights proportional to non-negative dev-set scores (accuracies); all zero -> uniform."""
    s = [float(x) for x in scores]
    if not s or any(not math.isfinite(x) or x < 0 for x in s):
        raise ConfigError(f"dev scores must be a non-empty list of finite values >= 0, got {s}")
    total = math.fsum(s)
    return uniform_weights(len(s)) if total == 0 else tuple(x / total for x in s)


def reweight_without(weights: Sequence[float], dropped: Sequence[int]) -> tuple[float, ...]:
    """Zero the dropped members' weights and renormalise the rest (all dropped -> ConfigError)."""
    keep = [0.0 if i in set(dropped) else float(w) for i, w in enumerate(weights)]
    total = math.fsum(keep)
    if total <= 0:
        raise ConfigError("every fusion member with a positive weight was dropped")
    return tuple(w / total for w in keep)


def aggregate(vectors: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """``sum_m w_m * vectors[m]``.

    Args:
        vectors: ``(N, A)`` per-member anchor distributions.
        weights: N weights (already validated).
    Returns:
        ``(A,)`` in the vectors' dtype.
    """
    if vectors.ndim != 2 or vectors.shape[0] != len(weights):
        raise ConfigError(f"aggregate: {vectors.shape[0] if vectors.ndim else 0} vectors for "
                          f"{len(weights)} weights")
    w = torch.tensor(weights, dtype=vectors.dtype)  # (N,)
    return w @ vectors  # (A,)
