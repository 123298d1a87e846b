#!/usr/bin/env bash
# Spark peer of the K2 benchmark. Usage:
#   run.sh bronze    [--brokers H:P] [--topic T] [--warehouse DIR] [--checkpoint-dir DIR]
#                    [--trigger available-now|<ms>] [--seconds N] [--shuffle-partitions N]
#                    [--max-offsets-per-trigger N] [--starting-offsets earliest|latest]
#                    [--dedup-watermark-ms N] [--codec snappy|zstd|...] [--clean]
#                    [--heap 1g] [--log FILE]
#   run.sh arbitrage [--binance-topic T] [--kraken-topic T] [--alerts-topic T] [--delta-ms 500]
#                    [--watermark-ms 2000] [--threshold-bps 1] [--dedup] [--join-buckets false] [...common...]
#   run.sh build     (only build)
# Builds when needed, runs the job on local[2] with its log in a file, and prints ONE JSON line.
set -euo pipefail

DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
JAVA=${JAVA:-java}
MVN=${MVN:-mvn}

build() {
  local stamp="$DIR/target/.k2-built"
  if [[ -f "$stamp" && -d "$DIR/target/lib" && -d "$DIR/target/classes" ]] \
     && [[ -z "$(find "$DIR/pom.xml" "$DIR/src" "$DIR/.mvn" -newer "$stamp" -print -quit)" ]]; then
    return 0
  fi
  echo "building the Spark peer (mvn package)..." >&2
  (cd "$DIR" && "$MVN" -B -q -s "$DIR/.mvn/settings.xml" package -DskipTests >&2)
  touch "$stamp"
}

job=${1:-}
[[ -n "$job" ]] || { sed -n '2,12p' "$0" >&2; exit 2; }
shift
build
[[ "$job" == build ]] && exit 0

work="$DIR/work"
warehouse="$work/warehouse"
checkpoint=""
heap=${SPARK_PEER_HEAP:-1g}
log=""
clean=0
pass=()
while (($#)); do
  case "$1" in
    --warehouse) warehouse=$2; shift 2 ;;
    --checkpoint-dir) checkpoint=$2; shift 2 ;;
    --heap) heap=$2; shift 2 ;;
    --log) log=$2; shift 2 ;;
    --clean) clean=1; shift ;;
    *) pass+=("$1"); shift ;;
  esac
done
checkpoint=${checkpoint:-"$work/checkpoints/$job"}
mkdir -p "$work/logs"
log=${log:-"$work/logs/$job-$(date +%Y%m%d-%H%M%S).log"}
if ((clean)); then
  rm -rf "$warehouse" "$checkpoint"
fi
mkdir -p "$warehouse" "$(dirname "$checkpoint")" "$(dirname "$log")"
warehouse=$(cd "$warehouse" && pwd)
checkpoint="$(cd "$(dirname "$checkpoint")" && pwd)/$(basename "$checkpoint")"
log="$(cd "$(dirname "$log")" && pwd)/$(basename "$log")"
result=$(mktemp)
trap 'rm -f "$result"' EXIT

# The --add-opens set spark-submit adds on Java 17, from Spark 4.0.0's
# launcher/src/main/java/org/apache/spark/launcher/JavaModuleOptions.java.
module_opts=(
  -XX:+IgnoreUnrecognizedVMOptions
  --add-modules=jdk.incubator.vector
  --add-opens=java.base/java.lang=ALL-UNNAMED
  --add-opens=java.base/java.lang.invoke=ALL-UNNAMED
  --add-opens=java.base/java.lang.reflect=ALL-UNNAMED
  --add-opens=java.base/java.io=ALL-UNNAMED
  --add-opens=java.base/java.net=ALL-UNNAMED
  --add-opens=java.base/java.nio=ALL-UNNAMED
  --add-opens=java.base/java.util=ALL-UNNAMED
  --add-opens=java.base/java.util.concurrent=ALL-UNNAMED
  --add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED
  --add-opens=java.base/jdk.internal.ref=ALL-UNNAMED
  --add-opens=java.base/sun.nio.ch=ALL-UNNAMED
  --add-opens=java.base/sun.nio.cs=ALL-UNNAMED
  --add-opens=java.base/sun.security.action=ALL-UNNAMED
  --add-opens=java.base/sun.util.calendar=ALL-UNNAMED
  --add-opens=java.security.jgss/sun.security.krb5=ALL-UNNAMED
  -Djdk.reflect.useDirectMethodHandle=false
  -Dio.netty.tryReflectionSetAccessible=true
)

export SPARK_LOCAL_IP=${SPARK_LOCAL_IP:-127.0.0.1}
load_before=$(cut -d' ' -f1 /proc/loadavg)
start_ns=$(date +%s%N)
set +e
# shellcheck disable=SC2086
# Spark leaves files in its working directory (artifacts/, spark-warehouse/): run it in work/.
cd "$work"
"$JAVA" -Xmx"$heap" "${module_opts[@]}" ${SPARK_PEER_JAVA_OPTS:-} \
  -cp "$DIR/target/classes:$DIR/target/lib/*" \
  k2.peers.spark.Main "$job" --warehouse "$warehouse" --checkpoint-dir "$checkpoint" \
  --result-file "$result" "${pass[@]}" >"$log" 2>&1
rc=$?
set -e
end_ns=$(date +%s%N)
if ((rc != 0)) || [[ ! -s "$result" ]]; then
  echo "spark peer $job failed (exit $rc); log: $log" >&2
  tail -n 40 "$log" >&2
  exit $((rc == 0 ? 1 : rc))
fi
load_after=$(cut -d' ' -f1 /proc/loadavg)
process_s=$(awk -v a="$start_ns" -v b="$end_ns" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
line=$(head -n 1 "$result")
# process_s: the whole JVM (Spark start-up, table creation, the query, the read-back);
# load1_*: the machine's 1-minute load average around the run (2 cores: above 2 means contention).
printf '%s,"process_s":%s,"load1_before":%s,"load1_after":%s,"log":"%s"}\n' \
  "${line%\}}" "$process_s" "$load_before" "$load_after" "$log"
