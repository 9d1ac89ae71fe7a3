#!/usr/bin/env bash
# README command (a): set everything up on a fresh machine (idempotent), prepare the three default
# experts (a few minutes once) and run the main job on local Ray with the bundled data.
# Extra arguments go to jobs/main.py, e.g. `scripts/run_main.sh --per-domain 5`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
venv="${DER_RAY_VENV:-$root/.venv}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false
"$venv/bin/der-ray" prepare --all
exec "$venv/bin/python" jobs/main.py "$@"
