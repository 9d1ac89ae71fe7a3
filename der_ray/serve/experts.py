"""``ExpertDeployment``: one expert behind Serve, shared by the direct path, the router and fusion.

Design: each replica owns one model actor (``ray.remote(HFExpert)`` with the expert's resources:
``num_gpus`` only when the cluster has GPUs, never a device id) and is itself a thin async front:
- generation is batched with ``@serve.batch`` (requests with the same sampling parameters share one
  ``HFExpert.generate`` call, i.e. one left-padded forward batch);
- KV-cache sessions for fusion are *not* routed through Serve: Serve balances every call
  independently, so a session's second step could land on a replica that does not hold its cache.
  ``session_host()`` instead returns this replica's model actor handle, and the fusion coordinator
  sends all calls of a session to that actor (``serve.sessions``). Sticky by construction, and the
  session still lives on a replica Serve manages.
The model actor has ``max_restarts=0`` and is owned by the replica, so the two live and die together:
a dead model actor fails ``check_health`` and Serve replaces the replica (with a fresh actor);
killing the replica kills its actor. Callers see ``ExpertUnavailableError`` (retried once upstream).
Streaming: ``HFExpert`` has no token streaming, so ``stream`` generates the answer whole and sends
it in chunks (true token streaming is the fusion graph's).
Imports: core, experts.{actors,hf} (in the replica), serve.{config,protocol}, ray.serve.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from ray import serve

from der_ray.config import ExpertConfig
from der_ray.errors import DerRayError, ExpertTimeoutError, ExpertUnavailableError
from der_ray.serve.config import ExpertDeploymentConfig
from der_ray.serve.protocol import (
    Completion,
    Delta,
    Done,
    GenerationRequest,
    Started,
    StreamEvent,
    chunk_text,
)
from der_ray.types import Generation

HEALTH_GROUP = "health"
"""Concurrency group of the model actor for liveness pings (answered while a batch is running)."""


@dataclass(frozen=True)
class GenParams:
    """Sampling parameters of one generation; requests with equal params share a batch."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    apply_format: bool = True

    @classmethod
    def of(cls, req: GenerationRequest) -> GenParams:
        return cls(req.max_tokens, req.temperature, req.top_p, req.stop, req.seed, req.apply_format)


async def await_actor(name: str, ref: Any, timeout_s: float) -> Any:
    """Await a model-actor call with der_ray's error mapping (as ``experts.actors.resolve``, async)."""
    import ray
    from ray import exceptions as rex

    try:
        return await asyncio.wait_for(ref, timeout_s)
    except TimeoutError:
        ray.cancel(ref)
        raise ExpertTimeoutError(f"expert {name!r} did not answer within {timeout_s:.0f} s") from None
    except rex.RayTaskError as e:
        if isinstance(e.cause, DerRayError):
            raise e.cause from None
        raise ExpertUnavailableError(f"expert {name!r} failed: {e.cause!r}") from e
    except rex.RayActorError as e:
        raise ExpertUnavailableError(f"expert {name!r} crashed; its replica will be replaced ({e})") from None


def expert_meta(name: str, gen: Generation, params_b: float) -> dict[str, Any]:
    return {"graph": "expert", "route": [name], "experts_per_step": [[name]],
            "cost": {"calls": 1, "params_b": params_b, "completion_tokens": gen.completion_tokens},
            "timings_ms": {"expert": gen.latency_s * 1e3}}


