"""Submitting ``jobs/*.py`` to a running Ray cluster: the runtime_env and a blocking submit.

``ray job submit --working-dir . -- python jobs/<name>.py`` uploads the repository as the job's
working directory. Ray 2.60 already skips ``.git``, ``.venv`` and what ``.gitignore``/``.rayignore``
list; ``EXCLUDES`` repeats that explicitly (plus results and caches) so the upload stays a few hundred
KB even where those defaults are switched off (``RAY_RUNTIME_ENV_IGNORE_GITIGNORE``,
``RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES``). der_ray itself is installed on every node (see
cluster.yaml); the upload carries configs and the job scripts.

Job outputs: the working directory is the job's cwd and lives in Ray's ephemeral session directory,
so give jobs absolute ``--output-dir``/``--storage`` paths.

Imports: stdlib and ``der_ray.errors``; ``ray.job_submission`` inside ``submit_job``.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from der_ray.errors import ConfigError

#: gitignore-style patterns relative to the working dir; leading "/" anchors at its root
EXCLUDES: tuple[str, ...] = (
    ".git/", ".venv/", "venv/", "/out/", "/benchmarks/results/", "__pycache__/", "*.egg-info/",
    ".mypy_cache/", ".ruff_cache/", ".pytest_cache/", ".cache/", "*.safetensors", "*.gguf",
)
#: environment of every submitted job: one OpenMP thread for the driver (Ray sets workers' own)
JOB_ENV: dict[str, str] = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
#: how long a submission waits for a freshly started head's job agent
AGENT_WAIT_S = 60.0


def submission_runtime_env(working_dir: str | os.PathLike[str] = ".", *,
                           env_vars: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The runtime_env for ``ray job submit --runtime-env-json`` or ``JobSubmissionClient``.

    Raises:
        ConfigError: ``working_dir`` is not a directory.
    """
    root = Path(working_dir).expanduser().resolve()
    if not root.is_dir():
        raise ConfigError(f"--working-dir {str(root)!r} is not a directory")
    return {"working_dir": str(root), "excludes": list(EXCLUDES), "env_vars": {**JOB_ENV, **(env_vars or {})}}


def submit_job(entrypoint: Sequence[str] | str, *, address: str | None = None,
               working_dir: str | os.PathLike[str] = ".", submission_id: str | None = None,
               wait: bool = True, poll_s: float = 1.0, timeout_s: float | None = None,
               log: Callable[[str], None] | None = None) -> tuple[str, str]:
    """Submit ``entrypoint`` with ``submission_runtime_env(working_dir)``; optionally wait for the end.

    Args:
        entrypoint: the command on the cluster, e.g. ``["python", "jobs/main.py", "--output-dir", "/abs"]``.
        address: job server URL (default ``$RAY_ADDRESS`` if it is an http URL, else 127.0.0.1:8265).
        wait: poll until the job reaches a terminal status, passing new log text to ``log``.
        timeout_s: stop waiting after this long (the job keeps running; its status is returned).

    Returns:
        ``(submission_id, status)`` where status is e.g. ``"SUCCEEDED"``, ``"FAILED"``, ``"RUNNING"``.

    Raises:
        ConfigError: no job server answers at ``address``.
    """
    from ray.job_submission import JobSubmissionClient

    env_address = os.environ.get("RAY_ADDRESS", "")
    address = address or (env_address if env_address.startswith("http") else DEFAULT_ADDRESS)
    command = entrypoint if isinstance(entrypoint, str) else shlex.join(entrypoint)
    try:
        client = JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ConfigError(f"--address {address}: no Ray job server reachable ({e})") from None
    runtime_env = submission_runtime_env(working_dir)
    agent_deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            job_id = client.submit_job(entrypoint=command, runtime_env=runtime_env,
                                       submission_id=submission_id)
            break
        except RuntimeError as e:  # a head that just started has no job agent registered yet
            if "No available agent" not in str(e) or time.monotonic() > agent_deadline:
                raise
            time.sleep(1.0)
    if not wait:
        return job_id, str(client.get_job_status(job_id).value)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    shown = 0
    while True:
        status = str(client.get_job_status(job_id).value)
        if log is not None:  # the whole log each poll is simple and fine for job-sized logs
            text = client.get_job_logs(job_id)
            if len(text) > shown:
                log(text[shown:])
                shown = len(text)
        if status in TERMINAL or (deadline is not None and time.monotonic() > deadline):
            return job_id, status
        time.sleep(poll_s)
