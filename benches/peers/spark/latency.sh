#!/usr/bin/env bash
# Latency sweep of the Spark bronze job. For each trigger interval: a fresh topic, Spark started
# first (fresh warehouse and checkpoint), then `k2 produce` at a fixed rate for a fixed time, then
# Spark stops between two micro-batches. Prints run.sh's JSON line for each interval; its
# latency_ms is produce (Kafka record timestamp) -> Iceberg snapshot commit, over every row, and
# latency_ms.steady the same over the rows produced after the first --warmup seconds (a fresh
# JVM's first micro-batches run interpreted/JIT-compiling code).
#   latency.sh [--triggers "100 250 500 1000"] [--rate 5000] [--warmup 20] [--duration 60] [--drain 20]
#              [--brokers 127.0.0.1:9092] [--k2 /work/main/target/debug/k2] [--heap 1g]
set -euo pipefail

DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
triggers="100 250 500 1000"
rate=5000
warmup=20
duration=60
drain=20
brokers=127.0.0.1:9092
k2=$(cd "$DIR/../../.." && pwd)/target/debug/k2
heap=1g
while (($#)); do
  case "$1" in
    --triggers) triggers=$2 ;;
    --rate) rate=$2 ;;
    --warmup) warmup=$2 ;;
    --duration) duration=$2 ;;
    --drain) drain=$2 ;;
    --brokers) brokers=$2 ;;
    --k2) k2=$2 ;;
    --heap) heap=$2 ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
  shift 2
done

"$DIR/run.sh" build
mkdir -p "$DIR/work/logs"
for t in $triggers; do
  topic="spark.lat.t$t.$(date +%s)"
  wh="$DIR/work/lat-$t"
  log="$DIR/work/logs/latency-$t-$(date +%Y%m%d-%H%M%S).log"
  "$k2" produce --brokers "$brokers" --binance-topic "$topic" --exchanges binance --partitions 4 \
    --count 0 --quiet
  out=$(mktemp)
  "$DIR/run.sh" bronze --brokers "$brokers" --topic "$topic" --trigger "$t" \
    --seconds $((warmup + duration + drain + 5)) --latency-skip-s "$warmup" --warehouse "$wh" --checkpoint-dir "$wh/checkpoint" \
    --clean --heap "$heap" --log "$log" >"$out" &
  spark=$!
  for _ in $(seq 1 240); do
    grep -q "Stream started" "$log" 2>/dev/null && break
    sleep 0.5
  done
  sleep 3
  "$k2" produce --brokers "$brokers" --binance-topic "$topic" --exchanges binance --partitions 4 \
    --rate "$rate" --duration "$((warmup + duration))s" --duplicates 0 --malformed 0 --quiet
  wait "$spark"
  line=$(cat "$out")
  rm -f "$out"
  printf '%s,"rate":%s,"warmup_s":%s,"produce_s":%s}\n' "${line%\}}" "$rate" "$warmup" "$((warmup + duration))"
done
