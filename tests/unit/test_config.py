from pathlib import Path

import pytest

from der_ray.config import ExpertConfig, load_pool_config, pool_from_dict, split_source
from der_ray.errors import ConfigError, UnknownExpertError


def _pool(**expert):  # one valid expert with overrides
    base = {"name": "a", "source": "asset:x", "params_b": 0.1}
    return {"experts": [{**base, **expert}]}


def test_default_pool_has_three_families():
    cfg = load_pool_config()
    assert cfg.names == ("smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b")
    gemma = cfg.expert("gemma3-270m")
    assert gemma.prompt.format == "completion" and "\nQuestion:" in gemma.prompt.stop
    assert [e.params_b for e in cfg.experts] == sorted(e.params_b for e in cfg.experts)
    assert all(split_source(e.source)[0] == "asset" for e in cfg.experts)


@pytest.mark.parametrize(("data", "key"), [
    (_pool(generation={"max_new_tokens": 0}), "experts[0].generation.max_new_tokens"),
    (_pool(generation={"temperature": -1.0}), "experts[0].generation.temperature"),
    (_pool(promt={}), "experts[0].promt: unknown key"),
    (_pool(params_b="big"), "experts[0].params_b: expected float"),
    (_pool(params_b=0), "experts[0].params_b: must be > 0"),
    (_pool(resources={"num_gpus": -1}), "experts[0].resources.num_gpus"),
    (_pool(prompt={"format": "xml"}), "experts[0].prompt.format"),
    (_pool(prompt={"template": "no placeholder"}), "experts[0].prompt.template"),
    (_pool(source=""), "experts[0].source"),
    (_pool(name="bad name!"), "experts[0].name"),
    ({"experts": [{"name": "a", "source": "asset:x"}]}, "experts[0].params_b: required key is missing"),
    ({"experts": []}, "experts: at least one expert"),
    ({"experts": "nope"}, "experts: expected a list"),
    ({"experts": [{"name": "a", "source": "asset:x", "params_b": 1},
                  {"name": "a", "source": "asset:y", "params_b": 1}]}, "duplicate expert names: a"),
])
def test_invalid_config_names_the_key(data, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        pool_from_dict(data)


def test_yaml_file_errors(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("experts: [\n  - name: a\n   source: x")  # broken indentation
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_pool_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_pool_config(tmp_path / "missing.yaml")
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("experts:\n  - name: a\n    source: asset:x\n    params_b: 1\n"
                     "    generation: {max_new_tokens: -3}\n")
    with pytest.raises(ConfigError, match=r"wrong.yaml: experts\[0\].generation.max_new_tokens"):
        load_pool_config(wrong)


def test_unknown_expert_lists_names():
    cfg = load_pool_config()
    with pytest.raises(UnknownExpertError, match="configured experts: smollm2-135m, gemma3-270m"):
        cfg.expert("gpt-9")
    assert cfg.select(["qwen2.5-coder-0.5b"]).names == ("qwen2.5-coder-0.5b",)


def test_sources_and_resources():
    assert split_source("hf:Qwen/Qwen2.5-0.5B") == ("hf", "Qwen/Qwen2.5-0.5B")
    assert split_source("/models/x") == ("dir", "/models/x")
    e = ExpertConfig(name="x", source="dir:/m", params_b=1.0)
    assert e.resources.threads == 1 and e.trust_remote_code is False


def test_config_round_trips_through_a_plain_dict():
    from der_ray.config import RouterConfig, config_to_dict, router_from_dict

    pool = load_pool_config()
    assert pool_from_dict(config_to_dict(pool)) == pool
    router = RouterConfig()
    assert router_from_dict(config_to_dict(router)) == router
