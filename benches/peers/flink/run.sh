#!/usr/bin/env bash
# Apache Flink peer of K2 Stream's benchmarks: builds (once) and runs one job on Flink's
# local MiniCluster inside one JVM. See README.md next to this file.
#
#   run.sh bronze    [--brokers B] [--binance-topic T] --warehouse DIR [--checkpoint-ms N]
#                    [--parallelism N] [--fresh] [--dedup-ttl-s N] [--sink flinksink|icebergsink] ...
#   run.sh arbitrage [--brokers B] [--binance-topic T] [--kraken-topic T] [--alerts-topic T]
#                    [--start latest|earliest] [--seconds N] [--delta-ms N] [--threshold-bps X]
#                    [--delivery at-least-once|exactly-once] [--checkpoint-ms N] [--parallelism N] ...
#   run.sh topics    [--brokers B] [--binance-topic T] [--kraken-topic T] [--alerts-topic T]
#   run.sh alerts-stats [--brokers B] [--alerts-topic T]
#   run.sh build     (build only)
#
# Flags read here, not passed on:
#   --heap SIZE        JVM -Xmx (default 1g; env K2_FLINK_HEAP); extra JVM options: env K2_FLINK_JAVA_OPTS
#   --log-file FILE    log4j2 file (default var/log/<job>-<time>-<pid>.log; env K2_FLINK_LOG_DIR for the dir)
#   --alerts-partitions N, --partitions N   (arbitrage: passed to `topics` only)
# stdout: the job's one JSON result line. stderr: short errors. Everything else: the log file.
set -euo pipefail

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
STAMP="$HERE/target/.k2-build-stamp"
MAIN=dev.k2stream.flinkpeer.Main

die() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }

build_stamp() { # hash of everything the build depends on
    (cd "$HERE" && find pom.xml src -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
}

build() {
    if [[ -f $STAMP && "$(cat "$STAMP")" == "$(build_stamp)" && -d $HERE/target/lib ]]; then
        return 0
    fi
    command -v mvn >/dev/null 2>&1 || die "mvn not found (needed once to build)"
    printf 'run.sh: building (mvn package; jars from Maven Central, cache in ~/.m2) ...\n' >&2
    local t0=$SECONDS log="$HERE/target/build.log"
    mkdir -p "$HERE/target"
    rm -rf "$HERE/target/lib" "$STAMP"
    if ! mvn -q -B -Dstyle.color=never -f "$HERE/pom.xml" package >"$log" 2>&1; then
        sed 's/\x1b\[[0-9;]*m//g' "$log" | tail -n 40 >&2
        die "build failed (full output: $log)"
    fi
    build_stamp >"$STAMP"
    printf 'run.sh: built in %ss (%s jars in target/lib)\n' $((SECONDS - t0)) "$(ls "$HERE/target/lib" | wc -l)" >&2
}

java_bin() {
    if [[ -n ${JAVA_HOME:-} && -x $JAVA_HOME/bin/java ]]; then printf '%s\n' "$JAVA_HOME/bin/java"; else command -v java || die "no java"; fi
}

# The --add-opens/--add-exports Flink's own launcher passes on Java 17 (Flink 2.x
# env.java.opts.all defaults), so Kryo and Flink's internals can reflect as they expect.
JVM_OPENS=(
    --add-exports=java.base/sun.net.util=ALL-UNNAMED
    --add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED
    --add-exports=java.security.jgss/sun.security.krb5=ALL-UNNAMED
    --add-opens=java.base/java.lang=ALL-UNNAMED
    --add-opens=java.base/java.net=ALL-UNNAMED
    --add-opens=java.base/java.io=ALL-UNNAMED
    --add-opens=java.base/java.nio=ALL-UNNAMED
    --add-opens=java.base/sun.nio.ch=ALL-UNNAMED
    --add-opens=java.base/java.lang.reflect=ALL-UNNAMED
    --add-opens=java.base/java.text=ALL-UNNAMED
    --add-opens=java.base/java.time=ALL-UNNAMED
    --add-opens=java.base/java.util=ALL-UNNAMED
    --add-opens=java.base/java.util.concurrent=ALL-UNNAMED
    --add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED
    --add-opens=java.base/java.util.concurrent.locks=ALL-UNNAMED
)

JOB=${1:-}
[[ -n $JOB ]] || { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2; }
shift

HEAP=${K2_FLINK_HEAP:-1g}
read -r -a EXTRA_OPTS <<<"${K2_FLINK_JAVA_OPTS:-}"
LOG_FILE=""
PASS=()
TOPIC_ARGS=()
while (($#)); do
    case $1 in
        --heap) HEAP=${2:?--heap needs a value}; shift 2 ;;
        --heap=*) HEAP=${1#*=}; shift ;;
        --log-file) LOG_FILE=${2:?--log-file needs a value}; shift 2 ;;
        --log-file=*) LOG_FILE=${1#*=}; shift ;;
        --alerts-partitions | --partitions) TOPIC_ARGS+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
        --alerts-partitions=* | --partitions=*) TOPIC_ARGS+=("$1"); shift ;;
        --brokers | --binance-topic | --kraken-topic | --alerts-topic)
            TOPIC_ARGS+=("$1" "${2:?$1 needs a value}"); PASS+=("$1" "$2"); shift 2 ;;
        --brokers=* | --binance-topic=* | --kraken-topic=* | --alerts-topic=*)
            TOPIC_ARGS+=("$1"); PASS+=("$1"); shift ;;
        *) PASS+=("$1"); shift ;;
    esac
