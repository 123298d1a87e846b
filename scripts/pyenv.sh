#!/usr/bin/env bash
# Create or refresh <repo>/.venv with the pinned packages of tests/py/requirements.txt
# (and benches/requirements.txt: matplotlib for benches/report.py), then print the venv's
# python path (the only thing written to stdout).
#
#   PY="$(scripts/pyenv.sh)" && "$PY" tests/py/read_iceberg.py --help
#
# Idempotent and fast when nothing changed: the sha256 of requirements.txt is kept in
# the venv and compared first. Safe to call concurrently (flock on a file in the venv).
# K2_PYTHON picks the base interpreter (default: python3.11, else python3).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
req="$root/tests/py/requirements.txt"
bench_req="$root/benches/requirements.txt"
stamp="$venv/.k2-requirements.sha256"

want="$(cat "$req" "$bench_req" | sha256sum | cut -d' ' -f1)"
ready() { [[ -x "$venv/bin/python" && "$(cat "$stamp" 2>/dev/null)" == "$want" ]]; }

if ! ready; then
  mkdir -p "$venv"
  exec 9>"$venv/.k2-lock"
  flock 9
  if ! ready; then  # another caller may have finished while we waited
    base="${K2_PYTHON:-$(command -v python3.11 || command -v python3)}"
    if ! "$venv/bin/python" -c 'import sys' 2>/dev/null; then
      # Missing or broken venv: empty it (keeping the lock file) and create it anew.
      find "$venv" -mindepth 1 -maxdepth 1 ! -name .k2-lock -exec rm -rf {} +
      "$base" -m venv "$venv" >&2
    fi
    rm -f "$stamp"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/python" -m pip install -q -r "$req" -r "$bench_req" >&2
    echo "$want" >"$stamp.tmp" && mv "$stamp.tmp" "$stamp"
  fi
  exec 9>&-
fi

echo "$venv/bin/python"
