"""Session rewinding (``replace_tokens``, ``truncate_session``) and ``session_token_ids`` on tiny experts."""

from __future__ import annotations

import numpy as np
import pytest

from der_ray.errors import InvalidRequestError
from der_ray.experts.hf import HFExpert


@pytest.fixture(scope="module", params=["tiny-chat", "tiny-base"])
def expert(request, tiny_pool_cfg) -> HFExpert:
    return HFExpert(tiny_pool_cfg.expert(request.param))


def _same(a, b) -> None:
    assert np.array_equal(a.dist.ids, b.dist.ids)
    assert np.allclose(a.dist.logprobs, b.dist.logprobs, atol=1e-4)


def test_replace_and_truncate_equal_a_fresh_session(expert: HFExpert):
    st = expert.open_session("What is 2+2?", top_k=8)
    prompt = expert.session_token_ids(st.session_id)
    assert len(prompt) == st.n_tokens and expert.session_token_ids(st.session_id, last=3) == prompt[-3:]
    expert.append_tokens(st.session_id, [5, 6, 7], top_k=8)
    swapped = expert.replace_tokens(st.session_id, len(prompt) + 1, [9, 10], top_k=8)
    assert expert.session_token_ids(st.session_id) == [*prompt, 5, 9, 10]
    assert swapped.n_tokens == len(prompt) + 3
    ref = expert.sessions.open([*prompt, 5, 9, 10], top_k=8)
    _same(swapped, ref)
    back = expert.truncate_session(st.session_id, len(prompt), top_k=8)
    _same(back, st)
    again = expert.append_tokens(st.session_id, [5, 9, 10], top_k=8)  # the rewound cache is usable
    _same(again, ref)
    appended = expert.replace_tokens(st.session_id, again.n_tokens, [11], top_k=8)  # n_keep = all
    assert appended.n_tokens == again.n_tokens + 1
    for sid in (st.session_id, ref.session_id):
        expert.close_session(sid)


def test_rewind_past_a_sliding_window_rebuilds_the_cache(tiny_pool_cfg):
    base = HFExpert(tiny_pool_cfg.expert("tiny-base"))  # Gemma-3 layers with a 64-token window
    st = base.open_session("Tell me a long story about apples " * 4, top_k=8)
    ids = base.session_token_ids(st.session_id)
    assert len(ids) > 64
    back = base.truncate_session(st.session_id, len(ids) - 3, top_k=8)
    _same(back, base.sessions.open(ids[:-3], top_k=8))


def test_rewind_errors(expert: HFExpert):
    st = expert.open_session("hi", top_k=4)
    with pytest.raises(InvalidRequestError, match="n_keep must be an integer"):
        expert.replace_tokens(st.session_id, st.n_tokens + 1, [1])
    with pytest.raises(InvalidRequestError, match="at least one token"):
        expert.truncate_session(st.session_id, 0)
    with pytest.raises(InvalidRequestError, match="out of range"):
        expert.replace_tokens(st.session_id, 1, [10**9])
    with pytest.raises(InvalidRequestError, match="unknown session"):
        expert.session_token_ids("nope")
    with pytest.raises(InvalidRequestError, match="non-negative"):
        expert.session_token_ids(st.session_id, last=-1)
    expert.close_session(st.session_id)
