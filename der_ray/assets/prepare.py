"""Turn a registered asset into a verified Hugging Face model directory, once.

Contract: :func:`prepare` runs assemble → verify → convert for one asset and returns
``<cache>/models/<name>-<sha8>/``, a directory of fp16 safetensors + tokenizer files + a
``der_ray_asset.json`` manifest. A directory is *prepared* only if its manifest is present and
consistent (:func:`verify_prepared`); the manifest is written last and the directory appears under its
final name by one ``os.replace``, so a crash at any point leaves either nothing or a complete result.
The GGUF is assembled into ``<cache>/gguf/<name>.gguf`` the same way (temp file, hash while copying,
rename only when sha256 and size match the pin). A ``filelock`` at ``<cache>/locks/<name>.lock`` makes
concurrent prepares of one asset (processes, Ray workers) convert exactly once.

Supply-chain care: package directories are located with ``importlib.util.find_spec`` and their files
read by path; no code from an asset package is ever imported or run.

Imports: stdlib, filelock, tqdm, ``der_ray.errors``/``paths``/``assets.{registry,gguf}``; the default
converter imports torch and transformers lazily, only when it runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from der_ray.assets.gguf import ensure_gguf, locate_parts, sha256_file
from der_ray.assets.registry import ASSETS, AssetSpec, get_spec
from der_ray.errors import AssetChecksumError, AssetError, AssetMissingError, DerRayError
from der_ray.paths import cache_dir as _cache_root

logger = logging.getLogger(__name__)

MANIFEST_NAME = "der_ray_asset.json"
MANIFEST_FORMAT = 1


class Converter(Protocol):
    """Writes a Hugging Face model directory for ``spec`` from a verified GGUF into ``out_dir``.

    ``out_dir`` exists and is empty; the converter may return details to record in the manifest.
    """

    def __call__(
        self, gguf_path: Path, out_dir: Path, spec: AssetSpec, *, progress: bool
    ) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class AssetStatus:
    """What ``der-ray assets`` shows for one asset (cheap: no hashing, no conversion)."""

    spec: AssetSpec
    installed: bool
    gguf_present: bool
    prepared: Path | None


# --------------------------------------------------------------------------- manifest


def _version_of(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _write_manifest(out_dir: Path, spec: AssetSpec, details: Mapping[str, Any]) -> None:
    files = {
        p.relative_to(out_dir).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
        for p in sorted(out_dir.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    }
    if not any(name.endswith(".safetensors") for name in files):
        raise AssetError(f"asset {spec.name!r}: the converter wrote no .safetensors file in {out_dir}")
    manifest = {
        "format": MANIFEST_FORMAT,
        "asset": spec.name,
        "gguf_sha256": spec.sha256,
        "gguf_size": spec.size,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": {d: _version_of(d) for d in ("transformers", "torch", "gguf", "safetensors")},
        "conversion": dict(details),
        "files": files,
    }
    tmp = out_dir / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out_dir / MANIFEST_NAME)


def verify_prepared(
    model_dir: Path, spec: AssetSpec | None = None, *, check_hashes: bool = False
) -> dict[str, Any]:
    """Check a prepared directory against its manifest and return the manifest.

    Args:
        model_dir: a directory returned by :func:`prepare`.
        spec: if given, the manifest must name this asset and its pinned GGUF sha256.
        check_hashes: also re-hash every listed file (about 1 s per 500 MB); otherwise only
            existence and sizes are checked, which costs a few ``stat`` calls.

    Raises:
        AssetMissingError: no manifest, or a listed file is missing.
        AssetChecksumError: the manifest is unreadable or for another asset, or a file's size or
            sha256 differs from what the manifest recorded.
    """
    path = Path(model_dir) / MANIFEST_NAME
    if not path.is_file():
        raise AssetMissingError(f"{model_dir} is not a prepared asset dir: {MANIFEST_NAME} is missing")
    try:
        manifest = json.loads(path.read_text())
        files: dict[str, dict[str, Any]] = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AssetChecksumError(f"{path} is unreadable: {exc}") from exc
    if spec is not None and (manifest.get("asset"), manifest.get("gguf_sha256")) != (spec.name, spec.sha256):
        raise AssetChecksumError(
            f"{path} is for asset {manifest.get('asset')!r} with gguf sha256 "
            f"{manifest.get('gguf_sha256')}, expected {spec.name!r} with {spec.sha256}"
        )
    for rel, rec in files.items():
        file = Path(model_dir) / rel
        if not file.is_file():
            raise AssetMissingError(f"{file} is listed in {path} but missing")
        size = file.stat().st_size
        if size != rec["size"]:
            raise AssetChecksumError(f"{file}: expected size {rec['size']} bytes, actual {size} bytes")
        if check_hashes and (actual := sha256_file(file)) != rec["sha256"]:
            raise AssetChecksumError(f"{file}: expected sha256 {rec['sha256']}, actual sha256 {actual}")
    return manifest


# --------------------------------------------------------------------------- prepare


def _resolve(asset: str | AssetSpec) -> AssetSpec:
    return asset if isinstance(asset, AssetSpec) else get_spec(asset)


def model_dir_for(asset: str | AssetSpec, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the prepared directory of ``asset`` lives (whether or not it exists yet)."""
    spec = _resolve(asset)
    return _cache_root(cache_dir) / "models" / f"{spec.name}-{spec.sha8}"


