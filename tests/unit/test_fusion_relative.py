"""Relative representations: the on-demand rows equal the dense method; invariances; the row cache."""

from __future__ import annotations

import numpy as np
import torch

from der_ray.fusion.relative import (
    RelativeRows,
    dense_relative_matrix,
    relative_rows,
    relative_vector,
    unit_rows,
)


def _emb(v: int = 300, d: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(v, d, generator=torch.Generator().manual_seed(seed))


def test_rows_are_stochastic_and_rotation_scale_invariant():
    emb, anchors = _emb(), np.arange(0, 300, 3)
    dense = dense_relative_matrix(emb, anchors, temperature=100.0)
    assert dense.shape == (300, 100) and bool((dense > 0).all())
    assert torch.allclose(dense.sum(-1), torch.ones(300), atol=1e-5)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(1)))
    assert torch.allclose(dense_relative_matrix(emb @ q * 3.7, anchors), dense, atol=1e-5)
    own = dense[torch.as_tensor(anchors), torch.arange(100)]  # anchor self-peak
    assert bool((dense[torch.as_tensor(anchors)].argmax(-1) == torch.arange(100)).all()) and own.mean() > 0.5


def test_top_k_equal_to_vocabulary_reproduces_the_dense_method():
    emb, anchors = _emb(), np.arange(0, 300, 2)
    dense = dense_relative_matrix(emb, anchors)
    rows = RelativeRows(emb[torch.as_tensor(anchors)].numpy(), cache_mb=0.01)  # tiny cache: evictions
    ids = list(range(300))
    got = rows.ensure(ids, lambda miss: emb[miss].numpy())
    assert torch.allclose(got, dense, atol=1e-6)
    logits = torch.randn(300, generator=torch.Generator().manual_seed(2))
    logp = torch.log_softmax(logits, -1)
    assert torch.allclose(relative_vector(logp, got), (torch.softmax(logits.double(), -1) @ dense.double()),
                          atol=1e-6)
    assert rows.misses == 300 and len(rows) == rows.capacity < 300  # more than fits, still exact


def test_identical_vocabularies_give_identical_relative_representations():
    emb = _emb(seed=3)
    a = RelativeRows(emb.numpy())  # the same member twice: every token is an anchor
    b = RelativeRows(emb.clone().numpy())
    ids = [5, 17, 250, 5]
    ra, rb = a.ensure(ids, lambda m: emb[m].numpy()), b.ensure(ids, lambda m: emb[m].numpy())
    assert torch.equal(ra, rb) and ra.shape == (4, 300)
    logp = torch.log_softmax(torch.randn(4), -1)
    assert torch.equal(relative_vector(logp, ra), relative_vector(logp, rb))


def test_cache_hits_and_zero_rows():
    emb = _emb()
    rows = RelativeRows(emb[:50].numpy())
    rows.ensure([1, 2, 3], lambda m: emb[m].numpy())
    assert rows.missing([2, 3, 4, 4]) == [4]
    rows.ensure([2, 3, 4], lambda m: emb[m].numpy())
    assert (rows.hits, rows.misses) == (2, 4)
    zero = relative_rows(torch.zeros(1, 16), unit_rows(emb[:50]))  # padding rows: uniform, not NaN
    assert torch.allclose(zero, torch.full((1, 50), 1 / 50))


def test_owned_anchor_matrix_is_normalised_in_place_with_the_same_rows():
    rng = np.random.default_rng(3)
    anchors = rng.normal(size=(50, 8)).astype(np.float32)
    anchors[7] = 0  # a zero row stays zero
    emb = rng.normal(size=(5, 8)).astype(np.float32)
    copied = RelativeRows(anchors.copy())
    owned_array = anchors.copy()
    owned = RelativeRows(owned_array, own=True)
    assert np.shares_memory(owned.anchor_unit.numpy(), owned_array)  # no second (A, d) matrix
    assert torch.equal(owned.anchor_unit, copied.anchor_unit)
    assert torch.equal(owned.take(range(5), range(5), emb), copied.take(range(5), range(5), emb))
    read_only = anchors.copy()
    read_only.flags.writeable = False  # what Ray's object store hands out: copied, never written
    assert torch.equal(RelativeRows(read_only, own=True).anchor_unit, copied.anchor_unit)


def test_float16_anchors_take_half_the_memory_and_nearly_the_same_rows():
    emb, anchors = _emb(), np.arange(0, 300, 2)
    full = RelativeRows(emb[torch.as_tensor(anchors)].numpy())
    half = RelativeRows(emb[torch.as_tensor(anchors)].numpy(), dtype=torch.float16)
    assert half.anchor_unit.dtype == torch.float16
    assert half.anchor_unit.nbytes * 2 == full.anchor_unit.nbytes
    ids = list(range(300))
    a, b = full.ensure(ids, lambda m: emb[m].numpy()), half.ensure(ids, lambda m: emb[m].numpy())
    assert b.dtype == torch.float32 and torch.allclose(b.sum(-1), torch.ones(300), atol=1e-5)
    assert (a - b).abs().max() < 1e-2 and not torch.equal(a, b)  # d = 16 here: real d is 576-896
    logp = torch.log_softmax(torch.randn(300, generator=torch.Generator().manual_seed(4)), -1)
    assert (relative_vector(logp, a) - relative_vector(logp, b)).abs().sum() < 1e-2
