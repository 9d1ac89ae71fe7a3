"""Fused decoding of the two tiny experts (different vocabularies), locally, without Ray."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
import torch

from der_ray.config import pool_from_dict
from der_ray.errors import ConfigError, ExpertTimeoutError
from der_ray.experts.hf import HFExpert
from der_ray.fusion import members
from der_ray.fusion.decoder import FusionConfig, FusionDecoder
from der_ray.fusion.inverse import inverse_search
from der_ray.fusion.members import Member
from der_ray.fusion.relative import dense_relative_matrix, relative_vector

PROMPTS = ["What is 2+2?", "Name a capital city"]


@pytest.fixture(scope="module")
def chat(tiny_pool_cfg) -> HFExpert:
    return HFExpert(tiny_pool_cfg.expert("tiny-chat"))


@pytest.fixture(scope="module")
def base(tiny_pool_cfg) -> HFExpert:
    return HFExpert(tiny_pool_cfg.expert("tiny-base"))


@pytest.fixture(scope="module")
def fused(chat, base) -> FusionDecoder:
    return FusionDecoder([chat, base], config=FusionConfig(lr=0.5))


@pytest.mark.parametrize(("which", "reuse_ids"), [
    ("chat", True), ("base", True), ("base", False),
    # the text path re-tokenises canonically; this random byte-level model emits non-canonical splits
    # ("Fr" + "qu" where the tokenizer says "Frqu"), so its copy sees other ids (spec §5.9)
    pytest.param("chat", False, marks=pytest.mark.xfail(reason="non-canonical ids through the text path",
                                                        strict=True)),
])
def test_self_ensemble_reproduces_greedy_output(chat, base, which, reuse_ids):
    expert = chat if which == "chat" else base
    dec = FusionDecoder([expert, expert], config=FusionConfig(lr=0.5, reuse_ids=reuse_ids))
    assert len(dec.anchors) > 250  # the whole non-special vocabulary
    for p in PROMPTS:
        solo = expert.generate([p], max_new_tokens=16, stop=["zzz"])[0]
        out = dec.generate(p, max_new_tokens=16, stop=expert.formatter.stop)
        assert out.text == solo.text and out.n_changed == 0 and len(out.token_ids) == solo.completion_tokens
        assert out.n_searched > 0  # the search did run (tiny models are unsure)


def test_two_vocabularies_greedy_and_seeded(fused, chat):
    a = [fused.generate(p, max_new_tokens=12) for p in PROMPTS]
    b = [fused.generate(p, max_new_tokens=12) for p in PROMPTS]
    assert [r.text for r in a] == [r.text for r in b] and [r.token_ids for r in a] == [r.token_ids for r in b]
    assert any(r.n_changed > 0 for r in a)  # the partner changed some tokens
    assert a[0].text != chat.generate([PROMPTS[0]], max_new_tokens=12)[0].text
    s1 = fused.generate(PROMPTS[0], max_new_tokens=12, temperature=1.0, seed=7)
    s2 = fused.generate(PROMPTS[0], max_new_tokens=12, temperature=1.0, seed=7)
    s3 = fused.generate(PROMPTS[0], max_new_tokens=12, temperature=1.0, seed=8)
    assert s1.token_ids == s2.token_ids and s1.token_ids != s3.token_ids
    assert "<0x" not in a[0].text


def test_stop_strings_and_max_tokens(fused):
    free = fused.generate(PROMPTS[1], max_new_tokens=10)
    assert free.finish_reason == "length" and len(free.token_ids) == 10
    stop = free.text.strip()[2:4]
    cut = fused.generate(PROMPTS[1], max_new_tokens=10, stop=[stop])
    assert cut.finish_reason == "stop" and stop not in cut.text and free.text.startswith(cut.text)
    assert len(cut.token_ids) < 10
    assert len(fused.generate(PROMPTS[1], max_new_tokens=1).token_ids) == 1


def test_full_vocabulary_equals_the_dense_method(tmp_path_factory, chat):
    """top_k = None (all tokens) against a slow loop over dense matrices and uncached forwards."""
    from der_ray.experts.tiny import build_tiny_expert

    other_dir = build_tiny_expert(tmp_path_factory.mktemp("bpe2") / "m", "byte_bpe", seed=5)
    cfg = pool_from_dict({"experts": [{"name": "tiny-chat2", "source": f"dir:{other_dir}",
                                       "params_b": 0.001, "prompt": {"format": "chat"}}]})
    other = HFExpert(cfg.expert("tiny-chat2"))
    dec = FusionDecoder([chat, other], config=FusionConfig(top_k=None, lr=0.5, skip_when_safe=False,
                                                          anchor_dtype="float32"))  # the exact method
    prompt = "Name a capital city"  # one whose first fused token is not EOS
    out = dec.generate(prompt, max_new_tokens=4)

    anchors = [dec.anchors.member_ids(i) for i in range(2)]
    dense = [dense_relative_matrix(torch.as_tensor(e.input_embeddings()), a) for e, a in zip(
        (chat, other), anchors, strict=True)]
    ids = chat.tokenizer.encode(chat.formatter.format(prompt), add_special_tokens=False)
    n_tok = len(chat.tokenizer)
    expected = []
    for _ in range(4):
        with torch.inference_mode():
            logits = [e.model(torch.tensor([ids])).logits[0, -1, :n_tok].float() for e in (chat, other)]
        target = 0.5 * relative_vector(logits[0], dense[0][:n_tok]) + 0.5 * relative_vector(logits[1],
                                                                                          dense[1][:n_tok])
        z = inverse_search(torch.log_softmax(logits[0], -1), dense[0][:n_tok], target, lr=0.5)
        expected.append(int(z.argmax()))
        ids.append(expected[-1])
    assert list(out.token_ids) == expected and out.n_searched == 4


def test_weights_are_validated(chat, base):
    with pytest.raises(ConfigError, match="sum to 1"):
        FusionDecoder([chat, base], config=FusionConfig(weights=(0.5, 0.6)))
    FusionDecoder([chat, base], config=FusionConfig(weights=(0.7, 0.3)))


class _Flaky:
    """A member whose steps time out after the first ``ok`` calls (as a remote member would)."""

    def __init__(self, inner: HFExpert, ok: int) -> None:
        self.inner, self.ok, self.name = inner, ok, "flaky"

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if name not in ("append_tokens", "replace_tokens", "input_embeddings"):
            return attr

        def call(*args, **kwargs):
            if self.ok <= 0:
                raise ExpertTimeoutError("expert 'flaky' did not answer within 1 s")
            self.ok -= 1
            return attr(*args, **kwargs)
        return call


def test_member_timeout_is_an_error_or_a_logged_degradation(chat, base, caplog):
    strict = FusionDecoder([chat, _Flaky(base, ok=1000)], config=FusionConfig(lr=0.5))
    strict.members[1].obj.ok = 1
    with pytest.raises(ExpertTimeoutError, match="flaky"):
        strict.generate(PROMPTS[0], max_new_tokens=8)
    lenient = FusionDecoder([chat, _Flaky(base, ok=1000)], config=FusionConfig(
        lr=0.5, on_member_timeout="degrade"))
    lenient.members[1].obj.ok = 1
    with caplog.at_level(logging.WARNING, logger="der_ray.fusion.decoder"):
        out = lenient.generate(PROMPTS[0], max_new_tokens=8)
    assert out.degraded == ("flaky",) and len(out.token_ids) == 8
    assert any("dropping member 'flaky'" in r.message for r in caplog.records)


def test_payloads_stay_small(fused):
    fused.generate(PROMPTS[0], max_new_tokens=6)
    rows = fused.rows[1]
    assert rows.n_anchors == len(fused.anchors) and rows.hits > rows.misses  # rows are reused
    assert np.isfinite(rows.anchor_unit.numpy()).all()


class _Counting:
    """A member that counts its step calls, optionally taking ``delay_s`` longer for each."""

    def __init__(self, inner: HFExpert, delay_s: float = 0.0) -> None:
        self.inner, self.name, self.calls, self.delay_s = inner, inner.name, 0, delay_s

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if name not in ("append_tokens", "replace_tokens"):
            return attr

        def call(*args, **kwargs):
            self.calls += 1
            time.sleep(self.delay_s)
            return attr(*args, **kwargs)
        return call


@pytest.mark.parametrize("lr", [0.5, 0.02])
def test_feeding_schedules_give_the_same_tokens(chat, base, lr):
    """``lazy`` calls the partner only for steps that need it; both schedules emit the same tokens."""
    runs = {}
    for feed in ("parallel", "lazy"):
        partner = _Counting(base)
        dec = FusionDecoder([chat, partner], config=FusionConfig(lr=lr, feed=feed))
        runs[feed] = ([dec.generate(p, max_new_tokens=16) for p in PROMPTS], partner.calls)
    (par, par_calls), (lazy, lazy_calls) = runs["parallel"], runs["lazy"]
    for outs, calls in ((par, par_calls), (lazy, lazy_calls)):  # the result counts every forward call
        assert sum(r.member_steps[1] for r in outs) == calls + len(PROMPTS)  # + each prompt
        assert all(r.member_steps[0] == len(r.token_ids) for r in outs)  # main: prompt + all but the last
    assert [r.token_ids for r in lazy] == [r.token_ids for r in par]
    assert [r.n_searched for r in lazy] == [r.n_searched for r in par]
    searched, steps = sum(r.n_searched for r in lazy), sum(len(r.token_ids) - 1 for r in lazy)
    assert lazy_calls <= searched
    if lr < 0.1:  # most steps are the main member's alone
        assert searched < steps // 2
    # sampling needs every member every step: lazy falls back to parallel there
    s = [FusionDecoder([chat, base], config=FusionConfig(lr=lr, feed=f)).generate(
        PROMPTS[0], max_new_tokens=12, temperature=1.0, seed=3).token_ids for f in ("parallel", "lazy")]
    assert s[0] == s[1]


def test_a_slow_member_catches_up_in_batches(chat, base):
    """In parallel feeding a partner still busy gets the text it missed in one call, and the decoder
    does not wait for it on steps the main member decides alone: same tokens, far fewer calls."""
    cfg = FusionConfig(lr=0.02)
    reference = FusionDecoder([chat, base], config=cfg).generate(PROMPTS[0], max_new_tokens=16)
    slow = _Counting(base, delay_s=0.2)
    out = FusionDecoder([chat, slow], config=cfg).generate(PROMPTS[0], max_new_tokens=16)
    assert out.token_ids == reference.token_ids
    assert slow.calls <= (len(out.token_ids) - 1) // 2


def test_feed_mode_is_validated():
    with pytest.raises(ConfigError, match="fusion.feed"):
        FusionConfig(feed="sometimes")


class _FakeRemote:
    """The remote call interface (submit/result/ready) over a local expert, recording reply sizes."""

    def __init__(self, inner: HFExpert) -> None:
        self.inner, self.name, self.reply_bytes = inner, inner.name, []

    def submit(self, method, *args, **kwargs):
        out = getattr(self.inner, method)(*args, **kwargs)
        if method == "input_embeddings":
            self.reply_bytes.append(out.nbytes)
        return out

    def result(self, ref, timeout_s=None):
        return ref

    def ready(self, ref):
        return True


def test_remote_embeddings_come_in_replies_small_enough_to_skip_the_object_store(chat, monkeypatch):
    ids = list(range(len(chat.vocabulary().tokens)))[::-1]
    d = chat.input_embeddings([0]).shape[1]
    monkeypatch.setattr(members, "INLINE_BYTES", 4 * d * 10)  # ten rows per reply
    remote = _FakeRemote(chat)
    member = Member(remote)
    got = member.embeddings(ids)
    assert np.array_equal(got, chat.input_embeddings(ids))
    assert max(remote.reply_bytes) <= members.INLINE_BYTES and len(remote.reply_bytes) >= len(ids) // 10
    assert member.embeddings([]).shape == (0, 0)


def test_forked_decoders_share_anchors_not_caches(fused):
    twin = fused.fork()
    assert all(a.anchor_unit is b.anchor_unit for a, b in zip(twin.rows, fused.rows, strict=True))
    assert all(a._rows is not b._rows for a, b in zip(twin.rows, fused.rows, strict=True))
    assert len(twin.rows[0]) == 0 and twin.tokenizers == fused.tokenizers
    assert twin.generate(PROMPTS[1], max_new_tokens=8).token_ids == fused.generate(
        PROMPTS[1], max_new_tokens=8).token_ids


def test_float16_anchor_option(chat, base):
    dec = FusionDecoder([chat, base], config=FusionConfig(lr=0.5, anchor_dtype="float16"))
    assert all(r.anchor_unit.dtype == torch.float16 for r in dec.rows)
    out = dec.generate(PROMPTS[0], max_new_tokens=8)
    assert len(out.token_ids) == 8 and out.n_searched > 0
    with pytest.raises(ConfigError, match="anchor_dtype"):
        FusionConfig(anchor_dtype="int8")
