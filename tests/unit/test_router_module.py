"""RouterRLModule, build_ppo_config, policy_io and the synthetic routing env, without Ray."""

from __future__ import annotations

import functools
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns

from der_ray.config import TrainConfig
from der_ray.errors import ConfigError, RoutingError
from der_ray.routing.algo import EPISODE_RETURN_MEAN, build_ppo_config, get_metric
from der_ray.routing.module import RouterRLModule, mask_logits
from der_ray.routing.policy_io import MODULE_SUBPATH, greedy_actions, load_module, module_path
from der_ray.routing.synthetic import SyntheticRoutingEnv, evaluate_greedy

N, D, B = 3, 8, 5


def make_module(hidden: list[int] | None = None, seed: int = 0) -> RouterRLModule:
    torch.manual_seed(seed)
    env = SyntheticRoutingEnv({"n_experts": N, "obs_dim": D})
    return RouterRLModule(observation_space=env.observation_space, action_space=env.action_space,
                          model_config={"hidden": hidden or [16, 16]})


def make_batch(mask: np.ndarray | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if mask is None:
        mask = np.ones((B, N + 1), np.float32)
    return {"obs": rng.normal(size=(B, D)).astype(np.float32), "action_mask": mask.astype(np.float32)}


def as_torch(batch: dict[str, np.ndarray]) -> dict[str, dict[str, torch.Tensor]]:
    return {Columns.OBS: {k: torch.from_numpy(v) for k, v in batch.items()}}


# ------------------------------------------------------------------------------------------ module

def test_forward_shapes() -> None:
    m = make_module(hidden=[16, 12])
    batch = as_torch(make_batch())
    for out in (m.forward_inference(batch), m.forward_exploration(batch)):
        assert out[Columns.ACTION_DIST_INPUTS].shape == (B, N + 1)
    train_out = m.forward_train(batch)
    assert train_out[Columns.ACTION_DIST_INPUTS].shape == (B, N + 1)
    assert train_out[Columns.EMBEDDINGS].shape == (B, 12)
    values = m.compute_values(batch)
    assert values.shape == (B,)
    torch.testing.assert_close(m.compute_values(batch, embeddings=train_out[Columns.EMBEDDINGS]), values)


def test_forward_does_not_mutate_batch() -> None:
    m = make_module()
    batch = as_torch(make_batch())
    m.forward_train(batch)
    assert set(batch[Columns.OBS]) == {"obs", "action_mask"}


def test_relu_activation_and_empty_hidden() -> None:
    env = SyntheticRoutingEnv({})
    m = RouterRLModule(observation_space=env.observation_space, action_space=env.action_space,
                       model_config={"hidden": [], "activation": "relu"})
    out = m.forward_train(as_torch(make_batch()))
    assert out[Columns.EMBEDDINGS].shape == (B, D)
    with pytest.raises(ValueError, match="activation"):
        RouterRLModule(observation_space=env.observation_space, action_space=env.action_space,
                       model_config={"activation": "gelu"})


def test_rejects_flat_observation_space() -> None:
    with pytest.raises(ValueError, match="Dict observation space"):
        RouterRLModule(observation_space=gym.spaces.Box(-1, 1, (D,), np.float32),
                       action_space=gym.spaces.Discrete(N + 1), model_config={})


def test_mask_logits() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    masked = mask_logits(logits, torch.tensor([[1.0, 0.0, 1.0]]))
    assert masked[0, 0] == 1.0 and masked[0, 2] == 3.0 and masked[0, 1] < -1e38


def test_masked_actions_never_chosen() -> None:
    m = make_module()
    with torch.no_grad():  # every logit strongly favours STOP (index N) and expert 0
        m._pi_head.bias.copy_(torch.tensor([1e6, 0.0, 0.0, 1e7]))
    mask = np.ones((B, N + 1), np.float32)
    mask[:, N] = 0.0  # STOP masked (step 0)
    mask[:2, 0] = 0.0  # expert 0 masked in the first two rows as well
    batch = make_batch(mask)
    actions = greedy_actions(m, batch)
    assert actions.shape == (B,) and actions.dtype == np.int64
    assert all(mask[i, a] == 1.0 for i, a in enumerate(actions))
    assert actions[2:].tolist() == [0, 0, 0]
    # sampling (exploration) never draws a masked action either
    logits = m.forward_exploration(as_torch(batch))[Columns.ACTION_DIST_INPUTS]
    dist = m.get_exploration_action_dist_cls().from_logits(logits)
    samples = torch.stack([dist.sample() for _ in range(200)])  # (200, B)
    assert (torch.from_numpy(mask).gather(1, samples.T) == 1.0).all()


def test_greedy_never_masked_even_with_infinite_logit() -> None:
    m = make_module()
    with torch.no_grad():  # +inf survives RLlib's FLOAT_MIN mask; greedy_actions must still avoid it
        m._pi_head.bias.copy_(torch.tensor([0.0, 0.0, 0.0, float("inf")]))
    mask = np.ones((B, N + 1), np.float32)
    mask[:, N] = 0.0
    assert (greedy_actions(m, make_batch(mask)) != N).all()


def test_greedy_actions_bad_input() -> None:
    m = make_module()
    with pytest.raises(RoutingError, match="keys"):
        greedy_actions(m, {"obs": np.zeros((B, D), np.float32)})
    with pytest.raises(RoutingError, match="shape"):
        greedy_actions(m, {"obs": np.zeros((B, D + 1), np.float32), "action_mask": np.ones((B, N + 1))})
    with pytest.raises(RoutingError, match="shape"):
        greedy_actions(m, {"obs": np.zeros((B, D), np.float32), "action_mask": np.ones((B, N))})
    mask = np.ones((B, N + 1), np.float32)
    mask[3] = 0.0
    with pytest.raises(RoutingError, match=r"rows \[3\]"):
        greedy_actions(m, make_batch(mask))


# ------------------------------------------------------------------------------------------ policy_io

def test_module_path_missing(tmp_path: Path) -> None:
    with pytest.raises(RoutingError, match="not found"):
        module_path(tmp_path / "nope")
    with pytest.raises(RoutingError, match="learner_group"):
        module_path(tmp_path)
    with pytest.raises(RoutingError):
        load_module(tmp_path)


def test_save_and_load_module_without_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = make_module(seed=3)
    m.save_to_path(str(tmp_path / "ckpt" / MODULE_SUBPATH))
    monkeypatch.chdir(tmp_path)  # a relative checkpoint path works too (made absolute)
    loaded = load_module("ckpt")
    assert module_path("ckpt").is_absolute()
    assert isinstance(loaded, RouterRLModule) and not loaded.training
    batch = make_batch(seed=7)
    np.testing.assert_array_equal(greedy_actions(loaded, batch), greedy_actions(m, batch))
    for k, v in m.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)


