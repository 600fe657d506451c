#!/usr/bin/env bash
# Builds and runs both services against the local Postgres, MariaDB/MySQL and RabbitMQ, waits until
# both are ready, prints their URLs, and stops both on Ctrl-C.
#
# Logs go to target/run-local/<service>.log and, prefixed, to the terminal (RUN_LOCAL_QUIET=1: files only).
# Optional overrides (unset: the services' own defaults):
#   COMMAND_HTTP_PORT, COMMAND_DATABASE_URL   command service (default 8081, postgres://postgres@127.0.0.1:5432/bank_events)
#   QUERY_HTTP_PORT, QUERY_DATABASE_URL       query service (default 8082, mysql://root@127.0.0.1:3306/bank_read)
#   AMQP_URL, COMMAND_SERVICE_URL, RUST_LOG, LOG_FORMAT, CONFIG_FILE are passed through as they are.
#   READY_TIMEOUT (seconds, default 120)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
LOG_DIR=$ROOT/target/run-local
READY_TIMEOUT=${READY_TIMEOUT:-120}
COMMAND_PORT=${COMMAND_HTTP_PORT:-8081}
QUERY_PORT=${QUERY_HTTP_PORT:-8082}

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
    env -u HTTP_PORT -u DATABASE_URL "$@" "$ROOT/target/release/$name" >>"$log_file" 2>&1 &
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

log "building (cargo build --release -p command-service -p query-service)"
cargo build --release -p command-service -p query-service
mkdir -p "$LOG_DIR"

command_env=()
[[ -n ${COMMAND_HTTP_PORT:-} ]] && command_env+=("HTTP_PORT=$COMMAND_HTTP_PORT")
[[ -n ${COMMAND_DATABASE_URL:-} ]] && command_env+=("DATABASE_URL=$COMMAND_DATABASE_URL")
start command-service "$COMMAND_PORT" "${command_env[@]}"
wait_ready command-service "$COMMAND_PORT" "${PIDS[0]}"

query_env=()
[[ -n ${QUERY_HTTP_PORT:-} ]] && query_env+=("HTTP_PORT=$QUERY_HTTP_PORT")
[[ -n ${QUERY_DATABASE_URL:-} ]] && query_env+=("DATABASE_URL=$QUERY_DATABASE_URL")
if [[ -z ${COMMAND_SERVICE_URL:-} && -n ${COMMAND_HTTP_PORT:-} ]]; then
    query_env+=("COMMAND_SERVICE_URL=http://127.0.0.1:$COMMAND_PORT")
fi
start query-service "$QUERY_PORT" "${query_env[@]}"
wait_ready query-service "$QUERY_PORT" "${PIDS[1]}"

cat <<EOF

  command service  http://127.0.0.1:$COMMAND_PORT   docs http://127.0.0.1:$COMMAND_PORT/docs   metrics http://127.0.0.1:$COMMAND_PORT/metrics
  query service    http://127.0.0.1:$QUERY_PORT   docs http://127.0.0.1:$QUERY_PORT/docs   metrics http://127.0.0.1:$QUERY_PORT/metrics
  logs             ${LOG_DIR#"$ROOT"/}/
  rebuild the read model: target/release/query-service rebuild

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
