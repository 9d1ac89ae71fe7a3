"""Both cluster launcher configs validate offline against Ray's schema and config checks; broken ones
are rejected with the offending key; the job upload excludes big and local directories."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import yaml

from der_ray import cli
from der_ray.cluster import validate_cluster_config
from der_ray.errors import ConfigError
from der_ray.jobs_submit import EXCLUDES, submission_runtime_env

REPO = Path(__file__).resolve().parents[2]


def _schema() -> dict:
    import ray

    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster.local.yaml"])
def test_cluster_configs_are_valid_ray_launcher_configs(name):
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((REPO / name).read_text())
    jsonschema.validate(raw, _schema())  # Ray's own checks, directly ...
    validate_config(prepare_config(raw))
    prepared = validate_cluster_config(REPO / name)  # ... and through der_ray's validator
    assert prepared["head_node_type"] in prepared["available_node_types"]
    head_start = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start
    starts = raw["head_start_ray_commands"][1:] + raw["worker_start_ray_commands"][1:]
    assert all("RAY_AUTH_MODE=token" in c for c in starts)  # the same auth mode on every node
    assert any("prepare_models.py" in c for c in raw["setup_commands"])


def test_cloud_config_has_a_cpu_head_and_gpu_workers():
    raw = yaml.safe_load((REPO / "cluster.yaml").read_text())
    types = raw["available_node_types"]
    assert types[raw["head_node_type"]]["resources"].get("GPU", 0) == 0
    gpu = types["gpu_worker"]
    assert gpu["resources"]["GPU"] == 1 and 0 < gpu["min_workers"] <= gpu["max_workers"]


def _broken(tmp_path: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    cfg = yaml.safe_load((REPO / "cluster.yaml").read_text())
    edit(cfg)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize(("edit", "message"), [
    (lambda c: c["available_node_types"]["gpu_worker"].update(resourcez={"GPU": 1}),
     r"available_node_types\.gpu_worker: unknown key.*'resourcez'"),
    (lambda c: c.update(head_nodes="x"), r"<top level>: unknown key.*'head_nodes'"),
    (lambda c: c.pop("head_node_type"), r"head_node_type: missing; must name one of .*gpu_worker"),
    (lambda c: c.update(head_node_type="cpu"), r"head_node_type: 'cpu' is not one of"),
    (lambda c: c["provider"].update(type="nocloud"), r"provider\.type: unsupported node provider 'nocloud'"),
    (lambda c: c["available_node_types"]["gpu_worker"].update(max_workers="two"),
     r"available_node_types\.gpu_worker\.max_workers: 'two' is not of type 'integer'"),
])
def test_broken_configs_are_rejected_naming_the_key(tmp_path, edit, message):
    with pytest.raises(ConfigError, match=message):
        validate_cluster_config(_broken(tmp_path, edit))


def test_local_config_without_head_ip_is_rejected(tmp_path):
    cfg = yaml.safe_load((REPO / "cluster.local.yaml").read_text())
    del cfg["provider"]["head_ip"]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=r"provider \(local\): Please supply a `head_ip`"):
        validate_cluster_config(tmp_path / "c.yaml")


def test_check_cluster_cli(tmp_path, capsys):
    assert cli.main(["check-cluster", str(REPO / "cluster.yaml"), str(REPO / "cluster.local.yaml")]) == 0
    assert capsys.readouterr().out.count(": ok") == 2
    bad = _broken(tmp_path, lambda c: c.pop("head_node_type"))
    assert cli.main(["check-cluster", str(bad)]) == 2
    assert f"{bad}: head_node_type: missing" in capsys.readouterr().err


def test_rayignore_matches_the_submission_excludes():
    lines = [ln for ln in (REPO / ".rayignore").read_text().splitlines() if ln and not ln.startswith("#")]
    assert tuple(lines) == EXCLUDES


def test_submission_upload_leaves_out_big_and_local_dirs(tmp_path):
    """What Ray itself would zip for the job with der_ray's runtime_env (no cluster needed)."""
    from ray._private.runtime_env.packaging import create_package

    work = tmp_path / "repo"
    for f in ["jobs/main.py", "der_ray/configs/experts.yaml", "out/main/report.md", ".venv/bin/python",
              "benchmarks/results/x.json", "benchmarks/experts.py", ".git/HEAD", "der_ray/__pycache__/a.pyc",
              ".mypy_cache/x", "models/w.safetensors"]:
        (work / f).parent.mkdir(parents=True, exist_ok=True)
        (work / f).write_text("x")
    env = submission_runtime_env(work)
    assert env["working_dir"] == str(work) and env["env_vars"]["OMP_NUM_THREADS"] == "1"
    create_package(env["working_dir"], tmp_path / "pkg.zip", include_gitignore=False,
                   excludes=env["excludes"])
    names = {n for n in zipfile.ZipFile(tmp_path / "pkg.zip").namelist() if not n.endswith("/")}
    assert names == {"jobs/main.py", "der_ray/configs/experts.yaml", "benchmarks/experts.py"}


def test_submission_env_needs_a_directory(tmp_path):
    with pytest.raises(ConfigError, match="not a directory"):
        submission_runtime_env(tmp_path / "nope")
