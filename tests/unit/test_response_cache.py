"""Response cache: keys, durability across processes and crashes, compaction, stats, CachedExpert."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from der_ray.routing import cache as cache_mod
from der_ray.routing.cache import CacheRecord, ResponseCache, make_key
from der_ray.routing.cached import CachedExpert, key_params, prefetch
from der_ray.routing.ktp import Call

REPO = Path(__file__).resolve().parents[2]


def _rec(i: int, expert: str = "e", pad: int = 0) -> CacheRecord:
    """A self-validating record: every field is a function of ``i``."""
    key = make_key(expert, "fp", "generate", {"prompt": f"q{i}"}, {"temperature": 0.0})
    text = f"answer {i} " + "x" * pad
    return CacheRecord(key=key, expert=expert, fingerprint="fp", method="generate",
                       request=json.dumps({"prompt": f"q{i}"}), text=text,
                       result=json.dumps({"method": "generate", "text": text, "prompt_tokens": 3,
                                          "completion_tokens": i % 7, "finish_reason": "stop",
                                          "latency_s": 0.5, "expert": expert}),
                       completion_tokens=i % 7, latency_s=0.5)


def _check(rec: CacheRecord, i: int) -> None:
    want = _rec(i, rec.expert, pad=len(rec.text) - len(f"answer {i} "))
    assert (rec.key, rec.text, rec.result, rec.completion_tokens) == (
        want.key, want.text, want.result, want.completion_tokens)


# ---------------------------------------------------------------------------------------------- keys
def test_key_is_stable_and_sensitive():
    base = ("tiny-chat", "files-sha256:ab", "generate", {"prompt": "What is 2+2?"},
            {"max_new_tokens": 16, "temperature": 0.0})
    k = make_key(*base)
    # Golden value: changing the canonical form silently invalidates every existing cache.
    assert k == make_key("tiny-chat", "files-sha256:ab", "generate", {"prompt": "What is 2+2?"},
                         {"temperature": 0.0, "max_new_tokens": 16})
    assert k == "b54da1d60dc06de9689026a48e1105af0dadfeaec02c6a4b785991fa3d8cc60c"
    changed = [
        ("tiny-base", *base[1:]),
        (base[0], "files-sha256:ac", *base[2:]),
        (*base[:2], "score_options", *base[3:]),
        (*base[:3], {"prompt": "What is 2+3?"}, base[4]),
        (*base[:3], {"prompt": "What is 2+2? "}, base[4]),
        (*base[:4], {"max_new_tokens": 17, "temperature": 0.0}),
        (*base[:4], {"max_new_tokens": 16, "temperature": 0.0, "stop": ["\n"]}),
    ]
    keys = {make_key(*c) for c in changed}
    assert k not in keys and len(keys) == len(changed)


def test_key_params_normalise_and_decide_what_is_cacheable():
    assert key_params("generate", {"temperature": 0, "max_new_tokens": 4}, None) == \
        key_params("generate", {"temperature": 0.0, "max_new_tokens": 4, "seed": 3, "top_p": 0.9}, None)
    assert key_params("generate", {"max_new_tokens": 4}, 0.0) == {"max_new_tokens": 4, "temperature": 0.0}
    assert key_params("generate", {"max_new_tokens": 4}, None) is None  # unknown default: may sample
    assert key_params("generate", {"temperature": 0.7}, 0.0) is None  # sampling without a seed
    assert key_params("generate", {"temperature": 0.7, "seed": 1}, 0.0) == {"temperature": 0.7, "seed": 1}
    assert key_params("score_options", {"batch_size": 2, "normalize": None}, None) == {}
    assert key_params("score_options", {"normalize": "chars"}, None) == {"normalize": "chars"}


# --------------------------------------------------------------------------------------- storage
def test_put_get_roundtrip_across_reopen(tmp_path):
    with ResponseCache(tmp_path, flush_every=3) as c:
        recs = [_rec(i) for i in range(7)]
        assert all(c.put(r) for r in recs)
        assert not c.put(recs[0])  # an existing key is not stored twice
        assert len(c.segments()) == 2  # two full flushes; one record still buffered
    assert len(list(tmp_path.glob("seg-*.parquet"))) == 3 and not list(tmp_path.glob(".tmp-*"))
    c2 = ResponseCache(tmp_path)
    assert len(c2) == 7
    for i, r in enumerate(recs):
        assert c2.get(r.key) == r
        _check(c2.get(r.key), i)
    assert c2.get("nope") is None


def test_other_instances_see_new_segments_after_refresh(tmp_path):
    writer = ResponseCache(tmp_path, flush_every=1)
    slow = ResponseCache(tmp_path, refresh_s=3600)
    fast = ResponseCache(tmp_path, refresh_s=0)
    r = _rec(1)
    writer.put(r)
    assert fast.get(r.key) == r  # a miss re-scans the directory
    assert slow.get(r.key) is None  # rate-limited: the last scan is recent
    assert slow.refresh(force=True) == 1 and slow.get(r.key) == r


def _writer(root: str, tag: str, n: int, barrier, queue) -> None:  # runs in a spawned process
    from der_ray.routing.cache import ResponseCache

    c = ResponseCache(root, flush_every=7, refresh_s=0)
    barrier.wait()  # both start writing at the same time
    for i in range(n):
        c.put(_rec(i, expert=tag))
    c.flush()
    barrier.wait()  # both are done: every record is on disk
    c.refresh(force=True)
    queue.put((tag, sorted(c.keys())))


def test_two_processes_write_concurrently_and_see_everything(tmp_path):
    ctx = mp.get_context("spawn")
    barrier, queue, n = ctx.Barrier(2), ctx.Queue(), 150
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), tag, n, barrier, queue)) for tag in "ab"]
    for p in procs:
        p.start()
    seen = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    expected = sorted(_rec(i, t).key for t in "ab" for i in range(n))
    assert seen == {"a": expected, "b": expected}
    c = ResponseCache(tmp_path)
    assert sorted(c.keys()) == expected
    for t in "ab":
        for i in range(n):
            _check(c.get(_rec(i, t).key), i)


_CRASH_CHILD = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from test_response_cache import _rec
from der_ray.routing import cache as cache_mod
if {die_in_write}:  # deterministic variant: die after writing half of a segment's bytes
    import io
    real_write = cache_mod.pq.write_table
    def write_half(table, where, **kw):
        buf = io.BytesIO()
        real_write(table, buf, **kw)
        where.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        where.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    cache_mod.pq.write_table = write_half
c = cache_mod.ResponseCache({root!r}, flush_every=10**9)
start = {start}
print("ready", flush=True)
for b in range(start, start + 10**6):
    for i in range(b * {batch}, (b + 1) * {batch}):
        c.put(_rec(i, pad={pad}))
    c.flush()
    print(b, flush=True)
"""


