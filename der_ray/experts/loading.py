"""Resolve an expert's ``source`` and load its tokenizer and model on the right device.

One place decides device and dtype: CUDA when torch sees one (inside a Ray actor that is the GPU Ray
assigned through CUDA_VISIBLE_DEVICES — never a hard-coded index), else CPU; float32 on CPU (bf16
matmuls are ~5x slower on these CPUs), bf16 (or fp16 without bf16 support) on GPU. Note that Ray can
assign a logical "GPU" on a CPU-only box, so the device comes from torch, not from Ray.
Imports: core, assets (lazily), torch/transformers (lazily).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from der_ray.config import ExpertConfig, split_source
from der_ray.errors import AssetError, AssetMissingError, ConfigError


def pick_device(prefer: str | None = None) -> str:
    """``"cuda"`` when available (and not overridden), else ``"cpu"``."""
    import torch

    if prefer:
        if prefer.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {prefer!r} requested but torch sees no CUDA device")
        return prefer
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(name: str, device: str) -> Any:
    """Map the config's dtype name to a torch dtype for ``device``."""
    import torch

    if name != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def resolve_source(cfg: ExpertConfig, cache_dir: str | None = None, *, prepare: bool = True) -> str:
    """Return what ``from_pretrained`` should load: a local directory or a hub id.

    ``asset:`` sources are prepared on first use (idempotent, lock-protected) unless ``prepare`` is
    False, in which case an unprepared asset raises ``AssetMissingError``.
    """
    kind, value = split_source(cfg.source)
    if kind == "asset":
        from der_ray import assets

        if prepare:
            return str(assets.prepare(value, cache_dir, progress=False))
        found = assets.prepared_dir(value, cache_dir)
        if found is None:
            raise AssetMissingError(f"expert {cfg.name!r}: asset {value!r} is not prepared; run "
                                    f"`der-ray prepare {value}`")
        return str(found)
    if kind == "hf":
        return value
    path = Path(value).expanduser()
    if not (path / "config.json").is_file():
        raise AssetMissingError(f"expert {cfg.name!r}: model directory {str(path)!r} not found "
                                "(expected a Hugging Face model dir with config.json)")
    return str(path.resolve())


def load_tokenizer_and_model(cfg: ExpertConfig, where: str, device: str) -> tuple[Any, Any]:
    """Load ``(tokenizer, model)`` from a local dir or hub id, in eval mode on ``device``."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if cfg.revision:
        kwargs["revision"] = cfg.revision
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=pick_dtype(cfg.dtype, device), **kwargs)
    except OSError as e:  # missing files, no network for a hub id, gated repo, ...
        raise AssetMissingError(f"expert {cfg.name!r}: cannot load {where!r}: {e}") from e
    except (SafetensorError, ValueError) as e:  # corrupt weights or an unsupported config
        raise AssetError(f"expert {cfg.name!r}: cannot load {where!r}: {e}") from e
    model.to(device).eval()  # type: ignore[arg-type]  # transformers' stub wraps .to oddly
    if tokenizer.pad_token_id is None:  # batching needs a pad id; it is always masked out
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, model
