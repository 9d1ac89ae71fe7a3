"""``FusionDeployment``: the DeePEn token-level fusion graph over expert deployments.

The decoding is ``der_ray.fusion.decoder.FusionDecoder``'s; its members are ``SessionHosts`` adapters, so
each request's KV-cache sessions stay on one model actor per member (see ``serve.sessions``) while
different requests spread over the expert replicas. A decoder keeps per-member caches (relative rows)
that are not thread-safe, so the deployment holds a small pool of decoders built lazily (the first
fetches vocabularies and anchor embeddings; the others are its ``fork``s, sharing them) and *leases* one
per request, released in ``finally``. Decoding is synchronous and runs on worker threads; streaming hands
every emitted token's text to the event loop through a queue (stop strings are held back by
``StopCutter`` so a client never sees one). Imports: core, fusion.decoder, serve.*, ray.serve.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ray import serve

from der_ray.config import PoolConfig
from der_ray.errors import DerRayError
from der_ray.serve.protocol import (
    Completion,
    Delta,
    Done,
    Failed,
    GenerationRequest,
    Started,
    StopCutter,
    StreamEvent,
)
from der_ray.serve.sessions import SessionHosts

log = logging.getLogger(__name__)


@serve.deployment
class FusionDeployment:
    """``deepen-fusion``: see the module docstring."""

    def __init__(self, pool: PoolConfig, members: Sequence[str], main: str, decoder: Mapping[str, Any],
                 experts: Mapping[str, Any], max_workers: int = 2) -> None:
        from der_ray._yaml_dataclass import build
        from der_ray.fusion.decoder import FusionConfig

        self.pool, self.members, self.main = pool, list(members), main
        self.fusion_cfg = build(FusionConfig, dict(decoder), "serve.fusion.decoder")
        self.hosts = [SessionHosts(n, experts[n], pool.expert(n).resources.timeout_s) for n in self.members]
        # At most ``max_workers`` decodes run at once, so at most that many decoders are ever built.
        self._free: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._built = 0
        self._first: Any = None
        self._build_lock = threading.Lock()
        self.max_workers = max_workers
        self._workers = ThreadPoolExecutor(max_workers, thread_name_prefix="fusion")

    # ---------------------------------------------------------------- decoder leases
    def _lease(self) -> Any:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            pass
        from der_ray.fusion.decoder import FusionDecoder

        with self._build_lock:  # one build; later decoders share its anchors and tokenizers
            self._built += 1
            if self._first is None:
                self._first = FusionDecoder(self.hosts, main=self.main, config=self.fusion_cfg,
                                            names=self.members)
                return self._first
            return self._first.fork()

    def _run(self, req: GenerationRequest, on_text: Any = None) -> Completion:
        dec = self._lease()
        try:
            res = dec.generate(req.prompt, max_new_tokens=req.max_tokens, stop=req.stop,
                               temperature=req.temperature, seed=req.seed, apply_format=req.apply_format,
                               on_text=on_text)
        finally:
            self._free.put(dec)
        members = [m for m in self.members if m not in res.degraded]
        n = len(res.token_ids)
        meta = {
            "graph": "fusion", "route": members, "main": self.main,
            "experts_per_step": [members] * n if n <= 64 else {"members": members, "steps": n},
            "cost": {"calls": sum(res.member_steps), "params_b": round(sum(self.pool.expert(m).params_b
                                                                       for m in members), 6),
                     "completion_tokens": n},
            "fusion": {"searched": res.n_searched, "changed": res.n_changed, "degraded": list(res.degraded)},
            "timings_ms": {"total": res.latency_s * 1e3},
        }
        return Completion(res.text, res.finish_reason, res.prompt_tokens, n, meta)

    # ---------------------------------------------------------------- API
    async def complete(self, req: GenerationRequest) -> Completion:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._workers, self._run, req)

    async def stream(self, req: GenerationRequest) -> AsyncIterator[StreamEvent]:
        """Every token as it is emitted; a failure becomes a ``Failed`` event (errors as values)."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[StreamEvent] = asyncio.Queue()
        cutter = StopCutter(req.stop)

        def on_text(text: str) -> None:
            delta = cutter.feed(text)
            if delta:
                loop.call_soon_threadsafe(events.put_nowait, Delta(delta))

        def work() -> None:
            try:
                c = self._run(req, on_text)
                rest = cutter.finish(c.text)
                if rest:
                    loop.call_soon_threadsafe(events.put_nowait, Delta(rest))
                loop.call_soon_threadsafe(events.put_nowait, Done(c))
            except DerRayError as e:
                loop.call_soon_threadsafe(events.put_nowait, Failed(e))
            except Exception as e:  # a bug: logged with its traceback, reported as a 500 event
                log.exception("fusion stream failed")
                loop.call_soon_threadsafe(events.put_nowait, Failed(DerRayError(f"internal error: {e!r}")))

        yield Started({"graph": "fusion", "route": list(self.members), "main": self.main})
        future = loop.run_in_executor(self._workers, work)
        try:
            while True:
                event = await events.get()
                yield event
                if isinstance(event, Done | Failed):
                    break
        finally:
            await future  # the decode cannot be interrupted mid-step; its lease is returned when it ends

    async def info(self) -> dict[str, Any]:
        return {"decoders_built": self._built, "members": self.members, "main": self.main,
                "open_sessions": {h.name: h.open_sessions() for h in self.hosts}}
