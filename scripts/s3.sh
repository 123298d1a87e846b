#!/usr/bin/env bash
# Local S3-compatible object store (SeaweedFS, one node: master + volume + filer + S3
# gateway in one process) on loopback, for K2 Stream's production path (Iceberg tables
# and checkpoints on object storage). SeaweedFS is built once from its Go module
# (the Go module proxy is the only source); the binary is cached outside the repo.
#
#   scripts/s3.sh install                 build weed into $K2_CACHE/seaweedfs/bin (no-op when done;
#                                         the first build takes ~7 min on 2 cores)
#   scripts/s3.sh start                   install if needed, start, wait for S3, create k2-warehouse
#   scripts/s3.sh stop                    graceful stop (SIGTERM), SIGKILL after a timeout
#   scripts/s3.sh restart
#   scripts/s3.sh wipe                    stop and delete all stored data (buckets and objects)
#   scripts/s3.sh status                  exit 0 if our server is healthy, else 1; one line
#   scripts/s3.sh logs [N|-f]             tail the server's log (weed.INFO; panics go to weed.out)
#   scripts/s3.sh endpoint                print the S3 endpoint (http://127.0.0.1:8333)
#   scripts/s3.sh create-bucket NAME      create a bucket (ok if it exists)
#   scripts/s3.sh delete-prefix BUCKET/PREFIX   delete every object under a prefix
#   scripts/s3.sh bin                     print the weed binary's path (installs if needed)
#
# Credentials: none are configured, so SeaweedFS accepts every request, signed with
# any access key/secret or unsigned. Clients still need *some* key, region and
# path-style access: AWS_ACCESS_KEY_ID=k2 AWS_SECRET_ACCESS_KEY=k2 AWS_REGION=us-east-1.
# (weed.ERROR says "Failed to load IAM configuration: no signing key found for STS
# service" at every start: that is the no-identities mode, not a fault.)
#
# Conditional writes, verified here with curl against weed 4.53 (2026-11-30), both
# unsigned and SigV4-signed with an arbitrary key (curl --aws-sigv4 aws:amz:us-east-1:s3):
#   PUT with `If-None-Match: *` on a new key -> 200; on an existing key -> 412
#     <Code>PreconditionFailed</Code>, and the object keeps its first content;
#   PUT with `If-Match: <current ETag>` -> 200; with a stale ETag -> 412; If-Match on
#     a missing key -> 404;
#   16 (and 20) parallel `If-None-Match: *` PUTs of one fresh key, 10 rounds: exactly one
#     200 each round, all others 412.
# So create-if-absent and compare-and-swap on an object both hold, which is what a
# checkpoint or commit marker on object storage needs.
#
# Environment (all optional):
#   K2_S3_PORT                S3 API port                     (default 8333)
#   K2_S3_MASTER_PORT         master HTTP port (gRPC is +10000) (default 9333)
#   K2_S3_VOLUME_PORT         volume server HTTP port (gRPC +10000) (default 8380)
#   K2_S3_FILER_PORT          filer HTTP port (gRPC +10000)   (default 8888)
#                             (the S3 gateway's gRPC port is K2_S3_PORT+10000)
#   K2_S3_ICEBERG_PORT        SeaweedFS's own Iceberg REST catalog (0 = off) (default 0)
#   K2_S3_BUCKET              bucket made by `start`          (default k2-warehouse)
#   K2_S3_DIR                 state: data, logs, pid          (default <repo>/var/s3)
#   K2_CACHE                  build cache, shared             (default ~/.cache/k2)
#   K2_S3_START_TIMEOUT       seconds to wait for health      (default 90)
#   K2_S3_STOP_TIMEOUT        seconds before SIGKILL          (default 40)
#
# Timings here (2 cores): first start ~12 s; a start on existing data ~30 s, because
# weed's master refuses new volume assignments during a warm-up after it becomes
# leader, and `start` waits until an object can be written. A graceful stop takes
# ~19 s: the filer waits up to 15 s for its last metadata-log flush.
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd -P)

# The SeaweedFS module version (weed 4.53). `go install` refuses it (its go.mod has
# replace directives), so install copies the module out of the module cache and builds.
WEED_MODULE=github.com/seaweedfs/seaweedfs
WEED_VERSION=v0.0.0-20261109003541-7506e5f91cd6

