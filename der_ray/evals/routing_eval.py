"""Evaluate DER routing against baselines on held-out questions, with paired-bootstrap intervals.

Every system is a policy over the same ``Episode`` MDP (same prompts, same cached expert calls, same
scorers), so the comparison is apples to apples:

- each single expert (one call, then STOP);
- all experts chained with KTP, smallest to largest;
- random routing (uniform over the allowed actions, STOP included once allowed);
- the best expert per domain, chosen on *dev* rows and scored on test rows;
- the per-question oracle over single experts (an upper bound: the cheapest expert that scores best);
- DER: the trained policy, greedy.

Quality is the mean score; cost is reported as expert calls, parameters (billions) summed over calls,
and generated tokens. Imports: core, data, routing, evals.stats.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from der_ray.data.schema import Example
from der_ray.evals.stats import bootstrap_ci, paired_bootstrap
from der_ray.routing.cached import CachedExpert, prefetch
from der_ray.routing.episode import Episode, RoutingTask
from der_ray.routing.ktp import expert_call

Policy = Callable[[Episode, np.random.Generator], int]


def fixed_route(route: Sequence[int]) -> Policy:
    """Call the experts in ``route`` in order, then STOP."""
    def act(ep: Episode, rng: np.random.Generator) -> int:
        return route[len(ep.steps)] if len(ep.steps) < len(route) else ep.task.stop_action
    return act


def random_policy(ep: Episode, rng: np.random.Generator) -> int:
    return int(rng.choice(np.flatnonzero(ep.action_mask())))


def greedy_policy(actions: Callable[[list[dict[str, np.ndarray]]], np.ndarray]) -> Policy:
    """Wrap a batched greedy action function (``Router.actions``)."""
    return lambda ep, rng: int(actions([ep.observation()])[0])


def run_policy(task: RoutingTask, examples: Sequence[Example], policy: Policy, *,
               seed: int = 0, batch_size: int = 8) -> list[dict[str, Any]]:
    """One episode per example; returns the episodes' summaries in order.

    Episodes advance in lockstep: each round every open episode picks its action, the round's
    expert calls are fetched in batches on all experts at once (``routing.cached.prefetch``, when
    the callers are ``CachedExpert``s), then the actions are applied and hit the cache. Answers are
    those of one episode at a time (batched greedy = unbatched), only much faster on a cold cache.
    """
    rng = np.random.default_rng(seed)
    episodes = [Episode(task, ex) for ex in examples]
    while active := [ep for ep in episodes if not ep.done]:
        actions = [policy(ep, rng) for ep in active]
        _prefetch_round(task, active, actions, batch_size)
        for ep, action in zip(active, actions, strict=True):
            ep.act(action)
    return [ep.summary() for ep in episodes]


def _prefetch_round(task: RoutingTask, episodes: Sequence[Episode], actions: Sequence[int],
                    batch_size: int) -> None:
    work = []
    for ep, action in zip(episodes, actions, strict=True):
        if action == task.stop_action or not ep.action_mask()[action]:
            continue  # STOP calls nothing; a masked action raises in ``act``
        name = task.names[action]
        caller = task.callers[name]
        if isinstance(caller, CachedExpert):
            fmt = task.pool.expert(name).prompt.format
            work.append((caller, expert_call(ep.example, fmt, ep.answer, task.router)))
    if work:
        prefetch(work, batch_size=batch_size)


def dev_selector(task: RoutingTask, dev: Sequence[Example], cost_coef: float, *,
                 progress: Callable[[str], None] | None = None) -> Callable[[Path], float]:
    """Score a training checkpoint by its greedy dev quality minus ``cost_coef`` x mean parameters (B).

    This is the reward's quality/cost trade-off measured on the final answers, which is what
    ``routing.training.train_router`` keeps as BEST; the dev rows are the ones the per-domain
    baseline is chosen on, never test rows.
    """
    from der_ray.routing.policy_io import greedy_batch, load_module

    def score(checkpoint: Path) -> float:
        runs = run_policy(task, dev, greedy_policy(partial(greedy_batch, load_module(checkpoint))))
        quality = float(np.mean([r["score"] for r in runs]))
        params_b = float(np.mean([r["params_b"] for r in runs]))
        objective = quality - cost_coef * params_b
        if progress is not None:
            progress(f"dev {Path(checkpoint).name}: quality {quality:.3f}  params_b {params_b:.3f}  "
                     f"objective {objective:.4f}")
        return objective

    return score


def _allowing(task: RoutingTask, calls: int) -> RoutingTask:
    """``task`` with room for ``calls`` expert calls: the chain baseline is all experts even for a
    router trained with a smaller call limit (its observation size fixes that limit)."""
    if task.router.t_max >= calls:
        return task
    return RoutingTask(task.pool, replace(task.router, t_max=calls), task.callers, task.encoder)


def domain_skills(task: RoutingTask, rows: Sequence[Example]) -> dict[str, dict[str, float]]:
    """domain -> expert -> mean step-0 score on ``rows``: what per-domain routing can learn from
    them. ``train_router`` prints it for its training rows, because a domain where the experts tie
    there gives PPO nothing to learn, whatever the experts' skills on other rows."""
    singles = {n: run_policy(task, rows, fixed_route([i])) for i, n in enumerate(task.names)}
    return {domain: {n: float(np.mean([s["score"] for s in singles[n] if s["domain"] == domain]))
                     for n in task.names}
            for domain in sorted({ex.domain for ex in rows})}


