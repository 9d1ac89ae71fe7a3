"""λ-sweep analysis: grid validation, aggregation, Pareto front, monotonicity, calibration, plot."""

from __future__ import annotations

import math

import pytest

from der_ray.errors import ConfigError
from der_ray.tune import pareto


def _trial(lam: float, seed: int, quality: float, cost: float) -> dict:
    return {"cost_coef": lam, "seed": seed, "quality": quality, "cost": cost,
            "checkpoint": f"/ckpt/{lam}_{seed}"}


TRIALS = [
    _trial(0.0, 0, 0.80, 3.0), _trial(0.0, 1, 0.70, 2.8),
    _trial(0.5, 0, 0.70, 1.0), _trial(0.5, 1, 0.60, 1.2),
    _trial(2.0, 0, 0.40, 0.5), _trial(2.0, 1, 0.40, 0.5),
]


def test_validate_grid_sorts_and_dedupes():
    assert pareto.validate_grid([0.5, 0, "2", 0.5]) == (0.0, 0.5, 2.0)


@pytest.mark.parametrize("grid, message", [
    ([], "empty"), ([0.1, -0.2], ">= 0"), ([math.nan], "finite"), (["x"], "not a number")])
def test_validate_grid_errors(grid, message):
    with pytest.raises(ConfigError, match=message):
        pareto.validate_grid(grid)


def test_validate_seeds():
    assert pareto.validate_seeds([1, 0, 1]) == (0, 1)
    with pytest.raises(ConfigError, match="at least one seed"):
        pareto.validate_seeds([])
    with pytest.raises(ConfigError, match="not an integer"):
        pareto.validate_seeds([0.5])


def test_aggregate_mean_spread_and_front():
    points = pareto.aggregate([*TRIALS, {"cost_coef": 5.0, "seed": 0, "quality": None, "cost": None}])
    assert [p["cost_coef"] for p in points] == [0.0, 0.5, 2.0]  # the failed trial is left out
    p0 = points[0]
    assert p0["n"] == 2 and p0["seeds"] == [0, 1]
    assert p0["quality"]["mean"] == pytest.approx(0.75) and p0["quality"]["std"] == pytest.approx(0.05)
    assert p0["cost"]["mean"] == pytest.approx(2.9) and p0["cost"]["min"] == pytest.approx(2.8)
    assert [p["pareto"] for p in points] == [True, True, True]


def test_pareto_mask_marks_dominated_points():
    assert pareto.pareto_mask([(1.0, 0.5), (2.0, 0.4), (1.0, 0.5), (0.5, 0.1)]) == [True, False, True, True]


def test_monotonicity_violations_list_seeds():
    assert pareto.monotonicity_violations(pareto.aggregate(TRIALS)) == []
    bad = pareto.aggregate([*TRIALS[:2], _trial(0.5, 0, 0.9, 3.5), _trial(0.5, 1, 0.9, 3.1)])
    (v,) = pareto.monotonicity_violations(bad)
    assert (v["cost_coef_lo"], v["cost_coef_hi"]) == (0.0, 0.5)
    assert v["seeds_hi"] == {"0": 3.5, "1": 3.1}
    assert "1 violation" in pareto.markdown(bad, [v])


def test_calibrate_picks_best_quality_within_budget():
    assert pareto.calibrate(TRIALS, 1.2)["checkpoint"] == "/ckpt/0.5_0"
    assert pareto.calibrate(TRIALS, 100)["checkpoint"] == "/ckpt/0.0_0"
    assert pareto.calibrate(TRIALS, 0.5)["cost_coef"] == 2.0  # only λ=2 fits
    with pytest.raises(ConfigError, match="no trial fits --target-cost 0.1.*costs 0.5"):
        pareto.calibrate(TRIALS, 0.1)
    with pytest.raises(ConfigError, match="no trial finished"):
        pareto.calibrate([{"cost_coef": 0.0, "quality": None, "cost": None}], 1.0)


def test_calibrate_to_a_share_of_calls_to_the_largest_expert():
    # the share comes from the held-out evaluation when there is one, else from training metrics
    shares = {0.0: 0.9, 0.5: 0.4, 2.0: 0.0}
    trials = [{**t, "train": {"shares": {"big": 1.0}}, "heldout": {"shares": {"big": shares[t["cost_coef"]]}}}
              for t in TRIALS]
    assert pareto.calibrate(trials, target_share=0.5, expert="big")["checkpoint"] == "/ckpt/0.5_0"
    assert pareto.calibrate(trials, target_share=0.1, expert="big")["cost_coef"] == 2.0
    # both budgets at once: the cost budget excludes λ=0.5's seeds above 1.1
    assert pareto.calibrate(trials, 1.1, target_share=0.5, expert="big")["checkpoint"] == "/ckpt/0.5_0"
    assert pareto.trial_share({"train": {"shares": {"big": 0.3}}}, "big") == 0.3
    assert math.isnan(pareto.trial_share({}, "big"))
    with pytest.raises(ConfigError, match="fits --target-share 0.5 of small.*no recorded calls to small"):
        pareto.calibrate(trials, target_share=0.5, expert="small")  # unknown share never fits
    with pytest.raises(ConfigError, match="needs --target-cost or --target-share"):
        pareto.calibrate(trials)
    with pytest.raises(ConfigError, match="must be in \\[0, 1\\]"):
        pareto.calibrate(trials, target_share=1.5, expert="big")


def test_markdown_and_plot(tmp_path):
    points = pareto.aggregate(TRIALS)
    text = pareto.markdown(points, [])
    assert "| 0.5 | 2 | 65.0 ± 5.0 |" in text and "no violation" in text
    out = tmp_path / "sub" / "pareto.png"
    pareto.plot_pareto(points, out, baselines={"single:big": {"params_b": 3.0, "quality": {"mean": 0.7}},
                                               "random": (1.5, 0.3)})
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 1000
