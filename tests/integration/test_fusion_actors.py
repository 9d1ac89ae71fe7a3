"""Fused decoding through expert actors gives the same text as the local path (tiny experts)."""

from __future__ import annotations

import pytest

from der_ray.experts.actors import ExpertPool
from der_ray.experts.hf import HFExpert
from der_ray.fusion.decoder import FusionConfig, FusionDecoder

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pool(ray_session, tiny_pool_cfg):
    p = ExpertPool(tiny_pool_cfg)
    p.start()
    yield p
    p.shutdown()


def test_actor_members_match_local_members(pool, tiny_pool_cfg, tmp_path):
    cfg = FusionConfig(lr=0.5, anchor_dir=str(tmp_path))
    names = ["tiny-chat", "tiny-base"]
    remote = FusionDecoder([pool[n] for n in names], config=cfg)
    assert all(m.remote for m in remote.members)
    local = FusionDecoder([HFExpert(tiny_pool_cfg.expert(n)) for n in names], config=cfg)
    assert not any(m.remote for m in local.members) and local.anchors == remote.anchors
    for prompt in ("What is 2+2?", "Name a capital city"):
        a = remote.generate(prompt, max_new_tokens=10)
        b = local.generate(prompt, max_new_tokens=10)
        assert (a.text, a.token_ids, a.n_changed) == (b.text, b.token_ids, b.n_changed)
    s1 = remote.generate("hi", max_new_tokens=8, temperature=1.0, seed=3)
    assert s1.token_ids == local.generate("hi", max_new_tokens=8, temperature=1.0, seed=3).token_ids
    base = FusionDecoder([pool["tiny-base"], pool["tiny-chat"]], main="tiny-base", config=cfg)
    assert base.main == 0 and base.generate("What is 2+2?", max_new_tokens=6).token_ids
    # Decoders over the same actors share the rebuilt tokenizers (one per distinct tokenizer).
    assert base.tokenizers[0] is remote.tokenizers[1] and base.tokenizers[1] is remote.tokenizers[0]
    assert remote.tokenizers[0] is not remote.tokenizers[1]
