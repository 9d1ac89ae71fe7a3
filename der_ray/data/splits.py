"""Seeded, hash-based splits, samples and the built-in multi-domain mix.

Contract: every decision here is a pure function of ``(row id, seed)``. A row's split is chosen by
hashing ``"<seed>:<id>"`` into [0, 1) and comparing it with the cumulative fractions, so adding or
removing *other* rows never moves an existing row to another split, and no RNG state is shared.
Samples take the rows with the smallest hash values (a different salt than splits), which is a
uniform random sample that is also stable under additions. Output tables keep the input's row
order, except ``multi_domain_mix``, whose final order is a seeded (hash) shuffle.

``multi_domain_mix`` mirrors the DER paper's multi-domain setting with offline data: math (GSM8K),
science MC (ARC), knowledge MC (MMLU), open QA (TriviaQA, NQ) and commonsense MC (PIQA).

Imports: stdlib, numpy, pyarrow, der_ray.errors, der_ray.data.*.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa

from der_ray.data.schema import validate_table
from der_ray.data.sources import DATASETS, dataset_names, load
from der_ray.errors import ConfigError, DatasetError

DEFAULT_FRACTIONS: dict[str, float] = {"train": 0.6, "dev": 0.2, "test": 0.2}
MIX_DOMAINS: tuple[str, ...] = ("gsm8k", "arc_challenge", "mmlu", "triviaqa", "nq_open", "piqa")
_SCALE = float(2**64)


def hash_unit(ids: Sequence[str], seed: int, salt: str = "split") -> np.ndarray:
    """Map each id to a float in [0, 1) that depends only on (id, seed, salt); shape (N,)."""
    # blake2b rather than hash(): Python's str hash is salted per process (PYTHONHASHSEED).
    prefix = f"{salt}:{seed}:".encode()
    out = np.empty(len(ids), dtype=np.float64)
    for i, row_id in enumerate(ids):
        digest = hashlib.blake2b(prefix + row_id.encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "big") / _SCALE
    return out


def _check_fractions(fractions: Mapping[str, float]) -> list[tuple[str, float]]:
    if not isinstance(fractions, Mapping) or not fractions:
        raise ConfigError(
            f"fractions must be a non-empty mapping of split name -> fraction, got {fractions!r}"
        )
    items = list(fractions.items())
    for name, frac in items:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"fractions: split names must be non-empty strings, got {name!r}")
        if isinstance(frac, bool) or not isinstance(frac, int | float) or not math.isfinite(frac) or frac < 0:
            raise ConfigError(f"fractions[{name!r}] must be a finite number >= 0, got {frac!r}")
    total = sum(f for _, f in items)
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(f"fractions must sum to 1, got {total:.6g} from {dict(items)}")
    return items


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an int, got {seed!r}")
    return seed


def split(
    table: pa.Table, fractions: Mapping[str, float] | None = None, seed: int = 0
) -> dict[str, pa.Table]:
    """Split ``table`` into disjoint parts by hashed id.

    Args:
        table: a ``SCHEMA`` table (ids must be unique).
        fractions: split name -> fraction, summing to 1; order defines the hash intervals.
            Default ``{"train": 0.6, "dev": 0.2, "test": 0.2}``.
        seed: changes the assignment; the same seed always gives the same split.

    Returns:
        split name -> table (input row order kept); together they hold every row exactly once.

    Raises:
        ConfigError: fractions are not a mapping of names to numbers >= 0 summing to 1, or a bad seed.
        DatasetError: the table is not a valid ``SCHEMA`` table.
    """
    items = _check_fractions(DEFAULT_FRACTIONS if fractions is None else fractions)
    table = validate_table(table)
    u = hash_unit(table.column("id").to_pylist(), _check_seed(seed))
    edges = np.cumsum([f for _, f in items])
    edges[-1] = 1.0  # float rounding must not leave a sliver of [0, 1) unassigned
    which = np.searchsorted(edges, u, side="right")  # (N,) index of the split each row falls in
    return {name: table.filter(pa.array(which == k)) for k, (name, _) in enumerate(items)}


def sample(table: pa.Table, n: int, seed: int = 0) -> pa.Table:
    """A seeded sample of ``n`` rows (the ``n`` smallest id hashes), in the input's row order.

    Raises:
        ConfigError: ``n`` is negative or not an int.
        DatasetError: the table has fewer than ``n`` rows.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"sample size must be a non-negative int, got {n!r}")
    if n > table.num_rows:
        raise DatasetError(f"cannot sample {n} rows from a table with {table.num_rows}")
    u = hash_unit(table.column("id").to_pylist(), _check_seed(seed), salt="sample")
    keep = np.sort(np.argsort(u, kind="stable")[:n])
    return table.take(pa.array(keep, type=pa.int64()))


