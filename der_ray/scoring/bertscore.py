"""Optional BERTScore F1 over the local all-MiniLM-L6-v2 (no hub, no baseline rescaling).

Contract: ``bert_score`` is an optional dependency imported on first use; when it is missing the
scorer raises ``ScorerError`` with the install command (``pip install bert-score matplotlib``:
``bert_score`` imports matplotlib at import time). The model is the same pinned MiniLM directory the
embedding scorer uses (checked with the same sha256 before loading), all 6 layers, ``lang="en"``,
``rescale_with_baseline=False`` (baselines would be downloaded). With several aliases the score is
the best F1 over them (``bert_score``'s multi-reference mode). F1 is clipped to [0, 1].

Measured with bert-score 0.3.13 against "The answer is 72.": the same text 1.0, "The answer is
48." 0.89, "Bananas are yellow." 0.15 (5.5 s for the first call, including the model load). Like
embedding cosine, it barely separates right from wrong numbers: use it for free text only.

Imports: stdlib, der_ray.*; ``bert_score`` (and through it torch/transformers) lazily.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from der_ray.data.schema import Example
from der_ray.errors import ScorerError
from der_ray.scoring.base import Scorer, Target
from der_ray.scoring.embedding import PINNED_SHA256, minilm_dir, verify_model_dir

BERT_SCORE_INSTALL = "pip install bert-score matplotlib"


def bert_score_available() -> bool:
    """Whether the optional ``bert_score`` package can be imported (does not import it)."""
    return importlib.util.find_spec("bert_score") is not None


class BERTScoreScorer(Scorer):
    """BERTScore F1 of the prediction against the reference aliases, on local MiniLM layers 1-6.

    Args:
        model_dir: model directory; default the pinned MiniLM package dir.
        batch_size: pairs per forward pass.
        device: torch device for ``bert_score``.
    """

    name = "bertscore"

    def __init__(
        self, model_dir: str | Path | None = None, batch_size: int = 64, device: str = "cpu"
    ) -> None:
        self._model_dir = Path(model_dir) if model_dir is not None else None
        self.batch_size = batch_size
        self.device = device
        self._scorer: Any = None
        self._lock = threading.Lock()

    def _get(self) -> Any:
        with self._lock:
            if self._scorer is None:
                try:
                    from bert_score import BERTScorer
                except ImportError as exc:
                    raise ScorerError(
                        f"the 'bertscore' scorer needs the optional bert_score package: {BERT_SCORE_INSTALL}"
                    ) from exc
                model_dir = self._model_dir or minilm_dir()
                verify_model_dir(model_dir, PINNED_SHA256 if self._model_dir is None else None)
                self._scorer = BERTScorer(
                    model_type=str(model_dir),
                    num_layers=6,
                    lang="en",
                    rescale_with_baseline=False,
                    batch_size=self.batch_size,
                    device=self.device,
                )
            return self._scorer

    def _score(self, prediction: str, example: Example) -> float:
        return self._f1([prediction], [example])[0]

    def score_batch(self, predictions: Sequence[str], targets: Sequence[Target]) -> list[float]:
        """Batched BERTScore (one ``bert_score`` call for all pairs)."""
        return self._f1(list(predictions), self._check_batch(predictions, targets))

    def _f1(self, predictions: list[str], examples: list[Example]) -> list[float]:
        scorer = self._get()
        scores = [0.0] * len(predictions)
        live = [i for i, p in enumerate(predictions) if p.strip()]  # empty text: 0, and no NaN
        if live:
            refs = [list(examples[i].aliases) for i in live]
            _, _, f1 = scorer.score([predictions[i] for i in live], refs)
            for i, value in zip(live, f1.tolist(), strict=True):
                scores[i] = min(1.0, max(0.0, float(value)))
        return scores
