"""The real SmolLM2-135M-Instruct asset as a Ray actor (prepared from its PyPI wheel, fp16 on disk,
float32 on CPU)."""

from __future__ import annotations

import numpy as np
import pytest

from der_ray.config import load_pool_config
from der_ray.experts.actors import ExpertPool

pytestmark = pytest.mark.integration

QUESTIONS = ["What is the capital of France?", "Name a primary color.", "What is 12 + 7?",
             "Translate 'thank you' into French."]


@pytest.fixture(scope="module")
def smol(ray_session, smollm2_dir):
    cfg = load_pool_config().select(["smollm2-135m"])
    pool = ExpertPool(cfg)
    pool.start()
    yield pool["smollm2-135m"]
    pool.shutdown()


def test_generate_answers_real_questions(smol):
    out = smol.generate(["What is the capital of France? Answer in one word."], max_new_tokens=16)
    assert "paris" in out[0].text.lower()
    assert out[0].prompt_tokens > 5 and 0 < out[0].completion_tokens <= 16
    health = smol.health()
    assert health.device == "cpu" and health.dtype == "float32" and 130e6 < health.n_params < 140e6


def test_batched_greedy_equals_unbatched(smol):
    batched = smol.generate(QUESTIONS, max_new_tokens=24)
    single = [smol.generate([q], max_new_tokens=24)[0] for q in QUESTIONS]
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.completion_tokens for g in batched] == [g.completion_tokens for g in single]


def test_session_steps_equal_full_forward(smol):
    prompt = "The capital of France is"
    state = smol.open_session(prompt, apply_format=False, top_k=None)
    step = smol.append_text(state.session_id, " Paris, and the capital of Italy is", top_k=None)
    smol.close_session(state.session_id)
    # The same tokens in one fresh forward pass: open a session on the concatenated text.
    full = smol.open_session(prompt + " Paris, and the capital of Italy is", apply_format=False, top_k=None)
    smol.close_session(full.session_id)
    assert full.n_tokens == step.n_tokens, "tokenisation of the delta must compose for this text"
    np.testing.assert_allclose(step.dist.logprobs, full.dist.logprobs, atol=2e-3)
    assert step.dist.top_id == full.dist.top_id


def test_option_likelihood_prefers_the_sensible_option(smol):
    scores = smol.score_options(
        ["Question: What do cows drink?\nAnswer:", "Question: Which is a fruit?\nAnswer:"],
        [["water", "gasoline", "sand"], ["banana", "hammer", "concrete"]],
    )
    assert [s.best for s in scores] == [0, 0]
