"""PPO (RLlib new API stack, env in the driver) learns the synthetic routing task; checkpoint round trips.

The right expert depends on the question class, so an untrained policy is right about 1/3 of the time.
On 2 quiet cores: build ~1 s, ~0.15 s per 256-step iteration; greedy first-call accuracy >= 0.99 after
1-2 iterations, and "right expert, then STOP" in >= 95% of episodes after 5-11 iterations (seeds 0-5);
the whole test takes ~12 s with Ray already started.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from der_ray.config import TrainConfig
from der_ray.routing.algo import (
    EPISODE_RETURN_MEAN,
    TRAINING_ITERATION,
    build_ppo_config,
    get_metric,
    restore_algo,
)
from der_ray.routing.policy_io import greedy_actions, load_module
from der_ray.routing.synthetic import SyntheticRoutingEnv, evaluate_greedy

ENV_CONFIG: dict[str, Any] = {"n_experts": 3, "obs_dim": 8, "t_max": 3, "noise": 0.2, "call_cost": 0.25}
TRAIN = TrainConfig(lr=3e-3, train_batch_size=256, minibatch_size=64, num_epochs=6, hidden=(32, 32),
                    num_env_runners=0, num_envs_per_env_runner=8, seed=0)
MAX_ITERATIONS = 30
EVAL_EPISODES = 200


def fresh_observations(n: int, seed: int) -> dict[str, np.ndarray]:
    """Step-0 observations and, for every other env, the observation after one random call."""
    rows = []
    for i in range(n):
        env = SyntheticRoutingEnv(ENV_CONFIG)
        obs, _ = env.reset(seed=seed + i)
        if i % 2:
            obs = env.step(i % env.stop_action)[0]
        rows.append(obs)
    return {k: np.stack([r[k] for r in rows]) for k in ("obs", "action_mask")}


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.integration
@pytest.mark.filterwarnings("ignore:.*Overriding environment")  # a second build re-registers RLlib's env
def test_ppo_learns_synthetic_routing_and_checkpoints(ray_session: Any, tmp_path: Path) -> None:
    algo = build_ppo_config(SyntheticRoutingEnv, ENV_CONFIG, TRAIN).build_algo()
    try:
        module = algo.get_module()
        assert [m.out_features for m in module._pi_trunk if isinstance(m, torch.nn.Linear)] == [32, 32]
        before = state(module)
        untrained = evaluate_greedy(functools.partial(greedy_actions, module), ENV_CONFIG,
                                    episodes=EVAL_EPISODES)
        result = algo.train()
        after = state(algo.get_module())
        changed = [k for k in before if not torch.equal(before[k], after[k])]
        assert changed, "no parameter changed after the first train()"
        assert any(k.startswith("_pi_") for k in changed) and any(k.startswith("_vf_") for k in changed)

        t0, first_return = time.perf_counter(), get_metric(result, EPISODE_RETURN_MEAN)
        for _ in range(MAX_ITERATIONS - 1):
            ev = evaluate_greedy(functools.partial(greedy_actions, algo.get_module()), ENV_CONFIG,
                                 episodes=EVAL_EPISODES)
            if ev["accuracy"] >= 0.95 and ev["success"] >= 0.95:
                break
            result = algo.train()
        iterations = result[TRAINING_ITERATION]
        print(f"\nuntrained {untrained}\nafter {iterations} iterations ({time.perf_counter() - t0:.1f} s): "
              f"{ev}; return {first_return:.3f} -> {get_metric(result, EPISODE_RETURN_MEAN):.3f}")
        assert untrained["accuracy"] < 0.7
        assert ev["accuracy"] >= 0.9, ev
        assert ev["success"] >= 0.9, ev

        ckpt = tmp_path.resolve() / "ckpt"
        algo.save_to_path(str(ckpt))
        loaded = load_module(ckpt)  # no Ray needed
        obs = fresh_observations(256, seed=10_000)
        trained_actions = greedy_actions(algo.get_module(), obs)
        np.testing.assert_array_equal(greedy_actions(loaded, obs), trained_actions)
        assert (obs["action_mask"][np.arange(256), trained_actions] == 1).all()
    finally:
        algo.stop()

    restored = restore_algo(ckpt)
    try:
        np.testing.assert_array_equal(greedy_actions(restored.get_module(), obs), trained_actions)
        assert restored.train()[TRAINING_ITERATION] == iterations + 1
    finally:
        restored.stop()