def best_experts(task: RoutingTask, skills: dict[str, dict[str, float]]) -> dict[str, str]:
    """domain -> the expert with the best quality in ``skills`` (ties: the cheaper one)."""
    def best(quality: dict[str, float]) -> str:
        return max(task.names, key=lambda n: (quality[n], -task.pool.expert(n).params_b))

    return {domain: best(quality) for domain, quality in skills.items()}


def best_per_domain(task: RoutingTask, dev: Sequence[Example]) -> dict[str, str]:
    """domain -> the expert with the best dev quality (ties: the cheaper one)."""
    return best_experts(task, domain_skills(task, dev))


def skill_disagreements(task: RoutingTask, train: dict[str, dict[str, float]],
                        dev: dict[str, dict[str, float]]) -> dict[str, tuple[str, str]]:
    """domain -> (best expert on the training rows, best on the dev rows), where the two differ.

    PPO learns the training rows' choice; where dev prefers another expert, one of the two samples is
    too small to tell the experts apart (200 PIQA training rows prefer Gemma and Qwen to SmolLM2, 66.5
    and 67 % to 62 %, while 20 dev and 90 test rows prefer SmolLM2)."""
    a, b = best_experts(task, train), best_experts(task, dev)
    return {d: (a[d], b[d]) for d in a if d in b and a[d] != b[d]}


def evaluate_systems(task: RoutingTask, test: Sequence[Example], dev: Sequence[Example],
                     der_actions: Callable[[list[dict[str, np.ndarray]]], np.ndarray] | None = None, *,
                     seed: int = 0, progress: Callable[[str], None] | None = None,
                     ) -> dict[str, list[dict[str, Any]]]:
    """Per-question summaries of every system (keys: system names); ``progress`` hears each system
    as it starts (a cold cache makes each one minutes long)."""
    say = progress or (lambda _msg: None)
    systems: dict[str, list[dict[str, Any]]] = {}
    for i, name in enumerate(task.names):
        say(f"single:{name} on {len(test)} test questions")
        systems[f"single:{name}"] = run_policy(task, test, fixed_route([i]))
    by_size = sorted(range(task.n_experts), key=lambda i: task.pool.experts[i].params_b)
    say("chain:all-ktp")
    systems["chain:all-ktp"] = run_policy(_allowing(task, task.n_experts), test, fixed_route(by_size))
    say("random")
    systems["random"] = run_policy(task, test, random_policy, seed=seed)
    say(f"best-per-domain: choosing on {len(dev)} dev questions")
    choice = best_per_domain(task, dev)
    systems["best-per-domain"] = [
        systems[f"single:{choice.get(ex.domain, task.names[0])}"][j] for j, ex in enumerate(test)]
    oracle = []
    for j in range(len(test)):
        cands = [systems[f"single:{n}"][j] for n in task.names]
        top = max(c["score"] for c in cands)
        oracle.append(min((c for c in cands if c["score"] == top), key=lambda c: c["params_b"]))
    systems["oracle"] = oracle
    if der_actions is not None:
        say("der")
        systems["der"] = run_policy(task, test, greedy_policy(der_actions))
    return systems


