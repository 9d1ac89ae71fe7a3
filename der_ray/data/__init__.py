"""Datasets in one Arrow schema: packaged benchmarks, local files, the hub (on request), splits, mixes.

Quick use::

    from der_ray import data
    gsm = data.load("gsm8k")                      # GSM8K test from the installed package, 1,319 rows
    parts = data.split(gsm, {"train": 0.8, "test": 0.2}, seed=0)
    mix = data.multi_domain_mix(per_domain=50, seed=0)
    mine = data.load_local("qa.jsonl", mapping={"question": "q", "reference": "a"},
                           domain="mine", answer_type="short_answer")

Importing this package reads no files; every loader works on call. Imports: der_ray.data.*.
"""

from der_ray.data.local import GSM8K_DIR_ENV, gsm8k_reference, load_local, read_records
from der_ray.data.schema import (
    ANSWER_TYPES,
    COLUMNS,
    FREE_TEXT,
    MULTIPLE_CHOICE,
    NUMERIC,
    SCHEMA,
    SHORT_ANSWER,
    Example,
    empty_table,
    iter_examples,
    table_from_columns,
    table_from_examples,
    validate_table,
)
from der_ray.data.sources import DATASETS, SOURCES, DatasetSpec, dataset_names, get_spec, load
from der_ray.data.splits import (
    DEFAULT_FRACTIONS,
    MIX_DOMAINS,
    domain_sizes,
    multi_domain_mix,
    sample,
    shuffle,
    split,
    split_mix,
)

__all__ = [
    "ANSWER_TYPES",
    "COLUMNS",
    "DATASETS",
    "DEFAULT_FRACTIONS",
    "FREE_TEXT",
    "GSM8K_DIR_ENV",
    "MIX_DOMAINS",
    "MULTIPLE_CHOICE",
    "NUMERIC",
    "SCHEMA",
    "SHORT_ANSWER",
    "SOURCES",
    "DatasetSpec",
    "Example",
    "dataset_names",
    "domain_sizes",
    "empty_table",
    "get_spec",
    "gsm8k_reference",
    "iter_examples",
    "load",
    "load_local",
    "multi_domain_mix",
    "read_records",
    "sample",
    "shuffle",
    "split",
    "split_mix",
    "table_from_columns",
    "table_from_examples",
    "validate_table",
]
