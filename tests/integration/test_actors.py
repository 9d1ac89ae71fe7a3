"""Tiny experts as real Ray actors: calls, typed errors across the actor boundary, crash, timeout."""

from __future__ import annotations

import os
import sys
import time

import pytest

from der_ray.errors import ExpertTimeoutError, ExpertUnavailableError, InvalidRequestError, UnknownExpertError
from der_ray.experts.actors import ExpertPool, RemoteExpert, actor_name, placement
from der_ray.experts.hf import HFExpert

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pool(ray_session, tiny_pool_cfg):
    p = ExpertPool(tiny_pool_cfg)
    p.start()
    yield p
    p.shutdown()


def test_generate_and_lookup_by_name(pool, tiny_pool_cfg):
    out = pool.generate_all(["What is 2+2?", "hello"], max_new_tokens=6)
    assert set(out) == {"tiny-chat", "tiny-base"}
    assert all(len(v) == 2 and v[0].completion_tokens > 0 for v in out.values())
    found = RemoteExpert.lookup("tiny-chat", namespace=tiny_pool_cfg.namespace)
    assert [g.text for g in found.generate(["What is 2+2?"], max_new_tokens=6)] == [out["tiny-chat"][0].text]
    with pytest.raises(UnknownExpertError, match="no running expert actor"):
        RemoteExpert.lookup("nobody", namespace=tiny_pool_cfg.namespace)
    with pytest.raises(UnknownExpertError):
        pool["nobody"]


def test_session_api_through_actor(pool):
    e = pool["tiny-base"]
    st = e.open_session("What is 2+2?", top_k=5)
    assert len(st.dist.ids) == 5
    st2 = e.append_text(st.session_id, " 4")
    assert st2.n_tokens > st.n_tokens
    e.close_session(st.session_id)
    vocab = e.vocabulary()
    assert "<0x0A>" in vocab.tokens


def test_typed_errors_cross_the_actor_boundary(pool):
    with pytest.raises(InvalidRequestError, match="max_new_tokens"):
        pool["tiny-chat"].generate(["hi"], max_new_tokens=0)
    with pytest.raises(InvalidRequestError, match="prompt 0 is empty"):
        pool["tiny-chat"].generate([""])
    with pytest.raises(InvalidRequestError, match="unknown session"):
        pool["tiny-chat"].append_tokens("nope", [1])


class _SlowExpert(HFExpert):
    """An expert with a call that surely is in flight when the test times out or kills it."""

    def sleep(self, seconds: float) -> int:
        time.sleep(seconds)
        return os.getpid()


@pytest.fixture()
def slow_expert(ray_session, tiny_pool_cfg):
    ray_session.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cfg = tiny_pool_cfg.expert("tiny-chat")
    handle = ray_session.remote(_SlowExpert).options(
        name=actor_name("slow"), namespace=tiny_pool_cfg.namespace, **placement(cfg, 0.0)).remote(cfg)
    expert = RemoteExpert("slow", handle, timeout_s=60)
    expert.health()
    yield expert
    ray_session.kill(handle, no_restart=True)


def test_timeout_is_typed_not_a_hang(slow_expert):
    t0 = time.monotonic()
    with pytest.raises(ExpertTimeoutError, match="did not answer within"):
        slow_expert.call("sleep", 3.0, timeout_s=0.5)
    assert time.monotonic() - t0 < 2.5
    assert slow_expert.health().ok  # still usable once the slow call is over


def test_crash_gives_typed_error_then_restarts(slow_expert, ray_session):
    pid = slow_expert.health().pid
    ref = slow_expert.submit("sleep", 30.0)
    time.sleep(1.0)
    ray_session.kill(slow_expert.handle, no_restart=False)  # a crash; Ray restarts it (max_restarts=2)
    t0 = time.monotonic()
    with pytest.raises(ExpertUnavailableError, match="crashed or is restarting"):
        slow_expert.result(ref, timeout_s=60)
    assert time.monotonic() - t0 < 20, "a crash must surface quickly, not when the call would have ended"
    deadline = time.monotonic() + 90
    while True:
        try:
            health = slow_expert.call("health", timeout_s=60)
            break
        except ExpertUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    assert health.ok and health.pid != pid
    assert slow_expert.generate(["hi"], max_new_tokens=3)[0].completion_tokens > 0
