"""Pure post-processing of a λ sweep: grid validation, per-λ aggregation, Pareto front, monotonicity,
calibration to a budget (mean cost or share of calls to one expert), and the Pareto plot.

A *trial* is a mapping with at least ``cost_coef`` (λ), ``seed``, ``quality`` (mean score on the
held-out rows, in [0, 1]) and ``cost`` (mean parameters used per question, billions); calibration also
reads ``checkpoint``. A *point* aggregates the trials of one λ: mean ± standard deviation (ddof 0) and
min/max over seeds. Imports: stdlib, numpy, core; matplotlib lazily (plot only). No Ray.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from der_ray.errors import ConfigError

#: default λ grid in cost units (reward per billion parameters of an expert call)
DEFAULT_GRID: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0)
#: slack when comparing mean costs (floating-point noise is not a violation)
COST_TOL = 1e-9


def validate_grid(grid: Iterable[Any]) -> tuple[float, ...]:
    """The λ grid as sorted unique floats.

    Raises:
        ConfigError: empty grid, a value that is not a number, a negative or non-finite λ.
    """
    values: list[float] = []
    for raw in grid:
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"cost grid: {raw!r} is not a number") from None
        if not math.isfinite(value):
            raise ConfigError(f"cost grid: λ must be finite, got {raw!r}")
        if value < 0:
            raise ConfigError(f"cost grid: λ must be >= 0 (it weighs a cost), got {value}")
        values.append(value)
    if not values:
        raise ConfigError("cost grid is empty: give at least one λ (for example --grid 0 0.1 0.5)")
    return tuple(sorted(set(values)))


def validate_seeds(seeds: Iterable[Any]) -> tuple[int, ...]:
    """The seeds as sorted unique ints.

    Raises:
        ConfigError: no seed, or a value that is not an integer.
    """
    out: list[int] = []
    for raw in seeds:
        if isinstance(raw, bool) or not float(raw).is_integer():
            raise ConfigError(f"seeds: {raw!r} is not an integer")
        out.append(int(raw))
    if not out:
        raise ConfigError("seeds: give at least one seed")
    return tuple(sorted(set(out)))


def _stats(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), "std": float(arr.std()), "min": float(arr.min()),
            "max": float(arr.max())}


def aggregate(trials: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One point per λ (ascending): quality and cost statistics over the seeds, Pareto flag included.

    Trials whose quality or cost is missing or NaN (failed trials) are left out.
    """
    by_lambda: dict[float, list[Mapping[str, Any]]] = {}
    for t in trials:
        q, c = t.get("quality"), t.get("cost")
        if q is None or c is None or not (math.isfinite(float(q)) and math.isfinite(float(c))):
            continue
        by_lambda.setdefault(float(t["cost_coef"]), []).append(t)
    points: list[dict[str, Any]] = []
    for lam in sorted(by_lambda):
        group = sorted(by_lambda[lam], key=lambda t: t.get("seed", 0))
        points.append({
            "cost_coef": lam, "n": len(group), "seeds": [t.get("seed") for t in group],
            "quality": _stats([float(t["quality"]) for t in group]),
            "cost": _stats([float(t["cost"]) for t in group]),
            "per_seed": [{"seed": t.get("seed"), "quality": float(t["quality"]), "cost": float(t["cost"])}
                         for t in group],
        })
    for point, optimal in zip(points, pareto_mask(
            [(p["cost"]["mean"], p["quality"]["mean"]) for p in points]), strict=True):
        point["pareto"] = optimal
    return points


def pareto_mask(xy: Sequence[tuple[float, float]]) -> list[bool]:
    """For (cost, quality) pairs: True where no other pair has cost <= and quality >=, one strictly."""
    mask = []
    for i, (ci, qi) in enumerate(xy):
        dominated = any(cj <= ci and qj >= qi and (cj < ci or qj > qi)
                        for j, (cj, qj) in enumerate(xy) if j != i)
        mask.append(not dominated)
    return mask


def monotonicity_violations(points: Sequence[Mapping[str, Any]], *,
                            tol: float = COST_TOL) -> list[dict[str, Any]]:
    """Adjacent λ pairs (ascending) where the mean cost *increases* with λ, with their per-seed costs."""
    ordered = sorted(points, key=lambda p: p["cost_coef"])
    out = []
    for lo, hi in zip(ordered, ordered[1:], strict=False):
        if hi["cost"]["mean"] > lo["cost"]["mean"] + tol:
            out.append({
                "cost_coef_lo": lo["cost_coef"], "cost_coef_hi": hi["cost_coef"],
                "cost_lo": lo["cost"]["mean"], "cost_hi": hi["cost"]["mean"],
                "seeds_lo": {str(s["seed"]): s["cost"] for s in lo.get("per_seed", [])},
                "seeds_hi": {str(s["seed"]): s["cost"] for s in hi.get("per_seed", [])},
            })
    return out


def trial_share(trial: Mapping[str, Any], expert: str) -> float:
    """Share of a trial's expert calls that went to ``expert``: held-out usage when evaluated, else the
    final training metric (``nan`` when neither is known)."""
    for usage in ((trial.get("heldout") or {}).get("shares"), (trial.get("train") or {}).get("shares")):
        if isinstance(usage, Mapping) and usage.get(expert) is not None:
            return float(usage[expert])
    return math.nan


