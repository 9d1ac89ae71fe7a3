"""Shared fixtures: tiny in-test experts with two vocabularies, one Ray session, real-asset gates.

Environment for stable offline runs is set here (tests may do this; the package never does):
loopback-only Ray without token auth or usage stats, one OpenMP thread, no hub access.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

for key, value in {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}.items():
    os.environ.setdefault(key, value)

# GSM8K train/test live beside the repository for tests only; the package never looks there.
_shared_gsm8k = REPO.parent / "shared" / "data" / "gsm8k"
if "DER_RAY_GSM8K_DIR" not in os.environ and _shared_gsm8k.is_dir():
    os.environ["DER_RAY_GSM8K_DIR"] = str(_shared_gsm8k)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny random experts: a byte-level BPE chat model and a SentencePiece completion model."""
    from der_ray.experts.tiny import build_tiny_expert

    root = tmp_path_factory.mktemp("tiny_experts")
    return {
        "byte_bpe": build_tiny_expert(root / "byte_bpe", "byte_bpe", seed=0),
        "sentencepiece": build_tiny_expert(root / "sentencepiece", "sentencepiece", seed=1),
    }


@pytest.fixture(scope="session")
def tiny_pool_cfg(tiny_dirs: dict[str, Path]):  # type: ignore[no-untyped-def]
    from der_ray.config import pool_from_dict

    return pool_from_dict({"namespace": "der_ray_test", "experts": [
        {"name": "tiny-chat", "source": f"dir:{tiny_dirs['byte_bpe']}", "params_b": 0.001,
         "prompt": {"format": "chat"}, "generation": {"max_new_tokens": 16},
         "resources": {"num_cpus": 0, "max_restarts": 2, "timeout_s": 120}},
        {"name": "tiny-base", "source": f"dir:{tiny_dirs['sentencepiece']}", "params_b": 0.002,
         "prompt": {"format": "completion", "stop": ["\nQuestion:"],
                    "few_shot": [{"question": "1+1?", "answer": " 2"}]},
         "generation": {"max_new_tokens": 16},
         "resources": {"num_cpus": 0, "max_restarts": 2, "timeout_s": 120}},
    ]})


@pytest.fixture(scope="session")
def ray_session():  # type: ignore[no-untyped-def]
    """One local Ray for the whole test session (each init/shutdown pair costs ~10 s here)."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="der_ray_test",
                 object_store_memory=512 * 1024 * 1024)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The prepared real SmolLM2 asset (prepared on first use: ~35 s once per cache)."""
    from der_ray import assets
    from der_ray.errors import AssetMissingError

    try:
        return assets.prepare("smollm2-135m-instruct", progress=False)
    except AssetMissingError as e:
        if os.environ.get("CI"):  # CI installs the assets: a missing one there is a failure
            raise
        pytest.skip(f"SmolLM2 asset not installed: {e}")


@pytest.fixture(scope="session")
def load_job():  # type: ignore[no-untyped-def]
    """Import ``jobs/<name>.py`` as a module (the jobs are scripts, not a package)."""
    import importlib.util

    def load(name: str):  # type: ignore[no-untyped-def]
        spec = importlib.util.spec_from_file_location(f"job_{name}", REPO / "jobs" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        return module

    return load


@pytest.fixture()
def pool_yaml(tiny_pool_cfg, tmp_path: Path) -> str:  # type: ignore[no-untyped-def]
    """The tiny pool written as a YAML file (what jobs take through --pool)."""
    import yaml

    from der_ray.config import config_to_dict

    path = tmp_path / "pool.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(tiny_pool_cfg)))
    return str(path)
