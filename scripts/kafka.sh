#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft, broker+controller in one JVM) on loopback,
# for K2 Stream's developers and tests. The jars come from Maven Central through
# Maven (scripts/kafka/pom.xml); nothing else is downloaded.
#
# Two client listeners: PLAINTEXT (the default for everything) and SASL_SSL (TLS with a
# self-signed CA made here by keytool, SCRAM-SHA-512 user `k2` with a random password
# kept in <dir>/sasl/k2.password, mode 600), for testing clients on the secure path.
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
#   scripts/kafka.sh bootstrap            print host:port (PLAINTEXT)
#   scripts/kafka.sh sasl-bootstrap       print host:port of the SASL_SSL listener
#   scripts/kafka.sh sasl-config          print librdkafka client properties for SASL_SSL, one
#                                         key=value a line, including sasl.password (a secret)
#   scripts/kafka.sh sasl-java-config     print the path of a Java client properties file for
#                                         SASL_SSL (for --command-config / --producer.config)
#   scripts/kafka.sh classpath            print the classpath (to run other Kafka tools)
#
# Environment (all optional):
#   K2_KAFKA_PORT             PLAINTEXT port                  (default 9092)
#   K2_KAFKA_CONTROLLER_PORT  KRaft controller port           (default K2_KAFKA_PORT+1)
#   K2_KAFKA_SASL_PORT        SASL_SSL port                   (default K2_KAFKA_PORT+2)
#   K2_KAFKA_DIR              state: config, data, TLS and SASL files, logs, pid
#                                                             (default <repo>/var/kafka)
#   K2_KAFKA_LIB              jars, shared by all dirs        (default $K2_CACHE/kafka/lib)
#   K2_CACHE                  download cache                  (default ~/.cache/k2)
#   K2_KAFKA_HEAP             broker heap, fixed (-Xms = -Xmx) (default 1g, as Kafka's own start script)
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
SASL_PORT=${K2_KAFKA_SASL_PORT:-$((PORT + 2))}
HOST=127.0.0.1
BOOTSTRAP="$HOST:$PORT"
SASL_BOOTSTRAP="$HOST:$SASL_PORT"
SCRAM_MECHANISM=SCRAM-SHA-512
SCRAM_USER=k2
HEAP=${K2_KAFKA_HEAP:-1g}
START_TIMEOUT=${K2_KAFKA_START_TIMEOUT:-90}
STOP_TIMEOUT=${K2_KAFKA_STOP_TIMEOUT:-30}

abspath() { # absolute path of $1 (need not exist), relative paths against $PWD
    case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac
}
KDIR=$(abspath "${K2_KAFKA_DIR:-$REPO_ROOT/var/kafka}")
CACHE=$(abspath "${K2_CACHE:-$HOME/.cache/k2}")
LIB=$(abspath "${K2_KAFKA_LIB:-$CACHE/kafka/lib}")
CONF="$KDIR/server.properties"
TLS="$KDIR/tls"           # CA and broker keystore (made once by ensure_tls)
SASL="$KDIR/sasl"         # the SCRAM user's password and client configs (mode 600)
PASSWORD_FILE="$SASL/$SCRAM_USER.password"
SCRAM_STAMP="$SASL/scram-user.stamp"
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

