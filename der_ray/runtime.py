"""Starting or joining Ray, and process-level settings, for entrypoints only (never at import);
``release_freed_heap`` is the one helper library code may call.

Under ``ray job submit`` the job's environment carries ``RAY_ADDRESS`` and we simply connect. A local
run starts a private single-node cluster bound to the loopback interface (Ray otherwise listens on
every interface and advertises the routable IP even when asked for 127.0.0.1).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable
from typing import Any


def setup_logging(level: str = "INFO") -> None:
    """Configure der_ray's log lines for an entrypoint (library code only creates loggers)."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "filelock", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def release_freed_heap() -> None:
    """Hand memory that Python has freed back to the OS (glibc keeps freed heap pages otherwise).

    Library code calls it after building large short-lived structures (tokenizer JSON, vocabularies),
    so the process's peak is not those pages plus whatever it allocates next. A no-op off glibc.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c") if sys.platform.startswith("linux") else None
    if name:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(name).malloc_trim(0)


def set_threads(n: int | None = None) -> None:
    """Pin the driver's torch/OpenMP threads (Ray sets them for workers, not for the driver)."""
    import torch

    n = n or max(1, (os.cpu_count() or 2) // 2)
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    torch.set_num_threads(n)


def init_ray(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None,
             namespace: str = "der_ray") -> bool:
    """Connect to ``address`` / ``$RAY_ADDRESS``, or start a local loopback cluster.

    Returns:
        True when this call started the cluster (the caller should ``ray.shutdown()`` it).
    """
    import ray

    if ray.is_initialized():
        return False
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, namespace=namespace)  # job submit: resources are the cluster's
        return False
    # Keep every socket on 127.0.0.1 for local runs; see ray-2.60 notes (loopback binding).
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=num_cpus, num_gpus=num_gpus, namespace=namespace, include_dashboard=False,
             log_to_driver=False)
    return True


def connect_ray(stack: contextlib.ExitStack, address: str | None = None, **kwargs: Any) -> bool:
    """``init_ray`` whose cluster (if this call started one) is shut down when ``stack`` closes.

    A job never stops a cluster it did not start (``ray job submit``, a test session's Ray).
    """
    started = init_ray(address, **kwargs)
    if started:
        import ray

        stack.callback(ray.shutdown)
    return started


def run_main(body: Callable[[contextlib.ExitStack], int]) -> int:
    """The entrypoint boundary: runs ``body`` and maps a ``DerRayError`` to ``error: <message>`` on
    stderr and the error's exit code (anything else is a bug and keeps its traceback)."""
    from der_ray.errors import DerRayError

    with contextlib.ExitStack() as stack:
        try:
            return body(stack)
        except DerRayError as e:
            print(f"error: {e}", file=sys.stderr)
            return e.exit_code
