#!/usr/bin/env bash
# Soak test of exactly-once: the crash test of the suite with many more
# SIGKILLs (random moments and every gap of the commit protocol), on a release
# build. Usage: scripts/soak.sh [ROUNDS]   (default 200, about 5 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-200}"
scripts/kafka.sh start >/dev/null
echo "soak: $rounds kill/restart rounds"
K2_CRASH_ROUNDS="$rounds" cargo test --release --test crash sigkill -- --nocapture
