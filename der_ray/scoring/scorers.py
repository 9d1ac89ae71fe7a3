"""Rule-based scorers, the scorer registry, and the default scorer per answer type or domain.

Contract: every scorer returns 1.0 or 0.0 here (the neural ones in ``embedding``/``bertscore``
return values in [0, 1]); ``get_scorer(name)`` builds a registered scorer or raises ``ScorerError``
listing the names; ``scorer_for(x)`` picks the default for an ``Example``/row (by its
``answer_type``), an answer type, or a dataset domain:

    numeric -> numeric_em     multiple_choice -> mc_letter
    short_answer -> alias_em  free_text -> embedding

Matching rules:
- ``numeric_em``: ``extract_number(prediction)`` equals the reference (or any alias) as a decimal.
- ``mc_letter``: the prediction names the gold option, tried in this order: the whole normalised
  prediction equals an option's text; a letter (``"B"``, ``"(B)"``, ``"The answer is B"``, A = 0);
  a bare 0-based integer index. Option text goes first so "Vitamin C" is not read as letter C.
- ``mc_option``: for free-form replies: the normalised prediction equals the gold option text, or
  the gold option is the only option that occurs in it as a whole-word span (an option nested
  inside another named option's text, like "red" in "dark red", does not count as a second one).
- ``alias_em``: SQuAD/TriviaQA normalisation; 1 if some alias equals the prediction, or, with
  ``allow_contains=True`` (the default), occurs in it as a whole-word span. Containment is the
  usual choice for generative short-answer evaluation (models answer in sentences:
  "It was Sunset Boulevard."); it can over-credit replies that list several candidates, so strict
  exact match is available as ``AliasMatch(allow_contains=False)``.

Imports: stdlib, der_ray.*.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from der_ray.data.schema import FREE_TEXT, MULTIPLE_CHOICE, NUMERIC, SHORT_ANSWER, Example
from der_ray.errors import ScorerError
from der_ray.scoring.base import Scorer, as_example
from der_ray.scoring.bertscore import BERTScoreScorer
from der_ray.scoring.embedding import EmbeddingScorer
from der_ray.scoring.normalize import (
    contains_span,
    extract_number,
    normalize_answer,
    numbers_equal,
    parse_choice,
    to_decimal,
)


class NumericExactMatch(Scorer):
    """GSM8K-style: the extracted final number equals the reference number."""

    name = "numeric_em"

    def _score(self, prediction: str, example: Example) -> float:
        golds = [g for g in (_as_number(a) for a in (example.reference, *example.aliases)) if g is not None]
        if not golds:
            raise ScorerError(
                f"numeric_em: reference {example.reference!r} of {example.id!r} is not a number"
            )
        predicted = extract_number(prediction)
        return float(predicted is not None and any(numbers_equal(predicted, g) for g in golds))


def _as_number(text: str) -> str | None:
    return text.strip() if to_decimal(text) is not None else extract_number(text)


_INT_RE = re.compile(r"^\s*\(?(\d+)\)?\s*\.?\s*$")


def _gold_index(example: Example, scorer: str) -> int:
    if example.answer_index < 0 or not example.choices:
        raise ScorerError(f"{scorer}: {example.id!r} has no choices/answer_index (not multiple choice)")
    return example.answer_index


def option_index(prediction: str, choices: tuple[str, ...]) -> int | None:
    """Index of the option whose normalised text equals the normalised prediction (first one)."""
    norm = normalize_answer(prediction)
    if not norm:
        return None
    for i, choice in enumerate(choices):
        if normalize_answer(choice) == norm:
            return i
    return None


class MultipleChoiceLetter(Scorer):
    """The predicted option (exact option text, letter, or 0-based index) is the gold one."""

    name = "mc_letter"

    def predicted_index(self, prediction: str, example: Example) -> int | None:
        """The option the prediction names, or ``None`` if it names none."""
        n = len(example.choices)
        by_text = option_index(prediction, example.choices)
        if by_text is not None:
            return by_text
        by_letter = parse_choice(prediction, n)
        if by_letter is not None:
            return by_letter
        m = _INT_RE.match(prediction)
        if m and int(m.group(1)) < n:
            return int(m.group(1))
        return None

    def _score(self, prediction: str, example: Example) -> float:
        gold = _gold_index(example, self.name)
        return float(self.predicted_index(prediction, example) == gold)


class MultipleChoiceOption(Scorer):
    """Free-form reply that states the gold option's text (exactly or as the only contained option)."""

    name = "mc_option"

    def _score(self, prediction: str, example: Example) -> float:
        gold = _gold_index(example, self.name)
        exact = option_index(prediction, example.choices)
        if exact is not None:
            return float(exact == gold)
        norm = normalize_answer(prediction)
        texts = [normalize_answer(c) for c in example.choices]
        found = {i for i, t in enumerate(texts) if contains_span(norm, t)}
        # An option nested in a longer named one ("red" in "dark red") is not a second answer.
        named = [
            i
            for i in found
            if not any(j != i and texts[j] != texts[i] and contains_span(texts[j], texts[i]) for j in found)
        ]
        return float(named == [gold])


