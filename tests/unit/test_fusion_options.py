"""Multiple choice by fused option likelihood on the two tiny experts (different vocabularies)."""

from __future__ import annotations

import numpy as np
import pytest

from der_ray.errors import ConfigError, InvalidRequestError
from der_ray.experts.hf import HFExpert
from der_ray.fusion.decoder import FusionConfig, FusionDecoder
from der_ray.fusion.options import OptionFusion, continuation
from der_ray.tasks import cloze_context

QUESTION = "Which one is a fruit?"
CHOICES = ["an apple", "a hammer", "the ocean floor", "Über-café 🍎"]


@pytest.fixture(scope="module")
def chat(tiny_pool_cfg) -> HFExpert:
    return HFExpert(tiny_pool_cfg.expert("tiny-chat"))


@pytest.fixture(scope="module")
def base(tiny_pool_cfg) -> HFExpert:
    return HFExpert(tiny_pool_cfg.expert("tiny-base"))


@pytest.mark.parametrize("which", ["chat", "base"])
def test_continuation_dists_match_score_options(chat, base, which):
    expert = chat if which == "chat" else base
    ctx = cloze_context(QUESTION)
    conts = [continuation(ctx, c) for c in CHOICES]
    dists = expert.continuation_dists([ctx] * len(conts), conts, top_k=5)
    (ref,) = expert.score_options([ctx], [CHOICES])
    for d, cont, total, n in zip(dists, conts, ref.logprob_sums, ref.n_tokens, strict=True):
        assert len(d.ids) == n and d.top_ids.shape == (n, 5)
        assert float(d.target_logprobs.sum()) == pytest.approx(total, abs=1e-3)
        assert d.byte_ends[-1] == len(cont.encode()) and np.all(np.diff(d.byte_ends) >= 0)
        assert np.all(d.top_logprobs[:, :1] >= d.target_logprobs[:, None] - 1e-5)  # top-1 is the max
    with pytest.raises(InvalidRequestError):
        expert.continuation_dists([ctx], [""])


def test_single_member_with_whole_vocabulary_is_score_options(chat):
    vocab = len(chat.vocabulary().tokens)
    fuser = OptionFusion([chat], config=FusionConfig(top_k=vocab + 64))  # + padding rows
    got = fuser.choose(QUESTION, CHOICES)
    (ref,) = chat.score_options([cloze_context(QUESTION)], [CHOICES])
    assert got.scores == pytest.approx(ref.normalized, abs=1e-4) and got.index == ref.best
    assert got.n_fused == 0 and got.n_positions == sum(ref.n_tokens)


def test_self_ensemble_keeps_the_member_choice(base):
    alone = OptionFusion([base], config=FusionConfig(lr=0.5)).choose(QUESTION, CHOICES)
    fused = OptionFusion([base, base], config=FusionConfig(lr=0.5, reuse_ids=False)).choose(QUESTION, CHOICES)
    assert fused.n_fused == fused.n_positions  # same tokenizer: every boundary is shared
    assert fused.index == alone.index
    assert fused.scores == pytest.approx(alone.scores, abs=2e-2)  # only AdamW's weight decay moves z


def test_two_vocabularies_fuse_at_shared_boundaries(chat, base):
    dec = FusionDecoder([chat, base], config=FusionConfig(lr=0.5))
    got = OptionFusion.from_decoder(dec).choose(QUESTION, CHOICES)
    alone = OptionFusion([chat], config=FusionConfig(lr=0.5)).choose(QUESTION, CHOICES)
    assert 0 < got.n_fused <= got.n_positions == alone.n_positions
    assert all(np.isfinite(got.scores)) and got.scores != alone.scores  # the partner moved them
    again = OptionFusion.from_decoder(dec).choose(QUESTION, CHOICES)
    assert again.scores == got.scores and again.index == got.index
    with pytest.raises(InvalidRequestError):
        OptionFusion.from_decoder(dec).choose(QUESTION, ["ok", " "])


def test_choose_each_equals_choose_at_every_eta(chat, base):
    """The dev-set η search scores every η from one set of forward passes; each must equal a
    decoder built with that η (and η = 0 is the main member alone)."""
    dec = FusionDecoder([chat, base], config=FusionConfig(lr=0.15))
    grid = [0.0, 0.15, 1.2]
    each = OptionFusion.from_decoder(dec).choose_each(QUESTION, CHOICES, grid)
    for lr, got in zip(grid, each, strict=True):
        ref = OptionFusion.from_decoder(dec.with_lr(lr)).choose(QUESTION, CHOICES)
        assert got.scores == pytest.approx(ref.scores, abs=1e-9) and got.index == ref.index
    alone = OptionFusion([chat], config=FusionConfig()).choose(QUESTION, CHOICES)
    assert each[0].scores == pytest.approx(alone.scores, abs=1e-9) and each[0].n_fused == 0
    assert each[2].scores != each[1].scores  # a larger η lets the partner pull further
    assert dec.with_lr(1.2).rows is dec.rows and dec.cfg.lr == 0.15  # shared caches, original untouched
    with pytest.raises(ConfigError, match=">= 0"):
        OptionFusion.from_decoder(dec).choose_each(QUESTION, CHOICES, [0.15, -1.0])
