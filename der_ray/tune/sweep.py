"""The λ sweep with Ray Tune: ``build_tuner`` over the PPO router, per-trial held-out evaluation of the
final checkpoints, and the result files (JSON, Markdown, Pareto PNG, calibrated router config).

Each trial is one PPO run (``Tuner(PPO, ...)``; the class, not the string) with
``env_config["router"]["reward"]["cost_coef"]`` and the PPO ``seed`` taken from grid searches, so the
trials are the product grid × seeds. ``RouterMetrics`` (an RLlib callback) reports quality, cost
(parameters per question), calls, route length and usage shares as ``env_runners/router_*`` Tune
metrics; Tune writes them to every trial's ``progress.csv``, ``result.json`` and TensorBoard events.

Resources: ``num_cpus_for_main_process=0.5`` together with ``num_cpus_per_learner=0.5`` makes a trial
request ``{"CPU": 0.5}`` (with ``num_env_runners=0``), so two trials or more run at once on 2 CPUs.

After ``fit()``, :func:`collect_trials` reads every trial's config, final training metrics and
checkpoint; :func:`evaluate_checkpoint` runs the checkpoint's policy greedily on held-out rows (the
quality and cost that the Pareto front uses; training-time metrics are the fallback).
Imports: ray.tune, ray.rllib, core, routing, evals, tune.pareto.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ray import tune
from ray.rllib.algorithms.ppo import PPO, PPOConfig
from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig, Tuner

from der_ray.config import PoolConfig, config_to_dict, router_from_dict
from der_ray.data.schema import Example
from der_ray.errors import ConfigError
from der_ray.evals.report import write_atomic, write_json
from der_ray.routing.algo import EPISODE_LEN_MEAN, EPISODE_RETURN_MEAN, TRAINING_ITERATION, get_metric
from der_ray.routing.metrics import CALLS, PARAMS_B, QUALITY, SHARE_PREFIX, prefixed
from der_ray.tune import pareto

#: the metric Tune ranks trials by (the return is not comparable across λ: the reward depends on it)
METRIC = prefixed(QUALITY)
RESULTS_JSON = "sweep_results.json"
PARETO_MD = "sweep_pareto.md"
PARETO_PNG = "sweep_pareto.png"
CALIBRATED_JSON = "router_calibrated.json"


def sweep_param_space(config: PPOConfig, grid: Sequence[float], seeds: Sequence[int], *,
                      num_cpus_per_trial: float | None = 0.5) -> PPOConfig:
    """A copy of ``config`` with λ and the PPO seed as Tune grid searches (and fractional CPUs).

    Args:
        config: from ``build_ppo_config`` over an env whose ``env_config["router"]`` is a router dict.
        grid: λ values (validated with :func:`pareto.validate_grid`).
        seeds: PPO seeds (validated with :func:`pareto.validate_seeds`).
        num_cpus_per_trial: CPUs of the trial's main process and of its local learner (both must be set
            below 1 for the trial to request less than one CPU); ``None`` keeps RLlib's defaults.

    Raises:
        ConfigError: invalid grid or seeds, or an env_config without a ``router`` dict.
    """
    lambdas = pareto.validate_grid(grid)
    seed_list = pareto.validate_seeds(seeds)
    env_config = copy.deepcopy(dict(config.env_config))
    router = env_config.get("router")
    if not isinstance(router, Mapping):
        raise ConfigError("sweep: env_config['router'] must be a router config dict (config_to_dict)")
    router = dict(router)
    router["reward"] = dict(router.get("reward") or {})
    router["reward"]["cost_coef"] = tune.grid_search(list(lambdas))
    env_config["router"] = router
    space = config.copy(copy_frozen=False)
    space.environment(env_config=env_config)
    space.debugging(seed=tune.grid_search(list(seed_list)))  # type: ignore[arg-type]  # Tune resolves it
    if num_cpus_per_trial is not None:
        space.resources(num_cpus_for_main_process=num_cpus_per_trial)  # type: ignore[arg-type]  # float ok
        space.learners(num_cpus_per_learner=num_cpus_per_trial)
    return space


def build_tuner(config: PPOConfig, *, grid: Sequence[float], seeds: Sequence[int],
                storage: str | Path, name: str, iterations: int, metric: str = METRIC,
                max_concurrent_trials: int = 2, max_failures: int = 1,
                num_cpus_per_trial: float | None = 0.5, resume: bool = False) -> Tuner:
    """The sweep's ``Tuner``; with ``resume`` and an existing experiment, ``Tuner.restore`` instead.

    Outputs land in ``<storage>/<name>/`` (one directory per trial with ``progress.csv``,
    ``result.json``, ``events.out.tfevents.*`` and the final ``checkpoint_*``).

    Raises:
        ConfigError: invalid grid, seeds or iterations.
    """
    if iterations < 1:
        raise ConfigError(f"sweep: iterations must be >= 1, got {iterations}")
    space = sweep_param_space(config, grid, seeds, num_cpus_per_trial=num_cpus_per_trial)
    storage_path = Path(storage).expanduser().resolve()
    experiment = storage_path / name
    if resume and Tuner.can_restore(str(experiment)):
        return Tuner.restore(str(experiment), trainable=PPO, resume_errored=True)
    return Tuner(
        PPO, param_space=space,  # type: ignore[arg-type]  # Tune converts an AlgorithmConfig itself
        tune_config=TuneConfig(metric=metric, mode="max", max_concurrent_trials=max_concurrent_trials),
        run_config=RunConfig(
            name=name, storage_path=str(storage_path), stop={TRAINING_ITERATION: iterations},
            checkpoint_config=CheckpointConfig(checkpoint_at_end=True, num_to_keep=1),
            failure_config=FailureConfig(max_failures=max_failures), verbose=0))


def _nan(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def collect_trials(results: Any) -> list[dict[str, Any]]:
    """One record per trial of a ``ResultGrid``: λ, seed, paths, final training metrics, error."""
    trials = []
    for result in results:
        config = result.config or {}
        reward = (((config.get("env_config") or {}).get("router") or {}).get("reward") or {})
        metrics = result.metrics or {}
        shares = {k.removeprefix(prefixed(SHARE_PREFIX)): _nan(v) for k, v in _flat(metrics).items()
                  if k.startswith(prefixed(SHARE_PREFIX))}
        trials.append({
            "cost_coef": _nan(reward.get("cost_coef")), "seed": config.get("seed"),
            "trial_dir": str(result.path) if result.path else None,
            "checkpoint": result.checkpoint.path if result.checkpoint else None,
            "error": repr(result.error) if result.error else None,
            "iterations": metrics.get(TRAINING_ITERATION),
            "train": {"quality": _nan(get_metric(metrics, METRIC)),
                      "cost": _nan(get_metric(metrics, prefixed(PARAMS_B))),
                      "calls": _nan(get_metric(metrics, prefixed(CALLS))),
                      "episode_len": _nan(get_metric(metrics, EPISODE_LEN_MEAN)),
                      "return": _nan(get_metric(metrics, EPISODE_RETURN_MEAN)),
                      "shares": shares},
        })
    return sorted(trials, key=lambda t: (t["cost_coef"], t["seed"] if t["seed"] is not None else -1))


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flat(v, key + "/"))
        else:
            out[key] = v
    return out


def evaluate_checkpoint(checkpoint: str | Path, pool: PoolConfig, router: Mapping[str, Any],
                        callers: Mapping[str, Any], examples: Sequence[Example]) -> dict[str, Any]:
    """Greedy routing of ``examples`` with the checkpoint's policy: quality, cost and usage."""
    from der_ray.evals.routing_eval import greedy_policy, run_policy
    from der_ray.routing.router import Router

    policy = Router.from_checkpoint(checkpoint, pool, router_from_dict(dict(router)), callers)
    summaries = run_policy(policy.task, examples, greedy_policy(policy.actions))
    routes = [s["route"] for s in summaries]
    steps = max(1, sum(len(r) for r in routes))
    return {
        "n": len(summaries),
        "quality": float(np.mean([s["score"] for s in summaries])),
        "cost": float(np.mean([s["params_b"] for s in summaries])),
        "calls": float(np.mean([s["calls"] for s in summaries])),
        "completion_tokens": float(np.mean([s["completion_tokens"] for s in summaries])),
        "shares": {n: sum(r.count(n) for r in routes) / steps for n in policy.task.names},
    }


