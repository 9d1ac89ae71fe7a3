"""Where der_ray keeps its caches. Imports: stdlib only.

One function decides, so that the CLI, jobs, actors and tests agree: an explicit argument wins,
then ``$DER_RAY_CACHE``, then ``~/.cache/der_ray``.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "DER_RAY_CACHE"


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """Return the absolute cache root (not created here)."""
    if override:
        return Path(override).expanduser().resolve()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return (Path.home() / ".cache" / "der_ray").resolve()