HOST=127.0.0.1
PORT=${K2_S3_PORT:-8333}
MASTER_PORT=${K2_S3_MASTER_PORT:-9333}
# 8380, not weed's default 8080: 8080 is every other dev server's port.
VOLUME_PORT=${K2_S3_VOLUME_PORT:-8380}
FILER_PORT=${K2_S3_FILER_PORT:-8888}
# Off by default: our catalog is Apache Iceberg's own server (scripts/iceberg-rest.sh).
ICEBERG_PORT=${K2_S3_ICEBERG_PORT:-0}
BUCKET=${K2_S3_BUCKET:-k2-warehouse}
ENDPOINT="http://$HOST:$PORT"
START_TIMEOUT=${K2_S3_START_TIMEOUT:-90}
STOP_TIMEOUT=${K2_S3_STOP_TIMEOUT:-40}

abspath() { # absolute path of $1 (need not exist), relative paths against $PWD
    case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac
}
CACHE=$(abspath "${K2_CACHE:-$HOME/.cache/k2}")
WCACHE="$CACHE/seaweedfs"
BIN_DIR="$WCACHE/bin"
WEED="$BIN_DIR/weed"
STAMP="$BIN_DIR/.k2-install-stamp"
SDIR=$(abspath "${K2_S3_DIR:-$REPO_ROOT/var/s3}")
DATA="$SDIR/data"
LOGS="$SDIR/logs"
PIDFILE="$SDIR/weed.pid"
LOCKFILE="$SDIR/s3.lock"

log() { printf 's3.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

check_port() {
    if ! [[ $1 =~ ^[1-9][0-9]{0,4}$ ]] || (($1 > 65535)); then die "bad port: $1"; fi
}

# ---------------------------------------------------------------- install

install_stamp() { # what the installed binary must have been built from
    printf 'module=%s@%s\n' "$WEED_MODULE" "$WEED_VERSION"
}

installed() {
    [[ -x $WEED && -f $STAMP && "$(cat "$STAMP")" == "$(install_stamp)" ]]
}

cmd_install() {
    if installed; then
        [[ ${1:-} == quiet ]] || log "SeaweedFS already installed: $WEED"
        return 0
    fi
    command -v go >/dev/null 2>&1 || die "go not found (needed once, to build SeaweedFS from the Go module proxy)"
    mkdir -p "$WCACHE"
    # One builder at a time (every checkout shares the cache); fd 8 is closed for children.
    exec 8>"$WCACHE/install.lock"
    flock -w 1800 8 || die "timed out waiting for another install ($WCACHE/install.lock)"
    if installed; then exec 8>&-; return 0; fi
    local t0=$SECONDS buildlog="$WCACHE/install.log" src="$WCACHE/src.tmp.$$" dir
    log "building SeaweedFS $WEED_VERSION into $WEED (~7 min on 2 cores; output: $buildlog) ..."
    : >"$buildlog"
    # The module cache and Go's build cache live in the k2 cache too, so the
    # source is fetched once and a rebuild after a stamp change is quick.
    export GOPATH="$WCACHE/gopath" GOCACHE="$WCACHE/gocache" GOFLAGS=-modcacherw
    if ! dir=$(go mod download -json "$WEED_MODULE@$WEED_VERSION" 2>>"$buildlog" 8>&- |
            sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p') || [[ -z $dir || ! -d $dir ]]; then
        tail -n 20 "$buildlog" >&2
        die "go mod download $WEED_MODULE@$WEED_VERSION failed (full output: $buildlog)"
    fi
    rm -rf "$src"
    cp -r "$dir" "$src" && chmod -R u+w "$src"
    mkdir -p "$BIN_DIR"
    if ! (cd "$src" && nice -n 10 go build -o "$WEED.tmp.$$" ./weed) >>"$buildlog" 2>&1 8>&-; then
        rm -rf "$src" "$WEED.tmp.$$"
        tail -n 40 "$buildlog" >&2
        die "go build of SeaweedFS failed (full output: $buildlog)"
    fi
    rm -rf "$src"
    mv -f "$WEED.tmp.$$" "$WEED"
    install_stamp >"$STAMP"
    exec 8>&-
    log "built SeaweedFS ($("$WEED" version 2>/dev/null | sed -n 1p)) in $((SECONDS - t0))s: $WEED"
}

# ---------------------------------------------------------------- health

# Our server's pid, if the pidfile names a live `weed server` on our data dir.
our_pid() {
    local pid
    [[ -f $PIDFILE ]] || return 1
    pid=$(<"$PIDFILE")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- " server -dir=$DATA " || return 1
    printf '%s\n' "$pid"
}

# HTTP status of an S3 request (unsigned: no identities are configured), or 000.
s3_code() { # METHOD PATH [curl args...]
    local method=$1 path=$2
    shift 2
    curl -s -o /dev/null -w '%{http_code}' --max-time 10 -X "$method" "$@" "$ENDPOINT$path" 2>/dev/null || true
}

# The S3 API answers ListBuckets (~10 ms).
api_ok() {
    local out
    out=$(curl -sf --max-time 3 "$ENDPOINT/" 2>/dev/null) || return 1
    [[ $out == *ListAllMyBucketsResult* ]]
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

cmd_status() {
    local pid
    if pid=$(our_pid); then
        if api_ok; then
            echo "running: SeaweedFS pid $pid, S3 healthy on $ENDPOINT (dir $SDIR)"
            return 0
        fi
        echo "unhealthy: pid $pid is running but $ENDPOINT does not answer S3 requests (see: $0 logs)"
        return 1
    fi
    if api_ok; then
        echo "not ours: an S3 server answers on $ENDPOINT but was not started from $SDIR"
    elif port_open "$PORT"; then
        echo "stopped: but port $PORT is in use by another process"
    else
        echo "stopped: no S3 server on $ENDPOINT (dir $SDIR)"
    fi
    return 1
}

# ---------------------------------------------------------------- buckets

valid_bucket() { # S3's rules for new buckets (DNS-compatible names)
    [[ $1 =~ ^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$ && $1 != *..* ]]
}

cmd_create_bucket() {
    local name=${1:-} code
    [[ -n $name ]] || die "usage: $0 create-bucket NAME"
    valid_bucket "$name" || die "bad bucket name: $name (3-63 of a-z 0-9 . -, e.g. k2-warehouse)"
    api_ok || die "no S3 server answers on $ENDPOINT (run: $0 start)"
    code=$(s3_code HEAD "/$name")
    if [[ $code == 200 ]]; then
        log "bucket $name exists"
        return 0
    fi
    code=$(s3_code PUT "/$name")
    case $code in
        200) log "created bucket $name" ;;
        409) log "bucket $name exists" ;; # made meanwhile by another caller
        *) die "creating bucket $name failed (HTTP $code)" ;;
    esac
}