def shuffle(table: pa.Table, seed: int = 0) -> pa.Table:
    """Reorder rows by hashed id: deterministic for a seed, independent of the input order."""
    u = hash_unit(table.column("id").to_pylist(), _check_seed(seed), salt="shuffle")
    return table.take(pa.array(np.argsort(u, kind="stable"), type=pa.int64()))


def multi_domain_mix(
    domains: Sequence[str] = MIX_DOMAINS,
    per_domain: int = 50,
    seed: int = 0,
    split: str | Mapping[str, str] | None = None,
) -> pa.Table:
    """A seeded sample of ``per_domain`` rows from each domain, concatenated and shuffled.

    Args:
        domains: names from ``DATASETS`` (each at most once).
        per_domain: rows drawn from each domain.
        seed: controls both the per-domain samples and the final order.
        split: one split name for every domain, a mapping domain -> split, or ``None`` for each
            dataset's default split (GSM8K test, ARC/PIQA/TriviaQA/NQ validation, MMLU test).

    Raises:
        DatasetError: an unknown domain (the message lists the valid names), a missing split, or a
            domain with fewer than ``per_domain`` rows.
        ConfigError: empty or repeated domains, or a bad ``per_domain``/``seed``.
    """
    domains = list(domains)
    if not domains:
        raise ConfigError("multi_domain_mix needs at least one domain")
    unknown = [d for d in domains if d not in DATASETS]
    if unknown:
        raise DatasetError(f"unknown domain(s) {unknown}; valid names: {dataset_names()}")
    if len(set(domains)) != len(domains):
        raise ConfigError(f"domains must not repeat, got {domains}")
    if isinstance(per_domain, bool) or not isinstance(per_domain, int) or per_domain <= 0:
        raise ConfigError(f"per_domain must be a positive int, got {per_domain!r}")
    parts = []
    for domain in domains:
        s = split.get(domain) if isinstance(split, Mapping) else split
        table = load(domain, s)
        if table.num_rows < per_domain:
            raise DatasetError(f"domain {domain!r} has only {table.num_rows} rows, per_domain={per_domain}")
        parts.append(sample(table, per_domain, seed))
    return validate_table(shuffle(pa.concat_tables(parts), seed))


def split_mix(
    domains: Sequence[str],
    part: str,
    per_domain: int | Mapping[str, int],
    seed: int = 0,
    fractions: Mapping[str, float] | None = None,
) -> pa.Table:
    """``per_domain`` rows of each domain from one part (train/dev/test) of its seeded split.

    ``per_domain`` may map domain -> count (see ``domain_sizes``); a smaller count of the same
    domain is a subset of a larger one, so cached answers carry over when a slice grows.

    Training, cache precompute and evaluation jobs all draw their questions here, so train and test
    rows are disjoint by construction (``split`` is a pure function of (id, seed)).

    Raises:
        DatasetError: unknown domain, or a part with fewer than ``per_domain`` rows.
        ConfigError: bad fractions, unknown part, or bad ``per_domain``.
    """
    fractions = dict(fractions or DEFAULT_FRACTIONS)
    if part not in fractions:
        raise ConfigError(f"unknown split part {part!r}; valid: {list(fractions)}")
    sizes = per_domain if isinstance(per_domain, Mapping) else dict.fromkeys(domains, per_domain)
    parts = []
    for domain in domains:
        n = sizes.get(domain)
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ConfigError(f"per_domain[{domain!r}] must be a positive int, got {n!r}")
        if domain not in DATASETS:
            raise DatasetError(f"unknown domain {domain!r}; valid names: {dataset_names()}")
        rows = split(load(domain), fractions, seed)[part]
        if rows.num_rows < n:
            raise DatasetError(f"domain {domain!r} has only {rows.num_rows} {part} rows, need {n}")
        parts.append(sample(rows, n, seed))
    return validate_table(shuffle(pa.concat_tables(parts), seed))


def domain_sizes(domains: Sequence[str], default: int, overrides: Sequence[str] = ()) -> dict[str, int]:
    """Questions per domain: ``default`` for each, except ``DOMAIN=N`` overrides (a jobs' flag).

    Overrides of known datasets that are not selected are ignored, so a job's default
    ``gsm8k=20`` does not get in the way of ``--domains triviaqa piqa``.

    Raises:
        ConfigError: a malformed override or one naming no known dataset.
    """
    sizes = dict.fromkeys(domains, default)
    for item in overrides:
        name, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise ConfigError(f"domain size must look like DOMAIN=N, got {item!r}")
        if name not in DATASETS:
            raise ConfigError(f"domain size for unknown domain {name!r}; valid names: {dataset_names()}")
        if name in sizes:
            sizes[name] = int(value)
    return sizes