def score_trials(trials: Sequence[Mapping[str, Any]],
                 evaluate: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None,
                 ) -> list[dict[str, Any]]:
    """Set each trial's ``quality``/``cost`` from ``evaluate(trial)`` (held-out rows) when given and the
    trial has a checkpoint, else from its final training metrics; ``source`` says which."""
    out = []
    for t in trials:
        rec = dict(t)
        if evaluate is not None and rec.get("checkpoint") and not rec.get("error"):
            rec["heldout"] = held = evaluate(rec)
            rec.update(quality=held["quality"], cost=held["cost"], source="heldout")
        else:
            rec.update(quality=rec["train"]["quality"], cost=rec["train"]["cost"], source="train")
        out.append(rec)
    return out


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Mapping):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    return x


def write_outputs(out_dir: str | Path, trials: Sequence[Mapping[str, Any]], *,
                  meta: Mapping[str, Any] | None = None,
                  baselines: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write ``sweep_results.json``, ``sweep_pareto.md`` and ``sweep_pareto.png``; returns the report."""
    out = Path(out_dir).expanduser().resolve()
    points = pareto.aggregate(trials)
    violations = pareto.monotonicity_violations(points)
    report = {"meta": dict(meta or {}), "trials": list(trials), "points": points, "violations": violations,
              "written_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json(out / RESULTS_JSON, _json_safe(report))
    write_atomic(out / PARETO_MD, "# DER cost sweep: quality vs cost per λ\n\n"
                 + pareto.markdown(points, violations))
    pareto.plot_pareto(points, out / PARETO_PNG, baselines=baselines)
    return report


def write_calibrated(out_dir: str | Path, trials: Sequence[Mapping[str, Any]],
                     target_cost: float | None = None, *, target_share: float | None = None,
                     expert: str | None = None, pool: PoolConfig | None = None,
                     router: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Pick the best trial within the budget (see :func:`pareto.calibrate`) and write it as
    ``router_calibrated.json`` (the router config the Serve app deploys).

    Raises:
        ConfigError: no trial fits the budget (nothing is written).
    """
    best = pareto.calibrate(trials, target_cost, target_share=target_share, expert=expert)
    router_dict = copy.deepcopy(dict(router)) if router is not None else None
    if router_dict is not None:
        router_dict["reward"] = {**dict(router_dict.get("reward") or {}), "cost_coef": best["cost_coef"]}
    expected = {"quality": best["quality"], "cost": best["cost"], "source": best.get("source")}
    if expert:
        expected["share"] = pareto.trial_share(best, expert)
    doc = {"target_cost": target_cost, "target_share": target_share, "share_expert": expert,
           "cost_coef": best["cost_coef"], "seed": best.get("seed"),
           "checkpoint": best.get("checkpoint"), "expected": expected,
           "router": router_dict, "pool": config_to_dict(pool) if pool is not None else None}
    write_json(Path(out_dir).expanduser().resolve() / CALIBRATED_JSON, _json_safe(doc))
    return doc
