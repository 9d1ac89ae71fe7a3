"""``RouterDeployment``: the DER routing graph (trained RLModule + state encoder) over expert deployments.

The routing logic is ``der_ray.routing``'s: the same ``RoutingTask``/``Episode`` transitions as
training (step 0 sends the question, later steps the Knowledge Transfer Prompt with the previous
answer), greedy masked actions from the checkpoint's module (``Router``). This deployment only
supplies callers that reach the experts through ``DeploymentHandle``s and runs ``Router.route`` on
worker threads (``Episode`` is synchronous; a blocking ``.result()`` is allowed off the event loop).
``Router`` locks its policy step (observation encoding + forward) and times it: that time is the
router overhead reported per request.
A request's ``max_tokens`` caps every hop's budget (the router config sets each hop's budget per
answer type); hops are greedy as in training, so ``temperature``, ``top_p``, ``seed`` and ``stop``
do not apply to this graph. Streaming: the final hop is known only once the policy chooses STOP
after it, so the route runs to the end and the final answer is then sent in chunks.
Imports: core, routing.{router,encoder,training}, serve.{experts,protocol,errors}, ray.serve.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import serve

from der_ray.config import PoolConfig, RouterConfig
from der_ray.serve.errors import as_der_ray_error
from der_ray.serve.experts import GenParams
from der_ray.serve.protocol import (
    Completion,
    Delta,
    Done,
    GenerationRequest,
    Started,
    StreamEvent,
    chunk_text,
)


@dataclass
class _Trace:
    """Per-request record the callers fill in. The Router and its callers are shared by the worker
    threads and an episode runs on one thread, so the current trace is thread-local (created in the
    replica: Serve pickles this module's classes by value, and a module-level local cannot be)."""

    max_tokens: int
    hops: list[tuple[str, Any, float]] = field(default_factory=list)  # (expert, Generation, wall_s)


class HandleCaller:
    """An episode caller (``generate``/``score_options``) over an expert deployment handle."""

    def __init__(self, name: str, handle: Any, timeout_s: float, traces: threading.local) -> None:
        self.name, self.handle, self.timeout_s, self.traces = name, handle, timeout_s, traces

    def generate(self, prompts: list[str], max_new_tokens: int | None = None, temperature: float = 0.0,
                 **kwargs: Any) -> list[Any]:
        trace: _Trace = self.traces.current
        budget = min(max_new_tokens or trace.max_tokens, trace.max_tokens)
        out = []
        for prompt in prompts:
            t0 = time.perf_counter()
            params = GenParams(budget, temperature)
            try:
                gen = self.handle.generate_one.remote(prompt, params).result(timeout_s=self.timeout_s)
            except Exception as e:
                raise as_der_ray_error(e, f"expert {self.name!r}") from None
            trace.hops.append((self.name, gen, time.perf_counter() - t0))
            out.append(gen)
        return out

    def score_options(self, contexts: list[str], options: list[list[str]], **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            response = self.handle.score_options.remote(contexts, options, **kwargs)
            res = response.result(timeout_s=self.timeout_s)
        except Exception as e:
            raise as_der_ray_error(e, f"expert {self.name!r}") from None
        self.traces.current.hops.append((self.name, None, time.perf_counter() - t0))
        return res


def resolve_checkpoint(checkpoint: str) -> Path:
    """A training storage dir's policy checkpoint (BEST, else LATEST), or the checkpoint dir itself."""
    from der_ray.routing.training import policy_checkpoint

    ckpt = Path(checkpoint).expanduser().resolve()
    return policy_checkpoint(ckpt) or ckpt


def check_checkpoint(module: Any, ckpt: Path, names: Sequence[str], cfg: RouterConfig) -> None:
    """Fail at start-up, not on every request, when the checkpoint was trained with other settings.

    Raises:
        ConfigError: the module does not match ``cfg`` and the pool (``routing.router.check_trained_shape``).
    """
    from der_ray.errors import ConfigError, RoutingError
    from der_ray.routing.router import check_trained_shape

    try:
        check_trained_shape(module, names, cfg)
    except RoutingError as e:
        raise ConfigError(f"serve.router: checkpoint {ckpt}: {e}") from None


@serve.deployment
class RouterDeployment:
    """``der-router``: see the module docstring."""

    def __init__(self, pool: PoolConfig, router: RouterConfig, checkpoint: str,
                 experts: Mapping[str, Any], max_workers: int = 32) -> None:
        from der_ray.routing.router import Router

        ckpt = resolve_checkpoint(checkpoint)
        self._traces = threading.local()
        callers = {n: HandleCaller(n, experts[n], pool.expert(n).resources.timeout_s, self._traces)
                   for n in pool.names}
        self.router = Router.from_checkpoint(ckpt, pool, router, callers)
        self.pool = pool
        self.checkpoint = str(ckpt)
        self._workers = ThreadPoolExecutor(max_workers, thread_name_prefix="route")

    def _route(self, req: GenerationRequest) -> Completion:
        trace = self._traces.current = _Trace(req.max_tokens)
        t0 = time.perf_counter()
        try:
            result = self.router.route(req.prompt)
        finally:
            del self._traces.current
        total_s = time.perf_counter() - t0
        gens = [g for _, g, _ in trace.hops if g is not None]
        last = gens[-1] if gens else None
        route = list(result.route)
        params_b = round(result.params_b, 6)
        meta = {
            "graph": "router", "route": route, "experts_per_step": [[n] for n in route],
            "cost": {"calls": len(route), "params_b": params_b,
                     "completion_tokens": sum(g.completion_tokens for g in gens)},
            "timings_ms": {"router": result.decide_s * 1e3, "experts": sum(w for *_, w in trace.hops) * 1e3,
                           "total": total_s * 1e3},
            "checkpoint": Path(self.checkpoint).name,
        }
        return Completion(result.answer, last.finish_reason if last else "stop",
                          sum(g.prompt_tokens for g in gens), sum(g.completion_tokens for g in gens), meta)

    async def complete(self, req: GenerationRequest) -> Completion:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._workers, self._route, req)

    async def stream(self, req: GenerationRequest) -> AsyncIterator[StreamEvent]:
        """Routes to the end, then streams the final hop's answer in chunks (see module docstring)."""
        c = await self.complete(req)
        yield Started(c.meta)
        for piece in chunk_text(c.text):
            yield Delta(piece)
        yield Done(c)
