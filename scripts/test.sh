#!/usr/bin/env bash
# README command (b): set everything up on a fresh machine (idempotent) and run the whole test suite.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m "not integration"`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
venv="${DER_RAY_VENV:-$root/.venv}"

# Offline, loopback-only, deterministic threading (see tests/conftest.py for the same defaults).
export HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled \
       RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false

echo "[test] ruff + mypy"
"$venv/bin/ruff" check .
"$venv/bin/mypy" der_ray jobs

# Integration tests use the real SmolLM2 expert; converting it once takes ~20 s (cached afterwards).
"$venv/bin/der-ray" prepare smollm2-135m-instruct --no-progress
exec "$venv/bin/python" -m pytest "$@"
