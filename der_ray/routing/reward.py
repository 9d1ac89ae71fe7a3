"""The DER reward as pure functions (every constant comes from ``RewardConfig``).

Per expert call at step t (t = 0, 1, ...), with quality s_t in [0, 1] of the answer it produced:

    r_t = s_t - lambda * c(m_t) + beta * (s_t - s_{t-1})        (no improvement term at t = 0)

and at the end of the episode a terminal term: +B when the final answer's quality reaches p0
(whether the agent chose STOP or used up its T_max calls), -B when T_max calls end below p0, and 0
when the agent chose STOP below p0. The official code has no STOP action: it ends an episode when
the *reference-based* score passes p0, which cannot be known at inference time; der_ray learns an
explicit STOP instead, whose own reward is just the terminal term.

c(m) is the expert's parameter count in billions by default (the paper's cost unit); alternatives
are generated tokens x parameters (per 1k tokens) and measured latency in seconds.
Imports: core only.
"""

from __future__ import annotations

from der_ray.config import RewardConfig
from der_ray.errors import ConfigError

#: scorers that return 0/1 (exact match); others (embedding, bertscore) are similarities
EXACT_SCORERS = frozenset({"numeric_em", "mc_letter", "mc_option", "alias_em"})


def success_threshold(scorer_name: str, cfg: RewardConfig) -> float:
    """p0 for a scorer: ``p0_exact`` for exact-match scorers, ``p0_similarity`` otherwise."""
    return cfg.p0_exact if scorer_name in EXACT_SCORERS else cfg.p0_similarity


def call_cost(params_b: float, completion_tokens: int, latency_s: float, cfg: RewardConfig) -> float:
    """c(m) of one expert call in the configured unit."""
    if cfg.cost == "params":
        return params_b
    if cfg.cost == "tokens_params":
        return params_b * completion_tokens / 1000.0
    if cfg.cost == "latency":
        return latency_s
    raise ConfigError(f"router.reward.cost: unknown cost {cfg.cost!r}; valid: params, tokens_params, latency")


def step_reward(score: float, prev_score: float | None, cost: float, cfg: RewardConfig) -> float:
    """r_t for an expert call; ``prev_score`` is None at step 0."""
    improvement = 0.0 if prev_score is None else score - prev_score
    return score - cfg.cost_coef * cost + cfg.beta * improvement


def terminal_reward(final_score: float, p0: float, *, out_of_calls: bool, cfg: RewardConfig) -> float:
    """+B on success, -B when the call budget ran out below p0, else 0 (STOP below p0)."""
    if final_score >= p0:
        return cfg.bonus
    return -cfg.bonus if out_of_calls else 0.0
