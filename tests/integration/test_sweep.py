"""The λ sweep end to end on tiny in-test experts: 2 Tune trials at once, dashboards, Pareto, calibration."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.integration


def test_sweep_two_trials_then_calibrate(load_job, ray_session, pool_yaml, tmp_path, capsys):
    job = load_job("sweep_cost")
    storage, out = tmp_path / "tune", tmp_path / "sweep"
    common = ["--pool", pool_yaml, "--domains", "triviaqa", "piqa", "--per-domain", "3",
              "--test-per-domain", "2", "--encoder", "hashing", "--t-max", "2", "--grid", "0", "2",
              "--seeds", "0", "--iterations", "2", "--train-batch-size", "32", "--local",
              "--cache-dir", str(tmp_path / "responses"), "--storage", str(storage), "--name", "sw",
              "--output-dir", str(out)]
    assert job.main([*common, "--target-cost", "1000"]) == 0

    report = json.loads((out / "sweep_results.json").read_text())
    trials, meta = report["trials"], report["meta"]
    assert [t["cost_coef"] for t in trials] == [0.0, 2.0]
    assert 0 < meta["fit_s"] <= meta["wall_s"] and meta["tensorboard"].startswith("tensorboard --logdir ")
    assert meta["ppo"]["train_batch_size"] == 32 and meta["ppo"]["minibatch_size"] <= 32  # what ran
    with capsys.disabled():
        print(f"\n2-trial sweep: Tune fit {meta['fit_s']} s, job wall {meta['wall_s']} s")
    windows = []
    for t in trials:
        assert t["error"] is None and t["iterations"] == 2 and t["source"] == "heldout"
        assert t["heldout"]["n"] == 4 and 0 <= t["quality"] <= 1 and t["cost"] > 0
        assert set(t["heldout"]["shares"]) == {"tiny-chat", "tiny-base"}
        assert t["train"]["quality"] == t["train"]["quality"]  # RouterMetrics reached Tune (not NaN)
        trial_dir = storage / "sw" / t["trial_dir"].rsplit("/", 1)[-1]
        assert list(trial_dir.glob("events.out.tfevents.*")), trial_dir
        header = (trial_dir / "progress.csv").read_text().splitlines()[0]
        assert "env_runners/router_quality" in header and "env_runners/router_params_b" in header
        rows = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
        windows.append((rows[0]["timestamp"] - rows[0]["time_this_iter_s"], rows[-1]["timestamp"]))
    # fractional CPUs: both trials train at once on the 2-CPU test Ray
    assert max(start for start, _ in windows) < min(end for _, end in windows), windows
    assert [p["cost_coef"] for p in report["points"]] == [0.0, 2.0]
    assert (out / "sweep_pareto.png").stat().st_size > 1000
    assert "| λ |" in (out / "sweep_pareto.md").read_text()

    calibrated = json.loads((out / "router_calibrated.json").read_text())
    best = max(trials, key=lambda t: (t["quality"], -t["cost"]))
    assert calibrated["cost_coef"] == best["cost_coef"] and calibrated["checkpoint"] == best["checkpoint"]
    assert calibrated["router"]["reward"]["cost_coef"] == best["cost_coef"]

    # Resume the finished experiment (Tuner.restore) and ask for a budget no trial fits: a clear error.
    (out / "router_calibrated.json").unlink()
    capsys.readouterr()
    assert job.main([*common, "--resume", "--target-cost", "0"]) == 2
    assert "no trial fits --target-cost 0" in capsys.readouterr().err
    assert not (out / "router_calibrated.json").exists()


@pytest.mark.parametrize("grid, message", [([], "cost grid is empty"), (["0", "-1"], "must be >= 0")])
def test_invalid_grid_exits_with_config_error(load_job, grid, message, tmp_path, capsys):
    code = load_job("sweep_cost").main(["--grid", *grid, "--storage", str(tmp_path), "--local"])
    assert code == 2 and message in capsys.readouterr().err


def test_sweep_with_expert_actors(load_job, ray_session, pool_yaml, tmp_path):
    """Not --local: trials find the driver's named expert actors and share one response cache."""
    out = tmp_path / "sweep"
    code = load_job("sweep_cost").main([
        "--pool", pool_yaml, "--domains", "piqa", "--per-domain", "2", "--test-per-domain", "0",
        "--encoder", "hashing", "--t-max", "2", "--grid", "0", "1", "--iterations", "1",
        "--train-batch-size", "16", "--cache-dir", str(tmp_path / "responses"),
        "--storage", str(tmp_path / "tune"), "--name", "sw", "--output-dir", str(out)])
    assert code == 0
    trials = json.loads((out / "sweep_results.json").read_text())["trials"]
    assert [(t["cost_coef"], t["error"], t["source"]) for t in trials] == [
        (0.0, None, "train"), (1.0, None, "train")]
    assert all(t["cost"] > 0 for t in trials)  # training-time metrics when there are no held-out rows


def test_failed_trial_is_retried(ray_session, tiny_pool_cfg, tmp_path):
    """FailureConfig(max_failures=1): a trial that crashes once is restarted and finishes."""
    from der_ray import data
    from der_ray.config import RouterConfig, TrainConfig
    from der_ray.routing.algo import build_ppo_config
    from der_ray.routing.env import RoutingEnv, build_env_config
    from der_ray.routing.metrics import RouterMetrics
    from der_ray.tune import sweep

    marker = tmp_path / "crashed-once"

    class CrashOnce(RouterMetrics):  # local class: pickled by value into the trial
        def on_train_result(self, *, algorithm, result, **kwargs):
            if not marker.exists():
                marker.write_text("x")
                raise RuntimeError("injected trial failure")

    rows = list(data.iter_examples(data.split_mix(["piqa"], "train", 2, 0)))
    router = RouterConfig(t_max=2, encoder="hashing")
    env_config = build_env_config(tiny_pool_cfg, router, rows, experts="local",
                                  cache=str(tmp_path / "responses"))
    train = TrainConfig(iterations=2, train_batch_size=16, minibatch_size=16, num_env_runners=0)
    tuner = sweep.build_tuner(build_ppo_config(RoutingEnv, env_config, train, callbacks=CrashOnce),
                              grid=[0.0], seeds=[0], storage=tmp_path / "tune", name="retry",
                              iterations=2, max_failures=1)
    (result,) = list(tuner.fit())
    assert marker.exists()  # the failure happened ...
    assert result.error is None and result.metrics["training_iteration"] == 2  # ... and was retried
