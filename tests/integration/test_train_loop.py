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
from der_ray.routing.training import LATEST, latest_checkpoint, train_router

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


def test_a_dangling_pointer_or_temp_dir_is_ignored(tmp_path: Path):
    root = tmp_path / "checkpoints"
    (root / ".tmp_abc").mkdir(parents=True)  # what a kill during save leaves behind
    assert latest_checkpoint(tmp_path) is None
    (root / LATEST).write_text("iter_000009")
    assert latest_checkpoint(tmp_path) is None


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
