#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft, broker+controller in one JVM) on loopback,
# for K2 Stream's developers and tests. The jars come from Maven Central through
# Maven (scripts/kafka/pom.xml); nothing else is downloaded.
#
#   scripts/kafka.sh install              fetch the jars into $K2_CACHE/kafka/lib (no-op when done)
#   scripts/kafka.sh start                install if needed, format once, start, wait until healthy
#   scripts/kafka.sh stop                 graceful stop (SIGTERM), SIGKILL after a timeout
#   scripts/kafka.sh restart
#   scripts/kafka.sh wipe                 stop and delete every topic's data (tests and benchmarks
#                                         leave theirs behind; a broker with thousands of them
#                                         starts slowly)
#   scripts/kafka.sh status [--deep]      exit 0 if our broker is healthy, else 1; one line
#   scripts/kafka.sh logs [N|-f]          tail the broker's server.log
#   scripts/kafka.sh topics               list topics
#   scripts/kafka.sh create-topic NAME [PARTITIONS]   (replication factor 1; ok if it exists)
#   scripts/kafka.sh bootstrap            print host:port
#   scripts/kafka.sh classpath            print the classpath (to run other Kafka tools)
#
# Environment (all optional):
#   K2_KAFKA_PORT             PLAINTEXT port                  (default 9092)
#   K2_KAFKA_CONTROLLER_PORT  KRaft controller port           (default K2_KAFKA_PORT+1)
#   K2_KAFKA_DIR              state: config, data, logs, pid  (default <repo>/var/kafka)
#   K2_KAFKA_LIB              jars, shared by all dirs        (default $K2_CACHE/kafka/lib)
#   K2_CACHE                  download cache                  (default ~/.cache/k2)
#   K2_KAFKA_HEAP             broker max heap                 (default 512m)
#   K2_KAFKA_START_TIMEOUT    seconds to wait for health      (default 90)
#   K2_KAFKA_STOP_TIMEOUT     seconds before SIGKILL          (default 30)
#   JAVA_HOME                 java to use (else `java` on PATH; needs 17+)
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd -P)
POM="$SCRIPT_DIR/kafka/pom.xml"
BROKER_LOG4J="$SCRIPT_DIR/kafka/log4j2.properties"
TOOLS_LOG4J="$SCRIPT_DIR/kafka/tools-log4j2.properties"

PORT=${K2_KAFKA_PORT:-9092}
[[ $PORT =~ ^[1-9][0-9]{0,4}$ ]] || { echo "kafka.sh: bad K2_KAFKA_PORT: $PORT" >&2; exit 1; }
CTRL_PORT=${K2_KAFKA_CONTROLLER_PORT:-$((PORT + 1))}
HOST=127.0.0.1
BOOTSTRAP="$HOST:$PORT"
HEAP=${K2_KAFKA_HEAP:-512m}
START_TIMEOUT=${K2_KAFKA_START_TIMEOUT:-90}
STOP_TIMEOUT=${K2_KAFKA_STOP_TIMEOUT:-30}

abspath() { # absolute path of $1 (need not exist), relative paths against $PWD
    case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac
}
KDIR=$(abspath "${K2_KAFKA_DIR:-$REPO_ROOT/var/kafka}")
CACHE=$(abspath "${K2_CACHE:-$HOME/.cache/k2}")
LIB=$(abspath "${K2_KAFKA_LIB:-$CACHE/kafka/lib}")
CONF="$KDIR/server.properties"
DATA="$KDIR/data"
LOGS="$KDIR/logs"
PIDFILE="$KDIR/kafka.pid"
LOCKFILE="$KDIR/kafka.lock"
STAMP="$LIB/.k2-install-stamp"

KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM" | head -n1)

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

java_bin() {
    if [[ -n ${JAVA_HOME:-} && -x $JAVA_HOME/bin/java ]]; then
        printf '%s\n' "$JAVA_HOME/bin/java"
    elif command -v java >/dev/null 2>&1; then
        command -v java
    else
        die "no java found (Kafka $KAFKA_VERSION needs Java 17+); set JAVA_HOME"
    fi
}

check_port() {
    if ! [[ $1 =~ ^[1-9][0-9]{0,4}$ ]] || (($1 > 65535)); then die "bad port: $1"; fi
}

