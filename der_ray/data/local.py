"""Read user files (jsonl, json, parquet) into the der_ray schema, plus the GSM8K record format.

Contract: ``load_local(path, mapping=..., domain=..., answer_type=...)`` maps the file's columns onto
``SCHEMA`` and returns a validated table; a missing file, an unknown format or a missing column
raises ``DatasetError`` naming the path or the column. Nothing here touches the network.

``mapping`` maps *schema* column -> *file* column (``{"question": "prompt", "reference": "gold"}``);
a file column may be a dotted path into nested objects (``"answer.value"``). Unmapped schema columns
fall back to a file column of the same name, then to a default: ``id = "<domain>/<file stem>/<row>"``,
``aliases = [reference]``, ``choices = []``, ``answer_index = -1``, ``source = "local:<abs path>"``.
For multiple choice, ``reference`` may be omitted and is then taken from ``choices[answer_index]``.

Imports: stdlib, pyarrow, der_ray.errors, der_ray.data.schema.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from der_ray.data.schema import ANSWER_TYPES, COLUMNS, MULTIPLE_CHOICE, NUMERIC, table_from_columns
from der_ray.errors import ConfigError, DatasetError

GSM8K_DIR_ENV = "DER_RAY_GSM8K_DIR"
_FORMATS = (".jsonl", ".json", ".parquet")


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a ``.jsonl``, ``.json`` (a list of objects) or ``.parquet`` file into a list of dicts.

    Raises:
        DatasetError: the file does not exist, has an unsupported suffix, or cannot be parsed.
    """
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"dataset file not found: {p}")
    suffix = p.suffix.lower()
    try:
        if suffix == ".parquet":
            return pq.read_table(p).to_pylist()
        text = p.read_text(encoding="utf-8")
        if suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        if suffix == ".json":
            data = json.loads(text)
            if not isinstance(data, list):
                raise DatasetError(f"{p}: a .json dataset must hold a list of objects")
            return data
    except (json.JSONDecodeError, UnicodeDecodeError, pa.ArrowException, OSError) as exc:
        raise DatasetError(f"cannot read dataset file {p}: {exc}") from exc
    raise DatasetError(f"unsupported dataset format {suffix!r} for {p}; supported: {list(_FORMATS)}")


def load_local(
    path: str | os.PathLike[str],
    *,
    mapping: Mapping[str, str] | None = None,
    domain: str,
    answer_type: str,
    limit: int | None = None,
) -> pa.Table:
    """Load a user file as a ``SCHEMA`` table (see the module docstring for the column rules).

    Args:
        path: a ``.jsonl``, ``.json`` or ``.parquet`` file.
        mapping: schema column -> file column (dotted paths reach into nested objects).
        domain: the value of the ``domain`` column (unless mapped from the file).
        answer_type: one of ``ANSWER_TYPES`` (unless mapped from the file).
        limit: keep only the first ``limit`` rows.

    Raises:
        ConfigError: bad ``mapping`` keys, ``answer_type`` or ``limit``.
        DatasetError: the file is missing or unreadable, or a column is missing or invalid.
    """
    mapping = dict(mapping or {})
    unknown = sorted(set(mapping) - set(COLUMNS))
    if unknown:
        raise ConfigError(f"mapping has unknown schema column(s) {unknown}; valid: {list(COLUMNS)}")
    if answer_type not in ANSWER_TYPES:
        raise ConfigError(f"answer_type {answer_type!r} is not one of {list(ANSWER_TYPES)}")
    if not domain:
        raise ConfigError("domain must be a non-empty string")
    p = Path(path).expanduser().resolve()
    records = read_records(p)[: check_limit(limit)]
    defaults: dict[str, Any] = {
        "domain": domain,
        "answer_type": answer_type,
        "source": f"local:{p}",
        "choices": [],
        "answer_index": -1,
    }
    columns: dict[str, list[Any]] = {c: [] for c in COLUMNS}
    for i, rec in enumerate(records):
        row = {c: _lookup(rec, c, mapping.get(c, c), c in mapping, p, i) for c in COLUMNS}
        row = {c: (defaults.get(c) if v is _MISSING else v) for c, v in row.items()}
        if row["id"] is None:
            row["id"] = f"{row['domain']}/{p.stem}/{i}"
        if row["reference"] is None and row["answer_type"] == MULTIPLE_CHOICE and row["choices"]:
            row["reference"] = row["choices"][int(row["answer_index"])]
        if row["reference"] is None:
            raise DatasetError(
                f"{p} row {i}: no 'reference' column; map one with mapping={{'reference': ...}}"
            )
        if row["question"] is None:
            raise DatasetError(f"{p} row {i}: no 'question' column; map one with mapping={{'question': ...}}")
        if row["aliases"] is None:
            row["aliases"] = [row["reference"]]
        elif isinstance(row["aliases"], str):
            row["aliases"] = [row["aliases"]]
        row["id"], row["reference"] = str(row["id"]), str(row["reference"])
        row["aliases"] = [str(a) for a in row["aliases"]]
        for c in COLUMNS:
            columns[c].append(row[c])
    return table_from_columns(columns)


