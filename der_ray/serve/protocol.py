"""The OpenAI-compatible wire protocol as pure functions: validate a request body into a
``GenerationRequest``, and build response bodies, SSE chunks, metadata headers and error bodies.

No Ray, no FastAPI: everything here is unit-tested on plain dicts. Validation raises
``RequestValidationError`` (with OpenAI's ``param`` and a stable ``code``) or ``UnknownModelError``;
the ingress maps them to 4xx in one place. Unknown fields are rejected ("unrecognized request
argument", as OpenAI does) rather than silently ignored; supported-but-unimplemented ones (``n > 1``,
tools, logprobs, ...) get their own message. Imports: stdlib, errors, serve.config.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from der_ray.errors import DerRayError, RequestValidationError, UnknownModelError
from der_ray.serve.config import LimitsConfig

Endpoint = Literal["chat", "completion"]

_COMMON = {"model", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options", "stop", "seed",
           "user", "presence_penalty", "frequency_penalty", "logprobs", "logit_bias", "metadata", "store"}
_ALLOWED: dict[str, set[str]] = {
    "chat": _COMMON | {"messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice",
                       "functions", "function_call", "response_format", "parallel_tool_calls"},
    "completion": _COMMON | {"prompt", "best_of", "echo", "suffix"},
}
_ROLES = {"system", "developer", "user", "assistant"}


@dataclass(frozen=True)
class GenerationRequest:
    """A validated request, as every backend (expert, router, fusion) receives it."""

    endpoint: Endpoint
    model: str
    prompt: str
    """The user text: the conversation flattened for chat (see ``flatten_messages``), raw for completions."""
    apply_format: bool
    """Chat requests use each expert's own prompt format; completions send the raw prompt."""
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])


@dataclass(frozen=True)
class Completion:
    """What a backend produced for one request."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    meta: dict[str, Any]
    """``graph``, ``route``, ``experts_per_step``, ``cost`` and graph-specific timings."""


# Stream events: a backend's stream yields Started, then Delta*, then Done or Failed. Errors travel as
# values so that a failure mid-stream reaches the client as an SSE error event, not a broken socket.
@dataclass(frozen=True)
class Started:
    meta: dict[str, Any]


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Done:
    completion: Completion


@dataclass(frozen=True)
class Failed:
    error: DerRayError


StreamEvent = Started | Delta | Done | Failed


# ------------------------------------------------------------------------------------------ validation

def parse_body(raw: bytes) -> dict[str, Any]:
    """The JSON object of a request body."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestValidationError(f"request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise RequestValidationError(f"request body must be a JSON object, got {type(body).__name__}",
                                     code="invalid_json")
    return body


def parse_request(endpoint: Endpoint, body: dict[str, Any], limits: LimitsConfig,
                  models: Sequence[str]) -> GenerationRequest:
    """Validate an OpenAI request body against ``limits`` and the served ``models``.

    Raises:
        RequestValidationError: wrong type, missing field, value out of range or unsupported parameter.
        UnknownModelError: ``model`` is not one of ``models``.
    """
    unknown = sorted(set(body) - _ALLOWED[endpoint])
    if unknown:
        raise RequestValidationError(f"Unrecognized request argument supplied: {unknown[0]}",
                                     param=unknown[0], code="unrecognized_argument")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestValidationError("'model' is required and must be a non-empty string", param="model")
    _check_unsupported(body)
    if endpoint == "chat":
        prompt = flatten_messages(body.get("messages"), limits)
    else:
        prompt = _completion_prompt(body.get("prompt"))
    if len(prompt) > limits.max_prompt_chars:
        raise RequestValidationError(
            f"prompt is {len(prompt)} characters; the limit is {limits.max_prompt_chars}",
            param="messages" if endpoint == "chat" else "prompt", code="context_length_exceeded")
    if model not in models:  # after the body checks: a typo'd model must not hide a malformed body
        raise UnknownModelError(f"The model {model!r} does not exist; served models: {', '.join(models)}")
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _integer(body, key, limits.default_max_tokens)
    if not 1 <= max_tokens <= limits.max_tokens_cap:
        raise RequestValidationError(f"'{key}' must be in [1, {limits.max_tokens_cap}], got {max_tokens}",
                                     param=key)
    temperature = _number(body, "temperature", 0.0)
    if not 0 <= temperature <= 2:
        raise RequestValidationError(f"'temperature' must be in [0, 2], got {temperature}",
                                     param="temperature")
    top_p = _number(body, "top_p", 1.0)
    if not 0 < top_p <= 1:
        raise RequestValidationError(f"'top_p' must be in (0, 1], got {top_p}", param="top_p")
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise RequestValidationError("'seed' must be an integer", param="seed")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise RequestValidationError("'stream' must be a boolean", param="stream")
    return GenerationRequest(
        endpoint=endpoint, model=model, prompt=prompt, apply_format=endpoint == "chat",
        max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=_stop(body.get("stop"), limits),
        seed=seed, stream=stream, include_usage=_include_usage(body.get("stream_options"), stream),
    )


