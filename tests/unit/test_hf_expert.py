"""HFExpert on tiny random models with two different vocabularies (no Ray, no downloads)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from der_ray.config import ExpertConfig
from der_ray.errors import AssetError, AssetMissingError, InvalidRequestError
from der_ray.experts.hf import HFExpert

PROMPTS = ["What is 2+2?", "Name a capital city in Europe, please.", "hi", "Write a haiku about rain"]


@pytest.fixture(scope="module", params=["tiny-chat", "tiny-base"])
def expert(request, tiny_pool_cfg) -> HFExpert:
    return HFExpert(tiny_pool_cfg.expert(request.param))


def _full_logprobs(e: HFExpert, ids: list[int]) -> np.ndarray:
    with torch.inference_mode():
        logits = e.model(torch.tensor([ids])).logits[0, -1]
    return torch.log_softmax(logits.float(), -1).numpy()


def test_batched_greedy_equals_unbatched(expert: HFExpert):
    batched = expert.generate(PROMPTS, max_new_tokens=12)
    single = [expert.generate([p], max_new_tokens=12)[0] for p in PROMPTS]
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.completion_tokens for g in batched] == [g.completion_tokens for g in single]
    assert [g.prompt_tokens for g in batched] == [g.prompt_tokens for g in single]
    for g in batched:
        assert 0 < g.completion_tokens <= 12 and g.latency_s > 0 and g.expert == expert.name
        assert g.finish_reason in ("stop", "length")


def test_length_limit_and_seeded_sampling(expert: HFExpert):
    g = expert.generate(["Tell me a story"], max_new_tokens=3, stop=["zzzz"])[0]
    assert g.completion_tokens <= 3
    a = expert.generate(PROMPTS[:2], max_new_tokens=8, temperature=1.0, seed=7)
    b = expert.generate(PROMPTS[:2], max_new_tokens=8, temperature=1.0, seed=7)
    assert [x.text for x in a] == [x.text for x in b]


def test_stop_strings_cut_the_text(expert: HFExpert):
    free = expert.generate(["Say something"], max_new_tokens=16)[0]
    assert len(free.text) >= 2, "the tiny model should produce some text to cut"
    stop = free.text[1:3] if free.text[1:3].strip() else free.text[1:2]
    cut = expert.generate(["Say something"], max_new_tokens=16, stop=[stop])[0]
    assert stop not in cut.text and free.text.startswith(cut.text)
    assert cut.finish_reason == "stop" and cut.completion_tokens <= free.completion_tokens


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"prompts": []}, "non-empty list"),
    ({"prompts": "a string"}, "non-empty list"),
    ({"prompts": ["ok", "  "]}, "prompt 1 is empty"),
    ({"prompts": ["ok"], "max_new_tokens": 0}, "max_new_tokens must be a positive integer"),
    ({"prompts": ["ok"], "max_new_tokens": -5}, "max_new_tokens must be a positive integer"),
    ({"prompts": ["ok"], "temperature": -0.1}, "temperature"),
    ({"prompts": ["ok"], "stop": [""]}, "stop strings must be non-empty"),
])
def test_bad_generate_input(expert: HFExpert, kwargs, match):
    with pytest.raises(InvalidRequestError, match=match):
        expert.generate(**kwargs)


def test_session_steps_match_full_forward(expert: HFExpert):
    state = expert.open_session("What is 2+2?", top_k=None)
    prompt_ids = expert.tokenizer.encode(expert.formatter.format("What is 2+2?"),
                                         add_special_tokens=expert.formatter.add_special_tokens)
    assert state.n_tokens == len(prompt_ids)
    np.testing.assert_allclose(state.dist.logprobs, _full_logprobs(expert, prompt_ids), atol=1e-4)
    ids = list(prompt_ids)
    for step in ([5], [6, 7, 8], [9]):
        state = expert.append_tokens(state.session_id, step, top_k=None)
        ids += step
        np.testing.assert_allclose(state.dist.logprobs, _full_logprobs(expert, ids), atol=1e-4)
    top = expert.next_token(state.session_id, top_k=5)
    assert list(top.dist.ids) == list(np.argsort(-state.dist.logprobs)[:5])
    assert np.all(np.diff(top.dist.logprobs) <= 0) and top.dist.vocab_size == len(state.dist.ids)
    text_state = expert.append_text(state.session_id, " four")
    assert text_state.n_tokens == len(ids) + len(expert.tokenizer.encode(" four", add_special_tokens=False))
    expert.close_session(state.session_id)
    with pytest.raises(InvalidRequestError, match="unknown session"):
        expert.append_tokens(state.session_id, [1])
    with pytest.raises(InvalidRequestError, match="out of range"):
        s = expert.open_session("hello")
        expert.append_tokens(s.session_id, [10**7])


def test_sessions_are_bounded(tiny_pool_cfg):
    e = HFExpert(tiny_pool_cfg.expert("tiny-chat"), max_sessions=2)
    first = e.open_session("one").session_id
    e.open_session("two")
    e.open_session("three")
    assert len(e.sessions) == 2
    with pytest.raises(InvalidRequestError, match="evicted"):
        e.next_token(first)


def test_score_options_matches_slow_reference(expert: HFExpert):
    ctx = ["Question: What is the capital of France?\nAnswer:", "Question: 2+2=\nAnswer: "]
    opts = [["Paris", "London is big", "a"], ["4", "five"]]
    scores = expert.score_options(ctx, opts, batch_size=2)
    for c, options, s in zip(ctx, opts, scores, strict=True):
        for j, o in enumerate(options):
            cont = o if c.endswith(" ") else " " + o
            ctx_ids, cont_ids = expert._split_continuation(c, cont)
            ref = 0.0
            for k, tok in enumerate(cont_ids):
                ref += _full_logprobs(expert, ctx_ids + cont_ids[:k])[tok]
            assert s.logprob_sums[j] == pytest.approx(ref, abs=1e-3)
            assert s.normalized[j] == pytest.approx(ref / len(cont_ids), abs=1e-3)
        assert s.best == int(np.argmax(s.normalized))
    chars = expert.score_options(ctx[:1], opts[:1], normalize="chars")[0]
    assert chars.n_chars == (6, 14, 2)
    with pytest.raises(InvalidRequestError):
        expert.score_options(ctx, opts[:1])
    with pytest.raises(InvalidRequestError):
        expert.score_options(ctx[:1], [["Paris", ""]])


def test_vocabulary_embeddings_and_tokenizer_export(expert: HFExpert, tmp_path):
    v = expert.vocabulary()
    assert len(v.tokens) == len(expert.tokenizer) and v.model_vocab_size >= len(v.tokens)
    assert set(v.eos_ids) and all(i in v.special_ids for i in v.eos_ids)
    emb = expert.input_embeddings([0, 3, 5])
    assert emb.shape == (3, expert.model.config.hidden_size) and emb.dtype == np.float32
    full = expert.input_embeddings()
    np.testing.assert_array_equal(full[[0, 3, 5]], emb)
    with pytest.raises(InvalidRequestError):
        expert.input_embeddings([10**7])
    files = expert.tokenizer_files()
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    from transformers import AutoTokenizer

    rebuilt = AutoTokenizer.from_pretrained(tmp_path)
    text = "Héllo\nworld 😀 48"
    assert rebuilt.encode(text) == expert.tokenizer.encode(text)
    h = expert.health()
    assert h.ok and h.device == "cpu" and h.dtype == "float32" and h.n_params > 0


def test_vocabularies_differ(tiny_pool_cfg):
    chat = HFExpert(tiny_pool_cfg.expert("tiny-chat")).vocabulary().tokens
    base = HFExpert(tiny_pool_cfg.expert("tiny-base")).vocabulary().tokens
    assert any(t.startswith("Ġ") for t in chat) and any(t.startswith("▁") for t in base)
    assert "<0x0A>" in base and chat != base


def test_missing_model_dir_is_typed(tmp_path):
    cfg = ExpertConfig(name="ghost", source=f"dir:{tmp_path / 'nope'}", params_b=0.1)
    with pytest.raises(AssetMissingError, match="ghost.*not found"):
        HFExpert(cfg)


def test_corrupt_model_dir_is_typed(tiny_dirs, tmp_path):
    import shutil

    bad = tmp_path / "corrupt"
    shutil.copytree(tiny_dirs["byte_bpe"], bad)
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(AssetError, match="cannot load"):
        HFExpert(ExpertConfig(name="corrupt", source=f"dir:{bad}", params_b=0.1))


def test_hub_source_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = ExpertConfig(name="hub", source="hf:der-ray-test/does-not-exist", params_b=0.1)
    with pytest.raises(AssetMissingError, match="hub.*cannot load 'der-ray-test/does-not-exist'"):
        HFExpert(cfg)


def test_fingerprint_tracks_weights_and_prompt(tiny_pool_cfg):
    import dataclasses

    from der_ray.config import PromptConfig

    cfg = tiny_pool_cfg.expert("tiny-chat")
    a = HFExpert(cfg).fingerprint()
    assert a == HFExpert(cfg).fingerprint() and a.startswith("files-sha256:")
    other = dataclasses.replace(cfg, prompt=PromptConfig(format="chat", system="Be brief."))
    assert HFExpert(other).fingerprint() != a