# ------------------------------------------------------------------------------------------ algo

def test_build_ppo_config_fields() -> None:
    train = TrainConfig(lr=1e-3, gamma=0.9, clip=0.2, entropy_coeff=0.02, vf_loss_coeff=0.7,
                        train_batch_size=256, minibatch_size=64, num_epochs=3, hidden=(32, 16),
                        num_env_runners=1, num_envs_per_env_runner=2, seed=7)
    cfg = build_ppo_config(SyntheticRoutingEnv, {"n_experts": 4, "obs_dim": 9}, train)
    assert (cfg.lr, cfg.gamma, cfg.clip_param) == (1e-3, 0.9, 0.2)
    assert (cfg.entropy_coeff, cfg.vf_loss_coeff) == (0.02, 0.7)
    assert (cfg.train_batch_size_per_learner, cfg.minibatch_size, cfg.num_epochs) == (256, 64, 3)
    assert (cfg.num_env_runners, cfg.num_envs_per_env_runner, cfg.num_learners) == (1, 2, 0)
    assert cfg.num_gpus_per_learner == 0 and cfg.num_cpus_for_main_process == 1
    assert cfg.seed == 7
    assert cfg.env is SyntheticRoutingEnv and cfg.env_config == {"n_experts": 4, "obs_dim": 9}
    spec = cfg.rl_module_spec
    assert spec.module_class is RouterRLModule and spec.model_config == {"hidden": [32, 16]}
    assert cfg.enable_rl_module_and_learner and cfg.enable_env_runner_and_connector_v2


def test_build_ppo_config_resources_and_callbacks() -> None:
    from ray.rllib.callbacks.callbacks import RLlibCallback

    class Metrics(RLlibCallback):
        pass

    cfg = build_ppo_config("my_env", {}, TrainConfig(), num_cpus_for_main_process=0.5,
                           num_gpus_per_learner=1, num_cpus_per_learner=0.5, callbacks=Metrics)
    assert cfg.env == "my_env"
    assert cfg.num_cpus_for_main_process == 0.5 and cfg.num_gpus_per_learner == 1
    assert cfg.num_cpus_per_learner == 0.5
    assert build_ppo_config("my_env", {}, TrainConfig()).num_cpus_per_learner != 0.5  # RLlib's default
    assert cfg.callbacks_class is Metrics