@serve.deployment(health_check_period_s=5, health_check_timeout_s=30)
class ExpertDeployment:
    """One expert: batched generation, option scoring, session hosting, health (see module doc)."""

    def __init__(self, cfg: ExpertConfig, dcfg: ExpertDeploymentConfig, cache_dir: str | None = None) -> None:
        import ray

        from der_ray.experts.actors import placement
        from der_ray.experts.hf import HFExpert

        self.cfg, self.name = cfg, cfg.name
        opts = placement(cfg, ray.cluster_resources().get("GPU", 0.0))
        opts["max_restarts"] = 0  # the replica is the unit of restart (see module docstring)
        # Model calls run one at a time in the default group (the KV-cache store is not thread-safe);
        # liveness pings get their own thread so a long batch cannot fail a health check.
        actor_cls: Any = ray.remote(concurrency_groups={HEALTH_GROUP: 1})(HFExpert)  # type: ignore[call-overload]
        self.actor: Any = actor_cls.options(**opts).remote(cfg, cache_dir=cache_dir)
        # Block until the model is loaded: the replica is not ready (no traffic) before that.
        self.health: Any = ray.get(self.actor.health.remote(), timeout=cfg.resources.timeout_s)
        self._generate_batch.set_max_batch_size(dcfg.max_batch_size)  # type: ignore[attr-defined]
        self._generate_batch.set_batch_wait_timeout_s(dcfg.batch_wait_timeout_s)  # type: ignore[attr-defined]
        self.batch_sizes: list[int] = []

    # ---------------------------------------------------------------- generation
    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)  # sizes are reset from config in __init__
    async def _generate_batch(self, items: list[tuple[str, GenParams]]) -> list[Any]:
        """One actor call per distinct ``GenParams`` in the batch; errors are returned per item."""
        self.batch_sizes = (self.batch_sizes + [len(items)])[-256:]
        prompts = [prompt for prompt, _ in items]
        groups: dict[GenParams, list[int]] = {}
        for i, (_, p) in enumerate(items):
            groups.setdefault(p, []).append(i)

        async def run(p: GenParams, idx: list[int]) -> list[Any]:
            ref = self.actor.generate.remote([prompts[i] for i in idx], p.max_new_tokens, p.temperature,
                                             list(p.stop), p.seed, top_p=p.top_p, apply_format=p.apply_format)
            try:
                return list(await await_actor(self.name, ref, self.cfg.resources.timeout_s))
            except DerRayError as e:  # every request of the group gets the error, as a value
                return [e] * len(idx)

        out: list[Any] = [None] * len(prompts)
        results = await asyncio.gather(*(run(p, i) for p, i in groups.items()))
        for (_, idx), res in zip(groups.items(), results, strict=True):
            for i, r in zip(idx, res, strict=True):
                out[i] = r
        return out

    async def generate_one(self, prompt: str, params: GenParams) -> Generation:
        """Generate one answer (batched with concurrent requests). Raises typed errors."""
        result = await self._generate_batch((prompt, params))  # type: ignore[arg-type]
        if isinstance(result, BaseException):
            raise result
        return result

    async def score_options(self, contexts: Sequence[str], options: Sequence[Sequence[str]],
                            **kwargs: Any) -> Any:
        ref = self.actor.score_options.remote(list(contexts), [list(o) for o in options], **kwargs)
        return await await_actor(self.name, ref, self.cfg.resources.timeout_s)

    async def complete(self, req: GenerationRequest) -> Completion:
        """The direct path (``model`` = this expert's name)."""
        gen = await self.generate_one(req.prompt, GenParams.of(req))
        return Completion(gen.text, gen.finish_reason, gen.prompt_tokens, gen.completion_tokens,
                          expert_meta(self.name, gen, self.cfg.params_b))

    async def stream(self, req: GenerationRequest) -> AsyncIterator[StreamEvent]:
        """Generated whole, then sent in chunks (``HFExpert`` has no token streaming). ``Started``
        comes after generation, so any error still reaches the client as a real HTTP status."""
        c = await self.complete(req)
        yield Started(c.meta)
        for piece in chunk_text(c.text):
            yield Delta(piece)
        yield Done(c)

    # ---------------------------------------------------------------- sessions and health
    async def session_host(self) -> Any:
        """This replica's model actor, for a fusion session that must stay on one model instance."""
        await self._ping()
        return self.actor

    async def info(self) -> dict[str, Any]:
        return {"name": self.name, "pid": self.health.pid, "device": self.health.device,
                "batch_sizes": list(self.batch_sizes)}

    async def check_health(self) -> None:
        """Raises when the model actor is gone, so Serve replaces this replica."""
        await self._ping()

    async def _ping(self) -> None:
        ref = self.actor.__ray_ready__.options(concurrency_group=HEALTH_GROUP).remote()
        await await_actor(self.name, ref, 20.0)
