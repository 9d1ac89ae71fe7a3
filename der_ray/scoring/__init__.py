"""Answer quality in [0, 1]: exact-match rules per answer type, MiniLM similarity, optional BERTScore.

Quick use::

    from der_ray.scoring import get_scorer, scorer_for, extract_number
    get_scorer("numeric_em").score("... so she makes $18.", {"reference": "18"})   # 1.0
    scorer_for(example).score(reply, example)          # numeric/MC/short-answer/free-text default

Importing this package loads no model (torch and transformers are imported on first use).
Imports: der_ray.scoring.*.
"""

from der_ray.scoring.base import Scorer, Target, as_example
from der_ray.scoring.bertscore import BERTScoreScorer, bert_score_available
from der_ray.scoring.embedding import (
    EMBED_DIM,
    PINNED_SHA256,
    EmbeddingScorer,
    MiniLMEncoder,
    cosine,
    encode,
    get_encoder,
    minilm_dir,
)
from der_ray.scoring.normalize import (
    extract_number,
    normalize_answer,
    numbers_equal,
    parse_choice,
)
from der_ray.scoring.scorers import (
    DEFAULT_BY_ANSWER_TYPE,
    DEFAULT_BY_DOMAIN,
    SCORERS,
    AliasMatch,
    MultipleChoiceLetter,
    MultipleChoiceOption,
    NumericExactMatch,
    get_scorer,
    scorer_for,
)

__all__ = [
    "DEFAULT_BY_ANSWER_TYPE",
    "DEFAULT_BY_DOMAIN",
    "EMBED_DIM",
    "PINNED_SHA256",
    "SCORERS",
    "AliasMatch",
    "BERTScoreScorer",
    "EmbeddingScorer",
    "MiniLMEncoder",
    "MultipleChoiceLetter",
    "MultipleChoiceOption",
    "NumericExactMatch",
    "Scorer",
    "Target",
    "as_example",
    "bert_score_available",
    "cosine",
    "encode",
    "extract_number",
    "get_encoder",
    "get_scorer",
    "minilm_dir",
    "normalize_answer",
    "numbers_equal",
    "parse_choice",
    "scorer_for",
]