# The SASL_SSL listener: a TLS handshake that verifies the broker's certificate
# against our CA and 127.0.0.1 (as clients do), then the same ApiVersions request,
# which Kafka answers before SASL authentication. ~0.4 s (the sleep keeps the
# connection open for the answer). Without openssl: only that the port is open.
sasl_ok() {
    if ! command -v openssl >/dev/null 2>&1; then port_open "$SASL_PORT"; return; fi
    [[ -s $TLS/ca.pem ]] || return 1
    local out
    # No pipefail verdict here: `head` may cut s_client off; the bytes decide.
    out=$({ printf '\x00\x00\x00\x0c\x00\x12\x00\x00\x00\x00\x00\x2a\x00\x02k2'; sleep 0.4; } |
        timeout 5 openssl s_client -quiet -no_ign_eof -connect "$SASL_BOOTSTRAP" -CAfile "$TLS/ca.pem" \
            -verify_return_error -verify_ip "$HOST" 2>/dev/null | head -c 10 | od -An -tx1) || true
    out=${out//[[:space:]]/}
    [[ ${out:8:12} == 0000002a0000 ]]
}

# SASL_SSL with a Java client: TLS verified against our CA, SCRAM-SHA-512 login as
# $SCRAM_USER, then metadata (a JVM: ~2 s).
sasl_login_ok() {
    TOOL_TIMEOUT=20 run_tool org.apache.kafka.tools.TopicCommand \
        --bootstrap-server "$SASL_BOOTSTRAP" --command-config "$SASL/client.properties" --list >/dev/null 2>&1
}

deep_ok() { # the admin client can fetch metadata, on both listeners (JVMs: ~2 s each)
    TOOL_TIMEOUT=20 run_tool org.apache.kafka.tools.TopicCommand \
        --bootstrap-server "$BOOTSTRAP" --list >/dev/null 2>&1 || return 1
    sasl_login_ok
}

cmd_status() {
    local pid
    if pid=$(our_pid); then
        if api_ok; then
            if ! sasl_ok; then
                echo "unhealthy: pid $pid answers on $BOOTSTRAP but not on SASL_SSL $SASL_BOOTSTRAP (TLS checked with $TLS/ca.pem; started by an older kafka.sh? try: $0 restart)"
                return 1
            fi
            if [[ ${1:-} == --deep ]] && ! deep_ok; then
                echo "unhealthy: pid $pid answers ApiVersions on $BOOTSTRAP and $SASL_BOOTSTRAP but the admin client cannot list topics on both (SASL_SSL as $SCRAM_USER)"
                return 1
            fi
            echo "running: Kafka $KAFKA_VERSION pid $pid, healthy on $BOOTSTRAP (PLAINTEXT) and $SASL_BOOTSTRAP (SASL_SSL) (dir $KDIR)"
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
    local storepass; storepass=$(<"$TLS/store.pass")
    # umask 077: the file holds the keystore's password.
    (umask 077 && cat >"$CONF.tmp") <<EOF
# Written by scripts/kafka.sh on every start; edits here are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$CTRL_PORT
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CTRL_PORT,SASL_SSL://$HOST:$SASL_PORT
advertised.listeners=PLAINTEXT://$HOST:$PORT,SASL_SSL://$HOST:$SASL_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL
log.dirs=$DATA

# SASL_SSL: TLS with the keystore made by ensure_tls (no client certificates), then
# SCRAM-SHA-512; the users live in the metadata log (added by StorageTool format
# --add-scram, or at runtime by ensure_scram_user). No authorizer: every
# authenticated user may do everything, as on PLAINTEXT.
sasl.enabled.mechanisms=$SCRAM_MECHANISM
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PKCS12
ssl.keystore.location=$TLS/broker.p12
ssl.keystore.password=$storepass
ssl.key.password=$storepass
ssl.client.auth=none

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

# ---------------------------------------------------------------- TLS and SCRAM

random_secret() { # 24 characters of [A-Za-z0-9_-] (18 random bytes)
    head -c 18 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n'
}

keytool_bin() {
    local j; j=$(java_bin)
    if [[ -x ${j%/java}/keytool ]]; then printf '%s\n' "${j%/java}/keytool"; return; fi
    command -v keytool >/dev/null 2>&1 || die "keytool not found (part of the JDK; needed once, for the TLS listener)"
    command -v keytool
}

# A self-signed CA and the broker's keystore (PKCS12, EC P-256, 10 years, signed
# by the CA), made once per broker dir with the JDK's keytool. SANs: IP 127.0.0.1
# (Java clients, OpenSSL 3's SSL_set1_host as librdkafka calls it), DNS 127.0.0.1
# (OpenSSL's plain host-name check, e.g. `s_client -verify_hostname 127.0.0.1`,
# fails without it) and DNS localhost. Clients trust $TLS/ca.pem. The store password is random, in
# $TLS/store.pass (mode 600), and reaches keytool through the environment only.
ensure_tls() {
    [[ -s $TLS/broker.p12 && -s $TLS/ca.pem && -s $TLS/store.pass ]] && return 0
    local kt tmp="$TLS.tmp.$$" ktlog="$LOGS/keytool.log"
    kt=$(keytool_bin)
    rm -rf "$tmp"
    (umask 077 && mkdir -p "$tmp" && random_secret >"$tmp/store.pass")
    log "making a self-signed CA and the broker's TLS keystore in $TLS"
    local -x K2_STOREPASS
    K2_STOREPASS=$(<"$tmp/store.pass")
    {
        "$kt" -genkeypair -alias ca -keyalg EC -groupname secp256r1 -validity 3650 \
            -dname "CN=K2 Stream local Kafka CA" -ext bc:c -ext ku:c=keyCertSign,cRLSign \
            -storetype PKCS12 -keystore "$tmp/ca.p12" -storepass:env K2_STOREPASS &&
        "$kt" -exportcert -rfc -alias ca -keystore "$tmp/ca.p12" -storepass:env K2_STOREPASS -file "$tmp/ca.pem" &&
        "$kt" -genkeypair -alias broker -keyalg EC -groupname secp256r1 -validity 3650 \
            -dname "CN=$HOST" -storetype PKCS12 -keystore "$tmp/broker.p12" -storepass:env K2_STOREPASS &&
        "$kt" -certreq -alias broker -keystore "$tmp/broker.p12" -storepass:env K2_STOREPASS -file "$tmp/broker.csr" &&
        "$kt" -gencert -rfc -alias ca -keystore "$tmp/ca.p12" -storepass:env K2_STOREPASS -validity 3650 \
            -ext "SAN=ip:$HOST,dns:$HOST,dns:localhost" -ext ku:c=digitalSignature,keyAgreement -ext eku=serverAuth \
            -infile "$tmp/broker.csr" -outfile "$tmp/broker.pem" &&
        "$kt" -importcert -noprompt -alias ca -file "$tmp/ca.pem" -keystore "$tmp/broker.p12" -storepass:env K2_STOREPASS &&
        "$kt" -importcert -noprompt -alias broker -file "$tmp/broker.pem" -keystore "$tmp/broker.p12" -storepass:env K2_STOREPASS
    } >"$ktlog" 2>&1 8>&- 9>&- || { rm -rf "$tmp"; cat "$ktlog" >&2; die "keytool failed (output: $ktlog)"; }
    rm -f "$tmp/broker.csr"
    chmod 644 "$tmp/ca.pem"
    rm -rf "$TLS"
    mv "$tmp" "$TLS"
}

# The SCRAM user's password (made once per broker dir, never logged) and the
# Java client config that carries it.
ensure_credentials() {
    if [[ ! -s $PASSWORD_FILE ]]; then
        (umask 077 && mkdir -p "$SASL" && random_secret >"$PASSWORD_FILE.tmp" && mv "$PASSWORD_FILE.tmp" "$PASSWORD_FILE")
    fi
    chmod 700 "$SASL"
    chmod 600 "$PASSWORD_FILE"
    local pw; pw=$(<"$PASSWORD_FILE")
    # For Kafka's Java clients and tools (--command-config, --producer.config, ...).
    (umask 077 && cat >"$SASL/client.properties.tmp") <<EOF
# Written by scripts/kafka.sh; SASL_SSL settings for Kafka's Java clients. Secret.
security.protocol=SASL_SSL
sasl.mechanism=$SCRAM_MECHANISM
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$SCRAM_USER" password="$pw";
ssl.truststore.type=PEM
ssl.truststore.location=$TLS/ca.pem
EOF
    mv "$SASL/client.properties.tmp" "$SASL/client.properties"
}

# What $SCRAM_STAMP holds once the user exists in this store with this password:
# the store's directory.id (new at every format) and the password file's hash.
scram_stamp() {
    printf '%s %s\n' "$(sed -n 's/^directory\.id=//p' "$DATA/meta.properties" 2>/dev/null)" \
        "$(sha256sum "$PASSWORD_FILE" | cut -d' ' -f1)"
}

# A store formatted before kafka.sh had SASL_SSL (or whose password file was
# replaced) lacks the user. Re-formatting would delete its topics, so the user is
# added to the running broker instead, over PLAINTEXT with Kafka's ConfigCommand
# (AlterUserScramCredentials; idempotent). New stores get it at format time.
#
# Kafka 4.4.0 bug, reproduced here on fresh stores: once any SCRAM user has been
# deleted (a RemoveUserScramCredentialRecord in the metadata log), every later
# restart comes up with NO SCRAM users at all, though the controller logs replaying
# each record. A user deleted by someone, even another one, would therefore lock
# $SCRAM_USER out at the next start: when this start's log shows such a replay,
# the user is added again (a JVM and a login check, ~5 s; otherwise nothing runs).
ensure_scram_user() {
    local mark=${1:-0} why
    if ! [[ -f $SCRAM_STAMP && "$(cat "$SCRAM_STAMP")" == "$(scram_stamp)" ]]; then
        why="its store predates the user"
    elif tail -c +$((mark + 1)) "$LOGS/server.log" 2>/dev/null | grep -q 'Replayed RemoveUserScramCredentialRecord'; then
        why="a SCRAM user was once deleted, and Kafka 4.4 then forgets all of them on restart"
    else
        return 0
    fi
    log "adding SCRAM user $SCRAM_USER to the running broker ($why)"
    local pw; pw=$(<"$PASSWORD_FILE")
    run_tool org.apache.kafka.tools.ConfigCommand --bootstrap-server "$BOOTSTRAP" --alter \
        --entity-type users --entity-name "$SCRAM_USER" \
        --add-config "$SCRAM_MECHANISM=[iterations=8192,password=$pw]" >>"$LOGS/scram.log" 2>&1 \
        || { tail -n 20 "$LOGS/scram.log" >&2; die "could not add SCRAM user $SCRAM_USER (see $LOGS/scram.log)"; }
    # The broker learns the credential from the metadata log a moment later.
    local deadline=$((SECONDS + 30))
    until sasl_login_ok; do
        ((SECONDS < deadline)) || die "SCRAM user $SCRAM_USER was added but cannot log in on $SASL_BOOTSTRAP"
        sleep 1
    done
    scram_stamp >"$SCRAM_STAMP"
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
    log "formatting KRaft store $DATA (cluster id $cid, SCRAM user $SCRAM_USER)"
    local pw; pw=$(<"$PASSWORD_FILE")
    run_tool kafka.tools.StorageTool format -t "$cid" -c "$CONF" --ignore-formatted \
        --add-scram "$SCRAM_MECHANISM=[name=$SCRAM_USER,iterations=8192,password=$pw]" >>"$LOGS/format.log" 2>&1 \
        || { cat "$LOGS/format.log" >&2; die "formatting $DATA failed"; }
    chmod 600 "$LOGS/format.log" # it lists the user's salted SCRAM keys
    scram_stamp >"$SCRAM_STAMP"
}

cmd_start() {
    check_port "$PORT"; check_port "$CTRL_PORT"; check_port "$SASL_PORT"
    [[ $PORT != "$CTRL_PORT" && $PORT != "$SASL_PORT" && $CTRL_PORT != "$SASL_PORT" ]] \
        || die "K2_KAFKA_PORT, K2_KAFKA_CONTROLLER_PORT and K2_KAFKA_SASL_PORT must differ"
    cmd_install quiet
    take_lock
    local pid
    if pid=$(our_pid); then
        if api_ok; then
            sasl_ok || die "pid $pid runs without a working SASL_SSL listener on $SASL_BOOTSTRAP (started by an older kafka.sh?); run: $0 restart"
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
    for p in "$PORT" "$CTRL_PORT" "$SASL_PORT"; do
        if port_open "$p"; then
            if api_ok "$p"; then
                die "a Kafka broker not started from $KDIR already answers on $HOST:$p"
            fi
            die "port $p is in use by another process (set K2_KAFKA_PORT / K2_KAFKA_CONTROLLER_PORT / K2_KAFKA_SASL_PORT)"
        fi
    done
    mkdir -p "$DATA" "$LOGS"
    ensure_tls
    ensure_credentials
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
    setsid "$java" -Xmx"$HEAP" -Xms"$HEAP" \
        -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
        -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError \
        -Xlog:gc:file="$LOGS/gc.log":time,uptime:filecount=2,filesize=10m \
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
    ensure_scram_user "$logmark"
    log "started Kafka $KAFKA_VERSION (pid $pid) in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')s; bootstrap $BOOTSTRAP, SASL_SSL $SASL_BOOTSTRAP; logs $LOGS"
    echo "$BOOTSTRAP"
}

# Healthy = answers ApiVersions on both client listeners, and (when a log mark is
# given) has logged "Kafka Server started" since the mark, i.e. it is also unfenced.
wait_healthy() {
    local pid=$1 mark=$2 deadline=$((SECONDS + START_TIMEOUT))
    while ((SECONDS < deadline)); do
        kill -0 "$pid" 2>/dev/null || { log "broker process $pid exited"; return 1; }
        if api_ok && sasl_ok; then
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

need_credentials() {
    [[ -s $PASSWORD_FILE && -s $TLS/ca.pem ]] || die "no SASL_SSL credentials in $KDIR yet (run: $0 start)"
}

cmd_sasl_config() { # librdkafka properties; prints the password: for tests and tools, never for logs
    need_credentials
    printf '%s\n' \
        "bootstrap.servers=$SASL_BOOTSTRAP" \
        "security.protocol=SASL_SSL" \
        "sasl.mechanisms=$SCRAM_MECHANISM" \
        "sasl.username=$SCRAM_USER" \
        "sasl.password=$(<"$PASSWORD_FILE")" \
        "ssl.ca.location=$TLS/ca.pem"
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
        sasl-bootstrap) echo "$SASL_BOOTSTRAP" ;;
        sasl-config) cmd_sasl_config ;;
        sasl-java-config) need_credentials; echo "$SASL/client.properties" ;;
        classpath) cmd_install quiet; classpath ;;
        help | -h | --help) usage ;;
        *) usage >&2; exit 2 ;;
    esac
}

main "$@"
