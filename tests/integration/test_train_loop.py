"""The router training loop: atomic checkpoints, LATEST pointer, resume after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from der_ray.config import TrainConfig
from der_ray.errors import ConfigError
from der_ray.routing.algo import build_ppo_config
from der_ray.routing.policy_io import load_module
from der_ray.routing.synthetic import SyntheticRoutingEnv
from der_ray.routing.training import (
    LATEST,
    best_checkpoint,
    latest_checkpoint,
    policy_checkpoint,
    train_router,
)

pytestmark = pytest.mark.integration
TRAIN = TrainConfig(iterations=2, train_batch_size=64, minibatch_size=64, num_epochs=2)


def test_checkpoints_and_resume(ray_session, tmp_path: Path):
    cfg = build_ppo_config(SyntheticRoutingEnv, {}, TRAIN)
    first = train_router(cfg, TRAIN, tmp_path, checkpoint_every=1)
    assert first.iterations == 2 and first.checkpoint.name == "iter_000002"
    assert (tmp_path / "checkpoints" / LATEST).read_text() == "iter_000002"
    assert latest_checkpoint(tmp_path) == first.checkpoint
    load_module(first.checkpoint)  # the policy loads without an algorithm
    more = TrainConfig(iterations=3, train_batch_size=64, minibatch_size=64, num_epochs=2)
    second = train_router(build_ppo_config(SyntheticRoutingEnv, {}, more), more, tmp_path)
    assert second.resumed_from == 2 and second.iterations == 3
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("iter_*")) == ["iter_000002", "iter_000003"]
    with pytest.raises(ConfigError, match="absolute"):
        train_router(cfg, TRAIN, "relative/dir")


def test_dev_selection_keeps_the_best_checkpoint(ray_session, tmp_path: Path):
    scores = iter([0.2, 0.5, 0.4, 0.1])  # what the dev rows would say at iterations 1..4
    seen: list[str] = []

    def select(checkpoint: Path) -> float:
        load_module(checkpoint)  # a complete checkpoint, written before it is scored
        seen.append(checkpoint.name)
        return next(scores)

    four = TrainConfig(iterations=4, train_batch_size=64, minibatch_size=64, num_epochs=1)
    out = train_router(build_ppo_config(SyntheticRoutingEnv, {}, four), four, tmp_path, checkpoint_every=10,
                       select=select, select_every=1)
    assert seen == ["iter_000001", "iter_000002", "iter_000003", "iter_000004"]
    assert out.best == tmp_path / "checkpoints" / "best_000002" and out.best_score == 0.5
    assert best_checkpoint(tmp_path) == (out.best, 0.5)
    assert policy_checkpoint(tmp_path) == out.best  # not LATEST (iter_000004)
    assert latest_checkpoint(tmp_path) == out.checkpoint and out.checkpoint.name == "iter_000004"
    load_module(out.best)
    # Resuming keeps the best score to beat; training again without selection drops BEST.
    six = TrainConfig(iterations=6, train_batch_size=64, minibatch_size=64, num_epochs=1)
    more = train_router(build_ppo_config(SyntheticRoutingEnv, {}, six), six, tmp_path,
                        select=lambda _ckpt: 0.45, select_every=1)
    assert more.best == out.best and [s["score"] for s in more.selections] == [0.45, 0.45]
    seven = TrainConfig(iterations=7, train_batch_size=64, minibatch_size=64, num_epochs=1)
    train_router(build_ppo_config(SyntheticRoutingEnv, {}, seven), seven, tmp_path)
    assert best_checkpoint(tmp_path) is None and policy_checkpoint(tmp_path) == latest_checkpoint(tmp_path)
    with pytest.raises(ConfigError, match="select_every"):
        train_router(build_ppo_config(SyntheticRoutingEnv, {}, four), four, tmp_path, select=select,
                     select_every=0)


def test_a_dangling_pointer_or_temp_dir_is_ignored(tmp_path: Path):
    root = tmp_path / "checkpoints"
    (root / ".tmp_abc").mkdir(parents=True)  # what a kill during save leaves behind
    assert latest_checkpoint(tmp_path) is None
    (root / LATEST).write_text("iter_000009")
    assert latest_checkpoint(tmp_path) is None
    (root / "BEST").write_text("not json")
    assert best_checkpoint(tmp_path) is None and policy_checkpoint(tmp_path) is None


_KILLED_TRAINER = """
import os, sys, ray
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
from der_ray.config import TrainConfig
from der_ray.routing.algo import build_ppo_config
from der_ray.routing.synthetic import SyntheticRoutingEnv
from der_ray.routing.training import train_router
t = TrainConfig(iterations=1000, train_batch_size=64, minibatch_size=64, num_epochs=1)
train_router(build_ppo_config(SyntheticRoutingEnv, {}, t), t, sys.argv[1], checkpoint_every=1,
             on_result=lambda it, r: print("ITER", it, flush=True))
"""


def test_resume_after_sigkill(ray_session, tmp_path: Path):
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_TRAINER, str(tmp_path)], stdout=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        seen = 0
        while seen < 3 and time.monotonic() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if line.startswith("ITER"):
                seen = int(line.split()[1])
        assert seen >= 3, "the trainer did not get going"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its Ray processes, mid-iteration
        proc.wait()
    found = latest_checkpoint(tmp_path)
    assert found is not None and int(found.name.split("_")[1]) >= 2
    more = TrainConfig(iterations=int(found.name.split("_")[1]) + 1, train_batch_size=64, minibatch_size=64)
    out = train_router(build_ppo_config(SyntheticRoutingEnv, {}, more), more, tmp_path)
    assert out.resumed_from == int(found.name.split("_")[1]) and out.iterations == more.iterations