# Delete every object under BUCKET/PREFIX, through the filer (S3 would need a
# listing and one DELETE per object). The S3 gateway keeps its objects in the
# filer under /buckets/<bucket>/.
cmd_delete_prefix() {
    local arg=${1:-} bucket prefix code
    [[ $arg =~ ^([a-z0-9][a-z0-9.-]+)/(.+)$ ]] || die "usage: $0 delete-prefix BUCKET/PREFIX"
    bucket=${BASH_REMATCH[1]} prefix=${BASH_REMATCH[2]%/}
    [[ $prefix != *..* ]] || die "bad prefix: $prefix"
    our_pid >/dev/null || die "our S3 server is not running (run: $0 start)"
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 120 -X DELETE \
        "http://$HOST:$FILER_PORT/buckets/$bucket/$prefix?recursive=true&ignoreRecursiveError=true" 2>/dev/null || true)
    case $code in
        200 | 202 | 204 | 404) ;;
        *) die "deleting s3://$bucket/$prefix failed (filer HTTP $code)" ;;
    esac
}

# ---------------------------------------------------------------- start/stop

take_lock() {
    mkdir -p "$SDIR"
    exec 9>"$LOCKFILE"
    flock -w $((START_TIMEOUT + STOP_TIMEOUT + 60)) 9 || die "timed out waiting for $LOCKFILE"
}

# Healthy = the S3 API answers and an object can be written: the volume server
# has registered with the master (until then a PUT fails).
write_ok() {
    [[ $(s3_code PUT "/$BUCKET/.k2-health" --data-binary ok) == 200 ]] || return 1
    s3_code DELETE "/$BUCKET/.k2-health" >/dev/null
}

wait_healthy() {
    local pid=$1 deadline=$((SECONDS + START_TIMEOUT)) bucket_made=
    while ((SECONDS < deadline)); do
        kill -0 "$pid" 2>/dev/null || { log "weed process $pid exited"; return 1; }
        if api_ok; then
            if [[ -z $bucket_made ]]; then
                cmd_create_bucket "$BUCKET" 2>/dev/null && bucket_made=1
            fi
            [[ -n $bucket_made ]] && write_ok && return 0
        fi
        sleep 0.3
    done
    return 1
}

