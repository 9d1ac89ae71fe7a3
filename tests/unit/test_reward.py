"""The DER reward against hand-computed values."""

import pytest

from der_ray.config import RewardConfig, router_from_dict
from der_ray.errors import ConfigError
from der_ray.routing.reward import call_cost, step_reward, success_threshold, terminal_reward

CFG = RewardConfig(cost_coef=0.5, beta=5.0, bonus=2.0)


@pytest.mark.parametrize(("score", "prev", "cost", "expected"), [
    (1.0, None, 0.2, 1.0 - 0.5 * 0.2),              # step 0: no improvement term
    (1.0, 0.0, 0.63, 1.0 - 0.315 + 5.0),            # wrong -> right
    (0.0, 1.0, 0.135, 0.0 - 0.0675 - 5.0),          # right -> wrong
    (0.8, 0.6, 0.0, 0.8 + 5.0 * 0.2),               # similarity improvement
    (0.5, 0.5, 1.0, 0.5 - 0.5),                     # no change
])
def test_step_reward(score, prev, cost, expected):
    assert step_reward(score, prev, cost, CFG) == pytest.approx(expected)


def test_terminal_reward():
    assert terminal_reward(1.0, 1.0, out_of_calls=False, cfg=CFG) == 2.0   # STOP after success
    assert terminal_reward(1.0, 1.0, out_of_calls=True, cfg=CFG) == 2.0    # success on the last call
    assert terminal_reward(0.0, 1.0, out_of_calls=True, cfg=CFG) == -2.0   # budget spent, failed
    assert terminal_reward(0.0, 1.0, out_of_calls=False, cfg=CFG) == 0.0   # STOP below p0
    assert terminal_reward(0.74, 0.73, out_of_calls=True, cfg=CFG) == 2.0


def test_costs_and_thresholds():
    assert call_cost(0.63, 100, 2.5, RewardConfig(cost="params")) == 0.63
    assert call_cost(0.63, 100, 2.5, RewardConfig(cost="tokens_params")) == pytest.approx(0.063)
    assert call_cost(0.63, 100, 2.5, RewardConfig(cost="latency")) == 2.5
    assert success_threshold("numeric_em", CFG) == 1.0
    assert success_threshold("embedding", CFG) == 0.73


@pytest.mark.parametrize(("data", "match"), [
    ({"reward": {"cost_coef": -0.1}}, r"router.reward.cost_coef: must be >= 0"),
    ({"t_max": 0}, r"router.t_max"),
    ({"reward": {"cost": "dollars"}}, r"router.reward.cost"),
    ({"ktp_template": "{question} only"}, r"router.ktp_template"),
])
def test_bad_router_config(data, match):
    with pytest.raises(ConfigError, match=match):
        router_from_dict(data)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"num_epochs": 0}, "num_epochs"),
    ({"minibatch_size": 0}, "num_epochs and minibatch_size"),
    ({"entropy_coeff": -0.01}, "entropy_coeff"),
    ({"lr": 0}, "lr"),
])
def test_bad_train_config(kwargs, match):
    from der_ray.config import TrainConfig

    with pytest.raises(ConfigError, match=match):
        TrainConfig(**kwargs)
