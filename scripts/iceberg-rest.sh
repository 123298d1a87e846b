#!/usr/bin/env bash
# Local Iceberg REST catalog: Apache Iceberg's own RESTCatalogServer (the server in the
# apache/iceberg-rest-fixture image), run from Maven Central jars
# (scripts/iceberg-rest/pom.xml). Its backend is Iceberg's JdbcCatalog on a SQLite file
# in the state dir; table data and metadata go to the local S3 store (scripts/s3.sh)
# through S3FileIO. For K2 Stream's production path and its tests.
#
#   scripts/iceberg-rest.sh install           fetch the jars into $K2_CACHE/iceberg-rest/lib (no-op when done)
#   scripts/iceberg-rest.sh start             install if needed, start s3.sh if needed, start, wait for /v1/config
#   scripts/iceberg-rest.sh stop              graceful stop (SIGTERM), SIGKILL after a timeout
#   scripts/iceberg-rest.sh restart
#   scripts/iceberg-rest.sh wipe              stop, delete the catalog database and the warehouse's
#                                             objects in S3 (when the S3 store is running)
#   scripts/iceberg-rest.sh status            exit 0 if our server is healthy, else 1; one line
#   scripts/iceberg-rest.sh logs [N|-f]       tail the server's log
#   scripts/iceberg-rest.sh uri               print the catalog URI (http://127.0.0.1:8182)
#   scripts/iceberg-rest.sh warehouse         print the warehouse location (s3://k2-warehouse/rest)
#   scripts/iceberg-rest.sh classpath         print the classpath
#
# Clients: the server's GET /v1/config returns no S3 settings (only its endpoint list),
# so a client passes its own, e.g. pyiceberg:
#   RestCatalog("k2", uri=<uri>, **{"s3.endpoint": <scripts/s3.sh endpoint>,
#       "s3.path-style-access": "true", "s3.access-key-id": "k2",
#       "s3.secret-access-key": "k2", "s3.region": "us-east-1"})
# (the S3 store accepts any key: it has no identities configured.)
#
# Verified here (Iceberg 1.10.0, pyiceberg 0.12.0, 2026-11-30): through this server
# pyiceberg created a namespace and a table, appended twice and read the 4 rows back;
# the files landed under s3://k2-warehouse/rest/<ns>/<table>/ in SeaweedFS.
#
# Multi-table transactions: GET /v1/config lists `POST /v1/{prefix}/transactions/commit`
# and the prefix is empty, so it is POST /v1/transactions/commit. Tried: a commit of
# set-properties on two tables answered 200 and changed both; one whose second table's
# assert-table-uuid failed answered 409 CommitFailedException and changed neither.
# But it is NOT atomic: the server (RESTCatalogAdapter.commitTransaction, a test
# fixture) checks every table's requirements first and then commits the tables one
# after another through the JdbcCatalog, each on its own; its source says it "does
# not guarantee true transactional atomicity". A crash or a concurrent commit between
# two of those table commits can leave some tables committed and others not.
#
# Jetty listens on all interfaces (0.0.0.0:PORT): the server has no bind-address
# setting. The URI and health checks use 127.0.0.1.
#
# Environment (all optional; the K2_S3_* variables of scripts/s3.sh are passed through):
#   K2_REST_PORT              HTTP port                       (default 8182; 8181 is SeaweedFS's own
#                                                              Iceberg endpoint)
#   K2_REST_WAREHOUSE         warehouse location              (default s3://$K2_S3_BUCKET/rest, i.e.
#                                                              s3://k2-warehouse/rest)
#   K2_REST_DIR               state: catalog db, logs, pid    (default <repo>/var/iceberg-rest)
#   K2_REST_LIB               jars, shared by all dirs        (default $K2_CACHE/iceberg-rest/lib)
#   K2_CACHE                  download cache                  (default ~/.cache/k2)
#   K2_REST_HEAP              max heap                        (default 384m)
#   K2_REST_START_TIMEOUT     seconds to wait for health      (default 60)
#   K2_REST_STOP_TIMEOUT      seconds before SIGKILL          (default 15)
#   JAVA_HOME                 java to use (else `java` on PATH; needs 17+)
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd -P)
POM="$SCRIPT_DIR/iceberg-rest/pom.xml"
S3SH="$SCRIPT_DIR/s3.sh"