cmd_start() {
    local p
    for p in "$PORT" "$MASTER_PORT" "$VOLUME_PORT" "$FILER_PORT"; do check_port "$p"; done
    [[ $ICEBERG_PORT == 0 ]] || check_port "$ICEBERG_PORT"
    valid_bucket "$BUCKET" || die "bad K2_S3_BUCKET: $BUCKET"
    cmd_install quiet
    take_lock
    local pid
    if pid=$(our_pid); then
        if api_ok; then
            log "already running (pid $pid)"
            echo "$ENDPOINT"
            return 0
        fi
        log "pid $pid is running but not healthy yet; waiting"
        wait_healthy "$pid" && { echo "$ENDPOINT"; return 0; }
        die "pid $pid does not become healthy; try: $0 stop; $0 start  (logs: $LOGS)"
    fi
    rm -f "$PIDFILE"
    # weed also listens on each HTTP port + 10000 (gRPC).
    local ports=("$PORT" "$MASTER_PORT" "$VOLUME_PORT" "$FILER_PORT" $((PORT + 10000))
        $((MASTER_PORT + 10000)) $((VOLUME_PORT + 10000)) $((FILER_PORT + 10000)))
    [[ $ICEBERG_PORT == 0 ]] || ports+=("$ICEBERG_PORT")
    for p in "${ports[@]}"; do
        if port_open "$p"; then
            api_ok && [[ $p == "$PORT" ]] && die "an S3 server not started from $SDIR already answers on $ENDPOINT"
            die "port $p is in use by another process (set K2_S3_PORT / K2_S3_MASTER_PORT / K2_S3_VOLUME_PORT / K2_S3_FILER_PORT)"
        fi
    done
    mkdir -p "$DATA" "$LOGS"
    local t0; t0=$(date +%s.%N)
    echo "---- $(date -u +%FT%TZ) starting SeaweedFS on $ENDPOINT" >>"$LOGS/weed.out"
    # setsid: the server outlives the caller's process group; 8>&- 9>&-: no lock fds.
    # Every port on loopback (-ip.bind). No telemetry (the machine has no internet,
    # and a test store has nothing to report). Volumes: each bucket is a collection
    # with volumes of its own, and weed's default of 8 volumes of 30 GB runs out after
    # a bucket or two; 100 of at most 1 GB each (files grow as written, nothing is
    # preallocated) leave room for the buckets tests make. The volume server's
    # pre-stop pause (10 s by default, for other masters to notice) is cut to 1 s.
    # SeaweedFS's own Iceberg
    # and Lance endpoints stay off unless asked for (K2_S3_ICEBERG_PORT).
    # Logs: glog's files in $LOGS (weed.INFO, .WARNING, .ERROR link to the newest;
    # without -logdir they would go to /tmp); weed.out gets only stdout/stderr (panics).
    setsid "$WEED" -logdir="$LOGS" -alsologtostderr=false server -dir="$DATA" -ip="$HOST" -ip.bind="$HOST" \
        -master.port="$MASTER_PORT" -master.telemetry=false -master.volumeSizeLimitMB=1024 \
        -volume.port="$VOLUME_PORT" -volume.max=100 -volume.preStopSeconds=1 \
        -filer -filer.port="$FILER_PORT" \
        -s3 -s3.port="$PORT" -s3.port.iceberg="$ICEBERG_PORT" -s3.port.lance=0 \
        </dev/null >>"$LOGS/weed.out" 2>&1 8>&- 9>&- &
    pid=$!
    echo "$pid" >"$PIDFILE"
    if ! wait_healthy "$pid"; then
        kill -KILL "$pid" 2>/dev/null || true
        rm -f "$PIDFILE"
        log "last lines of $LOGS/weed.out:"
        tail -n 30 "$LOGS/weed.out" >&2 2>/dev/null || true
        die "SeaweedFS did not become healthy within ${START_TIMEOUT}s"
    fi
    log "started SeaweedFS (pid $pid) in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')s; S3 $ENDPOINT, bucket $BUCKET; logs $LOGS"
    echo "$ENDPOINT"
}

cmd_stop() {
    [[ -d $SDIR ]] || { echo "not running (no $SDIR)"; return 0; }
    take_lock
    local pid
    if ! pid=$(our_pid); then
        rm -f "$PIDFILE"
        echo "not running (dir $SDIR)"
        return 0
    fi
    log "stopping SeaweedFS pid $pid (SIGTERM, SIGKILL after ${STOP_TIMEOUT}s)"
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
    local f="$LOGS/weed.INFO"
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
        wipe) cmd_stop; rm -rf "$DATA"; log "deleted $DATA (every bucket and object); the next start begins empty" ;;
        status) cmd_status ;;
        logs) cmd_logs "$@" ;;
        endpoint) echo "$ENDPOINT" ;;
        create-bucket) cmd_create_bucket "$@" ;;
        delete-prefix) cmd_delete_prefix "$@" ;;
        bin) cmd_install quiet; echo "$WEED" ;;
        help | -h | --help) usage ;;
        *) usage >&2; exit 2 ;;
    esac
}

main "$@"
