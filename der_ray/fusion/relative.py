"""Relative representations: each token as a distribution over the ensemble's anchor tokens.

For a member with input embeddings E and anchor ids a (DeePEn §1.3): row v of R is
``softmax(temperature * c / ||c||)`` with ``c[j] = cos(E[v], E[a_j])``. The official code builds the
dense |V| x |A| matrix offline; at 262k x 38k tokens (Gemma with two partners) that is ~40 GB in fp32,
so here rows exist only for the ids a step needs (each member's top-k, the main member's candidates)
and are cached in an LRU with a byte budget. With top-k = V the result equals the dense method
(``dense_relative_matrix`` is that reference, for small vocabularies and tests).

Where the rows are computed: on the coordinator. A member sends only the embeddings of ids the cache
lacks (k x d floats, ~70 KB for k = 20, d = 896) plus its anchor embeddings once per ensemble; shipping
rows instead would cost k x |A| floats (~3 MB at |A| = 38k) per step, and computing the relative
vector inside the member would put fusion maths into the experts layer and still require the main
member's candidate rows on the coordinator for the inverse. Tokens repeat from step to step, so after a
few steps most rows are cache hits. On GPUs the same functions can run inside the actors unchanged.
The unit anchor embeddings may be stored in float16 (half the coordinator's largest structure; the
cosines are still computed in float32).
Imports: torch, numpy, core.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from der_ray.errors import VocabAlignmentError

DEFAULT_TEMPERATURE = 100.0


def unit_rows(emb: torch.Tensor) -> torch.Tensor:
    """L2-normalised rows (a zero row stays zero instead of becoming NaN)."""
    return F.normalize(emb.float(), dim=-1, eps=1e-12)  # (n, d)


def unit_rows_(emb: torch.Tensor) -> torch.Tensor:
    """``unit_rows`` in place on a float32 tensor (the same values: ``x / max(||x||, eps)``)."""
    return emb.div_(torch.linalg.vector_norm(emb, dim=-1, keepdim=True).clamp_min(1e-12))


ANCHOR_CHUNK = 2048
"""Anchors upcast at a time when they are stored in float16 (bounds the float32 buffer)."""


def relative_rows(emb: torch.Tensor, anchor_unit: torch.Tensor, *,
                  temperature: float = DEFAULT_TEMPERATURE) -> torch.Tensor:
    """Relative-representation rows of some tokens.

    Args:
        emb: ``(k, d)`` input embeddings of the tokens.
        anchor_unit: ``(A, d)`` unit-normalised input embeddings of the anchors (``unit_rows``), float32
            or float16 (upcast chunk by chunk: CPUs without float16 matrix units have no fast kernel).
        temperature: the softmax multiplier (the paper's 100).
    Returns:
        ``(k, A)`` float32, rows strictly positive summing to 1.
    """
    u = unit_rows(emb)  # (k, d)
    if anchor_unit.dtype == torch.float32:
        cos = u @ anchor_unit.T  # (k, A) cosine similarities
    else:  # one small float32 buffer, results written in place: no per-chunk temporaries to fragment the heap
        n_anchors = anchor_unit.shape[0]
        cos_t = torch.empty(n_anchors, u.shape[0])  # (A, k)
        buf = torch.empty(min(ANCHOR_CHUNK, n_anchors), u.shape[1])  # (chunk, d)
        for i in range(0, n_anchors, ANCHOR_CHUNK):
            part = buf[:min(ANCHOR_CHUNK, n_anchors - i)]
            part.copy_(anchor_unit[i:i + len(part)])
            torch.matmul(part, u.T, out=cos_t[i:i + len(part)])
        cos = cos_t.T  # (k, A)
    cos = F.normalize(cos, dim=-1, eps=1e-12)  # (k, A) row L2 normalisation ("degeneration" fix)
    return torch.softmax(temperature * cos, dim=-1)  # (k, A)


def dense_relative_matrix(emb: torch.Tensor, anchor_ids: Sequence[int] | np.ndarray, *,
                          temperature: float = DEFAULT_TEMPERATURE, chunk: int = 4096) -> torch.Tensor:
    """The full ``(V, A)`` matrix of the official method: only for small vocabularies and tests."""
    anchor_unit = unit_rows(emb[torch.as_tensor(np.asarray(anchor_ids), dtype=torch.long)])  # (A, d)
    parts = [relative_rows(emb[i:i + chunk], anchor_unit, temperature=temperature)
             for i in range(0, emb.shape[0], chunk)]
    return torch.cat(parts)  # (V, A)


def stochastic64(rows: torch.Tensor) -> torch.Tensor:
    """Rows in float64, renormalised to sum to 1 (fp32 rows are off by ~1e-7; see ``relative_vector``)."""
    r = rows.double()  # (k, A)
    return r / r.sum(dim=-1, keepdim=True)


def relative_vector(logprobs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """A member's next-token distribution mapped into anchor space: ``softmax(logprobs) @ rows``.

    With a top-k slice the probabilities are renormalised over the slice (so the result is a
    distribution over anchors); with the full vocabulary this is exactly DeePEn's ``P @ R``.
    Computed in float64 on exactly row-stochastic rows, with the same expression that
    ``inverse.inverse_search`` uses for ``q(z)``: a self-ensemble then gives a target equal to the
    main member's ``q(z0)`` and a first-step gradient ~1e-19, far below Adam's eps. In fp32 the rows' rounding
    leaves gradients ~1e-11 that Adam's normalisation turns into visible moves (it flipped near-tied
    tokens of the tiny test models).

    Args:
        logprobs: ``(k,)`` log-probabilities (or logits) of the k tokens.
        rows: ``(k, A)`` their relative rows.
    Returns:
        ``(A,)`` float64.
    """
    return torch.softmax(logprobs.double(), dim=-1) @ stochastic64(rows)  # (A,)


class RelativeRows:
    """The relative rows of one member's tokens, computed on demand and cached (LRU, byte budget).

    ``missing(ids)`` says which embeddings to fetch; ``take(ids, missing, emb)`` returns the stacked
    rows of ``ids`` with the missing ones computed from their embeddings (and cached). The split lets a
    coordinator fetch the missing embeddings of all members in parallel before computing anything.
    A request larger than the cache still works (fresh rows are used before they are cached).
    """

    def __init__(self, anchor_emb: np.ndarray | torch.Tensor, *, temperature: float = DEFAULT_TEMPERATURE,
                 cache_mb: float = 256.0, own: bool = False, dtype: torch.dtype = torch.float32) -> None:
        """``own=True``: the caller hands a writable float32 ``anchor_emb`` over, and it is normalised in
        place (a 150k-anchor x 896 matrix is 0.5 GB; a normalised copy would double the peak).
        ``dtype=torch.float16`` keeps the unit anchors in half the memory (cosines change by ~1e-5;
        relative vectors by ~2e-5 in L1 for Qwen2.5's embeddings)."""
        anchor = torch.as_tensor(anchor_emb)
        if anchor.ndim != 2 or anchor.shape[0] == 0:
            raise VocabAlignmentError(f"anchor embeddings must be a non-empty (A, d) matrix, got "
                                      f"{tuple(anchor.shape)}")
        inplace = own and anchor.dtype == torch.float32 and not (
            isinstance(anchor_emb, np.ndarray) and not anchor_emb.flags.writeable)
        unit = unit_rows_(anchor) if inplace else unit_rows(anchor)  # (A, d)
        self.anchor_unit = unit if dtype == torch.float32 else unit.to(dtype)
        self.temperature = temperature
        self.n_anchors = int(anchor.shape[0])
        self.capacity = max(64, int(cache_mb * 2**20 / (4 * self.n_anchors)))
        self._rows: OrderedDict[int, torch.Tensor] = OrderedDict()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._rows)

    def fresh(self) -> RelativeRows:
        """An empty cache over the same (shared, read-only) anchor embeddings."""
        other = copy.copy(self)
        other._rows = OrderedDict()
        other.hits = other.misses = 0
        return other

    def missing(self, ids: Sequence[int]) -> list[int]:
        """The distinct ids whose rows are not cached, in first-seen order."""
        return [i for i in dict.fromkeys(int(i) for i in ids) if i not in self._rows]

    def take(self, ids: Sequence[int], missing: Sequence[int] = (),
             emb: np.ndarray | torch.Tensor | None = None) -> torch.Tensor:
        """``(len(ids), A)`` rows of ``ids``; ``emb`` holds the ``(len(missing), d)`` embeddings of the
        ids not cached (``missing(ids)``). Raises ``KeyError`` for an uncached id not in ``missing``."""
        fresh: dict[int, torch.Tensor] = {}
        if len(missing):
            if emb is None:
                raise ValueError("take: embeddings are required for the missing ids")
            # Arrays from Ray's object store arrive read-only; torch wants writable memory.
            rows = emb if isinstance(emb, torch.Tensor) else torch.from_numpy(np.array(emb, copy=True))
            new = relative_rows(rows, self.anchor_unit,
                                temperature=self.temperature)  # (m, A)
            fresh = {int(i): row for i, row in zip(missing, new, strict=True)}
        self.misses += len(fresh)
        self.hits += len(set(int(i) for i in ids)) - len(fresh)
        out = []
        for i in ids:
            i = int(i)
            row = fresh.get(i)
            if row is None:
                row = self._rows[i]
                self._rows.move_to_end(i)
            out.append(row)
        for i, row in fresh.items():
            self._rows[i] = row
        while len(self._rows) > self.capacity:
            self._rows.popitem(last=False)
        return torch.stack(out)  # (k, A)

    def ensure(self, ids: Sequence[int], fetch: Callable[[list[int]], np.ndarray]) -> torch.Tensor:
        """``take(ids)`` fetching whatever is missing first (the one-member path)."""
        miss = self.missing(ids)
        return self.take(ids, miss, fetch(miss) if miss else None)
