"""The ``Scorer`` interface: quality of a prediction against a reference, as a float in [0, 1].

Contract: ``score(prediction, target)`` returns a float in [0, 1] and never mutates its inputs;
``score_batch`` returns one score per pair, in order. A *target* is an ``Example``, a row mapping
with the schema's columns (only ``reference`` is required; ``aliases``, ``choices``,
``answer_index`` are used when present), or a bare reference string. Scorers that need something
the target lacks (a gold index for multiple choice, a numeric reference) raise ``ScorerError``.

Imports: stdlib, der_ray.errors, der_ray.data.schema.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, TypeAlias

from der_ray.data.schema import FREE_TEXT, MULTIPLE_CHOICE, Example
from der_ray.errors import DatasetError, ScorerError

#: what a scorer accepts as the reference side of a pair
Target: TypeAlias = Example | Mapping[str, Any] | str


def as_example(target: Target) -> Example:
    """Coerce a scoring target to an ``Example`` (placeholders fill id/domain/question).

    Raises:
        ScorerError: the target has no reference or is otherwise invalid.
    """
    if isinstance(target, Example):
        return target
    if isinstance(target, str):
        return Example(id="adhoc", domain="adhoc", question="", reference=target, answer_type=FREE_TEXT)
    if not isinstance(target, Mapping) or "reference" not in target:
        raise ScorerError(
            f"a scoring target must be an Example, a mapping with 'reference', or a str; got {type(target)}"
        )
    row: dict[str, Any] = {"id": "adhoc", "domain": "adhoc", "question": ""}
    row.update(target)
    index = row.get("answer_index")
    if "answer_type" not in target and isinstance(index, int) and index >= 0:
        row["answer_type"] = MULTIPLE_CHOICE  # a gold index without a type can only mean MC
    try:
        return Example.from_row(row)
    except DatasetError as exc:
        raise ScorerError(f"invalid scoring target: {exc}") from exc


class Scorer(ABC):
    """Base class of every scorer; subclasses implement ``_score`` on a coerced ``Example``."""

    #: registry name (a key of ``der_ray.scoring.SCORERS``)
    name: ClassVar[str]

    def score(self, prediction: str, target: Target) -> float:
        """Quality of ``prediction`` for ``target`` in [0, 1].

        Raises:
            ScorerError: ``prediction`` is not a str, or the target lacks what this scorer needs.
        """
        if not isinstance(prediction, str):
            raise ScorerError(f"{self.name}: prediction must be a str, got {type(prediction).__name__}")
        value = float(self._score(prediction, as_example(target)))
        return min(1.0, max(0.0, value))

    def score_batch(self, predictions: Sequence[str], targets: Sequence[Target]) -> list[float]:
        """Scores for aligned lists of predictions and targets (same length).

        Raises:
            ScorerError: the lengths differ, or as ``score``.
        """
        self._check_batch(predictions, targets)
        return [self.score(p, t) for p, t in zip(predictions, targets, strict=True)]

    def _check_batch(self, predictions: Sequence[str], targets: Sequence[Target]) -> list[Example]:
        """Validate aligned batches (for batched overrides); returns the targets as examples."""
        if len(predictions) != len(targets):
            raise ScorerError(
                f"{self.name}: {len(predictions)} predictions but {len(targets)} targets; they must align"
            )
        for p in predictions:
            if not isinstance(p, str):
                raise ScorerError(f"{self.name}: prediction must be a str, got {type(p).__name__}")
        return [as_example(t) for t in targets]

    @abstractmethod
    def _score(self, prediction: str, example: Example) -> float:
        """Score one pair (the prediction is a str, the example is validated)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
