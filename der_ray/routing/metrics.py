"""Router metrics reported through RLlib (and so through Tune): quality, cost, route length, usage.

``RouterMetrics.on_episode_end`` reads the episode summary that ``RoutingEnv`` puts in the last
step's info and logs it with ``metrics_logger``; the values appear as ``env_runners/<name>`` in
results, progress.csv and TensorBoard. Names are constants so that jobs and sweeps agree.
Imports: ray.rllib (callbacks).
"""

from __future__ import annotations

from typing import Any

from ray.rllib.callbacks.callbacks import RLlibCallback

QUALITY = "router_quality"
CALLS = "router_calls"
PARAMS_B = "router_params_b"
TOKENS = "router_completion_tokens"
STOPPED = "router_stopped"
CACHE_HIT_RATE = "router_cache_hit_rate"
LLM_CALLS = "router_llm_calls"
"""Expert calls that missed the response cache (real LLM calls) per episode."""
SHARE_PREFIX = "router_share_"
WINDOW = 200


def prefixed(name: str) -> str:
    """The flattened result key of a router metric."""
    return f"env_runners/{name}"


class RouterMetrics(RLlibCallback):
    """Logs per-episode routing outcomes (mean over the last ``WINDOW`` episodes)."""

    def on_episode_end(self, *, episode: Any, metrics_logger: Any = None, **kwargs: Any) -> None:
        infos = episode.get_infos()
        summary = infos[-1] if infos else {}
        if metrics_logger is None or "route" not in summary:
            return
        log = metrics_logger.log_value
        log(QUALITY, float(summary["score"]), reduce="mean", window=WINDOW)
        log(CALLS, float(summary["calls"]), reduce="mean", window=WINDOW)
        log(PARAMS_B, float(summary["params_b"]), reduce="mean", window=WINDOW)
        log(TOKENS, float(summary["completion_tokens"]), reduce="mean", window=WINDOW)
        log(STOPPED, float(summary["stopped"]), reduce="mean", window=WINDOW)
        if "cache_hits" in summary:
            lookups = summary["cache_hits"] + summary["cache_misses"]
            if lookups:
                log(CACHE_HIT_RATE, summary["cache_hits"] / lookups, reduce="mean", window=WINDOW)
            log(LLM_CALLS, float(summary["cache_misses"]), reduce="mean", window=WINDOW)
        route = summary["route"]
        for name in summary["experts"]:  # every expert, so that shares average over all episodes
            share = route.count(name) / max(1, len(route))
            log(SHARE_PREFIX + name, share, reduce="mean", window=WINDOW)
