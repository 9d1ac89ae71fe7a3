"""Answer extraction and normalisation: pure string functions shared by the rule-based scorers.

Contract: no I/O, no state, never raises on odd text (returns ``None`` when nothing is found).

- ``extract_number``: the final numeric answer of a math solution, tried in the order GSM8K-style
  outputs use: ``#### N``; ``The answer is N`` / ``Answer: N``; ``\\boxed{N}``; else the last number.
- ``numbers_equal``: compares two number strings exactly as decimals (``72 == 72.0 == 72.00``).
- ``normalize_answer``: the SQuAD/TriviaQA normalisation (lowercase, drop punctuation, drop the
  articles a/an/the, collapse whitespace), with TriviaQA's extra treatment of ``_`` and curly quotes.
- ``parse_choice``: a multiple-choice letter (``"B"``, ``"(B)"``, ``"B."``, ``"The answer is B"``,
  ``"Answer: B) ..."``) as a 0-based index.

Imports: stdlib only.
"""

from __future__ import annotations

import re
import string
from decimal import Decimal, InvalidOperation

# A number: optional sign, optional "$", digits with proper thousands groups or plain digits,
# optional decimals. A "-" is a sign only when it does not directly follow a word or ")" and does
# not follow a digit or ")" plus one space, so "16-3" and "16 - 3" yield 3 while "is -3" yields -3.
# "\u2212" is the Unicode minus sign some models emit.
_NUM = r"(?:(?<![\w)])(?<![\d)]\s)[-\u2212])?\$?\s?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
_NUM_RE = re.compile(_NUM)
_HASH_RE = re.compile(r"####\s*(" + _NUM + ")")
_ANSWER_IS_RE = re.compile(r"answer\s*(?:is|:|=)\s*:?\s*(?:\\\()?\s*(" + _NUM + ")", re.IGNORECASE)
_BOXED_RE = re.compile(r"\\boxed\s*\{((?:[^{}]|\{[^{}]*\})*)\}")


def _clean_number(raw: str) -> str:
    """Drop ``$``, thousands commas, spaces and a trailing ``.``; map the Unicode minus to ``-``."""
    s = raw.replace("\u2212", "-").replace("$", "").replace(",", "").replace(" ", "")
    return s.rstrip(".")


def _last(pattern: re.Pattern[str], text: str) -> str | None:
    matches = pattern.findall(text)
    return _clean_number(matches[-1]) if matches else None


def extract_number(text: str) -> str | None:
    """Return the final numeric answer in ``text`` as a plain number string, or ``None``.

    Order of preference (the last match of the first rule that matches wins, because
    chain-of-thought text states intermediate numbers before the final one):
    ``#### N``; ``answer is N`` / ``answer: N``; ``\\boxed{N}`` (first number inside the box);
    the last number anywhere. ``"$1,234.50"`` -> ``"1234.50"``; ``"-3"`` -> ``"-3"``.
    """
    if not text:
        return None
    for pattern in (_HASH_RE, _ANSWER_IS_RE):
        found = _last(pattern, text)
        if found is not None:
            return found
    boxes = _BOXED_RE.findall(text)
    for box in reversed(boxes):
        match = _NUM_RE.search(box)
        if match:
            return _clean_number(match.group(0))
    return _last(_NUM_RE, text)


def to_decimal(number: str) -> Decimal | None:
    """Parse a number string (commas, ``$`` allowed) as ``Decimal``; ``None`` if it is not one."""
    try:
        value = Decimal(_clean_number(number.strip()))
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def numbers_equal(a: str, b: str) -> bool:
    """Exact decimal equality of two number strings (``"72" == "72.0" == "72.00"``, ``"-0" == "0"``)."""
    x, y = to_decimal(a), to_decimal(b)
    return x is not None and y is not None and x == y


_PUNCT = set(string.punctuation) | set("\u2018\u2019\u00b4`\u201c\u201d")
_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD/TriviaQA answer normalisation.

    Lowercase; ``_`` becomes a space; punctuation (ASCII plus curly quotes) is deleted, not replaced
    (so ``"U.S."`` -> ``"us"`` as in the official scripts); the articles a/an/the are removed; runs of
    whitespace collapse to one space and the ends are stripped.
    """
    s = text.lower().replace("_", " ")
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES_RE.sub(" ", s)
    return " ".join(s.split())


def contains_span(haystack: str, needle: str) -> bool:
    """Whether normalised ``needle`` occurs in normalised ``haystack`` on word boundaries."""
    return bool(needle) and f" {needle} " in f" {haystack} "


LETTERS = string.ascii_uppercase

# Ordered from most to least explicit. Each pattern captures one letter.
_CHOICE_PATTERNS: tuple[re.Pattern[str], ...] = (
    # the whole reply is a letter: "B", "(B)", "B.", "b)", "[C]"
    re.compile(r"^\s*[\(\[]?([A-Za-z])[\)\]]?\s*[.:)]?\s*$"),
    # "The answer is B", "answer: (C)", "Answer - D", "correct option is b)"
    # (a lowercase letter only counts when punctuated, so "the answer is a dog" is not "A")
    re.compile(
        r"(?i:answer|option|choice)\s*(?i:is|:|-|=)?\s*:?\s*[\(\[]?"
        r"([A-Z](?![A-Za-z])|[a-z](?=[\)\]\.:]|\s*$))"
    ),
    # the reply starts with a labelled option: "B) ...", "(B) ...", "B. ...", "B: ..."
    re.compile(r"^\s*[\(\[]?([A-Z])[\)\].:]\s"),
    # a parenthesised capital letter anywhere: "... so (C) is right"
    re.compile(r"\(([A-Z])\)"),
)
# A lone capital letter token; "A" and "I" are skipped when they start a sentence-like phrase.
_LONE_LETTER_RE = re.compile(r"(?<![A-Za-z'])([A-Z])(?![A-Za-z'])")


def parse_choice(text: str, n_choices: int | None = None) -> int | None:
    """Return the 0-based index of the option letter named in ``text`` (A=0), or ``None``.

    Args:
        text: a model reply such as ``"B"``, ``"(B)"``, ``"B."``, ``"The answer is B"``,
            ``"Answer: B) Paris"``.
        n_choices: when given, letters beyond the last option are ignored (``"E"`` with 4 options).

    The rules are tried from most to least explicit (see ``_CHOICE_PATTERNS``); for "answer is"
    style phrases the *last* one counts (a reply may reconsider). As a last resort a single distinct
    capital letter standing alone is accepted, skipping ``A``/``I`` used as words (``"A dog"``).
    """
    if not text:
        return None
    limit = min(n_choices, len(LETTERS)) if n_choices else len(LETTERS)
    valid = LETTERS[:limit]
    for k, pattern in enumerate(_CHOICE_PATTERNS):
        found = [m.upper() for m in pattern.findall(text)]
        found = [m for m in found if m in valid]
        if found:
            return LETTERS.index(found[-1] if k == 1 else found[0])
    lone = set()
    for m in _LONE_LETTER_RE.finditer(text):
        letter = m.group(1)
        rest = text[m.end() : m.end() + 2]
        if letter in "AI" and re.match(r"\s[a-z]", rest):
            continue  # the article "A" or the pronoun "I", not an option
        if letter in valid:
            lone.add(letter)
    return LETTERS.index(lone.pop()) if len(lone) == 1 else None