def flatten_messages(messages: Any, limits: LimitsConfig) -> str:
    """Chat messages as one user text for the experts (whose prompt formats take a single message).

    A lone user message is sent as is; otherwise system text comes first, then the earlier turns as a
    ``User:``/``Assistant:`` transcript, then the last message.
    """
    if messages is None:
        raise RequestValidationError("'messages' is required", param="messages")
    if not isinstance(messages, list):
        raise RequestValidationError("'messages' must be an array", param="messages")
    if not messages:
        raise RequestValidationError("'messages' must contain at least one message", param="messages")
    if len(messages) > limits.max_messages:
        raise RequestValidationError(f"at most {limits.max_messages} messages are accepted", param="messages")
    system: list[str] = []
    turns: list[tuple[str, str]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RequestValidationError(f"messages[{i}] must be an object", param=f"messages[{i}]")
        role = m.get("role")
        if role == "tool" or role == "function":
            raise RequestValidationError(f"messages[{i}].role {role!r} is not supported (no tool calling)",
                                         param=f"messages[{i}].role", code="unsupported_parameter")
        if role not in _ROLES:
            raise RequestValidationError(f"messages[{i}].role must be one of {sorted(_ROLES)}, got {role!r}",
                                         param=f"messages[{i}].role")
        text = _content_text(m.get("content"), f"messages[{i}].content")
        if role in ("system", "developer"):
            system.append(text)
        else:
            turns.append((str(role), text))
    if not any(r == "user" for r, _ in turns):
        raise RequestValidationError("'messages' must contain a user message", param="messages")
    if not any(t.strip() for _, t in turns):
        raise RequestValidationError("the user messages are empty", param="messages")
    if len(turns) == 1 and not system:
        return turns[0][1]
    lines = [s for s in system if s.strip()]
    *history, (last_role, last_text) = turns
    lines += [f"{'User' if r == 'user' else 'Assistant'}: {t}" for r, t in history]
    lines.append(last_text if last_role == "user" else f"Assistant: {last_text}")
    return "\n".join(lines)


def _content_text(content: Any, param: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"),
                                                                                          str):
                raise RequestValidationError(f"{param}[{j}]: only text parts are supported",
                                             param=f"{param}[{j}]", code="unsupported_parameter")
            parts.append(part["text"])
        return "".join(parts)
    raise RequestValidationError(f"{param} must be a string or an array of text parts", param=param)


def _completion_prompt(prompt: Any) -> str:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, list):
        raise RequestValidationError("'prompt' must be a string (batches and token arrays are not supported)",
                                     param="prompt", code="unsupported_parameter")
    if not isinstance(prompt, str):
        raise RequestValidationError("'prompt' is required and must be a string", param="prompt")
    if not prompt.strip():
        raise RequestValidationError("'prompt' must not be empty", param="prompt")
    return prompt


def _check_unsupported(body: dict[str, Any]) -> None:
    def bad(param: str, why: str) -> RequestValidationError:
        return RequestValidationError(f"'{param}' {why}", param=param, code="unsupported_parameter")

    n = body.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise RequestValidationError("'n' must be a positive integer", param="n")
    if n is not None and n > 1:
        raise bad("n", "> 1 is not supported (one choice per request)")
    if body.get("best_of") not in (None, 1):
        raise bad("best_of", "is not supported")
    for key in ("tools", "functions"):
        if body.get(key):
            raise bad(key, "is not supported (no tool calling)")
    for key in ("tool_choice", "function_call"):
        if body.get(key) not in (None, "none"):
            raise bad(key, "is not supported (no tool calling)")
    if body.get("logprobs") not in (None, False, 0) or body.get("top_logprobs") not in (None, 0):
        raise bad("logprobs", "is not supported")
    if body.get("logit_bias"):
        raise bad("logit_bias", "is not supported")
    if body.get("echo") or body.get("suffix"):
        raise bad("echo" if body.get("echo") else "suffix", "is not supported")
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        raise bad("response_format", "only {'type': 'text'} is supported")
    for key in ("presence_penalty", "frequency_penalty"):
        value = body.get(key)
        if value is not None:
            if not _is_number(value):
                raise RequestValidationError(f"'{key}' must be a number", param=key)
            if value != 0:
                raise bad(key, "is not supported (only 0)")


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _number(body: dict[str, Any], key: str, default: float) -> float:
    v = body.get(key)
    if v is None:
        return default
    if not _is_number(v):
        raise RequestValidationError(f"'{key}' must be a number, got {type(v).__name__}", param=key)
    return float(v)


