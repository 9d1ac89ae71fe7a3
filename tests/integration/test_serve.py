"""The HTTP API on tiny in-test experts: the real ``openai`` client, malformed requests over real HTTP,
auth, deadlines, and an expert replica killed under load.

Serve starts once per test session (``serve_app``) on 127.0.0.1 and a free port with three
applications sharing one graph: ``/`` (auth off), ``/secure`` (bearer keys from a file) and ``/slow``
(a deadline no request can meet); the last two are ingress-only apps holding handles to the first
app's deployments. The replica-kill test runs last in this module because it removes a replica.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import pytest

pytestmark = pytest.mark.integration

T_MAX = 2
API_KEY = "sk-der-ray-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def serve_app(ray_session, tiny_pool_cfg, tmp_path_factory):  # type: ignore[no-untyped-def]
    """Base URL of the running app; ``serve.shutdown()`` at the end of the session (never ``ray stop``)."""
    from ray import serve
    from serve_cases import make_router_checkpoint

    from der_ray.config import config_to_dict
    from der_ray.serve.app import Ingress, build_graph
    from der_ray.serve.config import AuthConfig, LimitsConfig, serve_config_from_dict

    root = tmp_path_factory.mktemp("serve")
    ckpt = make_router_checkpoint(root / "router", len(tiny_pool_cfg.experts), T_MAX)
    light = {"num_cpus": 0.01}
    cfg = serve_config_from_dict({
        "pool": config_to_dict(tiny_pool_cfg),
        "experts": {**light, "max_ongoing_requests": 8, "max_batch_size": 4, "batch_wait_timeout_s": 0.02,
                    "health_check_period_s": 2.0},
        "expert_overrides": {"tiny-chat": {**light, "num_replicas": 2, "max_ongoing_requests": 8,
                                           "max_batch_size": 4, "health_check_period_s": 2.0}},
        "router": {"checkpoint": str(ckpt), "router": {"encoder": "hashing", "t_max": T_MAX},
                   "deployment": light},
        "fusion": {"members": ["tiny-chat", "tiny-base"], "decoder": {"top_k": 10}, "deployment": light},
        "ingress": light,
        "limits": {"max_tokens_cap": 32, "default_max_tokens": 8, "max_prompt_chars": 2000,
                   "request_timeout_s": 120},
    })
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_graph(cfg), name="der_ray", route_prefix="/", blocking=False)
    models = ["der-router", "deepen-fusion", "tiny-chat", "tiny-base"]
    names = {"der-router": "Router", "deepen-fusion": "Fusion", "tiny-chat": "Expert-tiny-chat",
             "tiny-base": "Expert-tiny-base"}
    handles = {m: serve.get_deployment_handle(names[m], app_name="der_ray") for m in models}
    keys = root / "keys.txt"
    keys.write_text(f"# test keys\n{API_KEY}\n")
    serve.run(Ingress.options(name="Ingress", ray_actor_options=light).bind(  # type: ignore[attr-defined]
        handles, cfg.limits, AuthConfig(api_keys_env="DER_RAY_TEST_UNSET_KEYS", api_keys_file=str(keys))),
        name="secure", route_prefix="/secure", blocking=False)
    serve.run(Ingress.options(name="Ingress", ray_actor_options=light).bind(  # type: ignore[attr-defined]
        handles, LimitsConfig(request_timeout_s=0.001), AuthConfig(api_keys_env="DER_RAY_TEST_UNSET_KEYS")),
        name="slow", route_prefix="/slow", blocking=False)
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@pytest.fixture(scope="session")
def client(serve_app):  # type: ignore[no-untyped-def]
    from openai import OpenAI

    return OpenAI(base_url=f"{serve_app}/v1", api_key="unused", max_retries=0, timeout=120)


def _post(url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], Any]:
    import requests

    data = body if isinstance(body, bytes | str) else json.dumps(body)
    r = requests.post(url, data=data, headers={"Content-Type": "application/json", **(headers or {})},
                      timeout=120)
    return r.status_code, dict(r.headers), r.json()


# ------------------------------------------------------------------------------------------ openai client

@pytest.mark.parametrize("model", ["der-router", "deepen-fusion", "tiny-chat"])
def test_chat_non_streaming(client, model):  # type: ignore[no-untyped-def]
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=6)
    out = raw.parse()
    assert out.object == "chat.completion" and out.model == model
    assert isinstance(out.choices[0].message.content, str)
    assert out.choices[0].finish_reason in ("stop", "length")
    assert out.usage.completion_tokens <= 6 * T_MAX and out.usage.prompt_tokens > 0
    meta = out.model_extra["der_ray"]
    assert meta["route"] and meta["experts_per_step"] and meta["cost"]["params_b"] > 0
    assert raw.headers["x-derray-graph"] == meta["graph"]
    assert raw.headers["x-derray-route"] == ",".join(meta["route"])
    if model == "der-router":
        assert 1 <= len(meta["route"]) <= T_MAX and set(meta["route"]) <= {"tiny-chat", "tiny-base"}
        assert meta["timings_ms"]["router"] < meta["timings_ms"]["total"]
    elif model == "deepen-fusion":
        assert meta["route"] == ["tiny-chat", "tiny-base"] and out.usage.completion_tokens <= 6


@pytest.mark.parametrize("model", ["der-router", "deepen-fusion", "tiny-base"])
def test_chat_streaming_matches_non_streaming(client, model):  # type: ignore[no-untyped-def]
    messages = [{"role": "user", "content": "Tom has 3 apples and buys 4 more."}]
    full = client.chat.completions.create(model=model, messages=messages, max_tokens=8)
    chunks = list(client.chat.completions.create(model=model, messages=messages, max_tokens=8, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content  # greedy: the same answer either way
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert chunks[-1].model_extra["der_ray"]["route"] == full.model_extra["der_ray"]["route"]
    if model == "deepen-fusion":  # fusion streams token by token
        assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= min(2, len(text))


def test_completions_endpoint(client):  # type: ignore[no-untyped-def]
    out = client.completions.create(model="tiny-base", prompt="Question: 2+2?\nAnswer:", max_tokens=4)
    assert out.object == "text_completion" and isinstance(out.choices[0].text, str)
    streamed = list(client.completions.create(model="deepen-fusion", prompt="The capital of France is",
                                              max_tokens=5, stream=True))
    assert all(c.object == "text_completion" for c in streamed)


def test_models_and_health(serve_app, client):  # type: ignore[no-untyped-def]
    import requests

    assert {m.id for m in client.models.list()} == {"der-router", "deepen-fusion", "tiny-chat", "tiny-base"}
    r = requests.get(f"{serve_app}/healthz", timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_batching_under_concurrency(serve_app):  # type: ignore[no-untyped-def]
    from concurrent.futures import ThreadPoolExecutor

    from ray import serve

    body = {"model": "tiny-base", "prompt": "Question: 1+2?\nAnswer:", "max_tokens": 4}
    with ThreadPoolExecutor(8) as ex:
        codes = list(ex.map(lambda _: _post(f"{serve_app}/v1/completions", body)[0], range(8)))
    assert codes == [200] * 8
    info = serve.get_deployment_handle("Expert-tiny-base", app_name="der_ray").info.remote().result()
    assert max(info["batch_sizes"]) > 1  # concurrent requests shared a generate call


def test_concurrent_fusion_requests_lease_forked_decoders(serve_app):  # type: ignore[no-untyped-def]
    """Concurrent greedy fusions answer as a lone one does; the replica builds one decoder and forks
    the rest (shared anchors), at most one per worker; the cost counts the members' forward calls."""
    from concurrent.futures import ThreadPoolExecutor

    from ray import serve

    body = {"model": "deepen-fusion", "prompt": "Question: Name a colour.\nAnswer:", "max_tokens": 6}
    code, _, alone = _post(f"{serve_app}/v1/completions", body)
    assert code == 200
    with ThreadPoolExecutor(4) as ex:
        outs = list(ex.map(lambda _: _post(f"{serve_app}/v1/completions", body), range(4)))
    assert [o[0] for o in outs] == [200] * 4
    assert {o[2]["choices"][0]["text"] for o in outs} == {alone["choices"][0]["text"]}
    meta, n = alone["der_ray"], alone["usage"]["completion_tokens"]
    assert len(meta["route"]) <= meta["cost"]["calls"] <= len(meta["route"]) * (n + 1)
    info = serve.get_deployment_handle("Fusion", app_name="der_ray").info.remote().result()
    assert 1 <= info["decoders_built"] <= 2


