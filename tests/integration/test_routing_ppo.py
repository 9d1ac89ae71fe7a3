"""The whole routing stack on tiny experts: expert actors found by name, the shared response cache,
RLlib PPO with the env in the driver and in a remote env runner, checkpoint -> Router."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from der_ray import data
from der_ray.config import RouterConfig, TrainConfig, config_to_dict
from der_ray.experts.actors import ExpertPool
from der_ray.routing.algo import build_ppo_config
from der_ray.routing.env import RoutingEnv, make_callers
from der_ray.routing.metrics import CACHE_HIT_RATE, CALLS, LLM_CALLS, QUALITY, RouterMetrics
from der_ray.routing.policy_io import greedy_actions
from der_ray.routing.router import Router
from der_ray.routing.training import train_router

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pool(ray_session, tiny_pool_cfg):
    p = ExpertPool(tiny_pool_cfg)
    p.start()
    yield tiny_pool_cfg
    p.shutdown()


@pytest.mark.parametrize("runners", [0, 1])
def test_ppo_over_expert_actors_with_cache(pool, tmp_path, runners):
    rows = [ex.to_row() for ex in data.iter_examples(data.split_mix(["triviaqa", "piqa"], "train", 3, 0))]
    router = RouterConfig(encoder="hashing", t_max=2, max_new_tokens={"short_answer": 4})
    cache = tmp_path / "responses"
    env_config = {"pool": config_to_dict(pool), "router": config_to_dict(router), "examples": rows,
                  "experts": "actors", "cache": str(cache), "seed": 0}
    train = TrainConfig(iterations=2, train_batch_size=48, minibatch_size=48, num_epochs=2,
                        num_env_runners=runners, num_envs_per_env_runner=2, hidden=(16,))
    cfg = build_ppo_config(RoutingEnv, env_config, train, callbacks=RouterMetrics,
                           num_cpus_for_main_process=0.5 if runners else None)
    seen: list[dict] = []
    outcome = train_router(cfg, train, tmp_path / "ckpt", on_result=lambda it, r: seen.append(r))
    assert outcome.iterations == 2
    metrics = seen[-1]["env_runners"]
    assert 0.0 <= metrics[QUALITY] <= 1.0 and 1.0 <= metrics[CALLS] <= 2.0
    assert any(k.startswith("router_share_") for k in metrics)
    assert 0.0 <= metrics[CACHE_HIT_RATE] <= 1.0 and metrics[LLM_CALLS] >= 0.0
    if runners == 0:  # a second pass over the same questions is answered from the cache
        assert seen[-1]["env_runners"][CACHE_HIT_RATE] > seen[0]["env_runners"][CACHE_HIT_RATE] or \
            seen[-1]["env_runners"][CACHE_HIT_RATE] == 1.0
    assert list(cache.glob("seg-*.parquet")), "the env runners must have written the shared cache"

    # The inference Router (no algorithm) acts like the trained module, on cached answers.
    callers = make_callers(pool, "actors", str(cache))
    routed = Router.from_checkpoint(outcome.checkpoint, pool, router, callers)
    env = RoutingEnv({**env_config, "experts": "actors"})
    obs = [env.reset(seed=i)[0] for i in range(8)]
    batch = {k: np.stack([o[k] for o in obs]) for k in ("obs", "action_mask")}
    assert (routed.actions(obs) == greedy_actions(routed.module, batch)).all()
    with torch.no_grad():
        assert np.isfinite(batch["obs"]).all()
    result = routed.route(data.Example.from_row(rows[0]))
    assert 1 <= result.calls <= 2 and result.route[0] in pool.names and result.score is not None
