"""The serve layer without Ray: request validation, response building, the error -> HTTP table, the
serve config, and the session adapter's stickiness (against a fake deployment handle)."""

from __future__ import annotations

import json

import pytest
from serve_cases import MALFORMED

from der_ray.errors import (
    AuthenticationError,
    ConfigError,
    DeadlineExceededError,
    DerRayError,
    ExpertTimeoutError,
    ExpertUnavailableError,
    InvalidRequestError,
    RequestValidationError,
    RoutingError,
    UnknownModelError,
)
from der_ray.serve.config import AuthConfig, LimitsConfig, load_serve_config, serve_config_from_dict
from der_ray.serve.protocol import (
    Completion,
    StopCutter,
    chunk_body,
    chunk_text,
    flatten_messages,
    meta_headers,
    parse_body,
    parse_request,
    response_body,
)

LIMITS = LimitsConfig(max_tokens_cap=32, default_max_tokens=8, max_prompt_chars=2000)
MODELS = ["der-router", "deepen-fusion", "tiny-chat", "tiny-base"]


def _parse(endpoint: str, body: object):  # type: ignore[no-untyped-def]
    data = parse_body(body if isinstance(body, bytes) else json.dumps(body).encode())
    return parse_request(endpoint, data, LIMITS, MODELS)  # type: ignore[arg-type]


def test_table_is_large_enough() -> None:
    assert len(MALFORMED) >= 30 and len({c[0] for c in MALFORMED}) == len(MALFORMED)


@pytest.mark.parametrize("case_id,endpoint,body,status,param", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_request_is_a_client_error(case_id, endpoint, body, status, param) -> None:  # type: ignore[no-untyped-def]
    from der_ray.serve.app import error_status

    with pytest.raises(RequestValidationError) as info:
        _parse(endpoint, body)
    got, err = error_status(info.value)
    assert got == status and 400 <= got < 500
    assert set(err["error"]) == {"message", "type", "param", "code"} and err["error"]["message"]
    if param:
        assert err["error"]["param"] == param


def test_valid_chat_request() -> None:
    req = _parse("chat", {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}],
                          "max_tokens": 5, "temperature": 0.5, "stop": "x", "seed": 3, "stream": True,
                          "stream_options": {"include_usage": True}, "n": 1, "user": "u", "logprobs": False})
    assert (req.prompt, req.max_tokens, req.temperature, req.stop, req.seed) == ("hi", 5, 0.5, ("x",), 3)
    assert req.apply_format and req.stream and req.include_usage
    default = _parse("completion", {"model": "tiny-base", "prompt": ["raw text"]})
    assert default.max_tokens == LIMITS.default_max_tokens and not default.apply_format
    assert default.prompt == "raw text"


def test_flatten_messages() -> None:
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": [{"type": "text", "text": "2+2"}, {"type": "text", "text": "?"}]}]
    assert flatten_messages(msgs, LIMITS) == "Be brief.\nUser: Hi\nAssistant: Hello\n2+2?"
    assert flatten_messages([{"role": "user", "content": "q"}], LIMITS) == "q"


def test_responses_and_headers() -> None:
    req = _parse("chat", {"model": "der-router", "messages": [{"role": "user", "content": "q"}],
                          "stream": True, "stream_options": {"include_usage": True}})
    meta = {"graph": "router", "route": ["a", "b"], "experts_per_step": [["a"], ["b"]],
            "cost": {"calls": 2, "params_b": 0.3}, "timings_ms": {"router": 1.25}}
    c = Completion("answer", "stop", 10, 3, meta)
    body = response_body(req, c)
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}
    assert body["choices"][0]["message"]["content"] == "answer" and body["der_ray"] == meta
    last = chunk_body(req, 1, finish_reason="stop", done=c)
    assert last["usage"]["total_tokens"] == 13 and last["der_ray"] == meta
    h = meta_headers(meta)
    assert h["X-DerRay-Route"] == "a,b" and h["X-DerRay-Router-Ms"] == "1.2"
    assert json.loads(h["X-DerRay-Cost"]) == {"calls": 2, "params_b": 0.3}


def test_stop_cutter_never_shows_a_stop_string() -> None:
    cut = StopCutter(["\nQuestion:"])
    text, shown = "", ""
    for piece in ["The", " answer", " is 4.", "\nQue", "stion:", " next"]:
        text += piece
        shown += cut.feed(text)
        assert "\nQ" not in shown
    final = text[:text.index("\nQuestion:")]
    shown += cut.finish(final)
    assert shown == final
    assert "".join(chunk_text("abcdefghij", 3)) == "abcdefghij"