# ---------------------------------------------------------------- install

install_stamp() { # what the installed lib must have been built from
    printf 'kafka=%s pom-sha256=%s\n' "$KAFKA_VERSION" "$(sha256sum "$POM" | cut -d' ' -f1)"
}

installed() {
    [[ -f $STAMP && -f $LIB/kafka_2.13-$KAFKA_VERSION.jar && "$(cat "$STAMP")" == "$(install_stamp)" ]]
}

cmd_install() {
    if installed; then
        [[ ${1:-} == quiet ]] || log "Kafka $KAFKA_VERSION already installed in $LIB"
        return 0
    fi
    command -v mvn >/dev/null 2>&1 || die "mvn not found (needed once, to fetch Kafka from Maven Central)"
    mkdir -p "$(dirname "$LIB")"
    # One installer at a time (several dirs share one lib); fd 8 is closed for children.
    exec 8>"$LIB.install.lock"
    flock -w 900 8 || die "timed out waiting for another install ($LIB.install.lock)"
    if installed; then exec 8>&-; return 0; fi
    log "installing Kafka $KAFKA_VERSION into $LIB (Maven, cache in ~/.m2) ..."
    local t0=$SECONDS tmp="$LIB.tmp.$$"
    rm -rf "$tmp"
    local mvnlog="$LIB.install.log"
    if ! mvn -q -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
            -DincludeScope=runtime -DoutputDirectory="$tmp" >"$mvnlog" 2>&1 8>&-; then
        rm -rf "$tmp"
        sed 's/\x1b\[[0-9;]*m//g' "$mvnlog" | tail -n 40 >&2
        die "maven failed to fetch Kafka $KAFKA_VERSION (full output: $mvnlog)"
    fi
    [[ -f $tmp/kafka_2.13-$KAFKA_VERSION.jar ]] || { rm -rf "$tmp"; die "kafka_2.13-$KAFKA_VERSION.jar missing after mvn"; }
    install_stamp >"$tmp/.k2-install-stamp"
    rm -rf "$LIB"
    mv "$tmp" "$LIB"
    exec 8>&-
    log "installed Kafka $KAFKA_VERSION ($(find "$LIB" -name '*.jar' | wc -l) jars) in $((SECONDS - t0))s"
}

classpath() { printf '%s\n' "$LIB/*"; }

run_tool() { # run a Kafka CLI main class in the foreground, quiet logging
    cmd_install quiet
    timeout "${TOOL_TIMEOUT:-300}" "$(java_bin)" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xshare:auto \
        -Dlog4j2.configurationFile="$TOOLS_LOG4J" -cp "$(classpath)" "$@" 8>&- 9>&-
}

# ---------------------------------------------------------------- health

# Our broker's pid, if the pidfile names a live JVM running kafka.Kafka on our config.
our_pid() {
    local pid
    [[ -f $PIDFILE ]] || return 1
    pid=$(<"$PIDFILE")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "kafka.Kafka $CONF" || return 1
    printf '%s\n' "$pid"
}

