#!/usr/bin/env bash
# README command (a): set everything up on a fresh machine (idempotent) and run the main job on local
# Ray with the bundled data: prepare the experts (a few minutes once), fill the response cache, train
# the DER router, evaluate it against the baselines, run fusion, write out/main/report.md.
# Extra arguments go to jobs/main.py, e.g. `scripts/run_main.sh --train-per-domain 30 --iterations 30`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
venv="${DER_RAY_VENV:-$root/.venv}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false
exec "$venv/bin/python" jobs/main.py "$@"