def test_get_metric_nested_and_flat() -> None:
    assert get_metric({"env_runners": {"episode_return_mean": 1.5}}, EPISODE_RETURN_MEAN) == 1.5
    assert get_metric({EPISODE_RETURN_MEAN: 2.5}, EPISODE_RETURN_MEAN) == 2.5
    assert get_metric({"env_runners": {}}, EPISODE_RETURN_MEAN, default=-1) == -1


# ------------------------------------------------------------------------------------------ synthetic env

def test_synthetic_env_contract() -> None:
    env = SyntheticRoutingEnv({"n_experts": N, "obs_dim": D, "t_max": 2})
    assert env.observation_space["obs"].shape == (D,)
    assert env.observation_space["action_mask"].shape == (N + 1,)
    assert env.action_space == gym.spaces.Discrete(N + 1)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    c = info["question_class"]
    assert obs["action_mask"].tolist() == [1, 1, 1, 0]  # STOP masked at step 0
    with pytest.raises(ValueError, match="masked"):
        env.step(N)
    wrong = (c + 1) % N
    obs, r, term, trunc, _ = env.step(wrong)
    assert r == pytest.approx(-0.25) and not term and not trunc
    assert obs["action_mask"].tolist() == [1, 1, 1, 1]  # experts stay callable, STOP allowed
    obs, r, term, _, info = env.step(c)
    assert r == pytest.approx(1.0) and term and info["solved"]  # t_max = 2 calls reached
    assert obs["action_mask"].tolist() == [0, 0, 0, 1]


def test_synthetic_env_stop_and_failure() -> None:
    env = SyntheticRoutingEnv({})
    _, info = env.reset(seed=1)
    c = info["question_class"]
    assert env.step(c)[1] == pytest.approx(1.0)
    _, r, term, _, _ = env.step(env.stop_action)
    assert r == 0.0 and term
    _, info = env.reset(seed=2)
    env.step((info["question_class"] + 1) % 3)
    assert env.step(env.stop_action)[1] == pytest.approx(-1.0)  # stop unsolved


def test_synthetic_env_config_errors() -> None:
    with pytest.raises(ConfigError, match="obs_dim"):
        SyntheticRoutingEnv({"n_experts": 8, "obs_dim": 8})
    with pytest.raises(ConfigError, match="unknown key"):
        SyntheticRoutingEnv({"experts": 3})


def test_evaluate_greedy_oracle_and_random_module() -> None:
    def oracle(batch: dict[str, np.ndarray]) -> np.ndarray:
        first = batch["action_mask"][:, N] == 0  # STOP masked: nothing called yet
        return np.where(first, batch["obs"][:, :N].argmax(1), N)

    ev = evaluate_greedy(oracle, {}, episodes=50)
    assert ev["accuracy"] == 1.0 and ev["success"] == 1.0 and ev["return_mean"] == pytest.approx(1.0)
    untrained = evaluate_greedy(functools.partial(greedy_actions, make_module()), {}, episodes=100)
    assert untrained["accuracy"] < 0.7


def test_router_names_the_setting_a_checkpoint_was_trained_with(tiny_pool_cfg) -> None:
    from der_ray.config import RouterConfig
    from der_ray.routing.encoder import StateEncoder
    from der_ray.routing.episode import RoutingTask
    from der_ray.routing.router import Router

    callers = {n: object() for n in tiny_pool_cfg.names}  # never called: construction only
    cfg = RouterConfig(encoder="hashing", t_max=2)
    trained = RoutingTask(tiny_pool_cfg, cfg, callers, StateEncoder("hashing"))
    space = gym.spaces.Dict({"obs": gym.spaces.Box(-np.inf, np.inf, (trained.obs_dim,), np.float32),
                             "action_mask": gym.spaces.Box(0.0, 1.0, (trained.n_experts + 1,), np.float32)})
    module = RouterRLModule(observation_space=space, action_space=gym.spaces.Discrete(trained.n_experts + 1),
                            model_config={"hidden": [8]})
    Router(module, tiny_pool_cfg, cfg, callers)  # matches
    with pytest.raises(RoutingError, match="--t-max 2"):
        Router(module, tiny_pool_cfg, RouterConfig(encoder="hashing", t_max=5), callers)
    with pytest.raises(RoutingError, match="trained with 2 experts, the pool has 1"):
        Router(module, tiny_pool_cfg.select(tiny_pool_cfg.names[:1]), cfg, {tiny_pool_cfg.names[0]: object()})
