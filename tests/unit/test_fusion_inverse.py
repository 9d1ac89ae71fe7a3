"""The inverse search and the weights: official schedule, self-consistency, the flip bound, a numpy oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from der_ray.errors import ConfigError
from der_ray.fusion.aggregate import aggregate, reweight_without, validate_weights, weights_from_scores
from der_ray.fusion.inverse import adam_step_bound, can_flip, flip_threshold, inverse_search, lr_schedule
from der_ray.fusion.relative import dense_relative_matrix, relative_vector

V, A = 400, 250


@pytest.fixture(scope="module")
def rel() -> torch.Tensor:
    emb = torch.randn(V, 32, generator=torch.Generator().manual_seed(0))
    return dense_relative_matrix(emb, np.arange(A))


def _numpy_inverse(z0, R, target, lr=0.15, steps=5, wd=0.01, eps=1e-8, b1=0.9, b2=0.999, tmax=10):
    """The spec's independent re-derivation (deepen_inverse_sim.py), manual AdamW."""
    z = z0.astype(np.float64).copy()
    m, v = np.zeros_like(z), np.zeros_like(z)
    for t in range(steps):
        lr_t = lr / 4 + (lr - lr / 4) * (1 + np.cos(np.pi * t / tmax)) / 2
        p = np.exp(z - z.max())
        p /= p.sum()
        q = p @ R
        g_p = R @ (-target / q / R.shape[1])
        g = p * (g_p - p @ g_p)
        z *= 1 - lr_t * wd
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        z -= lr_t * (m / (1 - b1 ** (t + 1))) / (np.sqrt(v / (1 - b2 ** (t + 1))) + eps)
    return z


def test_schedule_and_bound_constants():
    assert sum(lr_schedule(1.0, 5)) == pytest.approx(4.496, abs=1e-3)
    assert sum(lr_schedule(1.0, 10)) == pytest.approx(6.625, abs=1e-3)
    assert adam_step_bound(1) == pytest.approx(1.0) and adam_step_bound(5) == pytest.approx(1.0108, abs=1e-4)
    assert flip_threshold(0.15, 5) == pytest.approx(1.36, abs=0.02)


def test_matches_the_numpy_oracle(rel):
    g = torch.Generator().manual_seed(1)
    z0 = torch.randn(V, generator=g) * 3
    other = torch.randn(V, generator=g) * 3
    target = 0.5 * relative_vector(z0, rel) + 0.5 * relative_vector(other, rel)
    ours = inverse_search(z0, rel, target, lr=0.5)
    ref = _numpy_inverse(z0.double().numpy(), (rel.double() / rel.double().sum(-1, keepdim=True)).numpy(),
                         target.numpy(), lr=0.5)
    assert np.allclose(ours.numpy(), ref, atol=1e-6)
    assert not np.allclose(ref, z0.numpy() * math.prod(1 - 0.01 * a for a in lr_schedule(0.5, 5)), atol=1e-3)


def test_inverse_of_a_single_members_vector_keeps_its_argmax(rel):
    g = torch.Generator().manual_seed(2)
    for _ in range(50):
        z0 = torch.randn(V, generator=g) * 2
        z0[:2] = z0.max() + torch.tensor([1e-4, 0.0])  # near-ties too
        z = inverse_search(z0, rel, relative_vector(z0, rel), lr=0.5)
        assert int(z.argmax()) == int(z0.argmax())
        assert torch.equal(z, z0.double())  # already optimal: nothing to search (see inverse.py)
    z0 = torch.randn(V, generator=g) * 3  # a nearly matching target still runs the official search
    target = relative_vector(z0 + 0.05 * torch.randn(V, generator=g), rel)
    assert not torch.equal(inverse_search(z0, rel, target, lr=0.5), z0.double())


def test_no_flip_beyond_the_bound_and_flips_below_it(rel):
    for gap, flips in ((0.2, True), (0.5, True), (1.5, False), (3.0, False)):
        z0 = torch.full((V,), -5.0)
        z0[10], z0[20] = 5.0, 5.0 - gap
        aux = torch.full((V,), -5.0)
        aux[20] = 8.0  # an assistant sure of token 20
        target = 0.5 * relative_vector(z0, rel) + 0.5 * relative_vector(aux, rel)
        z = inverse_search(z0, rel, target, lr=0.15)
        assert (int(z.argmax()) == 20) is flips, gap
        assert can_flip(z0, lr=0.15, steps=5) is (gap <= flip_threshold(0.15, 5))
    g = torch.Generator().manual_seed(3)
    for _ in range(30):  # adversarial targets never beat the bound
        z0 = torch.randn(V, generator=g)
        z0[int(torch.randint(V, (1,), generator=g))] = z0.max() + flip_threshold(0.5, 5) + 0.01
        target = relative_vector(torch.randn(V, generator=g) * 10, rel)
        assert not can_flip(z0, lr=0.5, steps=5)
        assert int(inverse_search(z0, rel, target, lr=0.5).argmax()) == int(z0.argmax())


def test_weights_are_validated_with_a_tolerance():
    assert validate_weights(None, 4) == (0.25,) * 4
    assert validate_weights([0.7, 0.1, 0.1, 0.1], 4) == (0.7, 0.1, 0.1, 0.1)  # official code rejects this
    for bad, match in (([0.5, 0.6], "sum to 1"), ([0.5, 0.4], "sum to 1"), ([1.0], "1 entries for 2"),
                       ([1.5, -0.5], ">= 0"), ([float("nan"), 1.0], ">= 0")):
        with pytest.raises(ConfigError, match=match):
            validate_weights(bad, 2)
    assert weights_from_scores([30, 10]) == (0.75, 0.25)
    assert reweight_without([0.5, 0.25, 0.25], [1]) == pytest.approx((2 / 3, 0, 1 / 3))
    vecs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert torch.equal(aggregate(vecs, (0.25, 0.75)), torch.tensor([0.25, 0.75]))
