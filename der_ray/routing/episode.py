"""One routing episode over one question: the DER MDP's state, transitions and rewards.

Plain Python over "callers" (objects with ``generate``/``score_options``: a cached actor handle,
a local ``HFExpert``...), shared by the gymnasium environment used for PPO and by the inference
``Router``, so training and inference cannot drift apart.

State: the question, the latest answer (only the latest, as in the paper), the step index and the
experts used so far. Actions: 0..N-1 call expert i (an expert may be called again); N is STOP,
masked at step 0. After ``t_max`` calls the episode ends. Observation: a dict with ``obs`` =
[state-text embedding | calls per expert / t_max | one-hot step] and ``action_mask``.
Imports: core, data, scoring, routing.{ktp,reward,encoder}.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from der_ray.config import PoolConfig, RouterConfig
from der_ray.data.schema import MULTIPLE_CHOICE, Example
from der_ray.errors import ConfigError, RoutingError, ScorerError
from der_ray.routing.encoder import StateEncoder
from der_ray.routing.ktp import expert_call, reply_from
from der_ray.routing.reward import call_cost, step_reward, success_threshold, terminal_reward
from der_ray.scoring import Scorer, get_scorer, scorer_for


@dataclass(frozen=True)
class StepRecord:
    """One expert call of an episode."""

    expert: str
    text: str
    score: float
    cost: float
    params_b: float
    completion_tokens: int
    latency_s: float
    reward: float


class RoutingTask:
    """What every episode shares: the expert pool, the router config, callers and the encoder."""

    def __init__(self, pool: PoolConfig, router: RouterConfig, callers: Mapping[str, Any],
                 encoder: StateEncoder) -> None:
        missing = [n for n in pool.names if n not in callers]
        if missing:
            raise ConfigError(f"no caller for expert(s) {missing}")
        if router.scorer is not None:
            try:
                get_scorer(router.scorer)
            except ScorerError as e:
                raise ConfigError(f"router.scorer: {e}") from None
        self.pool, self.router, self.callers, self.encoder = pool, router, dict(callers), encoder
        self.names = pool.names
        self.n_experts = len(self.names)
        self.stop_action = self.n_experts
        self.obs_dim = encoder.dim + self.n_experts + router.t_max + 1

    def scorer(self, ex: Example) -> Scorer:
        if self.router.scorer:
            return get_scorer(self.router.scorer)
        # Multiple choice is answered with the chosen option's text (option likelihood).
        return get_scorer("mc_option") if ex.answer_type == MULTIPLE_CHOICE else scorer_for(ex)


class Episode:
    """The MDP for one question; ``act`` applies an action and returns its reward."""

    def __init__(self, task: RoutingTask, example: Example, *, scored: bool = True) -> None:
        """``scored=False`` serves questions without a reference: scores and rewards are 0 (the
        policy never sees them, so the route is the same)."""
        self.task, self.example, self.scored = task, example, scored
        self.scorer = task.scorer(example)
        self.p0 = success_threshold(self.scorer.name, task.router.reward)
        self.steps: list[StepRecord] = []
        self.done = False
        self.stopped = False

    @property
    def answer(self) -> str | None:
        return self.steps[-1].text if self.steps else None

    @property
    def score(self) -> float | None:
        return self.steps[-1].score if self.steps else None

    @property
    def route(self) -> list[str]:
        return [s.expert for s in self.steps]

    def action_mask(self) -> np.ndarray:
        mask = np.zeros(self.task.n_experts + 1, dtype=np.float32)
        if not self.done:
            if len(self.steps) < self.task.router.t_max:
                mask[: self.task.n_experts] = 1.0
            if self.steps:
                mask[self.task.stop_action] = 1.0
        return mask

    def observation(self) -> dict[str, np.ndarray]:
        t_max = self.task.router.t_max
        used = np.zeros(self.task.n_experts, dtype=np.float32)
        for s in self.steps:
            used[self.task.names.index(s.expert)] += 1.0 / t_max
        step = np.zeros(t_max + 1, dtype=np.float32)
        step[min(len(self.steps), t_max)] = 1.0
        text = self.task.encoder.encode(self.example.question, self.answer)
        obs = np.concatenate([text, used, step]).astype(np.float32)
        return {"obs": obs, "action_mask": self.action_mask()}

    def act(self, action: int) -> float:
        """Apply ``action``; returns the reward. Raises ``RoutingError`` for a masked action."""
        if self.done:
            raise RoutingError("the episode is over; reset before acting")
        action = int(action)
        if not 0 <= action <= self.task.stop_action or not self.action_mask()[action]:
            raise RoutingError(f"action {action} is not allowed at step {len(self.steps)} "
                               f"(mask {self.action_mask().tolist()})")
        reward_cfg = self.task.router.reward
        if action == self.task.stop_action:
            self.done = self.stopped = True
            return terminal_reward(float(self.score or 0.0), self.p0, out_of_calls=False, cfg=reward_cfg)
        name = self.task.names[action]
        ecfg = self.task.pool.expert(name)
        call = expert_call(self.example, ecfg.prompt.format, self.answer, self.task.router)
        result = getattr(self.task.callers[name], call.method)(*call.args, **call.kwargs)
        reply = reply_from(self.example, call, result)
        score = self.scorer.score(reply.text, self.example) if self.scored else 0.0
        cost = call_cost(ecfg.params_b, reply.completion_tokens, reply.latency_s, reward_cfg)
        reward = step_reward(score, self.score, cost, reward_cfg)
        if len(self.steps) + 1 >= self.task.router.t_max:
            self.done = True
            reward += terminal_reward(score, self.p0, out_of_calls=True, cfg=reward_cfg)
        self.steps.append(StepRecord(name, reply.text, score, cost, ecfg.params_b, reply.completion_tokens,
                                     reply.latency_s, reward))
        return reward

    def summary(self) -> dict[str, Any]:
        """Route, final answer/score and costs (what evaluation and metrics report)."""
        return {
            "id": self.example.id, "domain": self.example.domain, "route": self.route,
            "answer": self.answer or "", "score": float(self.score or 0.0), "calls": len(self.steps),
            "params_b": sum(s.params_b for s in self.steps),
            "completion_tokens": sum(s.completion_tokens for s in self.steps),
            "cost": sum(s.cost for s in self.steps), "stopped": self.stopped,
            "experts": list(self.task.names),
        }
