"""``Router``: route questions with a trained policy at inference time (no Ray needed).

Loads the RLModule from a training checkpoint (``routing.policy_io``), then runs the same
``Episode`` transitions as training, choosing the greedy (masked) action at every step until STOP or
``t_max`` calls. The callers may be local ``HFExpert``s, actor handles or cached wrappers.
Imports: core, data, routing.{episode,encoder,policy_io}.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from der_ray.config import PoolConfig, RouterConfig
from der_ray.data.schema import Example
from der_ray.errors import RoutingError
from der_ray.routing.encoder import StateEncoder
from der_ray.routing.episode import Episode, RoutingTask


def check_trained_shape(module: Any, names: Sequence[str], router: RouterConfig) -> None:
    """Refuse a module trained with another pool size, encoder or ``t_max`` (its observation size
    fixes all three), naming the setting that differs, instead of failing at the first question.

    Raises:
        RoutingError: the module's action count or observation size does not match.
    """
    from der_ray.routing.module import OBS_KEY

    obs_dim = int(module.observation_space[OBS_KEY].shape[0])
    n_actions = int(module.action_space.n)
    if n_actions != len(names) + 1:
        raise RoutingError(f"the router was trained with {n_actions - 1} experts, the pool has "
                           f"{len(names)} ({', '.join(names)})")
    encoder_dim = StateEncoder(router.encoder, max_cached=1).dim
    want = encoder_dim + len(names) + router.t_max + 1
    if obs_dim != want:
        trained_t_max = obs_dim - encoder_dim - len(names) - 1
        hint = (f"it was trained with t_max={trained_t_max} (pass --t-max {trained_t_max})"
                if trained_t_max >= 1 else "was it trained with another state encoder?")
        raise RoutingError(f"the router's observations have {obs_dim} features, this config gives {want} "
                           f"(t_max={router.t_max}, encoder {router.encoder!r}): {hint}")


@dataclass(frozen=True)
class RouteResult:
    """What a routed question produced."""

    route: tuple[str, ...]
    answers: tuple[str, ...]
    answer: str
    calls: int
    params_b: float
    completion_tokens: int
    score: float | None
    """Quality against the reference when the example has one (evaluation), else None."""
    decide_s: float = 0.0
    """Time spent in the policy (all steps), apart from the expert calls."""


class Router:
    """Greedy DER routing with a trained ``RouterRLModule``."""

    def __init__(self, module: Any, pool: PoolConfig, router: RouterConfig,
                 callers: Mapping[str, Any]) -> None:
        self.module = module
        self.task = RoutingTask(pool, router, callers, StateEncoder(router.encoder))
        check_trained_shape(module, pool.names, router)
        self._lock = threading.Lock()

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, pool: PoolConfig, router: RouterConfig,
                        callers: Mapping[str, Any]) -> Router:
        from der_ray.routing.policy_io import load_module

        return cls(load_module(checkpoint), pool, router, callers)

    def actions(self, observations: list[dict[str, np.ndarray]]) -> np.ndarray:
        """Greedy masked actions for a batch of observations."""
        from der_ray.routing.policy_io import greedy_batch

        return greedy_batch(self.module, observations)

    def route(self, example: Example | str) -> RouteResult:
        """Route one question (a bare string has no reference, so nothing is scored)."""
        scored = isinstance(example, Example) and bool(example.reference)
        if isinstance(example, str):
            example = Example(id="request", domain="request", question=example, reference="")
        ep = Episode(self.task, example, scored=scored)
        decide_s = 0.0
        while not ep.done:
            t0 = time.perf_counter()
            with self._lock:  # the encoder's LRU cache and the module are shared by routing threads
                action = int(self.actions([ep.observation()])[0])
            decide_s += time.perf_counter() - t0
            ep.act(action)
        return RouteResult(
            route=tuple(ep.route), answers=tuple(s.text for s in ep.steps), answer=ep.answer or "",
            calls=len(ep.steps), params_b=sum(s.params_b for s in ep.steps),
            completion_tokens=sum(s.completion_tokens for s in ep.steps),
            score=float(ep.score or 0.0) if scored else None, decide_s=decide_s,
        )
