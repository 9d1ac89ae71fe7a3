"""The main job's whole chain on tiny experts: prepare -> cache -> PPO -> evaluation -> fusion -> report."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.integration


def test_main_job_end_to_end(load_job, ray_session, pool_yaml, tmp_path, capsys):
    out = tmp_path / "main"
    code = load_job("main").main([
        "--pool", pool_yaml, "--domains", "triviaqa", "piqa", "--train-per-domain", "2",
        "--test-per-domain", "1", "--dev-per-domain", "1", "--iterations", "1", "--train-batch-size", "16",
        "--t-max", "2", "--encoder", "hashing", "--fusion-per-task", "1", "--fusion-dev-per-task", "1",
        "--responses-dir", str(tmp_path / "responses"), "--output-dir", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert set(report["timings_s"]) == {"prepare", "experts", "cache", "train", "evaluate", "fusion", "total"}
    assert report["experts"] == ["tiny-chat", "tiny-base"] and report["routing"]["n_test"] == 2
    assert {"der", "oracle", "random"} <= set(report["routing"]["systems"])
    assert report["fusion"]["members"] == ["tiny-chat", "tiny-base"]
    md = (out / "report.md").read_text()
    assert "| der |" in md and "![quality vs cost](routing_eval.png)" in md and "## DeePEn fusion" in md
    assert (out / "routing_eval.png").stat().st_size > 1000
    assert (out / "router" / "checkpoints" / "LATEST").is_file()
    assert "=== [7/7] report" in printed and f"report: {out / 'report.md'}" in printed
    assert ray_session.is_initialized()  # the job left the session's Ray alone


def test_main_job_bad_config_exits_nonzero(load_job, tmp_path, capsys):
    assert load_job("main").main(["--pool", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
