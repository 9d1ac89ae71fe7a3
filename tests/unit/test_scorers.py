"""Unit tests for der_ray.scoring: extraction, normalisation, rule scorers, registry (no model loads)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from der_ray.data import Example
from der_ray.errors import ScorerError
from der_ray.scoring import (
    SCORERS,
    AliasMatch,
    BERTScoreScorer,
    EmbeddingScorer,
    MiniLMEncoder,
    extract_number,
    get_scorer,
    normalize_answer,
    numbers_equal,
    parse_choice,
    scorer_for,
)
from der_ray.scoring.embedding import verify_model_dir


def _mc(choices: list[str], gold: int) -> Example:
    return Example(
        id="t/mc",
        domain="test",
        question="q?",
        reference=choices[gold],
        choices=tuple(choices),
        answer_index=gold,
        answer_type="multiple_choice",
    )


def _qa(reference: str, *aliases: str) -> Example:
    return Example(
        id="t/qa",
        domain="test",
        question="q?",
        reference=reference,
        aliases=(reference, *aliases),
        answer_type="short_answer",
    )


# --- extract_number / numeric_em ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("#### 72", "72"),
        ("She sold 48 + 24 = 72 clips.\n#### 72", "72"),
        ("The answer is 18.", "18"),
        ("the answer is: $18", "18"),
        ("Final answer: 1,234", "1234"),
        ("$1,234.50", "1234.50"),
        ("It costs $1,234.50 in total", "1234.50"),
        ("so x = -3", "-3"),
        ("The temperature fell to \u22127 degrees", "-7"),
        ("16-3 = 13", "13"),
        ("16 - 3", "3"),  # a binary minus is not a sign
        ("The low was -3 today", "-3"),
        ("First 5, then 10, and finally 15", "15"),
        ("\\boxed{72}", "72"),
        ("48/2 = 24, 48+24 = 72, so \\boxed{72} clips, 3 days", "72"),
        ("\\boxed{\\$1,000}", "1000"),
        ("#### 5 and the answer is 7", "5"),  # '####' beats 'answer is'
        ("The answer is 7. \\boxed{9}", "7"),  # 'answer is' beats boxed
        ("Step 1: 2 eggs. The answer is 3. Wait, the answer is 4.", "4"),  # last 'answer is'
        ("0.5 cups", "0.5"),
        ("12,345,678 people", "12345678"),
        ("no number here", None),
        ("", None),
    ],
)
def test_extract_number(text: str, expected: str | None) -> None:
    assert extract_number(text) == expected


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        ("72", "72.0", True),
        ("72", "72.00", True),
        ("1,234.50", "1234.5", True),
        ("-0", "0", True),
        ("72", "27", False),
        ("72", "abc", False),
        ("1e3", "1000", True),
    ],
)
def test_numbers_equal(a: str, b: str, equal: bool) -> None:
    assert numbers_equal(a, b) is equal


@pytest.mark.parametrize(
    ("prediction", "reference", "score"),
    [
        ("#### 72", "72", 1.0),
        ("The answer is 72.00", "72", 1.0),
        ("The answer is 18.", "18", 1.0),
        ("$1,234.50", "1234.5", 1.0),
        ("She pays \\boxed{-5} dollars", "-5", 1.0),
        ("The answer is 5", "-5", 0.0),
        ("72 clips in April and 24 in May, total 96", "72", 0.0),
        ("I don't know", "18", 0.0),
        ("", "18", 0.0),
        ("#### 1,000", "1,000", 1.0),  # a reference with commas still compares numerically
    ],
)
def test_numeric_em(prediction: str, reference: str, score: float) -> None:
    assert get_scorer("numeric_em").score(prediction, {"reference": reference}) == score


def test_numeric_em_non_numeric_reference_raises() -> None:
    with pytest.raises(ScorerError, match="not a number"):
        get_scorer("numeric_em").score("72", "seventy-two")


# --- multiple choice ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", 1),
        ("b", 1),
        ("(B)", 1),
        ("B.", 1),
        ("[C]", 2),
        ("The answer is B", 1),
        ("The answer is (c).", 2),
        ("Answer: B) Paris is the capital", 1),
        ("answer:d", 3),
        ("B) Paris", 1),
        ("(D) none of these", 3),
        ("Option C is right", 2),
        ("I think D", 3),  # 'I' as a pronoun is skipped
        ("A dog would do it, so C", 2),  # 'A' as an article is skipped
        ("The answer is A, no wait, the answer is C", 2),  # the last 'answer is' counts
        ("the answer is a dog", None),
        ("E", None),  # beyond 4 options
        ("B or C", None),  # ambiguous
        ("", None),
    ],
)
def test_parse_choice(text: str, expected: int | None) -> None:
    assert parse_choice(text, 4) == expected


MC = _mc(["Paris", "Vitamin C", "the Moon", "42"], 1)


@pytest.mark.parametrize(
    ("prediction", "score"),
    [
        ("B", 1.0),
        ("(B)", 1.0),
        ("The answer is B.", 1.0),
        ("Answer: B) Vitamin C", 1.0),
        ("1", 1.0),  # 0-based integer index
        ("vitamin c.", 1.0),  # option text, normalised
        ("Vitamin C", 1.0),  # option text wins over reading 'C' as a letter
        ("C", 0.0),
        ("A", 0.0),
        ("Moon", 0.0),
        ("42", 0.0),  # equals option 3's text, not index 42
        ("7", 0.0),  # out-of-range index
        ("", 0.0),
    ],
)
def test_mc_letter(prediction: str, score: float) -> None:
    assert get_scorer("mc_letter").score(prediction, MC) == score


@pytest.mark.parametrize(
    ("prediction", "score"),
    [
        ("Vitamin C", 1.0),
        ("I would pick vitamin C because it helps.", 1.0),
        ("Paris", 0.0),
        ("Paris or vitamin C", 0.0),  # two options named: no credit
        ("B", 0.0),  # letters are mc_letter's job
    ],
)
def test_mc_option(prediction: str, score: float) -> None:
    assert get_scorer("mc_option").score(prediction, MC) == score


def test_mc_option_longest_match_wins() -> None:
    ex = _mc(["red", "dark red", "blue"], 1)
    assert get_scorer("mc_option").score("It is dark red.", ex) == 1.0
    assert get_scorer("mc_option").score("It is red.", ex) == 0.0


def test_mc_accepts_row_mapping_and_requires_index() -> None:
    row = {"reference": "no", "choices": ["yes", "no"], "answer_index": 1}
    assert get_scorer("mc_letter").score("B", row) == 1.0
    with pytest.raises(ScorerError, match="not multiple choice"):
        get_scorer("mc_letter").score("B", "no")


# --- alias match -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Beatles", "beatles"),
        ("  An   Apple!  ", "apple"),
        ("U.S.A.", "usa"),
        ("rock_and_roll", "rock and roll"),
        ("\u201cSunset Blvd.\u201d", "sunset blvd"),
        ("Theatre", "theatre"),  # 'the' only as a whole word
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


TQA = _qa("Sunset Boulevard", "Sunset Blvd", "Sunset Blvd.")


@pytest.mark.parametrize(
    ("prediction", "score"),
    [
        ("Sunset Boulevard", 1.0),
        ("sunset blvd.", 1.0),
        ("The Sunset Boulevard!", 1.0),
        ("It was Sunset Boulevard, I think.", 1.0),  # whole-word containment
        ("Sunset", 0.0),
        ("Sunset Boulevards", 0.0),  # not a whole-word span
        ("", 0.0),
    ],
)
def test_alias_em(prediction: str, score: float) -> None:
    assert get_scorer("alias_em").score(prediction, TQA) == score


def test_alias_em_strict_and_empty_alias() -> None:
    strict = AliasMatch(allow_contains=False)
    assert strict.score("Sunset Boulevard", TQA) == 1.0
    assert strict.score("It was Sunset Boulevard", TQA) == 0.0
    # an alias that normalises to "" must not match everything
    assert AliasMatch().score("anything", _qa("The")) == 0.0
    assert AliasMatch().score("anything", _qa("the", "a", "")) == 0.0


def test_score_batch_and_range() -> None:
    sc = get_scorer("alias_em")
    assert sc.score_batch(["Sunset Blvd", "no"], [TQA, TQA]) == [1.0, 0.0]
    with pytest.raises(ScorerError, match="must align"):
        sc.score_batch(["a"], [TQA, TQA])
    with pytest.raises(ScorerError, match="must be a str"):
        sc.score(None, TQA)  # type: ignore[arg-type]


# --- registry ----------------------------------------------------------------------------------


def test_registry_names_and_errors() -> None:
    assert set(SCORERS) == {"numeric_em", "mc_letter", "mc_option", "alias_em", "embedding", "bertscore"}
    for name in SCORERS:
        assert get_scorer(name).name == name  # constructing loads nothing
    with pytest.raises(ScorerError, match="valid names: .*numeric_em"):
        get_scorer("bleu")
    with pytest.raises(ScorerError, match="bad arguments"):
        get_scorer("alias_em", nope=1)
    assert EmbeddingScorer()._encoder is None  # the shared encoder is only fetched on first score


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("numeric", "numeric_em"),
        ("multiple_choice", "mc_letter"),
        ("short_answer", "alias_em"),
        ("free_text", "embedding"),
        ("gsm8k", "numeric_em"),
        ("mmlu", "mc_letter"),
        ("piqa", "mc_letter"),
        ("nq_open", "alias_em"),
        ("triviaqa", "alias_em"),
        ("mix_instruct", "embedding"),
    ],
)
def test_scorer_for(key: str, name: str) -> None:
    assert scorer_for(key).name == name


def test_scorer_for_examples_and_unknown() -> None:
    assert scorer_for(MC).name == "mc_letter"
    assert scorer_for(TQA.to_row()).name == "alias_em"
    with pytest.raises(ScorerError, match="answer types"):
        scorer_for("poetry")


# --- neural scorers without loading a model ----------------------------------------------------


def test_minilm_checksum_mismatch_refuses(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"not the real weights")
    with pytest.raises(ScorerError, match="sha256"):
        verify_model_dir(tmp_path)
    enc = MiniLMEncoder(tmp_path)
    with pytest.raises(ScorerError, match="refusing"):
        enc.encode(["hello"])
    assert not enc.loaded
    with pytest.raises(ScorerError, match="missing"):
        verify_model_dir(tmp_path / "nowhere")


def test_embedding_empty_inputs_do_not_load(tmp_path: Path) -> None:
    enc = MiniLMEncoder(tmp_path)  # an invalid dir: any load would raise
    assert enc.encode([]).shape == (0, 384)
    assert EmbeddingScorer(enc).score("   ", "reference") == 0.0
    with pytest.raises(ScorerError, match="list of strings"):
        enc.encode("one string")  # type: ignore[arg-type]


def test_bertscore_missing_package_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bert_score", None)  # makes `import bert_score` fail
    with pytest.raises(ScorerError, match="pip install bert-score"):
        BERTScoreScorer().score("72", "72")
