#!/usr/bin/env bash
# K2 Stream side by side with the COST baseline, Apache Flink and Apache Spark, on this
# machine's broker and the same data, in one run; then the report. See BENCHMARKS.md.
#
#   benches/run.sh [--quick] [compare|throughput|latency|profile ...]   (default: compare)
#
# 1. builds the release k2, the COST baseline and the e2e harness, and copies them to
#    target/bench/bin/ (so that builds by others cannot swap a binary mid-run);
# 2. builds the Flink and Spark peers (Maven Central, cached in ~/.m2) if needed;
# 3. starts the broker if needed (scripts/kafka.sh) and runs the scenarios one engine at a
#    time: target/bench/results.json, progress in target/bench/run.log;
# 4. benches/report.py (project venv + matplotlib): target/bench/report.md and PNG plots.
#
# --quick is a smoke test (about 10 minutes); the full run takes about 20-25 minutes.
# Knobs: K2_BENCH_MESSAGES, K2_BENCH_REPS, K2_BENCH_PEER_REPS, K2_BENCH_RATES (e.g.
# 10000,50000), K2_BENCH_FEED_S, K2_BENCH_SYMBOLS, K2_BENCH_DELTA_MS, K2_BENCH_THRESHOLD_BPS.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
args=()
for a in "$@"; do args+=("$a"); done
scenarios=0
for a in "${args[@]+"${args[@]}"}"; do [[ $a == --* ]] || scenarios=1; done
((scenarios)) || args+=(compare)

out=target/bench
bin=$out/bin
mkdir -p "$bin"

executable() { # cargo's "Executable ... (path)" line -> path
    sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -n 1
}
echo "building (release) ..." >&2
e2e=$(cargo bench --bench e2e --no-run 2>&1 | tee "$out/build.log" | executable)
baseline=$(cargo bench --bench cost_baseline --no-run 2>&1 | tee -a "$out/build.log" | executable)
[[ -x $e2e && -x $baseline ]] || { tail -n 30 "$out/build.log" >&2; echo "build failed" >&2; exit 1; }
cp -f "${CARGO_TARGET_DIR:-target}/release/k2" "$bin/k2"
cp -f "$baseline" "$bin/cost_baseline"
cp -f "$e2e" "$bin/e2e"

benches/peers/flink/run.sh build
benches/peers/spark/run.sh build
scripts/kafka.sh start >/dev/null

echo "running: ${args[*]} (progress: $out/run.log)" >&2
K2_BENCH_K2="$root/$bin/k2" K2_COST_BASELINE="$root/$bin/cost_baseline" \
    "$bin/e2e" "${args[@]}" 2>&1 | tee "$out/run.log"

py=$(scripts/pyenv.sh)
"$py" benches/report.py --results "$out/results.json" --out "$out"
echo "report: $out/report.md" >&2
