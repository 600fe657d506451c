#!/usr/bin/env bash
# Builds and runs both services against the local Postgres, MariaDB/MySQL and RabbitMQ, waits until
# both are ready, prints their URLs and ready-to-paste bearer tokens, and stops both on Ctrl-C.
#
# Identity: an HS256 secret is generated once into target/run-local/jwt-secret (mode 600; delete it
# to get a new one, which invalidates every token minted with the old) and passed to both services as
# AUTH_JWT_SECRET_FILE. The query service's own token (scope events:read) is minted with
# `command-service token` into target/run-local/command-service-token (COMMAND_SERVICE_TOKEN_FILE).
# The local RabbitMQ has only `guest`, so both services keep using it here (no per-service broker
# users as in compose and Kubernetes); the query service then trusts `guest`, its own AMQP_URL's
# user, as the publisher (AMQP_PUBLISHER_USER unset).
#
# Logs go to target/run-local/<service>.log and, prefixed, to the terminal (RUN_LOCAL_QUIET=1: files only).
# Optional overrides (unset: the services' own defaults):
#   COMMAND_HTTP_PORT, COMMAND_DATABASE_URL   command service (default 8081, postgres://postgres@127.0.0.1:5432/bank_events)
#   QUERY_HTTP_PORT, QUERY_DATABASE_URL       query service (default 8082, mysql://root@127.0.0.1:3306/bank_read)
#   AMQP_URL, COMMAND_SERVICE_URL, RUST_LOG, LOG_FORMAT, CONFIG_FILE are passed through as they are.
#   READY_TIMEOUT (seconds, default 120)
#   TOKEN_TTL (seconds, default 43200) for the printed tokens; SERVICE_TOKEN_TTL (default 604800) for
#   the query service's. AUTH_ISSUER, AUTH_AUDIENCE, AUTH_JWKS_FILE are passed through as they are.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
LOG_DIR=$ROOT/target/run-local
READY_TIMEOUT=${READY_TIMEOUT:-120}
COMMAND_PORT=${COMMAND_HTTP_PORT:-8081}
QUERY_PORT=${QUERY_HTTP_PORT:-8082}
SECRET_FILE=$LOG_DIR/jwt-secret
SERVICE_TOKEN_FILE=$LOG_DIR/command-service-token
TOKEN_TTL=${TOKEN_TTL:-43200}
SERVICE_TOKEN_TTL=${SERVICE_TOKEN_TTL:-604800}

NAMES=()
PIDS=()
FOLLOWERS=()

log() { printf '[run-local] %s\n' "$*"; }
die() { printf '[run-local] error: %s\n' "$*" >&2; exit 1; }

for tool in cargo curl; do
    command -v "$tool" >/dev/null || die "$tool is required"
done