def test_error_table() -> None:
    from der_ray.serve.app import error_status

    cases = [(AuthenticationError("k"), 401), (UnknownModelError("m"), 404), (InvalidRequestError("x"), 400),
             (DeadlineExceededError("d"), 504), (ExpertTimeoutError("t"), 504),
             (ExpertUnavailableError("u"), 503), (RoutingError("r"), 500), (DerRayError("e"), 500)]
    for err, status in cases:
        assert error_status(err)[0] == status


def test_serve_config(tmp_path, monkeypatch, tiny_pool_cfg) -> None:  # type: ignore[no-untyped-def]
    from der_ray.config import config_to_dict

    pool = config_to_dict(tiny_pool_cfg)
    with pytest.raises(ConfigError, match="max_ongoing_requests"):
        serve_config_from_dict({"pool": pool, "experts": {"max_batch_size": 16, "max_ongoing_requests": 5}})
    with pytest.raises(ConfigError, match="unknown expert"):
        serve_config_from_dict({"pool": pool, "fusion": {"members": ["nope"]}})
    with pytest.raises(ConfigError, match="serve.limits.max_tokens_cap"):
        serve_config_from_dict({"pool": pool, "limits": {"max_tokens_cap": 0}})
    cfg = serve_config_from_dict({"pool": pool, "experts": {"autoscaling": {"max_replicas": 3}}})
    opts = cfg.expert_deployment("tiny-chat").serve_options()
    assert opts["autoscaling_config"]["max_replicas"] == 3 and "num_replicas" not in opts
    assert cfg.http.host == "127.0.0.1"
    keys = tmp_path / "keys"
    keys.write_text("# comment\nk1\n\n")
    monkeypatch.setenv("DER_RAY_TEST_KEYS", "k2, k3")
    assert AuthConfig("DER_RAY_TEST_KEYS", str(keys)).load_keys() == {"k1", "k2", "k3"}
    assert AuthConfig("DER_RAY_TEST_NO_KEYS").load_keys() == frozenset()


def test_packaged_serve_yaml_is_valid() -> None:
    """The shipped Serve config passes Ray's schema and ours (loopback, der_ray builder)."""
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from der_ray.serve.config import ServeConfig

    path = "der_ray/configs/serve.yaml"
    data = yaml.safe_load(open(path))
    ServeDeploySchema.model_validate(data)
    assert data["http_options"]["host"] == "127.0.0.1"
    assert data["applications"][0]["import_path"] == "der_ray.serve.app:build_app"
    assert isinstance(load_serve_config(path), ServeConfig)


class _FakeResponse:
    def __init__(self, value: object) -> None:
        self.value = value

    def result(self, timeout_s: float | None = None) -> object:
        return self.value


class _FakeHost:
    """An 'actor' whose method calls return their own (host, method, args) as the 'ref'."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __getattr__(self, method: str):  # type: ignore[no-untyped-def]
        host = self

        class _M:
            @staticmethod
            def remote(*args, **kwargs):  # type: ignore[no-untyped-def]
                return (host.name, method, args, kwargs)
        return _M


def test_session_adapter_is_sticky(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Each session's calls go to the host that opened it, whatever the deployment picks next."""
    import der_ray.experts.actors as actors
    from der_ray.serve.sessions import SessionHosts

    hosts = iter([_FakeHost("r0"), _FakeHost("r1"), _FakeHost("r2")])

    class _Handle:
        class session_host:  # noqa: N801
            @staticmethod
            def remote() -> _FakeResponse:
                return _FakeResponse(next(hosts))

    monkeypatch.setattr(actors, "resolve", lambda name, ref, timeout: ref)
    sh = SessionHosts("e", _Handle(), 5.0)
    a = sh.submit("open_session", "p", top_k=3)
    b = sh.submit("open_session", "q", top_k=3)
    sid_a, sid_b = a.ref[3]["session_id"], b.ref[3]["session_id"]
    assert (a.host.name, b.host.name) == ("r0", "r1") and sid_a != sid_b
    assert sh.result(sh.submit("append_tokens", sid_a, [1]))[0] == "r0"
    assert sh.result(sh.submit("replace_tokens", sid_b, 2, [1]))[0] == "r1"
    assert sh.result(sh.submit("vocabulary"))[0] == "r1"  # stateless: the last host seen
    sh.submit("close_session", sid_a)
    assert sh.open_sessions() == 1
    with pytest.raises(ExpertUnavailableError):
        sh.submit("append_tokens", sid_a, [1])


