"""Per-request KV-cache sessions: the step API that token-level fusion drives.

A session keeps the model's ``past_key_values`` for its tokens so that each step costs one forward
pass over the *new* tokens only. Sessions are bounded (least recently used are evicted) because every
cache holds layers x heads x tokens of activations; an evicted or unknown id is a clear
``InvalidRequestError``, never a silent restart. Imports: core, torch/numpy.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from der_ray.errors import InvalidRequestError
from der_ray.types import StepState, TokenDist


@dataclass
class Session:
    ids: list[int]
    cache: Any  # transformers Cache holding the keys/values of ``ids``
    last_logits: Any  # (V,) float32 torch tensor: next-token logits after ``ids``


def to_dist(logits: Any, top_k: int | None) -> TokenDist:
    """Log-softmax over the vocabulary, then the ``top_k`` best (or all, in id order, for None)."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)  # (V,)
    vocab = int(logp.shape[-1])
    if top_k is None:
        ids = np.arange(vocab, dtype=np.int64)
        return TokenDist(ids, logp.cpu().numpy().astype(np.float32), vocab)
    if not isinstance(top_k, int) or top_k <= 0:
        raise InvalidRequestError(f"top_k must be a positive integer or None, got {top_k!r}")
    vals, idx = torch.topk(logp, min(top_k, vocab))
    return TokenDist(idx.cpu().numpy().astype(np.int64), vals.cpu().numpy().astype(np.float32), vocab)


class SessionStore:
    """The open sessions of one model, most recently used last."""

    def __init__(self, model: Any, device: str, *, max_sessions: int = 64) -> None:
        self.model = model
        self.device = device
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self, ids: list[int], *, top_k: int | None, session_id: str | None = None) -> StepState:
        if not ids:
            raise InvalidRequestError("open_session: the prompt encodes to no tokens")
        sid = session_id or uuid.uuid4().hex
        if sid in self._sessions:
            raise InvalidRequestError(f"session {sid!r} is already open")
        logits, cache = self._forward(ids, None)
        self._sessions[sid] = Session(list(ids), cache, logits)
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return StepState(sid, to_dist(logits, top_k), len(ids))

    def get(self, session_id: str) -> Session:
        try:
            session = self._sessions[session_id]
        except KeyError:
            raise InvalidRequestError(
                f"unknown session {session_id!r} (closed, evicted after {self.max_sessions} "
                "newer sessions, or lost when the expert restarted)") from None
        self._sessions.move_to_end(session_id)
        return session

    def append(self, session_id: str, ids: list[int], *, top_k: int | None) -> StepState:
        session = self.get(session_id)
        if not ids:
            raise InvalidRequestError("append: no tokens to append")
        vocab = int(session.last_logits.shape[-1])
        bad = [i for i in ids if not 0 <= int(i) < vocab]
        if bad:
            raise InvalidRequestError(f"token ids out of range [0, {vocab}): {bad[:5]}")
        session.last_logits, session.cache = self._forward(ids, session.cache)
        session.ids.extend(int(i) for i in ids)
        return StepState(session_id, to_dist(session.last_logits, top_k), len(session.ids))

    def close(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)  # closing twice is harmless

    def token_ids(self, session_id: str, *, last: int | None = None) -> list[int]:
        """The ids held by a session (only the ``last`` ones when given: small payloads over Ray)."""
        ids = self.get(session_id).ids
        if last is not None:
            if not isinstance(last, int) or last < 0:
                raise InvalidRequestError(f"last must be a non-negative integer, got {last!r}")
            return list(ids[len(ids) - min(last, len(ids)):])
        return list(ids)

    def replace(self, session_id: str, n_keep: int, ids: list[int], *, top_k: int | None) -> StepState:
        """Keep the first ``n_keep`` tokens of a session, drop the rest, then append ``ids``.

        The KV cache is cropped in place (``Cache.crop``); caches that cannot be rewound (a sliding
        window layer already past its window) are rebuilt by re-running the kept tokens. The
        distribution returned is the one after the last token, as for ``append``: when ``ids`` is
        empty, the last kept token is run again to recover it.
        """
        session = self.get(session_id)
        held = len(session.ids)
        if not isinstance(n_keep, int) or not 0 <= n_keep <= held:
            raise InvalidRequestError(f"n_keep must be an integer in [0, {held}], got {n_keep!r}")
        ids = [int(i) for i in ids]
        if n_keep + len(ids) == 0:
            raise InvalidRequestError("replace: a session must keep or receive at least one token")
        vocab = int(session.last_logits.shape[-1])
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise InvalidRequestError(f"token ids out of range [0, {vocab}): {bad[:5]}")
        if n_keep == held and ids:
            return self.append(session_id, ids, top_k=top_k)
        if not ids:  # rerun the last kept token to get the logits after it
            n_keep, ids = n_keep - 1, [session.ids[n_keep - 1]]
        kept = session.ids[:n_keep]
        cache = self._crop(session.cache, held, n_keep) if n_keep > 0 else None
        if n_keep > 0 and cache is None:  # not rewindable: rebuild from the kept tokens
            _, cache = self._forward(kept, None)
        session.last_logits, session.cache = self._forward(ids, cache)
        session.ids = kept + ids
        return StepState(session_id, to_dist(session.last_logits, top_k), len(session.ids))

    @staticmethod
    def _crop(cache: Any, held: int, n_keep: int) -> Any:
        """``cache`` cut to ``n_keep`` tokens, or None when this cache cannot be rewound."""
        try:
            cache.crop(n_keep - held)  # a negative count removes that many trailing tokens
        except (RuntimeError, ValueError, AttributeError, NotImplementedError):
            return None
        return cache if cache.get_seq_length() == n_keep else None

    def _forward(self, ids: list[int], cache: Any) -> tuple[Any, Any]:
        import torch

        x = torch.tensor([ids], device=self.device)
        with torch.inference_mode():
            out = self.model(input_ids=x, past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1].float(), out.past_key_values