stop_all() {
    local pid deadline i
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    deadline=$((SECONDS + 15))
    for i in "${!PIDS[@]}"; do
        while kill -0 "${PIDS[$i]}" 2>/dev/null && ((SECONDS < deadline)); do
            sleep 0.2
        done
        if kill -0 "${PIDS[$i]}" 2>/dev/null; then
            log "${NAMES[$i]} did not stop within 15 s; killing it"
            kill -KILL "${PIDS[$i]}" 2>/dev/null || true
        fi
    done
    for pid in "${FOLLOWERS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}

on_exit() {
    local status=$?
    trap - EXIT INT TERM
    if ((${#PIDS[@]})); then
        log "stopping ${NAMES[*]}"
        stop_all
    fi
    exit "$status"
}
trap on_exit EXIT
trap 'echo; exit 0' INT TERM

# start NAME PORT [VAR=VALUE...]: starts target/release/NAME with the per-service variables given.
start() {
    local name=$1 port=$2 log_file="$LOG_DIR/$1.log" prefix=${1%%-*}
    shift 2
    if curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$port/" 2>/dev/null; then
        die "something already answers on port $port; stop it (or set ${prefix^^}_HTTP_PORT)"
    fi
    : >"$log_file"
    env -u HTTP_PORT -u DATABASE_URL -u AUTH_JWT_SECRET -u COMMAND_SERVICE_TOKEN \
        AUTH_JWT_SECRET_FILE="$SECRET_FILE" "$@" "$ROOT/target/release/$name" >>"$log_file" 2>&1 &
    PIDS+=("$!")
    NAMES+=("$name")
    if [[ ${RUN_LOCAL_QUIET:-0} != 1 ]]; then
        tail -n +1 -F --pid="$!" "$log_file" 2>/dev/null | awk -v p="[$name] " '{ print p $0; fflush() }' &
        FOLLOWERS+=("$!")
    fi
    log "started $name (pid ${PIDS[-1]}), log: ${log_file#"$ROOT"/}"
}

wait_ready() {
    local name=$1 port=$2 pid=$3 deadline=$((SECONDS + READY_TIMEOUT))
    until curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$port/health/ready" 2>/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null; then
            die "$name exited during start-up; see $LOG_DIR/$name.log"
        fi
        if ((SECONDS >= deadline)); then
            curl -sS --max-time 2 "http://127.0.0.1:$port/health/ready" >&2 || true
            die "$name not ready after ${READY_TIMEOUT}s; is its database running? see $LOG_DIR/$name.log"
        fi
        sleep 1
    done
    log "$name is ready"
}

# The HS256 secret, created once: 48 random bytes, base64 (64 characters).
ensure_secret() {
    [[ -s $SECRET_FILE ]] && return 0
    (
        umask 077
        if command -v openssl >/dev/null; then
            openssl rand -base64 48
        else
            head -c 48 /dev/urandom | base64
        fi | tr -d '\n' >"$SECRET_FILE.tmp"
    )
    mv "$SECRET_FILE.tmp" "$SECRET_FILE"
    log "generated the HS256 secret ${SECRET_FILE#"$ROOT"/}"
}

# mint SUB SCOPES TTL [ARG...]: prints a token signed with the local secret.
mint() {
    local sub=$1 scopes=$2 ttl=$3
    shift 3
    env -u AUTH_JWT_SECRET AUTH_JWT_SECRET_FILE="$SECRET_FILE" \
        "$ROOT/target/release/command-service" token --sub "$sub" --scope "$scopes" --ttl "$ttl" "$@" ||
        die "command-service token failed (sub $sub)"
}

# The query service's partitions need the broker's consistent-hash exchange (shipped with RabbitMQ,
# off by default): enabled here for the local broker, as .ci/run does. Another broker is left alone.
if [[ -z ${AMQP_URL:-} ]] && command -v rabbitmq-plugins >/dev/null; then
    rabbitmq-plugins -q enable rabbitmq_consistent_hash_exchange >/dev/null ||
        log "could not enable rabbitmq_consistent_hash_exchange; the query service needs it (or AMQP_PARTITIONS=0)"
fi

log "building (cargo build --release -p command-service -p query-service)"
cargo build --release -p command-service -p query-service
mkdir -p "$LOG_DIR"
ensure_secret
(
    umask 077
    mint query-service events:read "$SERVICE_TOKEN_TTL" --client-id query-service >"$SERVICE_TOKEN_FILE.tmp"
)
mv "$SERVICE_TOKEN_FILE.tmp" "$SERVICE_TOKEN_FILE"

command_env=()
[[ -n ${COMMAND_HTTP_PORT:-} ]] && command_env+=("HTTP_PORT=$COMMAND_HTTP_PORT")
[[ -n ${COMMAND_DATABASE_URL:-} ]] && command_env+=("DATABASE_URL=$COMMAND_DATABASE_URL")
start command-service "$COMMAND_PORT" "${command_env[@]}"
wait_ready command-service "$COMMAND_PORT" "${PIDS[0]}"

query_env=("COMMAND_SERVICE_TOKEN_FILE=$SERVICE_TOKEN_FILE")
[[ -n ${QUERY_HTTP_PORT:-} ]] && query_env+=("HTTP_PORT=$QUERY_HTTP_PORT")
[[ -n ${QUERY_DATABASE_URL:-} ]] && query_env+=("DATABASE_URL=$QUERY_DATABASE_URL")
if [[ -z ${COMMAND_SERVICE_URL:-} && -n ${COMMAND_HTTP_PORT:-} ]]; then
    query_env+=("COMMAND_SERVICE_URL=http://127.0.0.1:$COMMAND_PORT")
fi
start query-service "$QUERY_PORT" "${query_env[@]}"
wait_ready query-service "$QUERY_PORT" "${PIDS[1]}"

customer_token=$(mint alice "accounts:read accounts:write" "$TOKEN_TTL" --client-id run-local)
admin_token=$(mint admin "accounts:admin accounts:read accounts:write events:read" "$TOKEN_TTL" --client-id run-local)
secret_path=${SECRET_FILE#"$ROOT"/}

cat <<EOF

  command service  http://127.0.0.1:$COMMAND_PORT   docs http://127.0.0.1:$COMMAND_PORT/docs   metrics http://127.0.0.1:$COMMAND_PORT/metrics
  query service    http://127.0.0.1:$QUERY_PORT   docs http://127.0.0.1:$QUERY_PORT/docs   metrics http://127.0.0.1:$QUERY_PORT/metrics
  logs             ${LOG_DIR#"$ROOT"/}/
  rebuild the read model:
    AUTH_JWT_SECRET_FILE=$secret_path COMMAND_SERVICE_TOKEN_FILE=${SERVICE_TOKEN_FILE#"$ROOT"/} target/release/query-service rebuild

  Tokens, valid ${TOKEN_TTL} s (more: AUTH_JWT_SECRET_FILE=$secret_path target/release/command-service token --sub SUB --scope "SCOPES"):
    customer alice (accounts:read accounts:write):
      export CUSTOMER_TOKEN=$customer_token
    admin (accounts:admin accounts:read accounts:write events:read):
      export ADMIN_TOKEN=$admin_token

  curl -H "Authorization: Bearer \$CUSTOMER_TOKEN" http://127.0.0.1:$QUERY_PORT/accounts
  curl -H "Authorization: Bearer \$CUSTOMER_TOKEN" -H 'Content-Type: application/json' \\
       -d '{"initial_balance": "100.00", "currency": "MAD"}' http://127.0.0.1:$COMMAND_PORT/accounts
  curl -H "Authorization: Bearer \$ADMIN_TOKEN" http://127.0.0.1:$QUERY_PORT/balance-sheet

  Ctrl-C stops both.

EOF

while :; do
    for i in "${!PIDS[@]}"; do
        if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
            status=0
            wait "${PIDS[$i]}" || status=$?
            die "${NAMES[$i]} exited unexpectedly (status $status); see $LOG_DIR/${NAMES[$i]}.log"
        fi
    done
    sleep 1 &
    wait $! || true
done