def prepared_dir(asset: str | AssetSpec, cache_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The prepared directory of ``asset`` if it is complete (manifest + sizes check), else None."""
    spec = _resolve(asset)
    final = model_dir_for(spec, cache_dir)
    try:
        verify_prepared(final, spec)
    except AssetError:
        return None
    return final


@contextlib.contextmanager
def _asset_lock(root: Path, name: str, *, progress: bool) -> Iterator[None]:
    lock_dir = root / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_dir / f"{name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        _stage(f"waiting for another process preparing {name} (lock {lock.lock_file})", progress)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _stage(message: str, progress: bool) -> None:
    logger.info(message)
    if progress:
        tqdm.write(f"[der_ray] {message}", file=sys.stderr)


def convert_gguf_to_hf(gguf_path: Path, out_dir: Path, spec: AssetSpec, *, progress: bool) -> dict[str, Any]:
    """The default :class:`Converter`: load the GGUF with transformers and save fp16 safetensors.

    transformers dequantizes every GGUF tensor on load (the ``kernels`` package that would keep
    them packed is not a dependency), so the model is dense; fp16 storage stays closest to the GGUF
    values (max |Δlogit| 0.03 on SmolLM2, against 0.16 for bf16) at half the size of fp32.
    Load time is dominated by gguf-py's ``GGUFReader``, which transformers runs three times.

    Raises:
        AssetError: the loaded model differs from the spec (model type, parameter count, vocabulary,
            chat template) or has non-finite fp16 weights.
    """
    import torch  # lazy: only a conversion needs torch and transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    bars_were_on = hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        # local_files_only: a GGUF load must never reach for the hub, even for a missing file.
        kwargs: dict[str, Any] = {"gguf_file": gguf_path.name, "local_files_only": True}
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float16, **kwargs)
    finally:
        if bars_were_on and not hf_logging.is_progress_bar_enabled():
            hf_logging.enable_progress_bar()
    # transformers attaches a GgufHfQuantizer even though the weights are dense, and save_pretrained
    # refuses to serialize a "quantized" model; detaching it is safe for exactly that reason.
    model.hf_quantizer = None  # type: ignore[assignment]  # torch.nn.Module.__setattr__ typing
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    n_params = sum(p.numel() for p in model.parameters())  # tied weights are counted once
    has_template = bool(getattr(tokenizer, "chat_template", None))
    found = {
        "model_type": model.config.model_type,
        "n_params": n_params,
        "vocab_size": len(tokenizer),
        "has_chat_template": has_template,
    }
    problems = [f"{k} {v!r} (pinned {getattr(spec, k)!r})" for k, v in found.items() if v != getattr(spec, k)]
    # A packed (still quantized) weight would show up here as a non-fp16 dtype; fp16 overflow as inf.
    problems += [f"{n} has dtype {p.dtype}" for n, p in model.named_parameters() if p.dtype != torch.float16]
    problems += [
        f"non-finite fp16 weights in {n}" for n, p in model.named_parameters() if not p.isfinite().all()
    ]
    if problems:
        raise AssetError(f"asset {spec.name!r}: converted model differs from its spec: {'; '.join(problems)}")
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {"dtype": "float16", **found}


def prepare(
    asset: str | AssetSpec,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    progress: bool = True,
    force: bool = False,
    converter: Converter | None = None,
) -> Path:
    """Make sure ``asset`` is prepared in the cache and return its Hugging Face model directory.

    Returns immediately (a manifest read and a few ``stat`` calls) when the directory is already
    complete. Otherwise, holding the asset's file lock: assemble and verify the GGUF, convert it into
    a temp dir, write the manifest, and rename the temp dir to its final name.

    Args:
        asset: a registered asset name, or a spec (tests and custom assets).
        cache_dir: cache root override; default ``der_ray.paths.cache_dir()``.
        progress: show a byte progress bar while assembling and stage lines while converting.
        force: re-assemble and re-convert even if a prepared directory exists.
        converter: writes the HF directory; default: the transformers GGUF conversion to fp16.

    Returns:
        ``<cache>/models/<name>-<sha8>``, loadable with ``from_pretrained(dir)``.

    Raises:
        ConfigError: unknown asset name (lists the valid ones).
        AssetMissingError: its packages are not installed (names the pip command).
        AssetChecksumError: the assembled GGUF does not match the pinned sha256/size.
        AssetError: the conversion failed.
    """
    spec = _resolve(asset)
    root = _cache_root(cache_dir)
    final = model_dir_for(spec, root)
    if not force and prepared_dir(spec, root) is not None:
        return final

    with _asset_lock(root, spec.name, progress=progress):
        # Re-check under the lock: whoever held it before us may have just finished the same work.
        if not force and prepared_dir(spec, root) is not None:
            return final
        models = final.parent
        models.mkdir(parents=True, exist_ok=True)
        # Temp files and dirs left by a killed process; safe to delete because we hold this asset's lock.
        for stale in models.glob(f".{final.name}.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        for stale in (root / "gguf").glob(f".{spec.name}.gguf.*.tmp"):
            stale.unlink(missing_ok=True)

        gguf = ensure_gguf(spec, root, progress=progress, force=force)
        conv = converter if converter is not None else convert_gguf_to_hf
        tmp = Path(tempfile.mkdtemp(dir=models, prefix=f".{final.name}.", suffix=".tmp"))
        tmp.chmod(0o755)  # mkdtemp makes it 0700; the final dir should be as readable as the cache
        try:
            _stage(
                f"converting {spec.name} to fp16 safetensors (once, ~{spec.convert_seconds} s on 2 cores)",
                progress,
            )
            started = time.perf_counter()
            try:
                details = dict(conv(gguf, tmp, spec, progress=progress))
            except DerRayError:
                raise
            except Exception as exc:  # transformers/torch raise many types; the cause is chained
                raise AssetError(
                    f"asset {spec.name!r}: conversion failed: {type(exc).__name__}: {exc}"
                ) from exc
            details.setdefault("seconds", round(time.perf_counter() - started, 1))
            for file in tmp.rglob("*"):  # transformers writes model.safetensors 0600 (via a temp file)
                file.chmod(0o755 if file.is_dir() else 0o644)
            _write_manifest(tmp, spec, details)
            if final.exists():  # force=True, or a dir without a valid manifest: replace it
                old = Path(tempfile.mkdtemp(dir=models, prefix=f".{final.name}.", suffix=".tmp"))
                os.replace(final, old / "old")
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, final)
            _stage(f"prepared {spec.name} in {details['seconds']} s -> {final}", progress)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def asset_status(cache_dir: str | os.PathLike[str] | None = None) -> list[AssetStatus]:
    """Installed / assembled / prepared state of every registered asset, without hashing anything."""
    root = _cache_root(cache_dir)
    statuses = []
    for name in sorted(ASSETS):
        spec = ASSETS[name]
        try:
            locate_parts(spec)
            installed = True
        except AssetMissingError:
            installed = False
        gguf = root / "gguf" / f"{spec.name}.gguf"
        gguf_present = gguf.is_file() and gguf.stat().st_size == spec.size
        statuses.append(AssetStatus(spec, installed, gguf_present, prepared_dir(spec, root)))
    return statuses
