"""The routing MDP on tiny in-process experts (no Ray): masking, transitions, rewards, KTP."""

from __future__ import annotations

import numpy as np
import pytest

from der_ray.config import DEFAULT_KTP, RouterConfig
from der_ray.data.schema import Example
from der_ray.errors import ConfigError, RoutingError
from der_ray.routing.env import RoutingEnv
from der_ray.routing.ktp import expert_call, message
from der_ray.routing.reward import step_reward

QA = Example(id="q1", domain="triviaqa", question="What is the capital of France?", reference="Paris",
             aliases=("Paris",), answer_type="short_answer")
MC = Example(id="q2", domain="piqa", question="To open a jar,", reference="twist the lid",
             choices=("twist the lid", "eat the jar"), answer_index=0, answer_type="multiple_choice")


def _pool_dict(tiny_pool_cfg):
    return {"namespace": tiny_pool_cfg.namespace, "experts": [
        {"name": e.name, "source": e.source, "params_b": e.params_b,
         "prompt": {"format": e.prompt.format, "stop": list(e.prompt.stop)},
         "generation": {"max_new_tokens": 8}, "resources": {"num_cpus": 0}}
        for e in tiny_pool_cfg.experts]}


@pytest.fixture()
def env(tiny_pool_cfg):
    return RoutingEnv({"pool": _pool_dict(tiny_pool_cfg), "examples": [QA.to_row(), MC.to_row()],
                       "router": {"encoder": "hashing", "t_max": 3, "reward": {"cost_coef": 1.0}},
                       "experts": "local", "seed": 0})


def test_spaces_and_stop_masked_at_step_zero(env):
    obs, info = env.reset(options={"example": QA.to_row()})
    assert env.observation_space.contains(obs) and info["id"] == "q1"
    assert obs["action_mask"].tolist() == [1.0, 1.0, 0.0]  # two experts, STOP masked
    assert obs["obs"].shape == (64 + 2 + 4,) and obs["obs"][-4] == 1.0  # step one-hot at 0
    with pytest.raises(RoutingError, match="not allowed at step 0"):
        env.step(2)


def test_transitions_rewards_and_termination(env):
    env.reset(options={"example": QA.to_row()})
    obs, r0, done, trunc, info = env.step(0)
    ep = env.episode
    s0 = ep.steps[0]
    assert not done and not trunc and info["expert"] == "tiny-chat"
    assert r0 == pytest.approx(step_reward(s0.score, None, 0.001, env.router.reward))
    assert obs["action_mask"].tolist() == [1.0, 1.0, 1.0]  # STOP allowed after a call
    assert obs["obs"][64] == pytest.approx(1 / 3)            # calls of expert 0 / t_max
    obs, r1, done, _, _ = env.step(1)
    assert r1 == pytest.approx(step_reward(ep.steps[1].score, s0.score, 0.002, env.router.reward))
    obs, r2, done, _, info = env.step(0)                     # third call: t_max reached
    assert done and obs["action_mask"].sum() == 0
    assert info["route"] == ["tiny-chat", "tiny-base", "tiny-chat"] and info["calls"] == 3
    assert info["params_b"] == pytest.approx(0.004)
    with pytest.raises(RoutingError, match="episode is over"):
        env.step(0)


def test_stop_ends_the_episode_with_the_terminal_term(env):
    env.reset(options={"example": MC.to_row()})
    env.step(1)
    score = env.episode.score
    _, r, done, _, info = env.step(2)
    assert done and info["expert"] == "STOP" and info["stopped"]
    assert r == (2.0 if score >= 1.0 else 0.0)
    assert env.episode.answer in MC.choices  # multiple choice answers with an option's text


def test_ktp_carries_only_the_previous_answer():
    cfg = RouterConfig()
    assert message(QA, "chat", None, cfg).endswith("Question: What is the capital of France?")
    ktp = message(QA, "completion", "Lyon", cfg)
    assert ktp == DEFAULT_KTP.format(question=QA.question, answer="Lyon")
    assert "other student" in ktp and "DO NOT mention other students" in ktp
    call = expert_call(MC, "chat", "eat the jar", cfg)
    assert call.method == "score_options"
    assert call.args[0][0].startswith("Question: To open a jar, \nThese are the answers")
    assert call.args[1] == [list(MC.choices)]
    gen = expert_call(QA, "chat", None, cfg)
    assert gen.kwargs == {"max_new_tokens": 16, "temperature": 0.0}


def test_sampling_is_seeded_and_covers_every_question(tiny_pool_cfg):
    def ids(seed):
        e = RoutingEnv({"pool": _pool_dict(tiny_pool_cfg), "examples": [QA.to_row(), MC.to_row()],
                        "router": {"encoder": "hashing"}, "experts": "local", "seed": seed})
        return [e.reset()[1]["id"] for _ in range(4)]
    assert ids(3) == ids(3)
    assert sorted(ids(3)[:2]) == ["q1", "q2"]


@pytest.mark.parametrize(("cfg", "match"), [
    ({"examples": []}, "at least one question"),
    ({"router": {"t_max": 0}}, r"router.t_max"),
    ({"router": {"reward": {"cost_coef": -1}}}, "cost_coef"),
    ({"router": {"scorer": "bleu"}}, r"router.scorer: unknown scorer"),
    ({"bogus": 1}, "unknown key"),
    ({"pool": {"experts": []}}, "at least one expert"),
])
def test_bad_env_config(tiny_pool_cfg, cfg, match):
    base = {"pool": _pool_dict(tiny_pool_cfg), "examples": [QA.to_row()],
            "router": {"encoder": "hashing"}, "experts": "local"}
    with pytest.raises(ConfigError, match=match):
        env = RoutingEnv({**base, **cfg})
        env.reset()


def test_encoder_cache_hits(env):
    env.reset(options={"example": QA.to_row()})
    env.reset(options={"example": QA.to_row()})
    assert env.task.encoder.hits >= 1
    assert np.isfinite(env.reset()[0]["obs"]).all()
