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


def test_domain_sizes_give_subsets_of_larger_slices():
    sizes = data.domain_sizes(DOMAINS, 10, ["gsm8k=4"])
    assert sizes == {"triviaqa": 10, "piqa": 10, "gsm8k": 4}
    small = data.split_mix(DOMAINS, "test", sizes, seed=1)
    assert [small["domain"].to_pylist().count(d) for d in DOMAINS] == [10, 10, 4]
    large = set(data.split_mix(DOMAINS, "test", 10, seed=1)["id"].to_pylist())
    assert set(small["id"].to_pylist()) <= large  # cached answers of the small slice carry over


def test_domain_size_of_an_unselected_domain_is_ignored():
    assert data.domain_sizes(["triviaqa", "piqa"], 5, ["gsm8k=20"]) == {"triviaqa": 5, "piqa": 5}


@pytest.mark.parametrize("bad, match", [(["gsm8k"], "DOMAIN=N"), (["gsm8k=x"], "DOMAIN=N"),
                                        (["gsm9k=3"], "unknown domain 'gsm9k'")])
def test_domain_size_errors(bad, match):
    with pytest.raises(ConfigError, match=match):
        data.domain_sizes(DOMAINS, 10, bad)


def test_zero_size_is_a_config_error():
    with pytest.raises(ConfigError, match=r"per_domain\['gsm8k'\]"):
        data.split_mix(DOMAINS, "test", {"triviaqa": 1, "piqa": 1, "gsm8k": 0})
