"""A tiny synthetic routing task with the router env's observation/action contract (tests, dry runs).

Each episode draws a hidden "question class" ``c`` in ``[0, N)``. The observation shows ``c`` as a
noisy one-hot, so the right expert depends on the question. Calling expert ``c`` solves the question
(+``correct_reward``) and from then on STOP is the best action; every other call costs ``call_cost``;
STOP on an unsolved question costs ``stop_penalty``. The optimal return is ``correct_reward`` (call
``c``, then STOP), and PPO learns it in a few thousand env steps.

Contract (the same as ``der_ray.routing.env``): ``observation_space = Dict({"obs": Box(D),
"action_mask": Box(0, 1, (N + 1,))})``, ``action_space = Discrete(N + 1)``; actions ``0..N-1`` call an
expert, action ``N`` is STOP. STOP is masked at step 0; experts stay callable (also again); after
``t_max`` calls only STOP is unmasked and the episode ends.

Observation vector (``D = obs_dim >= N + 2``): ``[noisy one-hot of c (N), solved flag, calls / t_max,
noise (D - N - 2)]``. Imports: stdlib, numpy, gymnasium, core (no Ray).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from der_ray._yaml_dataclass import build, check


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of :class:`SyntheticRoutingEnv` (its ``env_config`` dict, validated)."""

    n_experts: int = 3
    """N: number of experts (actions ``0..N-1``); action ``N`` is STOP."""
    obs_dim: int = 8
    """D: length of the observation vector; at least ``n_experts + 2``."""
    t_max: int = 3
    """At most this many expert calls per episode."""
    noise: float = 0.1
    """Std of the Gaussian noise added to every observation feature."""
    correct_reward: float = 1.0
    """Reward of the first call to the right expert."""
    call_cost: float = 0.25
    """Cost of any other expert call (wrong expert, or the right one again)."""
    stop_penalty: float = 1.0
    """Cost of STOP before the question was solved (also applied when ``t_max`` ends it unsolved)."""

    def __post_init__(self) -> None:
        check(self.n_experts >= 1, "n_experts", f"must be >= 1, got {self.n_experts}")
        check(self.obs_dim >= self.n_experts + 2, "obs_dim",
              f"must be >= n_experts + 2 = {self.n_experts + 2}, got {self.obs_dim}")
        check(self.t_max >= 1, "t_max", f"must be >= 1, got {self.t_max}")
        check(self.noise >= 0, "noise", f"must be >= 0, got {self.noise}")
        check(self.call_cost >= 0, "call_cost", f"must be >= 0, got {self.call_cost}")
        check(self.stop_penalty >= 0, "stop_penalty", f"must be >= 0, got {self.stop_penalty}")


class SyntheticRoutingEnv(gym.Env):  # type: ignore[type-arg]
    """Route a question of hidden class ``c`` to expert ``c``, then STOP.

    Args:
        env_config: keys of :class:`SyntheticConfig`; RLlib passes an ``EnvContext`` (a dict).

    Raises:
        ConfigError: on an unknown key or an invalid value.
    """

    def __init__(self, env_config: Mapping[str, Any] | None = None) -> None:
        self.cfg: SyntheticConfig = build(SyntheticConfig, dict(env_config or {}), "env_config")
        n, d = self.cfg.n_experts, self.cfg.obs_dim
        self.stop_action = n
        self.observation_space = gym.spaces.Dict({
            "obs": gym.spaces.Box(-np.inf, np.inf, (d,), np.float32),
            "action_mask": gym.spaces.Box(0.0, 1.0, (n + 1,), np.float32),
        })
        self.action_space = gym.spaces.Discrete(n + 1)
        self.question_class = 0
        self.calls = 0
        self.solved = False
        self._features = np.zeros(d, np.float32)

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        self.question_class = int(self.np_random.integers(self.cfg.n_experts))
        self.calls, self.solved = 0, False
        feats = self.np_random.normal(0.0, self.cfg.noise, self.cfg.obs_dim).astype(np.float32)
        feats[self.question_class] += 1.0
        self._features = feats
        return self._obs(), {"question_class": self.question_class}

    def step(self, action: int) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        action = int(action)
        if not self._mask()[action]:
            raise ValueError(f"action {action} is masked at call {self.calls}")
        if action == self.stop_action:
            reward = 0.0 if self.solved else -self.cfg.stop_penalty
            return self._obs(), reward, True, False, self._info(action)
        self.calls += 1
        if action == self.question_class and not self.solved:
            reward, self.solved = self.cfg.correct_reward, True
        else:
            reward = -self.cfg.call_cost
        terminated = self.calls >= self.cfg.t_max
        if terminated and not self.solved:
            reward -= self.cfg.stop_penalty
        return self._obs(), reward, terminated, False, self._info(action)

    def _mask(self) -> np.ndarray:
        mask = np.ones(self.cfg.n_experts + 1, np.float32)
        if self.calls == 0:
            mask[self.stop_action] = 0.0
        if self.calls >= self.cfg.t_max:
            mask[:self.stop_action] = 0.0
        return mask

    def _obs(self) -> dict[str, np.ndarray]:
        n = self.cfg.n_experts
        obs = self._features.copy()
        obs[n] += float(self.solved)
        obs[n + 1] += self.calls / self.cfg.t_max
        return {"obs": obs, "action_mask": self._mask()}

    def _info(self, action: int) -> dict[str, Any]:
        return {"question_class": self.question_class, "action": action, "solved": self.solved}


def evaluate_greedy(policy: Callable[[dict[str, np.ndarray]], np.ndarray],
                    env_config: Mapping[str, Any] | None = None, *, episodes: int = 200,
                    seed: int = 12345) -> dict[str, float]:
    """Run ``episodes`` fresh episodes in lockstep with a batched policy.

    Args:
        policy: maps a batch ``{"obs": (B, D), "action_mask": (B, N+1)}`` to actions ``(B,)``
            (for example ``functools.partial(greedy_actions, module)``).
        env_config: the synthetic env's config.
        episodes: number of episodes (env ``i`` is reset with ``seed + i``).
        seed: base seed.

    Returns:
        ``accuracy``: share of episodes whose first call is the right expert; ``success``: share that
        call the right expert first and then STOP; ``return_mean``; ``calls_mean``.
    """
    envs = [SyntheticRoutingEnv(env_config) for _ in range(episodes)]
    obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]
    first: list[int] = [-1] * episodes
    actions_taken: list[list[int]] = [[] for _ in range(episodes)]
    returns = np.zeros(episodes)
    active = list(range(episodes))
    while active:
        batch = {k: np.stack([obs[i][k] for i in active]) for k in ("obs", "action_mask")}
        acts = np.asarray(policy(batch))
        still = []
        for i, a in zip(active, acts, strict=True):
            if first[i] < 0:
                first[i] = int(a)
            actions_taken[i].append(int(a))
            obs[i], r, term, trunc, _ = envs[i].step(int(a))
            returns[i] += r
            if not (term or trunc):
                still.append(i)
        active = still
    classes = np.array([env.question_class for env in envs])
    stop = envs[0].stop_action
    correct_first = np.array(first) == classes
    success = [ok and acts[1:2] == [stop] for ok, acts in zip(correct_first, actions_taken, strict=True)]
    return {
        "accuracy": float(correct_first.mean()),
        "success": float(np.mean(success)),
        "return_mean": float(returns.mean()),
        "calls_mean": float(np.mean([env.calls for env in envs])),
    }
