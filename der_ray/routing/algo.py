"""PPO for the router: ``build_ppo_config`` (a pure function, one builder chain) and metric names.

The config uses RLlib's new API stack (the 2.60 default): a local learner (``num_learners=0``, optional
GPU), ``train.num_env_runners`` env runners (0 runs the env in the driver, which is what ``--local``
modes and breakpoints need) with ``train.num_envs_per_env_runner`` vectorised envs each (sampling
overhead dominates on small CPUs, so vectorising is the cheapest speed-up), and
:class:`~der_ray.routing.module.RouterRLModule`. Run it with ``config.build_algo()`` (not the deprecated
``config.build()``), or hand it to ``ray.tune.Tuner(PPO, param_space=config)`` (the ``PPO`` class, not the
string: the string imports every algorithm and fails here).

Metric names are constants in Tune's flattened ``a/b/c`` form; :func:`get_metric` reads them from
both the nested ``algo.train()`` result and a flattened Tune result. Imports: config, routing.module,
ray.rllib.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.utils.from_config import NotProvided

from der_ray.config import TrainConfig
from der_ray.routing.module import RouterRLModule

#: mean undiscounted return of the episodes finished during the iteration
EPISODE_RETURN_MEAN = "env_runners/episode_return_mean"
EPISODE_RETURN_MAX = "env_runners/episode_return_max"
EPISODE_RETURN_MIN = "env_runners/episode_return_min"
#: mean episode length in env steps (expert calls + the STOP step)
EPISODE_LEN_MEAN = "env_runners/episode_len_mean"
NUM_EPISODES = "env_runners/num_episodes"
NUM_ENV_STEPS_SAMPLED_LIFETIME = "num_env_steps_sampled_lifetime"
POLICY_LOSS = "learners/default_policy/policy_loss"
VF_LOSS = "learners/default_policy/vf_loss"
ENTROPY = "learners/default_policy/entropy"
MEAN_KL = "learners/default_policy/mean_kl_loss"
TRAINING_ITERATION = "training_iteration"
TIME_THIS_ITER_S = "time_this_iter_s"


def build_ppo_config(env_cls_or_name: type | str, env_config: Mapping[str, Any], train: TrainConfig, *,
                     num_cpus_for_main_process: float | None = None, num_gpus_per_learner: float = 0,
                     num_cpus_per_learner: float | None = None, callbacks: Any | None = None) -> PPOConfig:
    """The PPO configuration of the router.

    Args:
        env_cls_or_name: the env class (importable by env runners: a package class) or a registered name.
        env_config: the env's config dict (pickled into checkpoints and Tune params: names, not handles).
        train: PPO hyperparameters and rollout sizes.
        num_cpus_for_main_process: CPUs of the algorithm's main process (Tune trial); default RLlib's 1.
            Set it with ``num_cpus_per_learner`` below 1 to pack several trials on a small machine.
        num_gpus_per_learner: GPUs of the local learner (0 on CPU-only machines).
        num_cpus_per_learner: CPUs of the local learner; default RLlib's 1 (see above).
        callbacks: an ``RLlibCallback`` subclass (or a list of them) for custom metrics.

    Returns:
        A ``PPOConfig``; nothing is built or started.
    """
    return (
        PPOConfig()
        .environment(env_cls_or_name, env_config=dict(env_config))
        .env_runners(num_env_runners=train.num_env_runners,
                     num_envs_per_env_runner=train.num_envs_per_env_runner)
        .learners(num_learners=0, num_gpus_per_learner=num_gpus_per_learner,
                  num_cpus_per_learner=_given(num_cpus_per_learner))
        .resources(num_cpus_for_main_process=_given(num_cpus_for_main_process))
        .training(lr=train.lr, gamma=train.gamma, clip_param=train.clip, entropy_coeff=train.entropy_coeff,
                  vf_loss_coeff=train.vf_loss_coeff, train_batch_size_per_learner=train.train_batch_size,
                  minibatch_size=train.minibatch_size, num_epochs=train.num_epochs)
        .rl_module(rl_module_spec=RLModuleSpec(module_class=RouterRLModule,
                                               model_config={"hidden": list(train.hidden)}))
        .callbacks(_given(callbacks))
        .debugging(seed=train.seed)
    )


def _given(value: Any) -> Any:
    """``None`` -> RLlib's ``NotProvided`` (keep its default), so that the builder stays one chain."""
    return NotProvided if value is None else value


def restore_algo(checkpoint_dir: str | os.PathLike[str]) -> Algorithm:
    """``Algorithm.from_checkpoint`` on an absolute path, then push the learner's weights to every env runner.

    Why the explicit sync: after an in-process restore, remote env runners kept their random weights for
    the first iteration in RLlib 2.60 (see the Ray notes, section 1.2); the sync is cheap. Training
    continues from the saved ``training_iteration``. Needs a running Ray (``ray.init``).
    """
    algo = Algorithm.from_checkpoint(str(Path(checkpoint_dir).expanduser().resolve()))
    assert algo.env_runner_group is not None  # PPO always has one (holding the local env runner)
    algo.env_runner_group.sync_weights(from_worker_or_learner_group=algo.learner_group,
                                       inference_only=True, timeout_seconds=30)
    return algo


def get_metric(result: Mapping[str, Any], name: str, default: Any = None) -> Any:
    """Read ``name`` (``"env_runners/episode_return_mean"``) from a nested or flattened result dict."""
    if name in result:
        return result[name]
    node: Any = result
    for part in name.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node