# ------------------------------------------------------------------------------------------ bad input

def test_malformed_requests_over_http(serve_app):  # type: ignore[no-untyped-def]
    """Every case of the protocol table, through the real server: 4xx with an OpenAI error body."""
    from serve_cases import MALFORMED

    paths = {"chat": "/v1/chat/completions", "completion": "/v1/completions"}
    failures = []
    for case_id, endpoint, body, status, param in MALFORMED:
        got, _, err = _post(serve_app + paths[endpoint], body)
        e = err.get("error", {}) if isinstance(err, dict) else {}
        if got != status or set(e) != {"message", "type", "param", "code"} or (param and e["param"] != param):
            failures.append((case_id, got, err))
    assert not failures, failures
    assert _post(serve_app + paths["chat"], {"model": "tiny-chat", "messages": [{"role": "user",
                                                                                 "content": "hi"}],
                                             "max_tokens": 2})[0] == 200  # still serving


def test_auth(serve_app):  # type: ignore[no-untyped-def]
    body = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    url = f"{serve_app}/secure/v1/chat/completions"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        status, hdrs, err = _post(url, body, headers)
        assert status == 401 and err["error"]["type"] == "authentication_error"
    status, _, out = _post(url, body, {"Authorization": f"Bearer {API_KEY}"})
    assert status == 200 and out["choices"][0]["message"]["role"] == "assistant"
    from openai import AuthenticationError, OpenAI

    with pytest.raises(AuthenticationError):
        OpenAI(base_url=f"{serve_app}/secure/v1", api_key="nope", max_retries=0).models.list()
    ok = OpenAI(base_url=f"{serve_app}/secure/v1", api_key=API_KEY, max_retries=0)
    assert "deepen-fusion" in {m.id for m in ok.models.list()}
    assert _post(f"{serve_app}/v1/chat/completions", body)[0] == 200  # auth off on the main app