def _integer(body: dict[str, Any], key: str, default: int) -> int:
    v = body.get(key)
    if v is None:
        return default
    if not isinstance(v, int) or isinstance(v, bool):
        raise RequestValidationError(f"'{key}' must be an integer, got {type(v).__name__}", param=key)
    return v


def _stop(stop: Any, limits: LimitsConfig) -> tuple[str, ...]:
    if stop is None:
        return ()
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, list) or not all(isinstance(s, str) and s for s in items):
        raise RequestValidationError("'stop' must be a non-empty string or an array of them", param="stop")
    if len(items) > limits.max_stop:
        raise RequestValidationError(f"'stop' accepts at most {limits.max_stop} strings", param="stop")
    return tuple(items)


def _include_usage(options: Any, stream: bool) -> bool:
    if options is None:
        return False
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise RequestValidationError("'stream_options' must be {'include_usage': bool}",
                                     param="stream_options")
    if not stream:
        raise RequestValidationError("'stream_options' is only allowed with stream=true",
                                     param="stream_options")
    return bool(options.get("include_usage", False))


# ------------------------------------------------------------------------------------------ responses

def usage(c: Completion) -> dict[str, int]:
    return {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
            "total_tokens": c.prompt_tokens + c.completion_tokens}


def response_body(req: GenerationRequest, c: Completion, created: int | None = None) -> dict[str, Any]:
    """A non-streaming ``chat.completion`` or ``text_completion`` body."""
    created = created or int(time.time())
    if req.endpoint == "chat":
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": c.text},
                                  "finish_reason": c.finish_reason, "logprobs": None}
        obj, prefix = "chat.completion", "chatcmpl-"
    else:
        choice = {"index": 0, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None}
        obj, prefix = "text_completion", "cmpl-"
    return {"id": prefix + req.request_id, "object": obj, "created": created, "model": req.model,
            "choices": [choice], "usage": usage(c), "der_ray": c.meta}


def chunk_body(req: GenerationRequest, created: int, *, text: str | None = None, first: bool = False,
               finish_reason: str | None = None, done: Completion | None = None) -> dict[str, Any]:
    """One streaming chunk. The last one (``done``) carries the finish reason and ``der_ray``
    metadata, and ``usage`` when the client asked for it (``stream_options.include_usage``)."""
    if req.endpoint == "chat":
        delta: dict[str, Any] = {}
        if first:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish_reason,
                                  "logprobs": None}
        obj, prefix = "chat.completion.chunk", "chatcmpl-"
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
        obj, prefix = "text_completion", "cmpl-"
    body: dict[str, Any] = {"id": prefix + req.request_id, "object": obj, "created": created,
                            "model": req.model, "choices": [choice]}
    if done is not None:
        body["der_ray"] = done.meta
        if req.include_usage:
            body["usage"] = usage(done)
    return body


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event line (``data: <json>``)."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


SSE_DONE = sse("[DONE]")


def meta_headers(meta: dict[str, Any]) -> dict[str, str]:
    """``X-DerRay-*`` headers mirroring the ``der_ray`` metadata object (ASCII, one line each)."""
    headers = {"X-DerRay-Graph": str(meta.get("graph", ""))}
    if "route" in meta:
        headers["X-DerRay-Route"] = ",".join(meta["route"])
    if "experts_per_step" in meta:
        headers["X-DerRay-Experts-Per-Step"] = json.dumps(meta["experts_per_step"], separators=(",", ":"))
    if "cost" in meta:
        headers["X-DerRay-Cost"] = json.dumps(meta["cost"], separators=(",", ":"), sort_keys=True)
    for key, value in meta.get("timings_ms", {}).items():
        headers[f"X-DerRay-{key.replace('_', '-').title()}-Ms"] = f"{value:.1f}"
    return {k: v.encode("ascii", "replace").decode() for k, v in headers.items()}


def error_body(message: str, type_: str, *, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error envelope: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def models_body(names: Sequence[str], created: int = 0) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": n, "object": "model", "created": created, "owned_by": "der_ray"}
                                       for n in names]}


def chunk_text(text: str, size: int = 16) -> list[str]:
    """Split a finished answer into stream deltas (graphs that generate a hop whole stream it this way)."""
    return [text[i:i + size] for i in range(0, len(text), size)] if text else []


class StopCutter:
    """Turns the growing text of a token stream into deltas that never show a stop string: the last
    ``max(len(stop)) - 1`` characters are held back until they cannot begin a stop string."""

    def __init__(self, stop: Sequence[str]) -> None:
        self.stop = tuple(stop)
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.sent = 0

    def feed(self, text: str) -> str:
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        end = cut if cut >= 0 else max(self.sent, len(text) - self.hold)
        delta, self.sent = text[self.sent:end], max(self.sent, end)
        return delta

    def finish(self, final_text: str) -> str:
        """The rest of the final (already stop-cut) text."""
        delta = final_text[self.sent:]
        self.sent = len(final_text)
        return delta
