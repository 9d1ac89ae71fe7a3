"""cluster.yaml validates offline against Ray's launcher schema and config checks."""

import json
from pathlib import Path

import jsonschema
import yaml


def test_cluster_yaml_is_a_valid_ray_launcher_config():
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / "cluster.yaml").read_text())
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)
    validate_config(prepare_config(cfg))
    assert cfg["available_node_types"]["gpu_worker"]["resources"]["GPU"] == 1
    assert all("0.0.0.0" not in c for c in cfg["head_start_ray_commands"])