def summarize_systems(systems: dict[str, list[dict[str, Any]]], *, reference: str = "der",
                      seed: int = 0) -> dict[str, Any]:
    """Quality with 95% intervals, costs, and paired differences against ``reference``."""
    ref = systems.get(reference)
    singles = [k for k in systems if k.startswith("single:")]
    best_single = max(singles, key=lambda k: np.mean([s["score"] for s in systems[k]])) if singles else None
    rows: dict[str, Any] = {}
    for name, res in systems.items():
        scores = [s["score"] for s in res]
        row: dict[str, Any] = {
            "n": len(res), "quality": bootstrap_ci(scores, seed=seed).__dict__,
            "calls": float(np.mean([s["calls"] for s in res])),
            "params_b": float(np.mean([s["params_b"] for s in res])),
            "completion_tokens": float(np.mean([s["completion_tokens"] for s in res])),
            "per_domain": {d: float(np.mean([s["score"] for s in res if s["domain"] == d]))
                           for d in sorted({s["domain"] for s in res})},
        }
        if ref is not None and name != reference:
            row[f"{reference}_minus_this"] = paired_bootstrap(
                [s["score"] for s in ref], scores, seed=seed).__dict__
        rows[name] = row
    chain = rows.get("chain:all-ktp")
    return {"systems": rows, "best_single": best_single, "reference": reference if ref else None,
            "cost_ratio_vs_chain": (rows[reference]["params_b"] / chain["params_b"]
                                    if ref is not None and chain and chain["params_b"] else None)}


def markdown(summary: dict[str, Any]) -> str:
    ref = summary["reference"]
    head = ["system", "quality % [95% CI]", "calls", "params (B)", "gen tokens"]
    if ref:
        head.append(f"{ref} − system, points [95% CI]")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in summary["systems"].items():
        q = r["quality"]
        cells = [name, f"{100 * q['mean']:.1f} [{100 * q['lo']:.1f}, {100 * q['hi']:.1f}]",
                 f"{r['calls']:.2f}", f"{r['params_b']:.3f}", f"{r['completion_tokens']:.0f}"]
        if ref:
            d = r.get(f"{ref}_minus_this")
            cells.append(f"{100 * d['mean']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]" if d else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scatter_png(summary: dict[str, Any], path: str) -> None:
    """Quality vs parameters-per-question scatter with 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels: dict[tuple[float, float], list[str]] = {}  # systems at the same point share one label
    for name, r in summary["systems"].items():
        q = r["quality"]
        err = [[100 * (q["mean"] - q["lo"])], [100 * (q["hi"] - q["mean"])]]
        star = name == summary["reference"]
        ax.errorbar(r["params_b"], 100 * q["mean"], yerr=err, fmt="*" if star else "o", capsize=3,
                    markersize=11 if star else 6)
        labels.setdefault((round(r["params_b"], 3), round(100 * q["mean"], 1)), []).append(
            name.removeprefix("single:"))
    for (x, y), names in labels.items():
        ax.annotate("\n".join(names), (x, y), textcoords="offset points", xytext=(6, 2), fontsize=7,
                    va="bottom")
    ax.set_xlabel("parameters used per question (billions)")
    ax.set_ylabel("quality (%)")
    ax.set_title("DER routing vs baselines (95% bootstrap intervals)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
