"""``SessionHosts``: a fusion member backed by an expert *deployment*, with sticky KV-cache sessions.

``FusionDecoder`` drives members through ``submit(method, ...)`` / ``result(ref, timeout)`` /
``ready(ref)`` (see ``der_ray.fusion.members.Member``). Serve would balance each of those calls on its
own, and a session's cache exists on one replica only. So:
- ``open_session`` asks the deployment for a host (``ExpertDeployment.session_host``: Serve picks the
  replica, which answers with its model actor) and records ``session_id -> actor``;
- every later call naming that session goes straight to that actor; ``close_session`` forgets it;
- stateless calls (vocabulary, embeddings, tokenizer files) go to any host (the last one seen).
A host that died surfaces as ``ExpertUnavailableError``; a session the host no longer knows (it cannot
be the client's fault: ids are internal) is reported the same way, so the ingress retries the whole
request once on healthy replicas. Runs in worker threads (blocking ``.result()`` is allowed there,
not on the replica's event loop). Imports: errors, experts.actors.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

from der_ray.errors import ExpertUnavailableError, InvalidRequestError

#: step-API methods whose first argument is a session id
SESSION_METHODS = frozenset({"append_tokens", "append_text", "next_token", "close_session",
                             "session_token_ids", "replace_tokens", "truncate_session"})


class _Call:
    """A started call: the host it went to, the ObjectRef, and whether it names a session."""

    __slots__ = ("host", "ref", "method", "sid")

    def __init__(self, host: Any, ref: Any, method: str, sid: str | None = None) -> None:
        self.host, self.ref, self.method, self.sid = host, ref, method, sid


class SessionHosts:
    """Member adapter over one expert deployment handle (see the module docstring)."""

    def __init__(self, name: str, handle: Any, timeout_s: float) -> None:
        self.name, self.handle, self.timeout_s = name, handle, timeout_s
        self._lock = threading.Lock()
        self._owner: dict[str, Any] = {}
        self._any: Any = None

    def _new_host(self) -> Any:
        from der_ray.serve.errors import as_der_ray_error

        try:
            host = self.handle.session_host.remote().result(timeout_s=self.timeout_s)
        except Exception as e:
            raise as_der_ray_error(e, self.name) from None
        with self._lock:
            self._any = host
        return host

    def submit(self, method: str, *args: Any, **kwargs: Any) -> _Call:
        if method == "open_session":
            sid = kwargs.get("session_id") or uuid.uuid4().hex
            kwargs["session_id"] = sid
            host = self._new_host()
            with self._lock:
                self._owner[sid] = host
        elif method in SESSION_METHODS:
            with self._lock:
                host = (self._owner.pop if method == "close_session" else self._owner.get)(args[0], None)
            if host is None:
                if method == "close_session":
                    return _Call(None, None, method)
                raise ExpertUnavailableError(f"expert {self.name!r}: session {args[0]!r} has no live host")
        else:
            with self._lock:
                host = self._any
            host = host if host is not None else self._new_host()
        sid = kwargs["session_id"] if method == "open_session" else None
        return _Call(host, getattr(host, method).remote(*args, **kwargs), method, sid)

    def ready(self, call: _Call) -> bool:
        from der_ray.experts.actors import is_ready

        return call.ref is None or is_ready(call.ref)

    def result(self, call: _Call, timeout_s: float | None = None) -> Any:
        from der_ray.experts.actors import resolve

        if call.ref is None:
            return None
        try:
            return resolve(self.name, call.ref, self.timeout_s if timeout_s is None else timeout_s)
        except ExpertUnavailableError:
            self._forget(call)
            raise
        except InvalidRequestError as e:
            self._forget(call)
            if call.method in SESSION_METHODS:  # the host restarted and lost the cache
                raise ExpertUnavailableError(f"expert {self.name!r} lost a fusion session: {e}") from None
            raise

    def _forget(self, call: _Call) -> None:
        """After a failed call: drop a session that never opened, and a host that may be dead."""
        with self._lock:
            if call.sid is not None:
                self._owner.pop(call.sid, None)
            if self._any is call.host:
                self._any = None

    def open_sessions(self) -> int:
        with self._lock:
            return len(self._owner)
