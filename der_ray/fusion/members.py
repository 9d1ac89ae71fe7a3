"""The fusion coordinator's view of a member: any object with the expert step API, local or remote.

Contract: ``Member`` wraps an ``HFExpert`` (calls run in this process on the member's own worker
thread, in order, so different members' forward passes overlap: torch releases the GIL in its
kernels) or a ``RemoteExpert`` (anything whose class defines ``submit`` and ``result``: calls are
started on every member first and awaited afterwards, so the members compute in parallel; a late
answer is ``ExpertTimeoutError``; an optional ``ready(ref)`` says whether a call has finished).
Nothing here imports Ray. ``member_tokenizer`` gives the coordinator a tokenizer for the member: the
object's own for a local expert, else rebuilt from ``tokenizer_files()`` (a few MB of files, no model
weights; one tokenizer per distinct file set).
Step API used: ``open_session, append_tokens, replace_tokens, session_token_ids, close_session,
vocabulary, input_embeddings, tokenizer_files``.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from der_ray.errors import ExpertTimeoutError

EMBEDDING_CHUNK = 8192
"""Ids per ``input_embeddings`` call to a local member (bounds the temporary float32 copy)."""
INLINE_BYTES = 90_000
"""Largest reply from a remote member: Ray returns values under 100 KiB inside the reply itself. A
larger one goes through the shared-memory object store, whose pages then stay resident in both the
coordinator and the actor (for anchor embeddings, 140 MB counted twice)."""
IN_FLIGHT = 16
"""Remote embedding calls started ahead of the one being copied (replies are small)."""


@dataclass
class Pending:
    """A started call: a Ray ObjectRef for remote members, the finished value or error for local ones."""

    ref: Any = None
    future: Future[Any] | None = None


class Member:
    """One ensemble member behind a uniform start/finish call interface."""

    def __init__(self, obj: Any, *, name: str | None = None, timeout_s: float | None = None) -> None:
        self.obj = obj
        self.name = name or str(getattr(obj, "name", "") or type(obj).__name__)
        cls = type(obj)
        self.remote = callable(getattr(cls, "submit", None)) and callable(getattr(cls, "result", None))
        self.timeout_s = timeout_s
        # One worker thread per local member: its calls stay ordered (sessions need that) while
        # other members run at the same time.
        self._worker = (None if self.remote
                        else ThreadPoolExecutor(1, thread_name_prefix=f"member-{self.name}"))

    def start(self, method: str, *args: Any, **kwargs: Any) -> Pending:
        if self.remote:
            return Pending(ref=self.obj.submit(method, *args, **kwargs))
        assert self._worker is not None
        return Pending(future=self._worker.submit(getattr(self.obj, method), *args, **kwargs))

    def finish(self, pending: Pending) -> Any:
        if self.remote:
            return self.obj.result(pending.ref, self.timeout_s)
        assert pending.future is not None
        try:  # re-raises the member's own exception here, as remote errors surface in result()
            return pending.future.result(timeout=self.timeout_s)
        except FutureTimeout:
            raise ExpertTimeoutError(
                f"member {self.name!r} did not answer within {self.timeout_s} s") from None

    def ready(self, pending: Pending) -> bool:
        """Whether a started call has finished; False when a remote member cannot tell."""
        if self.remote:
            ready = getattr(self.obj, "ready", None)
            return bool(ready(pending.ref)) if callable(ready) else False
        assert pending.future is not None
        return pending.future.done()

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self.finish(self.start(method, *args, **kwargs))

    def embeddings(self, ids: Sequence[int]) -> np.ndarray:
        """``(len(ids), d)`` float32 input-embedding rows, fetched in chunks into one array (a list of
        chunks plus their concatenation would hold the whole matrix twice at the coordinator's peak)."""
        ids = [int(i) for i in ids]
        if not ids:
            return np.zeros((0, 0), np.float32)
        first = np.asarray(self.call("input_embeddings", ids[:1]), dtype=np.float32)  # (1, d)
        out = np.empty((len(ids), first.shape[1]), np.float32)
        out[0] = first[0]
        # Remote: many small replies, several in flight. Local: big chunks, one computed ahead (a
        # finished local call holds its whole chunk until it is copied).
        step, ahead = ((max(1, INLINE_BYTES // (4 * out.shape[1])), IN_FLIGHT) if self.remote
                       else (EMBEDDING_CHUNK, 1))
        starts = list(range(1, len(ids), step))
        pending = [self.start("input_embeddings", ids[i:i + step]) for i in starts[:ahead]]
        for n, i in enumerate(starts):
            if n + ahead < len(starts):
                j = starts[n + ahead]
                pending.append(self.start("input_embeddings", ids[j:j + step]))
            part = self.finish(pending[n])
            pending[n] = Pending()  # drop the reply once copied
            out[i:i + len(part)] = part
        return out


def member_tokenizer(member: Member) -> Any:
    """A tokenizer equivalent to the member's (see the module docstring).

    Rebuilt tokenizers are shared per content hash of their files: a 152k-entry fast tokenizer takes
    about 140 MB, and an evaluation builds a decoder per member set over the same few members.
    """
    if not member.remote and getattr(member.obj, "tokenizer", None) is not None:
        return member.obj.tokenizer
    from transformers import AutoTokenizer

    files: dict[str, bytes] = member.call("tokenizer_files")
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    key = digest.hexdigest()
    with _TOKENIZERS_LOCK:
        if key not in _TOKENIZERS:
            with tempfile.TemporaryDirectory() as d:
                for name, data in files.items():
                    (Path(d) / name).write_bytes(data)
                _TOKENIZERS[key] = AutoTokenizer.from_pretrained(d)
        return _TOKENIZERS[key]


_TOKENIZERS: dict[str, Any] = {}
_TOKENIZERS_LOCK = threading.Lock()


def gather(members: Sequence[Member], pendings: Sequence[Pending | None]) -> list[Any]:
    """Finish every started call; a failed call's exception is returned in its slot (None stays None),
    so the caller decides per member whether to raise or degrade, and no call is left unobserved."""
    out: list[Any] = []
    for m, p in zip(members, pendings, strict=True):
        if p is None:
            out.append(None)
            continue
        try:
            out.append(m.finish(p))
        except Exception as e:
            out.append(e)
    return out