HOST=127.0.0.1
PORT=${K2_REST_PORT:-8182}
URI="http://$HOST:$PORT"
WAREHOUSE=${K2_REST_WAREHOUSE:-s3://${K2_S3_BUCKET:-k2-warehouse}/rest}
HEAP=${K2_REST_HEAP:-384m}
START_TIMEOUT=${K2_REST_START_TIMEOUT:-60}
STOP_TIMEOUT=${K2_REST_STOP_TIMEOUT:-15}
MAIN_CLASS=org.apache.iceberg.rest.RESTCatalogServer

abspath() { # absolute path of $1 (need not exist), relative paths against $PWD
    case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac
}
CACHE=$(abspath "${K2_CACHE:-$HOME/.cache/k2}")
RDIR=$(abspath "${K2_REST_DIR:-$REPO_ROOT/var/iceberg-rest}")
LIB=$(abspath "${K2_REST_LIB:-$CACHE/iceberg-rest/lib}")
DB="$RDIR/catalog.db"
LOGS="$RDIR/logs"
PIDFILE="$RDIR/rest.pid"
LOCKFILE="$RDIR/rest.lock"
STAMP="$LIB/.k2-install-stamp"

ICEBERG_VERSION=$(sed -n 's:.*<iceberg.version>\(.*\)</iceberg.version>.*:\1:p' "$POM" | sed -n 1p)

log() { printf 'iceberg-rest.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

java_bin() {
    if [[ -n ${JAVA_HOME:-} && -x $JAVA_HOME/bin/java ]]; then
        printf '%s\n' "$JAVA_HOME/bin/java"
    elif command -v java >/dev/null 2>&1; then
        command -v java
    else
        die "no java found (Iceberg's REST server needs Java 17+ for Jetty 11); set JAVA_HOME"
    fi
}

check_port() {
    if ! [[ $1 =~ ^[1-9][0-9]{0,4}$ ]] || (($1 > 65535)); then die "bad port: $1"; fi
}

warehouse_bucket() { # s3://BUCKET/path -> BUCKET
    [[ $WAREHOUSE =~ ^s3a?://([^/]+)(/.*)?$ ]] || die "K2_REST_WAREHOUSE must be s3://BUCKET[/PATH], not $WAREHOUSE"
    printf '%s\n' "${BASH_REMATCH[1]}"
}

# ---------------------------------------------------------------- install

install_stamp() { # what the installed lib must have been built from
    printf 'iceberg=%s pom-sha256=%s\n' "$ICEBERG_VERSION" "$(sha256sum "$POM" | cut -d' ' -f1)"
}

installed() {
    [[ -f $STAMP && -f $LIB/iceberg-open-api-$ICEBERG_VERSION-test-fixtures.jar && "$(cat "$STAMP")" == "$(install_stamp)" ]]
}

cmd_install() {
    if installed; then
        [[ ${1:-} == quiet ]] || log "Iceberg REST server $ICEBERG_VERSION already installed in $LIB"
        return 0
    fi
    command -v mvn >/dev/null 2>&1 || die "mvn not found (needed once, to fetch Iceberg from Maven Central)"
    mkdir -p "$(dirname "$LIB")"
    # One installer at a time (several dirs share one lib); fd 8 is closed for children.
    exec 8>"$LIB.install.lock"
    flock -w 900 8 || die "timed out waiting for another install ($LIB.install.lock)"
    if installed; then exec 8>&-; return 0; fi
    log "installing Iceberg REST server $ICEBERG_VERSION into $LIB (Maven, cache in ~/.m2) ..."
    local t0=$SECONDS tmp="$LIB.tmp.$$" mvnlog="$LIB.install.log"
    rm -rf "$tmp"
    if ! mvn -q -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
            -DincludeScope=runtime -DoutputDirectory="$tmp" >"$mvnlog" 2>&1 8>&-; then
        rm -rf "$tmp"
        sed 's/\x1b\[[0-9;]*m//g' "$mvnlog" | tail -n 40 >&2
        die "maven failed to fetch the Iceberg REST server (full output: $mvnlog)"
    fi
    [[ -f $tmp/iceberg-open-api-$ICEBERG_VERSION-test-fixtures.jar ]] \
        || { rm -rf "$tmp"; die "iceberg-open-api-$ICEBERG_VERSION-test-fixtures.jar missing after mvn"; }
    install_stamp >"$tmp/.k2-install-stamp"
    rm -rf "$LIB"
    mv "$tmp" "$LIB"
    exec 8>&-
    log "installed Iceberg REST server $ICEBERG_VERSION ($(find "$LIB" -name '*.jar' | wc -l) jars) in $((SECONDS - t0))s"
}

classpath() { printf '%s\n' "$LIB/*"; }

# ---------------------------------------------------------------- health

# Our server's pid, if the pidfile names a live JVM running the server for our dir.
our_pid() {
    local pid
    [[ -f $PIDFILE ]] || return 1
    pid=$(<"$PIDFILE")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "-Dk2.rest.dir=$RDIR " || return 1
    printf '%s\n' "$pid"
}

# An Iceberg REST catalog answers GET /v1/config with a JSON object (~10 ms).
api_ok() {
    local out
    out=$(curl -sf --max-time 3 "$URI/v1/config" 2>/dev/null) || return 1
    [[ $out == *'"endpoints"'* || $out == *'"defaults"'* ]]
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

cmd_status() {
    local pid
    if pid=$(our_pid); then
        if api_ok; then
            echo "running: Iceberg REST catalog $ICEBERG_VERSION pid $pid, healthy on $URI (warehouse $WAREHOUSE, db $DB)"
            return 0
        fi
        echo "unhealthy: pid $pid is running but $URI/v1/config does not answer (see: $0 logs)"
        return 1
    fi
    if api_ok; then
        echo "not ours: an Iceberg REST catalog answers on $URI but was not started from $RDIR"
    elif port_open "$PORT"; then
        echo "stopped: but port $PORT is in use by another process"
    else
        echo "stopped: no REST catalog on $URI (dir $RDIR)"
    fi
    return 1
}

# ---------------------------------------------------------------- start/stop

take_lock() {
    mkdir -p "$RDIR"
    exec 9>"$LOCKFILE"
    flock -w $((START_TIMEOUT + STOP_TIMEOUT + 60)) 9 || die "timed out waiting for $LOCKFILE"
}

wait_healthy() {
    local pid=$1 deadline=$((SECONDS + START_TIMEOUT))
    while ((SECONDS < deadline)); do
        kill -0 "$pid" 2>/dev/null || { log "server process $pid exited"; return 1; }
        api_ok && return 0
        sleep 0.2
    done
    return 1
}

cmd_start() {
    check_port "$PORT"
    local bucket; bucket=$(warehouse_bucket)
    cmd_install quiet
    take_lock
    local pid
    if pid=$(our_pid); then
        if api_ok; then
            log "already running (pid $pid)"
            echo "$URI"
            return 0
        fi
        log "pid $pid is running but not healthy yet; waiting"
        wait_healthy "$pid" && { echo "$URI"; return 0; }
        die "pid $pid does not become healthy; try: $0 stop; $0 start  (logs: $LOGS/server.log)"
    fi
    rm -f "$PIDFILE"
    if port_open "$PORT"; then
        api_ok && die "an Iceberg REST catalog not started from $RDIR already answers on $URI"
        die "port $PORT is in use by another process (set K2_REST_PORT)"
    fi

    # The object store first (a no-op when it runs), and the warehouse's bucket.
    "$S3SH" start >/dev/null 9>&- || die "the S3 store did not start (see: $S3SH logs)"
    "$S3SH" create-bucket "$bucket" >/dev/null 9>&- || die "could not create bucket $bucket"
    local endpoint; endpoint=$("$S3SH" endpoint)

    mkdir -p "$LOGS"
    local java; java=$(java_bin)
    local t0; t0=$(date +%s.%N)
    echo "---- $(date -u +%FT%TZ) starting Iceberg REST catalog $ICEBERG_VERSION on $URI (warehouse $WAREHOUSE, S3 $endpoint)" >>"$LOGS/server.log"
    # The server reads its catalog properties from CATALOG_* variables (`_` -> `.`,
    # `__` -> `-`), and its port only from CATALOG_REST_PORT. The S3 store accepts any
    # key; the AWS SDK still wants one, and a region. env -i: no stray CATALOG_* or
    # AWS_* variable of the caller's leaks in.
    # SQLite: one pooled connection (CATALOG_CLIENTS=1), in WAL with a busy timeout.
    # SQLite has one writer; with two connections, concurrent commits failed with
    # SQLITE_BUSY or SQLITE_BUSY_SNAPSHOT inside a commit, which could leave a
    # connection holding the write lock, and every later write failed.
    # setsid: the server outlives the caller's process group; 8>&- 9>&-: no lock fds.
    setsid env -i PATH="$PATH" HOME="$HOME" LANG=C.UTF-8 \
        AWS_ACCESS_KEY_ID=k2 AWS_SECRET_ACCESS_KEY=k2 AWS_REGION=us-east-1 \
        CATALOG_WAREHOUSE="$WAREHOUSE" \
        CATALOG_URI="jdbc:sqlite:file:$DB?journal_mode=WAL&busy_timeout=30000" \
        CATALOG_CLIENTS=1 \
        CATALOG_JDBC_USER=k2 CATALOG_JDBC_PASSWORD=k2 \
        CATALOG_REST_PORT="$PORT" \
        CATALOG_IO__IMPL=org.apache.iceberg.aws.s3.S3FileIO \
        CATALOG_S3_ENDPOINT="$endpoint" \
        CATALOG_S3_PATH__STYLE__ACCESS=true \
        "$java" -Xmx"$HEAP" -Xms32m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
        -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
        -Dk2.rest.dir="$RDIR" \
        -Dorg.slf4j.simpleLogger.defaultLogLevel=info \
        -Dorg.slf4j.simpleLogger.showDateTime=true \
        "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd'T'HH:mm:ss.SSS" \
        -cp "$(classpath)" "$MAIN_CLASS" \
        </dev/null >>"$LOGS/server.log" 2>&1 8>&- 9>&- &
    pid=$!
    echo "$pid" >"$PIDFILE"
    if ! wait_healthy "$pid"; then
        kill -KILL "$pid" 2>/dev/null || true
        rm -f "$PIDFILE"
        log "last lines of $LOGS/server.log:"
        tail -n 30 "$LOGS/server.log" >&2 2>/dev/null || true
        die "the REST catalog did not become healthy within ${START_TIMEOUT}s"
    fi
    log "started Iceberg REST catalog $ICEBERG_VERSION (pid $pid) in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')s; uri $URI; warehouse $WAREHOUSE; logs $LOGS"
    echo "$URI"
}

cmd_stop() {
    [[ -d $RDIR ]] || { echo "not running (no $RDIR)"; return 0; }
    take_lock
    local pid
    if ! pid=$(our_pid); then
        rm -f "$PIDFILE"
        echo "not running (dir $RDIR)"
        return 0
    fi
    log "stopping Iceberg REST catalog pid $pid (SIGTERM, SIGKILL after ${STOP_TIMEOUT}s)"
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

cmd_wipe() {
    cmd_stop
    exec 9>&-
    rm -f "$DB" "$DB-journal" "$DB-wal" "$DB-shm"
    log "deleted the catalog database $DB"
    # The tables' files would be orphans now: delete the warehouse prefix too.
    if "$S3SH" status >/dev/null 2>&1; then
        "$S3SH" delete-prefix "${WAREHOUSE#*://}" || die "could not delete $WAREHOUSE"
        log "deleted $WAREHOUSE"
    else
        log "the S3 store is not running: $WAREHOUSE was left as it is ($S3SH wipe deletes all S3 data)"
    fi
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
        wipe) cmd_wipe ;;
        status) cmd_status ;;
        logs) cmd_logs "$@" ;;
        uri) echo "$URI" ;;
        warehouse) echo "$WAREHOUSE" ;;
        classpath) cmd_install quiet; classpath ;;
        help | -h | --help) usage ;;
        *) usage >&2; exit 2 ;;
    esac
}

main "$@"
