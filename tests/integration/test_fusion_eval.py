"""The fusion evaluation job end to end on the two tiny experts (local members and expert actors)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration


def _args(pool_yaml: str, tmp_path: Path, tasks: tuple[str, ...] = ("triviaqa", "nq_open")) -> list[str]:
    return ["--pool", pool_yaml, "--tasks", *tasks, "--per-task", "3", "--dev-per-task", "2",
            "--max-new-tokens", "short_answer=4", "--anchor-dir", str(tmp_path / "anchors"),
            "--output-dir", str(tmp_path / "results")]


def test_local_job_writes_members_fusions_and_intervals(load_job, ray_session, pool_yaml, tmp_path):
    tasks = ("triviaqa", "nq_open", "arc_challenge")
    assert load_job("evaluate_fusion").main([*_args(pool_yaml, tmp_path, tasks), "--local"]) == 0
    report = json.loads((tmp_path / "results" / "fusion_eval.json").read_text())
    assert report["members"] == ["tiny-chat", "tiny-base"] and report["mode"] == "local"
    assert report["wall_s"] > 0 and set(report["tasks"]) == set(tasks)
    arc = report["tasks"]["arc_challenge"]["per_question"]  # option likelihood, fused at shared boundaries
    assert all(len(r["option_scores"]) >= 3 for rows in arc.values() for r in rows)
    assert sum(r["n_searched"] for r in arc["fused:all"]) > 0
    for t in report["tasks"].values():
        assert t["n_test"] == 3 and t["n_dev"] == 2 and t["main"] in report["members"]
        assert set(t["members"]) == {"tiny-chat", "tiny-base"}
        assert set(t["fused"]) == {"all"} and t["pairs"] == {}  # two members: the pair is "all"
        fused = t["fused"]["all"]
        assert fused["main"] == t["main"] and fused["members"] == report["members"]
        for iv in [fused["accuracy"], *fused["vs_members"].values()]:
            assert iv["lo"] <= iv["mean"] <= iv["hi"]
        assert set(fused["vs_members"]) == {"tiny-chat", "tiny-base"}
        assert len(t["per_question"]["fused:all"]) == 3 and fused["tokens"] > 0
    md = (tmp_path / "results" / "fusion_eval.md").read_text()
    assert "## triviaqa" in md and "| fused all |" in md and "paired bootstrap" in md


def test_eta_is_chosen_on_dev_rows(load_job, ray_session, pool_yaml, tmp_path):
    tasks = ("triviaqa", "arc_challenge")
    grid = ["0.15", "0.6", "1.2"]
    assert load_job("evaluate_fusion").main([*_args(pool_yaml, tmp_path, tasks), "--local",
                                             "--lr-grid", *grid]) == 0
    report = json.loads((tmp_path / "results" / "fusion_eval.json").read_text())
    assert report["lr_grid"] == [float(g) for g in grid]
    for t in report["tasks"].values():
        fused = t["fused"]["all"]
        by_lr = fused["dev_accuracy_by_lr"]
        assert list(by_lr) == grid and all(0 <= a <= 1 for a in by_lr.values())
        best = max(by_lr.values())
        assert fused["lr"] == float(next(g for g in grid if by_lr[g] == best))  # ties: the earlier η
    assert f"η={report['tasks']['triviaqa']['fused']['all']['lr']}" in (
        tmp_path / "results" / "fusion_eval.md").read_text()


def test_actor_job_with_pairs(load_job, ray_session, pool_yaml, tmp_path, tiny_pool_cfg):
    """Three members (tiny-base twice under another name) through expert actors: pairs are fused."""
    from der_ray.config import config_to_dict

    data = config_to_dict(tiny_pool_cfg)
    data["experts"].append({**data["experts"][1], "name": "tiny-base-2"})
    path = tmp_path / "pool3.yaml"
    path.write_text(yaml.safe_dump(data))
    args = _args(str(path), tmp_path, tasks=("triviaqa", "arc_challenge"))
    assert load_job("evaluate_fusion").main([*args, "--weighting", "adapt", "--pairs"]) == 0
    report = json.loads((tmp_path / "results" / "fusion_eval.json").read_text())
    for t in report["tasks"].values():  # DeePEn-Adapt: weights follow the members' dev accuracy
        w = t["fused"]["all"]["weights"]
        acc = [t["dev_accuracy"][n] for n in t["fused"]["all"]["members"]]
        expect = [a / sum(acc) for a in acc] if any(acc) else [1 / len(acc)] * len(acc)
        assert w == pytest.approx(expect)
    assert report["tasks"]["arc_challenge"]["fused"]["all"]["n"] == 3
    t = report["tasks"]["triviaqa"]
    assert report["mode"] == "actors" and set(t["fused"]) == {"all"}
    assert set(t["pairs"]) == {"tiny-chat+tiny-base", "tiny-chat+tiny-base-2", "tiny-base+tiny-base-2"}
    for s in t["pairs"].values():
        assert s["main"] in s["members"] and len(s["vs_members"]) == 3


def test_bad_member_name_exits_with_a_clear_message(load_job, pool_yaml, tmp_path, capsys):
    job = load_job("evaluate_fusion")
    code = job.main([*_args(pool_yaml, tmp_path), "--local", "--members", "tiny-chat", "nope"])
    err = capsys.readouterr().err
    assert code != 0 and "unknown expert 'nope'" in err and "tiny-chat" in err
    code = job.main([*_args(pool_yaml, tmp_path), "--local", "--members", "tiny-chat"])
    assert code != 0 and "at least two members" in capsys.readouterr().err
