"""The routing jobs end to end on tiny experts: train (local mode) -> evaluate -> outputs on disk."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.integration


def test_train_then_evaluate(load_job, ray_session, pool_yaml, tmp_path, capsys):
    common = ["--pool", pool_yaml, "--domains", "triviaqa", "piqa", "--encoder", "hashing", "--t-max", "2",
              "--cache-dir", str(tmp_path / "responses"), "--local"]
    storage = tmp_path / "router"
    assert load_job("train_router").main([*common, "--per-domain", "3", "--iterations", "2",
                                      "--train-batch-size", "32", "--storage", str(storage),
                                      "--dev-per-domain", "2", "--select-every", "1",
                                      "--lr", "1e-3", "--num-epochs", "2", "--minibatch-size", "16"]) == 0
    assert (storage / "checkpoints" / "LATEST").is_file()
    printed = capsys.readouterr().out  # the training and dev rows' skills, before PPO starts
    train_part = printed[printed.index("training rows: step-0 quality"):printed.index("dev rows: step-0")]
    dev_part = printed[printed.index("dev rows: step-0 quality"):printed.index("iter   1")]
    for part, n in ((train_part, "3"), (dev_part, "2")):
        table = [line.split()[:2] for line in part.splitlines()[2:] if line.startswith("  ")]
        assert table == [["piqa", n], ["triviaqa", n]]
    best = json.loads((storage / "checkpoints" / "BEST").read_text())  # selected on the dev rows
    assert best["iteration"] in (1, 2) and (storage / "checkpoints" / best["name"]).is_dir()
    out = tmp_path / "results"
    assert load_job("evaluate_router").main([*common, "--per-domain", "3", "--dev-per-domain", "2",
                                         "--checkpoint", str(storage), "--output-dir", str(out)]) == 0
    report = json.loads((out / "routing_eval.json").read_text())
    assert report["n_test"] == 6 and "der" in report["systems"] and "oracle" in report["systems"]
    assert report["checkpoint"] == str(storage / "checkpoints" / best["name"])  # routes with BEST
    assert (out / "routing_eval.png").stat().st_size > 1000
    assert "| der |" in (out / "routing_eval.md").read_text()


def test_bad_input_exits_with_the_error_code(load_job, ray_session, pool_yaml, tmp_path, capsys):
    code = load_job("train_router").main(["--pool", pool_yaml, "--domains", "gsm9k", "--local",
                                      "--storage", str(tmp_path / "r")])
    assert code == 3 and "unknown domain" in capsys.readouterr().err
    code = load_job("evaluate_router").main(["--pool", pool_yaml, "--t-max", "0", "--local"])
    assert code == 2
    code = load_job("train_router").main(["--pool", pool_yaml, "--num-epochs", "0", "--local",
                                          "--storage", str(tmp_path / "r")])
    assert code == 2 and "num_epochs" in capsys.readouterr().err


def test_train_with_expert_actors(load_job, ray_session, pool_yaml, tmp_path):
    """Not --local: the job starts the expert actors and must keep them alive for the env."""
    storage = tmp_path / "router"
    code = load_job("train_router").main(["--pool", pool_yaml, "--domains", "piqa", "--per-domain", "2",
                                      "--encoder", "hashing", "--t-max", "2", "--iterations", "1",
                                      "--train-batch-size", "16", "--cache-dir", str(tmp_path / "responses"),
                                      "--storage", str(storage)])
    assert code == 0 and (storage / "checkpoints" / "iter_000001").is_dir()
