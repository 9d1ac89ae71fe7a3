"""RouterRLModule: the DER router's policy and value networks (RLlib new API stack, torch).

Input: the router env's ``Dict`` observation ``{"obs": (B, D) float, "action_mask": (B, N+1) in {0, 1}}``.
RLlib's default env-to-module connectors do not flatten a ``Dict`` observation, so it reaches every
forward pass as the nested dict ``batch[Columns.OBS]`` (the learner's connectors and GAE's
``compute_values`` call too); this module reads both keys without changing the batch.

Networks: a policy MLP (``model_config["hidden"]``, ``model_config["activation"]`` tanh or relu) over
``obs`` gives N+1 logits; masked actions get ``+clamp(log(mask), min=FLOAT_MIN)`` (RLlib's
``action_masking_rlm.py``), so exploration, inference and the PPO loss never pick them. The value MLP
has its own trunk (no gradient interference between the policy and the value loss); its features are
returned as ``Columns.EMBEDDINGS`` by ``_forward_train`` and reused by ``compute_values``. The value
network is built also when ``inference_only`` so that learner weights load into env runners as is.

Action semantics (which index is STOP) belong to the env; this module only needs N+1 logits and the
mask. Imports: torch, gymnasium, ray.rllib.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gymnasium as gym
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis import ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule
from ray.rllib.utils.annotations import override
from ray.rllib.utils.torch_utils import FLOAT_MIN
from torch import nn

#: key of the feature vector inside the Dict observation
OBS_KEY = "obs"
#: key of the action mask inside the Dict observation (1 = allowed)
MASK_KEY = "action_mask"

DEFAULT_HIDDEN = (128, 128)
_ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}


def _mlp(in_dim: int, hidden: list[int], activation: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [nn.Linear(in_dim, size), activation()]
        in_dim = size
    return nn.Sequential(*layers)


def mask_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``logits + clamp(log(mask), min=FLOAT_MIN)``: masked entries become about -3.4e38.

    Args:
        logits: ``(B, N+1)``.
        mask: ``(B, N+1)``, 1 = allowed, 0 = masked.

    Returns:
        ``(B, N+1)`` masked logits.
    """
    return logits + torch.clamp(torch.log(mask.to(logits.dtype)), min=FLOAT_MIN)


class RouterRLModule(TorchRLModule, ValueFunctionAPI):
    """Masked categorical policy over N experts + STOP, with a separate value MLP.

    ``model_config``: ``hidden`` (list of layer sizes, default ``[128, 128]``) and ``activation``
    (``"tanh"`` default, or ``"relu"``).

    Example (no Ray needed)::

        import gymnasium as gym, numpy as np, torch
        obs_space = gym.spaces.Dict({"obs": gym.spaces.Box(-np.inf, np.inf, (8,), np.float32),
                                     "action_mask": gym.spaces.Box(0.0, 1.0, (4,), np.float32)})
        m = RouterRLModule(observation_space=obs_space, action_space=gym.spaces.Discrete(4),
                           model_config={"hidden": [32]})
        out = m.forward_inference({"obs": {"obs": torch.zeros(2, 8), "action_mask": torch.ones(2, 4)}})
        out["action_dist_inputs"].shape  # (2, 4)
    """

    @override(TorchRLModule)
    def setup(self) -> None:
        obs_space = self.observation_space
        if not (isinstance(obs_space, gym.spaces.Dict) and OBS_KEY in obs_space.spaces
                and MASK_KEY in obs_space.spaces):
            raise ValueError(f"RouterRLModule needs a Dict observation space with keys {OBS_KEY!r} and "
                             f"{MASK_KEY!r}, got {obs_space}")
        if not isinstance(self.action_space, gym.spaces.Discrete):
            raise ValueError(f"RouterRLModule needs a Discrete action space, got {self.action_space}")
        obs_shape = obs_space[OBS_KEY].shape
        mask_shape = obs_space[MASK_KEY].shape
        assert obs_shape is not None and mask_shape is not None
        n_actions = int(self.action_space.n)
        if tuple(mask_shape) != (n_actions,):
            raise ValueError(f"action_mask shape {mask_shape} does not match {n_actions} actions")

        mc = self.model_config
        config: dict[str, Any] = dataclasses.asdict(mc) if dataclasses.is_dataclass(mc) else dict(mc or {})
        hidden = [int(h) for h in config.get("hidden", DEFAULT_HIDDEN)]
        act_name = config.get("activation", "tanh")
        if act_name not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {act_name!r}")
        activation = _ACTIVATIONS[act_name]
        in_dim = int(obs_shape[0])
        out_dim = hidden[-1] if hidden else in_dim

        self._pi_trunk = _mlp(in_dim, hidden, activation)
        self._pi_head = nn.Linear(out_dim, n_actions)
        self._vf_trunk = _mlp(in_dim, hidden, activation)
        self._vf_head = nn.Linear(out_dim, 1)
        # Small policy-head weights start PPO near the uniform (masked) policy.
        nn.init.orthogonal_(self._pi_head.weight, gain=0.01)
        nn.init.zeros_(self._pi_head.bias)

    def _split(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        obs = batch[Columns.OBS]
        if not isinstance(obs, dict) or OBS_KEY not in obs or MASK_KEY not in obs:
            raise ValueError(f"batch[{Columns.OBS!r}] must be a dict with keys {OBS_KEY!r} and {MASK_KEY!r} "
                             f"(a flattened observation reached the module?)")
        return obs[OBS_KEY].float(), obs[MASK_KEY]

    def _masked_logits(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return mask_logits(self._pi_head(self._pi_trunk(features)), mask)  # (B, N+1)

    @override(TorchRLModule)
    def _forward(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Inference and exploration: masked logits only."""
        features, mask = self._split(batch)
        return {Columns.ACTION_DIST_INPUTS: self._masked_logits(features, mask)}

    @override(TorchRLModule)
    def _forward_train(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Training: masked logits plus the value trunk's features (reused by ``compute_values``)."""
        features, mask = self._split(batch)
        return {
            Columns.ACTION_DIST_INPUTS: self._masked_logits(features, mask),
            Columns.EMBEDDINGS: self._vf_trunk(features),  # (B, H)
        }

    @override(ValueFunctionAPI)
    def compute_values(self, batch: dict[str, Any], embeddings: Any | None = None) -> torch.Tensor:
        """State values ``(B,)`` (or ``(B, T)`` with a time rank) from the value MLP."""
        if embeddings is None:
            embeddings = self._vf_trunk(self._split(batch)[0])
        return self._vf_head(embeddings).squeeze(-1)
