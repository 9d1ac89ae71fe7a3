"""Train the router with PPO: iterations, atomic checkpoints, resume after a kill.

Checkpoints go to ``<storage>/checkpoints/iter_<n>``: each is written by ``algo.save_to_path`` into
a temporary directory and renamed into place, then ``<storage>/checkpoints/LATEST`` is replaced
atomically with its name. A killed job therefore leaves the previous complete checkpoint as LATEST,
and a restarted job resumes from it (the iteration counter continues).

With a ``select`` function (greedy quality on dev rows, say), every ``select_every`` iterations the
checkpoint just written is scored and, when it beats the best so far, copied to ``best_<n>`` and
named by ``<storage>/checkpoints/BEST`` (JSON: name, iteration, score). ``policy_checkpoint`` is what
routing uses: BEST when training selected one, else LATEST. Why: with a few hundred training
questions PPO's last iterate can be past its best (60 iterations overfit 120 questions; see
``benchmarks/results/routing_eval_60iter.md``). Storage paths are absolute:
RLlib's pyarrow filesystem rejects relative ones, and under ``ray job submit`` a relative path
would land in the job's ephemeral working directory.
Imports: core, routing.algo, ray.rllib (through the algorithm).
"""

from __future__ import annotations

import json
import logging
import math
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
BEST = "BEST"


@dataclass
class TrainOutcome:
    checkpoint: Path
    iterations: int
    resumed_from: int
    history: list[dict[str, Any]] = field(default_factory=list)
    best: Path | None = None
    """The checkpoint ``select`` scored highest (None without ``select``)."""
    best_score: float = -math.inf
    selections: list[dict[str, Any]] = field(default_factory=list)
    """``{"iteration", "score"}`` of every selection point of this run."""


def latest_checkpoint(storage: Path) -> Path | None:
    """The newest complete checkpoint under ``storage``, if any."""
    pointer = storage / "checkpoints" / LATEST
    if not pointer.is_file():
        return None
    path = storage / "checkpoints" / pointer.read_text().strip()
    return path if path.is_dir() else None


def best_checkpoint(storage: Path) -> tuple[Path, float] | None:
    """The checkpoint ``train_router`` selected on dev rows, with its score, if any."""
    pointer = storage / "checkpoints" / BEST
    try:
        meta = json.loads(pointer.read_text())
        path = storage / "checkpoints" / str(meta["name"])
        score = float(meta["score"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (path, score) if path.is_dir() else None


def policy_checkpoint(storage: Path) -> Path | None:
    """The checkpoint to route with: BEST (selected on dev rows) when there is one, else LATEST."""
    best = best_checkpoint(storage)
    return best[0] if best is not None else latest_checkpoint(storage)


def save_checkpoint(algo: Any, storage: Path, iteration: int, keep: int = 2) -> Path:
    """Write ``iter_<iteration>`` atomically, point LATEST at it, prune older checkpoints."""
    root = storage / "checkpoints"
    final = _replace_dir(root, f"iter_{iteration:06d}", lambda tmp: algo.save_to_path(str(tmp)))
    _write_pointer(root / LATEST, final.name)
    for old in sorted(p for p in root.glob("iter_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_best(checkpoint: Path, storage: Path, iteration: int, score: float) -> Path:
    """Copy ``checkpoint`` to ``best_<iteration>`` atomically, point BEST at it, drop older bests."""
    root = storage / "checkpoints"
    final = _replace_dir(root, f"best_{iteration:06d}",
                         lambda tmp: shutil.copytree(checkpoint, tmp, dirs_exist_ok=True))
    _write_pointer(root / BEST, json.dumps({"name": final.name, "iteration": iteration, "score": score}))
    for old in root.glob("best_*"):
        if old.is_dir() and old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _replace_dir(root: Path, name: str, fill: Callable[[Path], Any]) -> Path:
    """Fill a temporary directory under ``root``, then rename it to ``root/name`` (replacing it)."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp_"))
    try:
        fill(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _write_pointer(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name.lower()}_")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def train_router(algo_config: Any, train: TrainConfig, storage: str | os.PathLike[str], *,
                 checkpoint_every: int = 5, resume: bool = True,
                 on_result: Callable[[int, dict[str, Any]], None] | None = None,
                 select: Callable[[Path], float] | None = None, select_every: int = 5) -> TrainOutcome:
    """Build the PPO algorithm, restore the latest checkpoint if asked, train, checkpoint.

    Args:
        algo_config: a ``PPOConfig`` (``routing.algo.build_ppo_config``).
        train: iterations and the rest of the training settings.
        storage: absolute directory for checkpoints.
        checkpoint_every: iterations between checkpoints (the last one is always saved).
        resume: continue from ``LATEST`` when it exists.
        on_result: called with (iteration, result) after every iteration (logging, progress).
        select: scores a checkpoint directory (higher is better); the best one becomes BEST.
        select_every: iterations between selection points (the last iteration is always one).
    """
    root = Path(storage)
    if not root.is_absolute():
        raise ConfigError(f"storage must be an absolute path, got {str(storage)!r}")
    if select_every < 1:
        raise ConfigError(f"select_every must be >= 1, got {select_every}")
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
        previous = best_checkpoint(root) if resume and select is not None else None
        if previous is not None:
            outcome.best, outcome.best_score = previous
        else:  # a BEST from an earlier run (or one without selection now) must not shadow this run's policy
            (root / "checkpoints" / BEST).unlink(missing_ok=True)
        for it in range(start + 1, train.iterations + 1):
            result = algo.train()
            outcome.history.append({"iteration": it, **_flat(result)})
            if on_result is not None:
                on_result(it, result)
            last = it == train.iterations
            selecting = select is not None and (it % select_every == 0 or last)
            if it % checkpoint_every == 0 or last or selecting:
                outcome.checkpoint = save_checkpoint(algo, root, it)
            outcome.iterations = it
            if selecting:
                assert select is not None
                score = float(select(outcome.checkpoint))
                outcome.selections.append({"iteration": it, "score": score})
                if score > outcome.best_score:  # ties keep the earlier (less trained) policy
                    outcome.best = save_best(outcome.checkpoint, root, it, score)
                    outcome.best_score = score
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
