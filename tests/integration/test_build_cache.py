"""``jobs/build_cache.py`` on the tiny pool: it fills exactly the calls the routing env can make in
its first two steps, the env's one-item calls hit them, and a second run is all hits."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from der_ray import data
from der_ray.config import RouterConfig, config_to_dict
from der_ray.routing.cache import ResponseCache, make_key
from der_ray.routing.cached import CachedExpert, key_params, requests_of
from der_ray.routing.ktp import expert_call, reply_from

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
SLICE = ["--domains", "triviaqa", "piqa", "--per-domain", "2", "--split", "train", "--seed", "0"]


def _job():
    spec = importlib.util.spec_from_file_location("build_cache_job", REPO / "jobs" / "build_cache.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _expected_keys(cache: ResponseCache, pool_cfg, fingerprints: dict[str, str]) -> set[str]:
    """Every key of step 0 and step 1 (KTP over each step-0 answer), enumerated one call at a time."""
    router, keys = RouterConfig(), set()
    examples = list(data.iter_examples(data.split_mix(["triviaqa", "piqa"], "train", 2, 0)))

    def key(name: str, call) -> str:
        params = key_params(call.method, call.kwargs, 0.0)
        assert params is not None
        (req,) = requests_of(call.method, call.args)
        return make_key(name, fingerprints[name], call.method, req, params)

    for ex in examples:
        for name in pool_cfg.names:
            call0 = expert_call(ex, pool_cfg.expert(name).prompt.format, None, router)
            rec = cache.get(key(name, call0))
            assert rec is not None, f"step-0 answer of {name} to {ex.id} missing"
            keys.add(rec.key)
            for nxt in pool_cfg.names:
                keys.add(key(nxt, expert_call(ex, pool_cfg.expert(nxt).prompt.format, rec.text, router)))
    return keys


def test_build_cache_then_all_hits(ray_session, tiny_pool_cfg, tmp_path, capsys):
    from der_ray.experts.hf import HFExpert

    pool_yaml = tmp_path / "pool.yaml"
    pool_yaml.write_text(yaml.safe_dump(config_to_dict(tiny_pool_cfg)))
    root, job = tmp_path / "responses", _job()
    argv = [*SLICE, "--config", str(pool_yaml), "--cache-dir", str(root), "--depth", "1",
            "--batch-size", "4", "--no-progress"]
    assert job.main([*argv, "--report", str(tmp_path / "r1.json")]) == 0
    assert ray_session.is_initialized()  # the job did not shut down the session's Ray
    first = json.loads((tmp_path / "r1.json").read_text())
    # Local experts on the same files: their fingerprints must equal the actors' (stored in records).
    local = {n: HFExpert(tiny_pool_cfg.expert(n)) for n in tiny_pool_cfg.names}
    fingerprints = {n: e.fingerprint() for n, e in local.items()}
    cache = ResponseCache(root)
    assert {(r.expert, r.fingerprint) for r in map(cache.get, cache.keys())} == set(fingerprints.items())
    expected = _expected_keys(cache, tiny_pool_cfg, fingerprints)
    assert set(cache.keys()) == expected  # exactly the reachable calls, nothing more
    assert first["puts"] == first["records"] == len(expected) and first["hits"] == 0
    assert first["asked_per_step"][0] == 4 * 2  # 4 questions x 2 experts at step 0

    # The env's path: one item per call with the Call's args, through a fresh cache instance.
    env_cache = ResponseCache(root)
    callers = {n: CachedExpert(n, e, fingerprints[n], env_cache) for n, e in local.items()}
    ex = next(iter(data.iter_examples(data.split_mix(["triviaqa"], "train", 2, 0))))
    prev = None
    for name in tiny_pool_cfg.names:  # a two-step episode: chat, then base on chat's answer
        call = expert_call(ex, tiny_pool_cfg.expert(name).prompt.format, prev, RouterConfig())
        prev = reply_from(ex, call, getattr(callers[name], call.method)(*call.args, **call.kwargs)).text
    assert env_cache.stats()["misses"] == 0 and env_cache.stats()["hits"] == 2

    n_segments = len(list(root.glob("seg-*.parquet")))
    capsys.readouterr()
    assert job.main([*argv, "--report", str(tmp_path / "r2.json")]) == 0
    second = json.loads((tmp_path / "r2.json").read_text())
    assert second["misses"] == second["puts"] == 0 and second["hits"] > 0 and second["hit_rate"] == 1.0
    assert "unique LLM calls 0" in capsys.readouterr().out
    assert len(list(root.glob("seg-*.parquet"))) == n_segments  # nothing new written