class AliasMatch(Scorer):
    """TriviaQA/NQ: a normalised alias equals (or, by default, occurs in) the normalised prediction.

    Args:
        allow_contains: also accept an alias found as a whole-word span inside the prediction.
    """

    name = "alias_em"

    def __init__(self, allow_contains: bool = True) -> None:
        self.allow_contains = allow_contains

    def _score(self, prediction: str, example: Example) -> float:
        pred = normalize_answer(prediction)
        if not pred:
            return 0.0
        for alias in example.aliases:
            gold = normalize_answer(alias)
            if not gold:
                continue  # an alias that normalises away ("The") would match everything
            if gold == pred or (self.allow_contains and contains_span(pred, gold)):
                return 1.0
        return 0.0


# --- registry --------------------------------------------------------------------------------------

DEFAULT_BY_ANSWER_TYPE: dict[str, str] = {
    NUMERIC: "numeric_em",
    MULTIPLE_CHOICE: "mc_letter",
    SHORT_ANSWER: "alias_em",
    FREE_TEXT: "embedding",
}

DEFAULT_BY_DOMAIN: dict[str, str] = {
    "gsm8k": "numeric_em",
    "arc_challenge": "mc_letter",
    "arc_easy": "mc_letter",
    "mmlu": "mc_letter",
    "piqa": "mc_letter",
    "triviaqa": "alias_em",
    "nq_open": "alias_em",
    "mix_instruct": "embedding",
}

SCORERS: dict[str, Callable[..., Scorer]] = {
    "numeric_em": NumericExactMatch,
    "mc_letter": MultipleChoiceLetter,
    "mc_option": MultipleChoiceOption,
    "alias_em": AliasMatch,
    "embedding": EmbeddingScorer,
    "bertscore": BERTScoreScorer,
}


def get_scorer(name: str, **kwargs: Any) -> Scorer:
    """Build the scorer registered as ``name`` (``kwargs`` go to its constructor).

    Raises:
        ScorerError: unknown name (the message lists the valid names) or bad constructor arguments.
    """
    try:
        cls = SCORERS[name]
    except KeyError:
        raise ScorerError(f"unknown scorer {name!r}; valid names: {list(SCORERS)}") from None
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ScorerError(f"bad arguments for scorer {name!r}: {exc}") from exc


def scorer_for(target: Example | Mapping[str, Any] | str) -> Scorer:
    """The default scorer for an ``Example``/row (by answer type), an answer type, or a domain name.

    Raises:
        ScorerError: a string that is neither a known answer type nor a known domain.
    """
    if isinstance(target, str):
        name = DEFAULT_BY_ANSWER_TYPE.get(target) or DEFAULT_BY_DOMAIN.get(target)
        if name is None:
            raise ScorerError(
                f"no default scorer for {target!r}; answer types: {list(DEFAULT_BY_ANSWER_TYPE)}, "
                f"domains: {list(DEFAULT_BY_DOMAIN)}"
            )
        return get_scorer(name)
    return get_scorer(DEFAULT_BY_ANSWER_TYPE[as_example(target).answer_type])