done

case $JOB in
    build) build; exit 0 ;;
    bronze | arbitrage | topics | alerts-stats | oracle) ;;
    -h | --help | help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown job '$JOB' (bronze|arbitrage|topics|alerts-stats|oracle|build)" ;;
esac

build
if [[ -z $LOG_FILE ]]; then
    LOG_DIR=${K2_FLINK_LOG_DIR:-$HERE/var/log}
    mkdir -p "$LOG_DIR"
    LOG_FILE="$LOG_DIR/$JOB-$(date +%Y%m%d-%H%M%S)-$$.log"
else
    mkdir -p "$(dirname -- "$LOG_FILE")"
fi

jvm() { # heap, then Main's args; runs in the foreground
    local heap=$1
    shift
    "$(java_bin)" -Xmx"$heap" -Xms"$heap" "${JVM_OPENS[@]}" "${EXTRA_OPTS[@]}" \
        -Dlog4j2.configurationFile="$HERE/conf/log4j2.properties" -Dk2flink.log.file="$LOG_FILE" \
        -cp "$HERE/target/classes:$HERE/target/lib/*" "$MAIN" "$@"
}

case $JOB in
    topics)
        jvm 256m topics "${TOPIC_ARGS[@]}"
        ;;
    arbitrage)
        # Input topics (if missing) and the alerts topic with LogAppendTime, before the job.
        jvm 256m topics "${TOPIC_ARGS[@]}" >/dev/null
        printf 'run.sh: log in %s\n' "$LOG_FILE" >&2
        # exec: a SIGTERM to run.sh reaches the JVM, which then stops the job with a savepoint.
        exec "$(java_bin)" -Xmx"$HEAP" -Xms"$HEAP" "${JVM_OPENS[@]}" "${EXTRA_OPTS[@]}" \
            -Dlog4j2.configurationFile="$HERE/conf/log4j2.properties" -Dk2flink.log.file="$LOG_FILE" \
            -cp "$HERE/target/classes:$HERE/target/lib/*" "$MAIN" arbitrage "${PASS[@]}"
        ;;
    *)
        printf 'run.sh: log in %s\n' "$LOG_FILE" >&2
        exec "$(java_bin)" -Xmx"$HEAP" -Xms"$HEAP" "${JVM_OPENS[@]}" "${EXTRA_OPTS[@]}" \
            -Dlog4j2.configurationFile="$HERE/conf/log4j2.properties" -Dk2flink.log.file="$LOG_FILE" \
            -cp "$HERE/target/classes:$HERE/target/lib/*" "$MAIN" "$JOB" "${PASS[@]}"
        ;;
esac