def calibrate(trials: Sequence[Mapping[str, Any]], target_cost: float | None = None, *,
              target_share: float | None = None, expert: str | None = None) -> dict[str, Any]:
    """The trial with the highest quality within the budget (ties: cheaper, then smaller λ).

    The budget is a mean cost (``target_cost``, parameters per question) or, as RouteLLM users
    calibrate, a share of calls to one expert (``target_share`` of ``expert``'s calls, usually the
    largest expert); both may be given.

    Raises:
        ConfigError: no budget, a bad one, no finished trial, or none within the budget (the message
            names the cheapest trial).
    """
    if target_cost is None and target_share is None:
        raise ConfigError("calibration needs --target-cost or --target-share")
    if target_cost is not None and (not math.isfinite(target_cost) or target_cost < 0):
        raise ConfigError(f"--target-cost must be a finite number >= 0, got {target_cost}")
    if target_share is not None and (not 0 <= target_share <= 1 or not expert):
        raise ConfigError(f"--target-share must be in [0, 1] and name an expert, got {target_share} of "
                          f"{expert!r}")
    done = [t for t in trials if t.get("quality") is not None and t.get("cost") is not None
            and math.isfinite(float(t["quality"])) and math.isfinite(float(t["cost"]))]
    if not done:
        raise ConfigError("calibration: no trial finished with a quality and a cost")

    def fits(t: Mapping[str, Any]) -> bool:
        if target_cost is not None and float(t["cost"]) > target_cost + COST_TOL:
            return False
        return target_share is None or trial_share(t, str(expert)) <= target_share + COST_TOL  # nan: no

    within = [t for t in done if fits(t)]
    if not within:
        cheapest = min(done, key=lambda t: float(t["cost"]))
        budget = " and ".join(b for b in (
            f"--target-cost {target_cost:g}" if target_cost is not None else "",
            f"--target-share {target_share:g} of {expert}" if target_share is not None else "") if b)
        share = ""
        if target_share is not None:
            value = trial_share(cheapest, str(expert))
            share = (f", {value:.2f} of its calls to {expert}" if math.isfinite(value)
                     else f", no recorded calls to {expert} (is it in the pool?)")
        raise ConfigError(
            f"calibration: no trial fits {budget}; the cheapest trial (λ={cheapest['cost_coef']:g}, seed "
            f"{cheapest.get('seed')}) costs {float(cheapest['cost']):.4g}{share}. "
            "Raise the budget or add larger λ values to the grid.")
    best = max(within, key=lambda t: (float(t["quality"]), -float(t["cost"]), -float(t["cost_coef"])))
    return dict(best)


def markdown(points: Sequence[Mapping[str, Any]], violations: Sequence[Mapping[str, Any]]) -> str:
    """The front as a Markdown table plus the monotonicity verdict."""
    lines = ["| λ | seeds | quality % (mean ± std) | cost, params B (mean ± std) | Pareto |",
             "|---|---|---|---|---|"]
    for p in points:
        q, c = p["quality"], p["cost"]
        lines.append(f"| {p['cost_coef']:g} | {p['n']} | {100 * q['mean']:.1f} ± {100 * q['std']:.1f} | "
                     f"{c['mean']:.4f} ± {c['std']:.4f} | {'yes' if p.get('pareto') else ''} |")
    lines.append("")
    if not violations:
        lines.append("Monotonicity: mean cost does not increase as λ increases (no violation).")
    else:
        lines.append(f"Monotonicity: {len(violations)} violation(s) (mean cost increases with λ):")
        for v in violations:
            lines.append(f"- λ {v['cost_coef_lo']:g} -> {v['cost_coef_hi']:g}: cost {v['cost_lo']:.4f} -> "
                         f"{v['cost_hi']:.4f}; per seed {v['seeds_lo']} -> {v['seeds_hi']}")
    return "\n".join(lines) + "\n"


def _baseline_xy(entry: Any) -> tuple[float, float]:
    """(cost, quality) of a baseline: a ``(cost, quality)`` pair or a routing-eval system row."""
    if isinstance(entry, Mapping):
        cost = entry.get("cost", entry.get("params_b"))
        quality = entry["quality"]
        if isinstance(quality, Mapping):
            quality = quality["mean"]
        return float(cost), float(quality)
    cost, quality = entry
    return float(cost), float(quality)


def plot_pareto(points: Sequence[Mapping[str, Any]], path: str | Path, *,
                baselines: Mapping[str, Any] | None = None, title: str = "DER cost sweep") -> None:
    """Quality vs cost per λ (error bars: std over seeds), Pareto points ringed, baselines as squares.

    ``baselines``: name -> ``(cost, quality)`` or a routing-eval system row (``params_b``, ``quality``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for p in points:
        q, c = p["quality"], p["cost"]
        ax.errorbar(c["mean"], 100 * q["mean"], xerr=c["std"], yerr=100 * q["std"], fmt="o", capsize=3,
                    color="tab:blue")
        ax.annotate(f"λ={p['cost_coef']:g}", (c["mean"], 100 * q["mean"]), textcoords="offset points",
                    xytext=(6, 4), fontsize=7)
    front = sorted((p for p in points if p.get("pareto")), key=lambda p: p["cost"]["mean"])
    if front:
        ax.plot([p["cost"]["mean"] for p in front], [100 * p["quality"]["mean"] for p in front], "o-",
                markersize=12, markerfacecolor="none", color="tab:red", label="Pareto front")
    for name, entry in (baselines or {}).items():
        x, y = _baseline_xy(entry)
        ax.plot(x, 100 * y, "s", color="tab:gray")
        ax.annotate(name.removeprefix("single:"), (x, 100 * y), textcoords="offset points", xytext=(6, -8),
                    fontsize=7, color="tab:gray")
    ax.set_xlabel("parameters used per question (billions)")
    ax.set_ylabel("quality (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if front:
        ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), dpi=120)
    plt.close(fig)