def test_cli_overrides(load_job, tmp_path, pool_yaml) -> None:  # type: ignore[no-untyped-def]
    """``der-ray serve`` and ``jobs/serve.py`` share flags; flags override the YAML and are validated."""
    from der_ray.cli import make_parser
    from der_ray.serve.launch import apply_overrides, served_models

    args = make_parser().parse_args(["serve", "--config", "der_ray/configs/serve.yaml", "--pool", pool_yaml,
                                     "--router-checkpoint", str(tmp_path), "--fusion-members", "tiny-base",
                                     "tiny-chat", "--port", "8123", "--api-keys-file", str(tmp_path / "k")])
    cfg = apply_overrides(args)
    assert (cfg.http.host, cfg.http.port, cfg.fusion.main) == ("127.0.0.1", 8123, "tiny-base")
    assert served_models(cfg) == ["der-router", "deepen-fusion", "tiny-chat", "tiny-base"]
    job_args = load_job("serve").make_parser().parse_args(["--pool", pool_yaml, "--no-fusion", "--detach"])
    assert served_models(apply_overrides(job_args)) == ["tiny-chat", "tiny-base"]
    bad = load_job("serve").make_parser().parse_args(["--pool", pool_yaml, "--fusion-members", "nope"])
    with pytest.raises(ConfigError, match="unknown expert"):
        apply_overrides(bad)


def test_protocol_and_config_are_ray_free() -> None:
    """HTTP schemas and config are plain Python: importable (and tested) without Ray or FastAPI."""
    import ast
    from pathlib import Path

    for mod in ("protocol", "config"):
        tree = ast.parse(Path(f"der_ray/serve/{mod}.py").read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not {n for n in names if n.split(".")[0] in ("ray", "fastapi", "starlette", "torch")}, mod


def test_build_app_binds_the_whole_graph(tiny_pool_cfg) -> None:  # type: ignore[no-untyped-def]
    """``import_path: der_ray.serve.app:build_app`` with YAML args gives one application (no Ray needed)."""
    from ray.serve import Application

    from der_ray.config import config_to_dict
    from der_ray.serve.app import build_app

    pool = config_to_dict(tiny_pool_cfg)
    app = build_app({"pool": pool, "fusion": {"members": ["tiny-base", "tiny-chat"]}})
    assert isinstance(app, Application)
    with pytest.raises(ConfigError, match="serve.fusion.decoder: .*top_k"):
        build_app({"pool": config_to_dict(tiny_pool_cfg), "fusion": {"decoder": {"top_k": 0}}})


def test_router_checkpoint_must_match_the_config(tiny_pool_cfg, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A checkpoint trained with other settings fails the build, not every request."""
    from serve_cases import make_router_checkpoint

    from der_ray.config import config_to_dict
    from der_ray.serve.app import build_app

    ckpt = make_router_checkpoint(tmp_path / "r", n_experts=2, t_max=2)
    base = {"pool": config_to_dict(tiny_pool_cfg), "fusion": {"enabled": False}}
    build_app({**base, "router": {"checkpoint": str(ckpt), "router": {"encoder": "hashing", "t_max": 2}}})
    with pytest.raises(ConfigError, match="t_max=3"):
        build_app({**base, "router": {"checkpoint": str(ckpt), "router": {"encoder": "hashing", "t_max": 3}}})


def test_fusion_on_text_streams_what_generate_returns(tiny_pool_cfg) -> None:  # type: ignore[no-untyped-def]
    """``FusionDecoder.generate(on_text=...)`` (the fusion graph's token stream) through ``StopCutter``
    adds up to the final text, and the callback leaves the result unchanged."""
    from der_ray.experts.hf import HFExpert
    from der_ray.fusion.decoder import FusionConfig, FusionDecoder

    members = [HFExpert(tiny_pool_cfg.expert(n)) for n in ("tiny-chat", "tiny-base")]
    dec = FusionDecoder(members, config=FusionConfig(lr=0.5))
    prompt = "The capital of France is"
    for stop in ((), ("e",)):
        cut, texts, shown = StopCutter(stop), [], ""
        res = dec.generate(prompt, max_new_tokens=12, stop=stop, on_text=texts.append)
        for t in texts:
            shown += cut.feed(t)
        shown += cut.finish(res.text)
        assert shown == res.text == dec.generate(prompt, max_new_tokens=12, stop=stop).text
        assert len(texts) >= 1
