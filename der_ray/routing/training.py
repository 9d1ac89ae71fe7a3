"""Train the router with PPO: iterations, atomic checkpoints, resume after a kill.

Checkpoints go to ``<storage>/checkpoints/iter_<n>``: each is written by ``algo.save_to_path`` into
a temporary directory and renamed into place, then ``<storage>/checkpoints/LATEST`` is replaced
atomically with its name. A killed job therefore leaves the previous complete checkpoint as LATEST,
and a restarted job resumes from it (the iteration counter continues). Storage paths are absolute:
RLlib's pyarrow filesystem rejects relative ones, and under ``ray job submit`` a relative path
would land in the job's ephemeral working directory.
Imports: core, routing.algo, ray.rllib (through the algorithm).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from der_ray.config import TrainConfig
from der_ray.errors import ConfigError

logger = logging.getLogger(__name__)
LATEST = "LATEST"


@dataclass
class TrainOutcome:
    checkpoint: Path
    iterations: int
    resumed_from: int
    history: list[dict[str, Any]] = field(default_factory=list)


def latest_checkpoint(storage: Path) -> Path | None:
    """The newest complete checkpoint under ``storage``, if any."""
    pointer = storage / "checkpoints" / LATEST
    if not pointer.is_file():
        return None
    path = storage / "checkpoints" / pointer.read_text().strip()
    return path if path.is_dir() else None


def save_checkpoint(algo: Any, storage: Path, iteration: int, keep: int = 2) -> Path:
    """Write ``iter_<iteration>`` atomically, point LATEST at it, prune older checkpoints."""
    root = storage / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"iter_{iteration:06d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp_"))
    try:
        algo.save_to_path(str(tmp))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fd, ptr_tmp = tempfile.mkstemp(dir=root, prefix=".latest_")
    with os.fdopen(fd, "w") as f:
        f.write(final.name)
    os.replace(ptr_tmp, root / LATEST)
    for old in sorted(p for p in root.glob("iter_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def train_router(algo_config: Any, train: TrainConfig, storage: str | os.PathLike[str], *,
                 checkpoint_every: int = 5, resume: bool = True,
                 on_result: Callable[[int, dict[str, Any]], None] | None = None) -> TrainOutcome:
    """Build the PPO algorithm, restore the latest checkpoint if asked, train, checkpoint.

    Args:
        algo_config: a ``PPOConfig`` (``routing.algo.build_ppo_config``).
        train: iterations and the rest of the training settings.
        storage: absolute directory for checkpoints.
        checkpoint_every: iterations between checkpoints (the last one is always saved).
        resume: continue from ``LATEST`` when it exists.
        on_result: called with (iteration, result) after every iteration (logging, progress).
    """
    root = Path(storage)
    if not root.is_absolute():
        raise ConfigError(f"storage must be an absolute path, got {str(storage)!r}")
    algo = algo_config.build_algo()
    try:
        start = 0
        found = latest_checkpoint(root) if resume else None
        if found is not None:
            algo.restore_from_path(str(found))
            # Env runners (local and remote) can keep their fresh weights after a restore
            # (ray-2.60 notes §1.2; seen here with the local runner too): push the learner's.
            algo.env_runner_group.sync_weights(from_worker_or_learner_group=algo.learner_group,
                                               inference_only=True)
            start = int(algo.iteration)
            logger.info("resumed from %s (iteration %d)", found, start)
        outcome = TrainOutcome(checkpoint=found or root, iterations=start, resumed_from=start)
        for it in range(start + 1, train.iterations + 1):
            result = algo.train()
            outcome.history.append({"iteration": it, **_flat(result)})
            if on_result is not None:
                on_result(it, result)
            if it % checkpoint_every == 0 or it == train.iterations:
                outcome.checkpoint = save_checkpoint(algo, root, it)
            outcome.iterations = it
        return outcome
    finally:
        algo.stop()


def _flat(result: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in result.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "/"))
        elif isinstance(v, int | float | str | bool):
            out[key] = v
    return out
