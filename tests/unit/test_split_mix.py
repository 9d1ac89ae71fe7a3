import pytest

from der_ray import data
from der_ray.errors import ConfigError, DatasetError

DOMAINS = ["triviaqa", "piqa", "gsm8k"]


def test_parts_are_disjoint_and_deterministic():
    ids = {p: data.split_mix(DOMAINS, p, 10, seed=1)["id"].to_pylist() for p in ("train", "dev", "test")}
    assert all(len(v) == 30 for v in ids.values())
    assert not set(ids["train"]) & set(ids["test"]) and not set(ids["dev"]) & set(ids["test"])
    assert data.split_mix(DOMAINS, "train", 10, seed=1)["id"].to_pylist() == ids["train"]
    assert data.split_mix(DOMAINS, "train", 10, seed=2)["id"].to_pylist() != ids["train"]


def test_errors():
    with pytest.raises(ConfigError, match="unknown split part"):
        data.split_mix(DOMAINS, "holdout", 5)
    with pytest.raises(DatasetError, match="unknown domain"):
        data.split_mix(["gsm9k"], "train", 5)
    with pytest.raises(DatasetError, match="only"):
        data.split_mix(["arc_challenge"], "test", 10_000)