# Cheap Kafka-protocol health check, pure bash: send ApiVersions v0 with
# correlation id 42 and expect a response frame carrying that id and error 0.
# Only a broker that serves requests answers: Kafka 4.4 enables request
# processing on the PLAINTEXT listener only once the broker has caught up with
# the metadata log and been unfenced (seen in its log). ~10 ms.
api_ok() {
    local port=${1:-$PORT} out
    # shellcheck disable=SC2016 # $0/$1 expand in the inner bash
    out=$(timeout 3 bash -c '
        exec 3<>"/dev/tcp/$0/$1" || exit 1
        printf "\x00\x00\x00\x0c\x00\x12\x00\x00\x00\x00\x00\x2a\x00\x02k2" >&3
        head -c 10 <&3 | od -An -tx1' "$HOST" "$port" 2>/dev/null) || return 1
    out=${out//[[:space:]]/}
    [[ ${out:8:12} == 0000002a0000 ]]
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

deep_ok() { # the admin client can fetch metadata (a JVM: ~2 s)
    TOOL_TIMEOUT=20 run_tool org.apache.kafka.tools.TopicCommand \
        --bootstrap-server "$BOOTSTRAP" --list >/dev/null 2>&1
}

cmd_status() {
    local pid
    if pid=$(our_pid); then
        if api_ok; then
            if [[ ${1:-} == --deep ]] && ! deep_ok; then
                echo "unhealthy: pid $pid answers ApiVersions on $BOOTSTRAP but the admin client cannot list topics"
                return 1
            fi
            echo "running: Kafka $KAFKA_VERSION pid $pid, healthy on $BOOTSTRAP (dir $KDIR)"
            return 0
        fi
        echo "unhealthy: pid $pid is running but $BOOTSTRAP does not answer Kafka requests (see: $0 logs)"
        return 1
    fi
    if api_ok; then
        echo "not ours: a Kafka broker answers on $BOOTSTRAP but was not started from $KDIR"
    elif port_open "$PORT"; then
        echo "stopped: but port $PORT is in use by another process"
    else
        echo "stopped: no broker on $BOOTSTRAP (dir $KDIR)"
    fi
    return 1
}

# ---------------------------------------------------------------- start/stop

take_lock() {
    mkdir -p "$KDIR"
    exec 9>"$LOCKFILE"
    flock -w $((START_TIMEOUT + STOP_TIMEOUT + 60)) 9 || die "timed out waiting for $LOCKFILE"
}

write_config() {
    cat >"$CONF.tmp" <<EOF
# Written by scripts/kafka.sh on every start; edits here are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$CTRL_PORT
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CTRL_PORT
advertised.listeners=PLAINTEXT://$HOST:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$DATA

# A single node: every internal topic has one replica.
num.partitions=4
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0

# Keep data until the store is wiped (tests may write records with old event
# timestamps, which time-based retention would delete at once).
log.retention.ms=-1
log.retention.bytes=-1
EOF
    mv "$CONF.tmp" "$CONF"
}

cluster_id() { # 16 random bytes in Kafka's Uuid form (base64url, 22 chars, no leading '-')
    local id
    while :; do
        id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
        [[ ${#id} == 22 && $id != -* ]] && { printf '%s\n' "$id"; return; }
    done
}

format_once() {
    if [[ -f $DATA/meta.properties ]]; then
        return 0
    fi
    local cid
    if [[ -s $KDIR/cluster.id ]]; then cid=$(<"$KDIR/cluster.id"); else cid=$(cluster_id); fi
    printf '%s\n' "$cid" >"$KDIR/cluster.id"
    log "formatting KRaft store $DATA (cluster id $cid)"
    run_tool kafka.tools.StorageTool format -t "$cid" -c "$CONF" --ignore-formatted >>"$LOGS/format.log" 2>&1 \
        || { cat "$LOGS/format.log" >&2; die "formatting $DATA failed"; }
}

cmd_start() {
    check_port "$PORT"; check_port "$CTRL_PORT"
    [[ $PORT != "$CTRL_PORT" ]] || die "K2_KAFKA_PORT and K2_KAFKA_CONTROLLER_PORT must differ"
    cmd_install quiet
    take_lock
    local pid
    if pid=$(our_pid); then
        if api_ok; then
            log "already running (pid $pid)"
            echo "$BOOTSTRAP"
            return 0
        fi
        # Alive but not answering: a start whose caller died, or a sick broker.
        log "pid $pid is running but not healthy yet; waiting"
        wait_healthy "$pid" "" && { echo "$BOOTSTRAP"; return 0; }
        die "pid $pid does not become healthy; try: $0 stop; $0 start  (logs: $LOGS/server.log)"
    fi
    rm -f "$PIDFILE"
    local p
    for p in "$PORT" "$CTRL_PORT"; do
        if port_open "$p"; then
            if api_ok "$p"; then
                die "a Kafka broker not started from $KDIR already answers on $HOST:$p"
            fi
            die "port $p is in use by another process (set K2_KAFKA_PORT / K2_KAFKA_CONTROLLER_PORT)"
        fi
    done
    mkdir -p "$DATA" "$LOGS"
    write_config
    format_once

    local java; java=$(java_bin)
    local logmark=0
    [[ -f $LOGS/server.log ]] && logmark=$(stat -c %s "$LOGS/server.log")
    local t0; t0=$(date +%s.%N)
    {
        echo "---- $(date -u +%FT%TZ) starting Kafka $KAFKA_VERSION on $BOOTSTRAP"
    } >>"$LOGS/kafka.out"
    # setsid: the broker outlives the caller's process group (a test runner's
    # Ctrl-C); 8>&- 9>&-: the broker must not inherit the lock fds.
    setsid "$java" -Xmx"$HEAP" -Xms64m \
        -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
        -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError \
        -Djava.awt.headless=true \
        -Dkafka.logs.dir="$LOGS" \
        -Dlog4j2.configurationFile="$BROKER_LOG4J" \
        -cp "$(classpath)" \
        kafka.Kafka "$CONF" \
        </dev/null >>"$LOGS/kafka.out" 2>&1 8>&- 9>&- &
    pid=$!
    echo "$pid" >"$PIDFILE"
    if ! wait_healthy "$pid" "$logmark"; then
        kill -KILL "$pid" 2>/dev/null || true
        rm -f "$PIDFILE"
        log "last lines of $LOGS/server.log and kafka.out:"
        tail -n 30 "$LOGS/server.log" >&2 2>/dev/null || true
        tail -n 10 "$LOGS/kafka.out" >&2 2>/dev/null || true
        die "Kafka did not become healthy within ${START_TIMEOUT}s"
    fi
    log "started Kafka $KAFKA_VERSION (pid $pid) in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')s; bootstrap $BOOTSTRAP; logs $LOGS"
    echo "$BOOTSTRAP"
}

# Healthy = answers ApiVersions, and (when a log mark is given) has logged
# "Kafka Server started" since the mark, i.e. it is also unfenced.
wait_healthy() {
    local pid=$1 mark=$2 deadline=$((SECONDS + START_TIMEOUT))
    while ((SECONDS < deadline)); do
        kill -0 "$pid" 2>/dev/null || { log "broker process $pid exited"; return 1; }
        if api_ok; then
            if [[ -z $mark ]] || tail -c +$((mark + 1)) "$LOGS/server.log" 2>/dev/null | grep -q 'Kafka Server started'; then
                return 0
            fi
        fi
        sleep 0.2
    done
    return 1
}

cmd_stop() {
    [[ -d $KDIR ]] || { echo "not running (no $KDIR)"; return 0; }
    take_lock
    local pid
    if ! pid=$(our_pid); then
        rm -f "$PIDFILE"
        echo "not running (dir $KDIR)"
        return 0
    fi
    log "stopping Kafka pid $pid (SIGTERM, SIGKILL after ${STOP_TIMEOUT}s)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid still alive after ${STOP_TIMEOUT}s; SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
    rm -f "$PIDFILE"
    echo "stopped (pid $pid)"
}

# ---------------------------------------------------------------- tools

cmd_logs() {
    local f="$LOGS/server.log"
    [[ -f $f ]] || die "no log yet: $f"
    case ${1:-100} in
        -f) exec tail -n 50 -F "$f" ;;
        *[!0-9]*) die "usage: $0 logs [LINES|-f]" ;;
        *) tail -n "${1:-100}" "$f" ;;
    esac
}

need_running() { api_ok || die "no broker answers on $BOOTSTRAP (run: $0 start)"; }

cmd_topics() {
    need_running
    run_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" --list
}

cmd_create_topic() {
    local name=${1:-} parts=${2:-4}
    [[ -n $name ]] || die "usage: $0 create-topic NAME [PARTITIONS]"
    [[ $parts =~ ^[0-9]+$ ]] || die "PARTITIONS must be a number"
    need_running
    run_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" \
        --create --if-not-exists --topic "$name" --partitions "$parts" --replication-factor 1
}

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}

main() {
    local cmd=${1:-help}
    shift || true
    case $cmd in
        install) cmd_install "$@" ;;
        start) cmd_start ;;
        stop) cmd_stop ;;
        restart) cmd_stop; exec 9>&-; cmd_start ;;
        wipe) cmd_stop; rm -rf "$DATA"; log "deleted $DATA; the next start formats a fresh store" ;;
        status) cmd_status "$@" ;;
        logs) cmd_logs "$@" ;;
        topics) cmd_topics ;;
        create-topic) cmd_create_topic "$@" ;;
        bootstrap) echo "$BOOTSTRAP" ;;
        classpath) cmd_install quiet; classpath ;;
        help | -h | --help) usage ;;
        *) usage >&2; exit 2 ;;
    esac
}

main "$@"
