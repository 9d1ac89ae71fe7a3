"""Routing evaluation: baselines as policies over the MDP, summaries, plot (tiny local experts)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from der_ray.config import RouterConfig
from der_ray.data.schema import Example
from der_ray.evals.routing_eval import (
    domain_skills,
    evaluate_systems,
    fixed_route,
    markdown,
    run_policy,
    scatter_png,
    skill_disagreements,
    summarize_systems,
)
from der_ray.experts.hf import HFExpert
from der_ray.routing.encoder import StateEncoder
from der_ray.routing.episode import RoutingTask

EXAMPLES = [
    Example(id=f"p{i}", domain="piqa", question=q, reference=c[a], choices=c, answer_index=a,
            answer_type="multiple_choice")
    for i, (q, c, a) in enumerate([("To open a jar,", ("twist the lid", "eat the jar"), 0),
                                   ("To dry hair,", ("use a towel", "use a rock"), 0),
                                   ("To boil water,", ("freeze it", "heat it"), 1)])
] + [Example(id="t0", domain="triviaqa", question="Capital of France?", reference="Paris",
             answer_type="short_answer")]


@pytest.fixture(scope="module")
def task(tiny_pool_cfg):
    callers = {e.name: HFExpert(e) for e in tiny_pool_cfg.experts}
    router = RouterConfig(encoder="hashing", t_max=3)
    return RoutingTask(tiny_pool_cfg, router, callers, StateEncoder("hashing"))


def test_systems_and_invariants(task, tmp_path):
    always_first = lambda obs: np.zeros(len(obs), dtype=int)  # noqa: E731  (a "policy" calling expert 0)
    systems = evaluate_systems(task, EXAMPLES, EXAMPLES, always_first, seed=0)
    assert set(systems) == {"single:tiny-chat", "single:tiny-base", "chain:all-ktp", "random",
                            "best-per-domain", "oracle", "der"}
    for res in systems.values():
        assert [s["id"] for s in res] == [ex.id for ex in EXAMPLES]
    assert all(s["calls"] == 1 for s in systems["single:tiny-chat"])
    assert all(s["route"] == ["tiny-chat", "tiny-base"] for s in systems["chain:all-ktp"])
    assert all(s["route"] == ["tiny-chat"] * 3 for s in systems["der"])  # never STOPs: t_max calls
    for j in range(len(EXAMPLES)):  # the oracle is an upper bound of every single expert
        assert systems["oracle"][j]["score"] >= max(systems[f"single:{n}"][j]["score"] for n in task.names)
    summary = summarize_systems(systems)
    assert summary["reference"] == "der" and summary["best_single"].startswith("single:")
    der_minus_der_chain = summary["systems"]["chain:all-ktp"]["der_minus_this"]
    assert der_minus_der_chain["lo"] <= der_minus_der_chain["mean"] <= der_minus_der_chain["hi"]
    assert summary["cost_ratio_vs_chain"] == pytest.approx(3 * 0.001 / 0.003)
    table = markdown(summary)
    assert table.count("\n") == len(systems) + 1 and "der" in table
    scatter_png(summary, str(tmp_path / "plot.png"))
    assert (tmp_path / "plot.png").stat().st_size > 1000


def test_chain_is_all_experts_whatever_the_call_limit(task):
    one_call = RoutingTask(task.pool, replace(task.router, t_max=1), task.callers, task.encoder)
    systems = evaluate_systems(one_call, EXAMPLES[:2], EXAMPLES[:2], lambda obs: np.zeros(len(obs), int))
    assert all(s["route"] == ["tiny-chat", "tiny-base"] for s in systems["chain:all-ktp"])
    assert all(s["calls"] == 1 for s in systems["der"] + systems["random"])  # the router's own limit


def test_domain_skills_and_where_train_and_dev_disagree(task):
    base_alone = run_policy(task, EXAMPLES, fixed_route([task.names.index("tiny-base")]))
    skills = domain_skills(task, EXAMPLES)
    assert skills["piqa"]["tiny-base"] == pytest.approx(
        np.mean([s["score"] for s in base_alone if s["domain"] == "piqa"]))
    assert set(skills) == {"piqa", "triviaqa"}
    train = {"piqa": {"tiny-chat": 0.5, "tiny-base": 0.7}, "triviaqa": {"tiny-chat": 0.2, "tiny-base": 0.1},
             "gsm8k": {"tiny-chat": 0.3, "tiny-base": 0.3}, "nq_open": {"tiny-chat": 0.1, "tiny-base": 0.0}}
    dev = {"piqa": {"tiny-chat": 0.8, "tiny-base": 0.6}, "triviaqa": {"tiny-chat": 0.4, "tiny-base": 0.0},
           "gsm8k": {"tiny-chat": 0.0, "tiny-base": 0.0}}  # ties go to the cheaper expert on both sides
    assert skill_disagreements(task, train, dev) == {"piqa": ("tiny-base", "tiny-chat")}
