"""``RoutingEnv``: the DER MDP as a gymnasium environment for RLlib PPO.

Built from a plain ``env_config`` dict (it is pickled into checkpoints and Tune params, so it holds
names and small data, never handles):

- ``pool``: the expert pool as a YAML-shaped dict (``PoolConfig``), ``router``: a ``RouterConfig`` dict;
- ``examples``: dataset rows (``Example.to_row()`` dicts) to sample questions from;
- ``experts``: ``"actors"`` (default; named expert actors found with ``ray.get_actor`` in
  ``pool.namespace``, from the driver or from remote env runners) or ``"local"`` (in-process
  ``HFExpert``s: tests and ``--local`` debugging);
- ``cache``: response cache directory, or ``None`` to call experts without a cache;
- ``seed``: sampling seed (each env runner and sub-env adds its own index).

Expert callers and the encoder are created lazily on the first ``reset`` so that building the env
for space inference costs nothing. The transitions themselves live in ``routing.episode``.
Imports: core, data, routing.{episode,encoder}, gymnasium; ray and experts lazily.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from der_ray.config import PoolConfig, RouterConfig, config_to_dict, pool_from_dict, router_from_dict
from der_ray.data.schema import Example
from der_ray.errors import ConfigError
from der_ray.paths import cache_dir
from der_ray.routing.encoder import StateEncoder
from der_ray.routing.episode import Episode, RoutingTask

ENCODER_DIMS = {"minilm": 384, "hashing": 64}


def responses_dir(override: str | None = None) -> str:
    """The response cache directory jobs share: ``override`` or ``<cache root>/responses``, absolute."""
    return str(Path(override or cache_dir() / "responses").expanduser().resolve())


def build_env_config(pool: PoolConfig, router: RouterConfig, examples: list[Example], *,
                     experts: str = "actors", cache: str | None = None, seed: int = 0) -> dict[str, Any]:
    """The ``env_config`` dict of ``RoutingEnv`` (plain data: it is pickled into checkpoints)."""
    return {"pool": config_to_dict(pool), "router": config_to_dict(router),
            "examples": [ex.to_row() for ex in examples], "experts": experts, "cache": cache, "seed": seed}


def make_callers(pool: PoolConfig, mode: str, cache_dir: str | None) -> dict[str, Any]:
    """name -> object with ``generate``/``score_options``, wrapped in the response cache if any."""
    callers: dict[str, Any] = {}
    cache = None
    if cache_dir:
        from der_ray.routing.cache import ResponseCache

        cache = ResponseCache(Path(cache_dir))
    for ecfg in pool.experts:
        if mode == "actors":
            from der_ray.experts.actors import RemoteExpert

            expert: Any = RemoteExpert.lookup(ecfg.name, pool.namespace, ecfg.resources.timeout_s)
        elif mode == "local":
            from der_ray.experts.hf import HFExpert

            expert = HFExpert(ecfg, cache_dir=pool.cache_dir)
        else:
            raise ConfigError(f"env_config.experts: {mode!r} is not one of 'actors', 'local'")
        if cache is not None:
            from der_ray.routing.cached import CachedExpert

            expert = CachedExpert(ecfg.name, expert, expert.fingerprint(), cache)
        callers[ecfg.name] = expert
    return callers


class RoutingEnv(gym.Env):
    """Gymnasium env over one ``Episode`` at a time; see the module docstring for ``env_config``."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, env_config: Mapping[str, Any] | None = None) -> None:
        cfg = dict(env_config or {})
        unknown = sorted(set(cfg) - {"pool", "router", "examples", "experts", "cache", "seed"})
        if unknown:
            raise ConfigError(f"env_config: unknown key(s) {unknown}")
        self.pool = pool_from_dict(cfg.get("pool"))
        self.router: RouterConfig = router_from_dict(cfg.get("router") or {})
        rows = cfg.get("examples") or []
        if not rows:
            raise ConfigError("env_config.examples: at least one question is required")
        self.examples = [Example.from_row(r) for r in rows]
        self.mode = str(cfg.get("experts", "actors"))
        self.cache_dir = cfg.get("cache")
        index = getattr(env_config, "worker_index", 0) * 1000 + getattr(env_config, "vector_index", 0)
        self._rng = np.random.default_rng(int(cfg.get("seed", 0)) + index)
        self._order: list[int] = []
        n = len(self.pool.experts)
        dim = ENCODER_DIMS[self.router.encoder] + n + self.router.t_max + 1
        self.observation_space = gym.spaces.Dict({
            "obs": gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32),
            "action_mask": gym.spaces.Box(0.0, 1.0, (n + 1,), np.float32),
        })
        self.action_space = gym.spaces.Discrete(n + 1)
        self.task: RoutingTask | None = None
        self.episode: Episode | None = None
        self._cache_at_reset = (0, 0)

    def _task(self) -> RoutingTask:
        if self.task is None:
            callers = make_callers(self.pool, self.mode, self.cache_dir)
            self.task = RoutingTask(self.pool, self.router, callers, StateEncoder(self.router.encoder))
        return self.task

    def _next_example(self) -> Example:
        if not self._order:  # a fresh shuffled pass over the questions
            self._order = list(self._rng.permutation(len(self.examples)))
        return self.examples[int(self._order.pop())]

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:
            self._rng, self._order = np.random.default_rng(seed), []
        example = (Example.from_row(options["example"]) if options and "example" in options
                   else self._next_example())
        self.episode = Episode(self._task(), example)
        self._cache_at_reset = self._cache_counts()
        return self.episode.observation(), {"id": example.id, "domain": example.domain}

    def _caches(self) -> list[Any]:
        callers = self.task.callers.values() if self.task is not None else ()
        return list({id(c.cache): c.cache for c in callers if hasattr(c, "cache")}.values())

    def _cache_counts(self) -> tuple[int, int]:
        stats = [c.stats() for c in self._caches()]
        return sum(s["hits"] for s in stats), sum(s["misses"] for s in stats)

    def close(self) -> None:
        """Flush the response cache so that other runners and later jobs see this runner's calls."""
        for cache in self._caches():
            cache.flush()
        super().close()

    def step(self, action: int) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self.episode is None:
            raise ConfigError("step() called before reset()")
        ep = self.episode
        reward = ep.act(int(action))
        info: dict[str, Any] = {"expert": ep.route[-1] if ep.steps and not ep.stopped else "STOP"}
        if ep.done:
            info.update(ep.summary())
            hits, misses = self._cache_counts()
            info["cache_hits"] = hits - self._cache_at_reset[0]
            info["cache_misses"] = misses - self._cache_at_reset[1]  # = LLM calls this episode made
        return ep.observation(), float(reward), ep.done, False, info
