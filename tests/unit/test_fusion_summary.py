"""benchmarks/fusion_summary.py: rows from fusion_eval JSON, repeats merged, the target's verdict."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _summary():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("fusion_summary", REPO / "benchmarks" / "fusion_summary.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _run(task: str, fused_acc: float, diff: tuple[float, float, float], wall: float) -> dict:
    acc = {"mean": 0.30, "lo": 0.2, "hi": 0.4}
    return {"wall_s": wall, "weighting": "uniform", "tasks": {task: {
        "best_member_test": "a", "n_test": 200, "n_dev": 40,
        "members": {"a": {"accuracy": acc}, "b": {"accuracy": {**acc, "mean": 0.2}}},
        "fused": {"all": {"main": "b", "lr": 0.15, "accuracy": {**acc, "mean": fused_acc},
                          "vs_members": {"a": dict(zip(("mean", "lo", "hi"), diff, strict=True))}}},
        "pairs": {}}}}


def test_rows_repeats_and_verdict(tmp_path):
    fs = _summary()
    files = []
    for name, run in [("one.json", _run("triviaqa", 0.32, (0.02, -0.01, 0.05), 10.0)),
                      ("again.json", _run("triviaqa", 0.32, (0.02, -0.01, 0.05), 12.0)),
                      ("nq.json", _run("nq_open", 0.305, (0.005, -0.02, 0.03), 5.0))]:
        (tmp_path / name).write_text(json.dumps(run))
        files.append(str(tmp_path / name))
    assert fs.main([*files, "--output-dir", str(tmp_path / "out")]) == 0
    out = json.loads((tmp_path / "out" / "fusion_summary.json").read_text())
    assert out["reached"] == ["triviaqa"]  # +2.0 points; nq_open's +0.5 is below the 1-point bar
    trivia = [r for r in out["rows"] if r["task"] == "triviaqa"]
    assert len(trivia) == 1 and trivia[0]["runs"] == ["one.json (10.0 s)", "again.json (12.0 s)"]
    assert trivia[0]["diff"] == pytest.approx(2.0) and trivia[0]["best_member_acc"] == pytest.approx(30.0)
    md = (tmp_path / "out" / "fusion_summary.md").read_text()
    assert "reached on: triviaqa → **NOT met**" in md  # one task of the two the target needs