# --- GSM8K ({"question", "answer": "... #### N"}) ------------------------------------------------


def gsm8k_reference(answer: str) -> str:
    """Return the final number of a GSM8K solution: the text after ``####``, commas removed.

    Raises:
        DatasetError: there is no ``####`` marker.
    """
    if "####" not in answer:
        raise DatasetError(f"GSM8K answer has no '####' final-answer marker: {answer[-80:]!r}")
    return answer.rsplit("####", 1)[1].strip().replace(",", "")


def gsm8k_table(records: list[dict[str, Any]], split: str, source: str) -> pa.Table:
    """Convert GSM8K records to a ``SCHEMA`` table with ids ``gsm8k/<split>/<row>``."""
    try:
        questions = [r["question"] for r in records]
        refs = [gsm8k_reference(r["answer"]) for r in records]
    except KeyError as exc:
        raise DatasetError(f"GSM8K record is missing field {exc} ({source})") from exc
    n = len(records)
    return table_from_columns(
        {
            "id": [f"gsm8k/{split}/{i}" for i in range(n)],
            "domain": ["gsm8k"] * n,
            "question": questions,
            "reference": refs,
            "aliases": [[r] for r in refs],
            "choices": [[] for _ in range(n)],
            "answer_index": [-1] * n,
            "answer_type": [NUMERIC] * n,
            "source": [source] * n,
        }
    )


def load_gsm8k_dir(split: str, path: str | os.PathLike[str] | None = None) -> pa.Table:
    """GSM8K ``train``/``test`` from ``<dir>/<split>.jsonl``; dir = ``path`` or ``$DER_RAY_GSM8K_DIR``.

    Raises:
        DatasetError: neither ``path`` nor the environment variable is set, or the file is missing.
    """
    root = path or os.environ.get(GSM8K_DIR_ENV)
    if not root:
        raise DatasetError(
            f"GSM8K {split!r} needs a local directory with {split}.jsonl: pass path=... or set "
            f"${GSM8K_DIR_ENV} (the packaged copy only has the test split)"
        )
    file = Path(root).expanduser().resolve() / f"{split}.jsonl"
    return gsm8k_table(read_records(file), split, f"local:{file}")


# --- helpers -----------------------------------------------------------------------------------

_MISSING = object()


def _lookup(rec: Mapping[str, Any], column: str, key: str, required: bool, path: Path, i: int) -> Any:
    """Resolve ``key`` (dotted for nested objects) in ``rec``; ``_MISSING`` if absent and optional."""
    cur: Any = rec
    for part in key.split("."):
        if isinstance(cur, Mapping) and part in cur:
            cur = cur[part]
        elif required:
            raise DatasetError(
                f"{path} row {i}: file column {key!r} (mapped to {column!r}) not found; "
                f"keys: {sorted(rec)[:20]}"
            )
        else:
            return _MISSING
    return cur


def check_limit(limit: int | None) -> int | None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ConfigError(f"limit must be a non-negative int or None, got {limit!r}")
    return limit