def test_deadline_is_504(serve_app):  # type: ignore[no-untyped-def]
    body = {"model": "deepen-fusion", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    status, _, err = _post(f"{serve_app}/slow/v1/chat/completions", body)
    assert status == 504 and err["error"]["type"] == "timeout_error" and "deadline" in err["error"]["message"]
    assert _post(f"{serve_app}/v1/chat/completions", body)[0] == 200  # the server stays up


# ------------------------------------------------------------------------------------------ faults (last)

def test_killing_an_expert_replica_under_load_loses_no_request(serve_app):  # type: ignore[no-untyped-def]
    import ray
    from ray.util import list_named_actors

    replicas = [a["name"] for a in list_named_actors(all_namespaces=True)
                if a["namespace"] == "serve" and "der_ray#Expert-tiny-chat#" in a["name"]]
    assert len(replicas) == 2, replicas
    body = {"model": "tiny-chat", "messages": [{"role": "user", "content": "Count to ten."}],
            "max_tokens": 32}
    results: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()

    def worker(i: int) -> None:
        # Direct calls, fusion (its sessions may sit on the killed replica) and routed requests, in a
        # loop so that both replicas are busy when one is killed.
        import requests

        model = ("tiny-chat", "deepen-fusion", "tiny-chat", "der-router")[i % 4]
        n = 0
        while not stop.is_set():
            b = {**body, "model": model, "stream": (i + n) % 3 == 0}
            r = requests.post(f"{serve_app}/v1/chat/completions", json=b, timeout=120)
            ok = r.status_code == 200 and (not b["stream"] or "[DONE]" in r.text and '"error"' not in r.text)
            with lock:
                results.append(200 if ok else r.status_code)
            n += 1

    from ray import serve

    ingress = serve.get_deployment_handle("Ingress", app_name="der_ray")
    retried_before = ingress.stats.remote().result()["replica_failures_retried"]
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    ray.kill(ray.get_actor(replicas[0], namespace="serve"), no_restart=True)
    # Run until enough requests have finished after the kill, however loaded the machine is.
    deadline = time.monotonic() + 180
    while len(results) < 24 and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join(timeout=180)
    assert len(results) >= 24 and set(results) == {200}, results
    # Some requests were on the killed replica and were answered by the retry.
    assert ingress.stats.remote().result()["replica_failures_retried"] > retried_before
