"""Load a trained router RLModule from an RLlib checkpoint without Ray, and act greedily.

An ``algo.save_to_path(dir)`` checkpoint (or a Tune trial's ``checkpoint_00000N``) keeps the module at
``<dir>/learner_group/learner/rl_module/default_policy``; ``RLModule.from_checkpoint`` on that path
needs no ``ray.init`` (what a Serve replica or ``jobs/evaluate_router.py`` does). Paths are made
absolute first: RLlib reads them through pyarrow, which rejects relative paths ("URI has empty
scheme"). The module class must be importable (``der_ray.routing.module``).

``greedy_actions`` is the inference policy: argmax over logits with masked actions set to ``-inf``
here as well, so a masked action is never returned even when a logit is so large that RLlib's
``FLOAT_MIN`` mask could not outweigh it. Imports: errors, routing.module, torch, numpy, ray.rllib.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from ray.rllib.core import (
    COMPONENT_LEARNER,
    COMPONENT_LEARNER_GROUP,
    COMPONENT_RL_MODULE,
    DEFAULT_MODULE_ID,
)
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModule

from der_ray.errors import RoutingError
from der_ray.routing.module import MASK_KEY, OBS_KEY, RouterRLModule

#: where an algorithm checkpoint keeps the single-agent module, relative to the checkpoint dir
MODULE_SUBPATH = Path(COMPONENT_LEARNER_GROUP, COMPONENT_LEARNER, COMPONENT_RL_MODULE, DEFAULT_MODULE_ID)


def module_path(checkpoint_dir: str | os.PathLike[str]) -> Path:
    """``<checkpoint_dir>/learner_group/learner/rl_module/default_policy``, absolute.

    Raises:
        RoutingError: the checkpoint dir or the module dir inside it does not exist.
    """
    ckpt = Path(checkpoint_dir).expanduser().resolve()
    if not ckpt.is_dir():
        raise RoutingError(f"router checkpoint not found: {ckpt} is not a directory")
    path = ckpt / MODULE_SUBPATH
    if not path.is_dir():
        raise RoutingError(f"{ckpt} is not an RLlib algorithm checkpoint: {MODULE_SUBPATH} is missing "
                           f"(expected a directory written by algo.save_to_path() or a Tune checkpoint_*)")
    return path


def load_module(checkpoint_dir: str | os.PathLike[str]) -> RouterRLModule:
    """Load the trained router module (eval mode, CPU) from an algorithm checkpoint; no Ray needed.

    Raises:
        RoutingError: no module in the checkpoint, or it is not a ``RouterRLModule``.
    """
    path = module_path(checkpoint_dir)
    module = RLModule.from_checkpoint(str(path))
    if not isinstance(module, RouterRLModule):
        raise RoutingError(f"{path} holds a {type(module).__name__}, not a RouterRLModule")
    module.eval()
    return module


def greedy_actions(module: RouterRLModule, obs: Mapping[str, np.ndarray]) -> np.ndarray:
    """The most likely allowed action of each observation in a batch.

    Args:
        module: a router module (trained or loaded).
        obs: ``{"obs": (B, D) float, "action_mask": (B, N+1)}``, as the env returns them, stacked.

    Returns:
        ``(B,)`` int64 actions; ``action_mask[i, actions[i]]`` is always 1.

    Raises:
        RoutingError: missing keys, shapes that do not match the module, or a row with no allowed action.
    """
    if OBS_KEY not in obs or MASK_KEY not in obs:
        raise RoutingError(f"observation needs keys {OBS_KEY!r} and {MASK_KEY!r}, got {sorted(obs)}")
    feats = np.asarray(obs[OBS_KEY], dtype=np.float32)
    mask = np.asarray(obs[MASK_KEY], dtype=np.float32)
    obs_shape = module.observation_space[OBS_KEY].shape  # type: ignore[index]
    n_actions = int(module.action_space.n)  # type: ignore[union-attr]
    if feats.ndim != 2 or feats.shape[1:] != tuple(obs_shape):
        raise RoutingError(f"{OBS_KEY!r} must have shape (B, {obs_shape[0]}), got {feats.shape}")
    if mask.shape != (feats.shape[0], n_actions):
        raise RoutingError(f"{MASK_KEY!r} must have shape ({feats.shape[0]}, {n_actions}), got {mask.shape}")
    allowed = mask > 0
    if not allowed.any(axis=1).all():
        rows = np.flatnonzero(~allowed.any(axis=1)).tolist()
        raise RoutingError(f"no allowed action in observation rows {rows[:10]}")
    with torch.no_grad():
        out = module.forward_inference({Columns.OBS: {OBS_KEY: torch.from_numpy(feats),
                                                      MASK_KEY: torch.from_numpy(mask)}})
        logits = out[Columns.ACTION_DIST_INPUTS].float()  # (B, N+1)
        logits = torch.where(torch.from_numpy(allowed), logits, torch.tensor(-torch.inf))
    return logits.argmax(dim=-1).numpy().astype(np.int64)


def greedy_batch(module: RouterRLModule, observations: Sequence[Mapping[str, np.ndarray]]) -> np.ndarray:
    """``greedy_actions`` over a list of single observations (as ``Episode.observation`` returns them)."""
    return greedy_actions(module, {k: np.stack([o[k] for o in observations]) for k in (OBS_KEY, MASK_KEY)})
