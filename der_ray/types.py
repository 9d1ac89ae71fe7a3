"""Plain result types that cross module and actor boundaries. Imports: stdlib, numpy.

They are frozen dataclasses of builtins and numpy arrays, so they pickle cheaply through Ray's object
store (numpy arrays travel zero-copy; torch tensors would be copied).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Generation:
    """One generated answer."""

    text: str
    """The completion, cut before the first stop string; special tokens removed."""
    prompt_tokens: int
    """Tokens in the prompt as the model saw it (after formatting)."""
    completion_tokens: int
    """Tokens generated up to and including the stop (EOS or stop string)."""
    finish_reason: FinishReason
    """``stop``: EOS or a stop string; ``length``: ``max_new_tokens`` reached."""
    latency_s: float
    """Wall time of the batched call that produced this answer."""
    expert: str = ""


@dataclass(frozen=True)
class TokenDist:
    """A next-token distribution: the top-k token ids with their log-probabilities, sorted descending.

    With ``top_k=None`` the arrays hold the full vocabulary in id order instead (``ids`` = arange(V)).
    ``logprobs`` are normalised over the whole vocabulary, so a top-k slice sums to <= 1 in prob space.
    """

    ids: np.ndarray  # (k,) int64
    logprobs: np.ndarray  # (k,) float32
    vocab_size: int

    @property
    def top_id(self) -> int:
        return int(self.ids[int(np.argmax(self.logprobs))])


@dataclass(frozen=True)
class StepState:
    """The state of a KV-cache session after a step."""

    session_id: str
    dist: TokenDist
    n_tokens: int
    """Tokens held in the session's KV cache (prompt plus appended)."""


@dataclass(frozen=True)
class ContinuationDists:
    """A continuation teacher-forced after its context, in one member's own tokenisation.

    Position ``j`` is the prediction of token ``j`` given the context and tokens ``< j``: the
    top-k distribution there and the log-probability of the token actually taken. ``byte_ends[j]`` is
    the continuation's length in UTF-8 bytes up to and including token ``j``; members with different
    vocabularies meet where these boundaries coincide (fused option likelihood).
    """

    ids: np.ndarray  # (L,) int64
    byte_ends: np.ndarray  # (L,) int64
    target_logprobs: np.ndarray  # (L,) float32
    top_ids: np.ndarray  # (L, k) int64, per position sorted by descending log-probability
    top_logprobs: np.ndarray  # (L, k) float32


@dataclass(frozen=True)
class OptionScores:
    """Log-likelihood of each candidate continuation of one context (multiple choice, "cloze")."""

    logprob_sums: tuple[float, ...]
    n_tokens: tuple[int, ...]
    n_chars: tuple[int, ...]
    normalized: tuple[float, ...]
    """The score used to choose: the per-token (default) or per-char mean log-likelihood."""

    @property
    def best(self) -> int:
        return int(np.argmax(self.normalized))


@dataclass(frozen=True)
class VocabInfo:
    """An expert's vocabulary, as needed to align tokenizers across experts."""

    tokens: tuple[str, ...]
    """id -> raw token string as stored by the tokenizer (``Ġ``/``▁``/``<0x0A>`` forms kept)."""
    special_ids: tuple[int, ...]
    bos_id: int | None
    eos_ids: tuple[int, ...]
    pad_id: int | None
    model_vocab_size: int
    """Rows of the model's embedding matrix (may exceed ``len(tokens)`` because of padding)."""


@dataclass(frozen=True)
class ExpertHealth:
    name: str
    ok: bool
    device: str
    dtype: str
    pid: int
    n_params: int
    open_sessions: int
    model_dir: str
    extra: dict[str, str] = field(default_factory=dict)
