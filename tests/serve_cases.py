"""Serve test helpers shared by the unit and integration tests: malformed OpenAI requests and an
untrained router checkpoint.

Each case: (id, endpoint, body as a dict or raw bytes, expected status, expected ``error.param`` or None).
Limits assumed: max_tokens_cap=32, max_prompt_chars=2000, max_messages=64, max_stop=4 (the test app's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CAP, PROMPT_CAP = 32, 2000
_U = [{"role": "user", "content": "hi"}]


def _chat(**kw: Any) -> dict[str, Any]:
    return {"model": "tiny-chat", "messages": _U, **kw}


MALFORMED: list[tuple[str, str, Any, int, str | None]] = [
    ("invalid-json", "chat", b'{"model": "tiny-chat", "messages": [', 400, None),
    ("not-utf8", "chat", b"\xff\xfe\x00", 400, None),
    ("json-array", "chat", b"[1, 2]", 400, None),
    ("json-string", "completion", b'"hello"', 400, None),
    ("empty-body", "chat", b"", 400, None),
    ("missing-model", "chat", {"messages": _U}, 400, "model"),
    ("model-not-string", "chat", {"model": 3, "messages": _U}, 400, "model"),
    ("unknown-model", "chat", {"model": "gpt-9", "messages": _U}, 404, "model"),
    ("missing-messages", "chat", {"model": "tiny-chat"}, 400, "messages"),
    ("empty-messages", "chat", _chat(messages=[]), 400, "messages"),
    ("messages-not-list", "chat", _chat(messages="hi"), 400, "messages"),
    ("message-not-object", "chat", _chat(messages=["hi"]), 400, "messages[0]"),
    ("bad-role", "chat", _chat(messages=[{"role": "robot", "content": "hi"}]), 400, "messages[0].role"),
    ("tool-role", "chat", _chat(messages=[{"role": "tool", "content": "x"}]), 400, "messages[0].role"),
    ("content-not-string", "chat", _chat(messages=[{"role": "user", "content": 5}]), 400,
     "messages[0].content"),
    ("image-part", "chat",
     _chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
     400, "messages[0].content[0]"),
    ("only-system", "chat", _chat(messages=[{"role": "system", "content": "be nice"}]), 400, "messages"),
    ("blank-user", "chat", _chat(messages=[{"role": "user", "content": "   "}]), 400, "messages"),
    ("too-many-messages", "chat", _chat(messages=_U * 65), 400, "messages"),
    ("prompt-too-long", "chat", _chat(messages=[{"role": "user", "content": "x" * (PROMPT_CAP + 1)}]),
     400, "messages"),
    ("max-tokens-zero", "chat", _chat(max_tokens=0), 400, "max_tokens"),
    ("max-tokens-negative", "chat", _chat(max_tokens=-5), 400, "max_tokens"),
    ("max-tokens-over-cap", "chat", _chat(max_tokens=CAP + 1), 400, "max_tokens"),
    ("max-tokens-string", "chat", _chat(max_tokens="10"), 400, "max_tokens"),
    ("max-tokens-float", "chat", _chat(max_tokens=4.5), 400, "max_tokens"),
    ("max-completion-tokens-zero", "chat", _chat(max_completion_tokens=0), 400, "max_completion_tokens"),
    ("temperature-string", "chat", _chat(temperature="hot"), 400, "temperature"),
    ("temperature-negative", "chat", _chat(temperature=-1), 400, "temperature"),
    ("temperature-too-high", "chat", _chat(temperature=3), 400, "temperature"),
    ("top-p-zero", "chat", _chat(top_p=0), 400, "top_p"),
    ("stream-string", "chat", _chat(stream="yes"), 400, "stream"),
    ("stream-options-without-stream", "chat", _chat(stream_options={"include_usage": True}), 400,
     "stream_options"),
    ("stop-empty-string", "chat", _chat(stop=[""]), 400, "stop"),
    ("stop-too-many", "chat", _chat(stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    ("stop-number", "chat", _chat(stop=3), 400, "stop"),
    ("seed-string", "chat", _chat(seed="1"), 400, "seed"),
    ("n-2", "chat", _chat(n=2), 400, "n"),
    ("n-zero", "chat", _chat(n=0), 400, "n"),
    ("tools", "chat", _chat(tools=[{"type": "function", "function": {"name": "f"}}]), 400, "tools"),
    ("tool-choice", "chat", _chat(tool_choice="required"), 400, "tool_choice"),
    ("logprobs", "chat", _chat(logprobs=True), 400, "logprobs"),
    ("top-logprobs", "chat", _chat(top_logprobs=3), 400, "logprobs"),
    ("logit-bias", "chat", _chat(logit_bias={"1": 5}), 400, "logit_bias"),
    ("response-format-json", "chat", _chat(response_format={"type": "json_object"}), 400, "response_format"),
    ("presence-penalty", "chat", _chat(presence_penalty=0.5), 400, "presence_penalty"),
    ("unknown-field", "chat", _chat(foo=1), 400, "foo"),
    ("completion-missing-prompt", "completion", {"model": "tiny-base"}, 400, "prompt"),
    ("completion-empty-prompt", "completion", {"model": "tiny-base", "prompt": ""}, 400, "prompt"),
    ("completion-token-prompt", "completion", {"model": "tiny-base", "prompt": [1, 2, 3]}, 400, "prompt"),
    ("completion-batch", "completion", {"model": "tiny-base", "prompt": ["a", "b"]}, 400, "prompt"),
    ("completion-messages", "completion", {"model": "tiny-base", "messages": _U}, 400, "messages"),
    ("completion-echo", "completion", {"model": "tiny-base", "prompt": "a", "echo": True}, 400, "echo"),
    ("completion-best-of", "completion", {"model": "tiny-base", "prompt": "a", "best_of": 3}, 400, "best_of"),
    ("completion-unknown-model", "completion", {"model": "nope", "prompt": "a"}, 404, "model"),
]


def make_router_checkpoint(root: Path, n_experts: int, t_max: int, seed: int = 0) -> Path:
    """An untrained router module for the hashing encoder, saved where ``policy_io`` looks for it."""
    import gymnasium as gym
    import numpy as np
    import torch

    from der_ray.routing.encoder import HashingEncoder
    from der_ray.routing.module import RouterRLModule
    from der_ray.routing.policy_io import MODULE_SUBPATH

    torch.manual_seed(seed)
    dim = HashingEncoder().dim + n_experts + t_max + 1
    obs_space = gym.spaces.Dict({"obs": gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32),
                                 "action_mask": gym.spaces.Box(0.0, 1.0, (n_experts + 1,), np.float32)})
    module = RouterRLModule(observation_space=obs_space, action_space=gym.spaces.Discrete(n_experts + 1),
                            model_config={"hidden": [16]})
    module.save_to_path(str(root / MODULE_SUBPATH))
    return root