def _crash_round(root: Path, start: int, batch: int, delay_s: float | None) -> list[int]:
    """Run the flushing child from batch ``start``; SIGKILL it ``delay_s`` after it is ready (or let
    it kill itself inside its first segment write); returns the batch numbers it reported flushed."""
    code = _CRASH_CHILD.format(tests=str(REPO / "tests" / "unit"), root=str(root), start=start,
                               batch=batch, pad=5_000, die_in_write=delay_s is None)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    if delay_s is not None:
        time.sleep(delay_s)
        os.kill(child.pid, signal.SIGKILL)
    out, _ = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    return [int(x) for x in out.split()]


def test_kill_during_flush_leaves_no_torn_record(tmp_path, caplog):
    """SIGKILL a process that flushes in a loop at random moments (about a third land inside a
    segment write), then once inside a write for sure: the reopened cache holds exactly the
    complete batches, every record intact, and no segment is unreadable."""
    rng, batch, start = random.Random(0), 100, 0
    for delay in [rng.uniform(0.0, 0.3) for _ in range(5)] + [None]:
        done = _crash_round(tmp_path, start, batch, delay)
        with caplog.at_level(logging.WARNING, logger=cache_mod.__name__):
            c = ResponseCache(tmp_path)
        assert not [r for r in caplog.records if "skipping" in r.message]
        index = {int(json.loads(c.get(k).request)["prompt"][1:]): k for k in c.keys()}
        for i, key in index.items():  # every record intact
            assert key == _rec(i).key
            _check(c.get(key), i)
        batches = {i // batch for i in index}
        end = max(batches, default=-1) + 1
        # all or nothing per flush, no gaps; a flush may complete after its number reached the pipe
        # only if the kill fell in between, hence "+ 1"
        assert len(index) == end * batch and batches == set(range(end))
        assert set(done) <= batches and end <= max(done, default=start - 1) + 2
        if delay is None:
            assert end == start and list(tmp_path.glob(".tmp-*"))  # died mid-write: only a temp file
        start = end


def test_corrupt_and_vanished_segments_are_skipped(tmp_path, caplog, monkeypatch):
    with ResponseCache(tmp_path, flush_every=5) as c:
        for i in range(10):
            c.put(_rec(i))
    good = sorted(tmp_path.glob("seg-*.parquet"))[0]
    (tmp_path / "seg-9-garbage.parquet").write_bytes(b"not parquet at all")
    (tmp_path / "seg-9-truncated.parquet").write_bytes(good.read_bytes()[:-100])
    real_listdir = os.listdir
    monkeypatch.setattr(cache_mod.os, "listdir", lambda p: [*real_listdir(p), "seg-9-vanished.parquet"])
    with caplog.at_level(logging.WARNING, logger=cache_mod.__name__):
        c2 = ResponseCache(tmp_path)
    assert len(c2) == 10
    skipped = [r.message for r in caplog.records if "skipping" in r.message]
    assert len(skipped) == 2
    assert any("garbage" in m for m in skipped) and any("truncated" in m for m in skipped)
    caplog.clear()
    c2.refresh(force=True)  # already-seen bad segments do not warn on every scan
    assert not caplog.records


def test_compact_keeps_every_record(tmp_path):
    writers = [ResponseCache(tmp_path, flush_every=4) for _ in range(3)]
    for w, wr in enumerate(writers):
        for i in range(w * 5, w * 5 + 12):  # overlapping keys across writers
            wr.put(_rec(i))
        wr.flush()
    reader = ResponseCache(tmp_path, refresh_s=0)
    n_before = len(list(tmp_path.glob("seg-*.parquet")))
    assert n_before > 3
    out = ResponseCache(tmp_path).compact()
    assert out is not None and sorted(tmp_path.glob("seg-*.parquet")) == [out]
    fresh = ResponseCache(tmp_path)
    assert sorted(fresh.keys()) == sorted(_rec(i).key for i in range(22))
    for i in range(22):
        _check(fresh.get(_rec(i).key), i)
    writers[0].put(_rec(99))
    writers[0].flush()
    assert reader.get(_rec(99).key) is not None and len(reader) == 23  # old segments gone: no crash
    assert ResponseCache(tmp_path).compact() is not None and len(ResponseCache(tmp_path)) == 23


def test_stats_count_hits_misses_and_puts(tmp_path):
    c = ResponseCache(tmp_path)
    c.put(_rec(1, "a"))
    c.put(_rec(1, "a"))
    c.put(_rec(2, "b"))
    c.get(_rec(1, "a").key, expert="a")
    c.get(_rec(3, "a").key, expert="a")
    c.get(_rec(2, "b").key, expert="b")
    c.get(_rec(2, "b").key)  # not counted without an expert
    s = c.stats()
    assert s["experts"] == {"a": {"hits": 1, "misses": 1, "puts": 1},
                            "b": {"hits": 1, "misses": 0, "puts": 1}}
    assert (s["hits"], s["misses"], s["puts"], s["records"]) == (2, 1, 2, 2)
    assert s["hit_rate"] == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------------- CachedExpert
class _Counting:
    """Records every batch that reaches the real expert."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def generate(self, prompts, **kw):
        self.calls.append(("generate", list(prompts)))
        return self.inner.generate(prompts, **kw)

    def score_options(self, contexts, options, **kw):
        self.calls.append(("score_options", list(contexts)))
        return self.inner.score_options(contexts, options, **kw)


@pytest.fixture(scope="module")
def tiny_chat(tiny_pool_cfg):
    from der_ray.experts.hf import HFExpert

    return HFExpert(tiny_pool_cfg.expert("tiny-chat"))


def _cached(tiny_chat, root, **kw):
    counting = _Counting(tiny_chat)
    return CachedExpert("tiny-chat", counting, tiny_chat.fingerprint(), ResponseCache(root), **kw), counting


def test_cached_expert_hits_skip_the_expert(tiny_chat, tmp_path):
    ce, counting = _cached(tiny_chat, tmp_path)
    params = {"max_new_tokens": 6, "temperature": 0.0}
    first = ce.generate(["What is 2+2?", "Name a color."], **params)
    assert counting.calls == [("generate", ["What is 2+2?", "Name a color."])]
    second = ce.generate(["What is 2+2?", "Name a color."], **params)
    assert second == first and len(counting.calls) == 1
    mixed = ce.generate(["Name a color.", "Say hi.", "What is 2+2?", "Say hi.", "Count to 3."], **params)
    assert counting.calls[1:] == [("generate", ["Say hi.", "Count to 3."])]  # only misses, deduplicated
    assert mixed[0] == first[1] and mixed[2] == first[0] and mixed[1] == mixed[3]
    direct = tiny_chat.generate(["Count to 3."], **params)[0]  # batched greedy == unbatched greedy
    assert mixed[4].text == direct.text and mixed[4].completion_tokens == direct.completion_tokens
    assert ce.cache.stats()["experts"]["tiny-chat"] == {"hits": 4, "misses": 4, "puts": 4}
    ce.cache.close()
    ce2, counting2 = _cached(tiny_chat, tmp_path)  # a new process would see the same
    assert ce2.generate(["Say hi."], **params) == [mixed[1]] and counting2.calls == []


def test_cached_expert_options_defaults_and_bypass(tiny_chat, tmp_path):
    ce, counting = _cached(tiny_chat, tmp_path, default_temperature=0.0)
    ctx, opts = ["Question: sky?\nAnswer:", "Question: grass?\nAnswer:"], [["blue", "red"], ["green", "pink"]]
    first = ce.score_options(ctx, opts)
    assert ce.score_options(ctx, opts, batch_size=1) == first and len(counting.calls) == 1
    rec = ce.cache.get(ce.plan("score_options", (ctx[:1], opts[:1]), {}).keys[0])
    assert rec is not None and rec.text == opts[0][first[0].best]
    # omitted temperature = the (greedy) default: same key as an explicit 0.0
    ce.generate(["Say hi."], max_new_tokens=4)
    ce.generate(["Say hi."], max_new_tokens=4, temperature=0)
    assert len(counting.calls) == 2
    # sampling without a seed is never cached; with a seed it is, one item per call
    n = len(ce.cache)
    ce.generate(["Say hi."], max_new_tokens=4, temperature=0.8)
    ce.generate(["Say hi."], max_new_tokens=4, temperature=0.8)
    assert len(counting.calls) == 4 and len(ce.cache) == n and ce.bypassed == 2
    ce.generate(["Say hi.", "Say bye."], max_new_tokens=4, temperature=0.8, seed=1)
    assert counting.calls[4:] == [("generate", ["Say hi."]), ("generate", ["Say bye."])]
    ce.generate(["Say bye."], max_new_tokens=4, temperature=0.8, seed=1)
    assert len(counting.calls) == 6
    assert CachedExpert("x", tiny_chat, "fp", ce.cache).default_temperature == 0.0  # from HFExpert.cfg


def test_prefetch_batches_misses_and_returns_per_call_results(tiny_chat, tmp_path):
    ce, counting = _cached(tiny_chat, tmp_path, default_temperature=0.0)
    ce.generate(["b"], max_new_tokens=4, temperature=0.0)
    kw = {"max_new_tokens": 4, "temperature": 0.0}
    work = [(ce, Call("generate", ([p],), kw)) for p in ["a", "b", "c", "a"]]
    work.append((ce, Call("score_options", (["Question: a\nAnswer:"], [["x", "y"]]))))
    done: list[int] = []
    out = prefetch(work, batch_size=16, progress=done.append)
    assert counting.calls[1:] == [("generate", ["a", "c"]), ("score_options", ["Question: a\nAnswer:"])]
    assert sum(done) == 3 and out[0] == out[3] and len(out) == 5
    assert [r[0].text for r in out[:3]] == [g.text for g in ce.generate(["a", "b", "c"], **kw)]
    assert len(counting.calls) == 3
