#!/usr/bin/env bash
# Checks the two services' OpenAPI documents against the services themselves: starts both
# (debug binaries) on fresh databases and an exchange and queue of their own, then for each
# document runs an OpenAPI 3.1 validator, generates a typed Python client and imports it, and
# runs schemathesis' full checks against the running service. Always stops the services and
# drops what it created. The tools come from PyPI into a cached venv.
#
# API_CHECK_AUTHORIZATION: optional value of an `Authorization` header sent with every request.
# API_CHECK_MAX_EXAMPLES: schemathesis examples per operation (default 30).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2

VENV=${BANK_API_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/bank-api-venv}
REQUIREMENTS=.ci/api-requirements.txt
POSTGRES=${TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}
MYSQL=${TEST_MYSQL_URL:-mysql://root@127.0.0.1:3306}
AMQP=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
MAX_EXAMPLES=${API_CHECK_MAX_EXAMPLES:-30}
# Warnings and errors, each within its request's span (method, path, request id).
SERVICE_LOG=warn,service_kit::http=info

SUFFIX=$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')
COMMAND_DB=api_check_${SUFFIX}_cmd
QUERY_DB=api_check_${SUFFIX}_read
EXCHANGE=api-check-${SUFFIX}.events
QUEUE=api-check-${SUFFIX}.projection
WORK=$(mktemp -d "${TMPDIR:-/tmp}/check-api.XXXXXX")
PIDS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null
    done
    dropdb -h 127.0.0.1 -U postgres --if-exists "$COMMAND_DB" >/dev/null 2>&1
    mariadb -h 127.0.0.1 -u root -e "DROP DATABASE IF EXISTS \`$QUERY_DB\`" >/dev/null 2>&1
    if [[ -x $VENV/bin/python ]]; then
        "$VENV/bin/python" - "$AMQP" "$EXCHANGE" "$QUEUE" <<'PY' >/dev/null 2>&1
import sys, pika
url, exchange, queue = sys.argv[1:]
channel = pika.BlockingConnection(pika.URLParameters(url)).channel()
for name in (queue, f"{exchange}.dlq"):
    channel.queue_delete(name)
for name in (exchange, f"{exchange}.dlx"):
    channel.exchange_delete(name)
PY
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ensure_venv() {
    local want stamp="$VENV/.requirements.sha256"
    want=$( { sha256sum "$REQUIREMENTS"; python3 --version; } | sha256sum | cut -d' ' -f1)
    if [[ -x $VENV/bin/python && -f $stamp && $(<"$stamp") == "$want" ]] && "$VENV/bin/python" -c '' 2>/dev/null; then
        return 0
    fi
    echo "Installing API check tools into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV" &&
        "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-input -r "$REQUIREMENTS" &&
        echo "$want" >"$stamp"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_ready NAME URL PID: waits until URL/health/ready answers 200.
wait_ready() {
    local name=$1 url=$2 pid=$3
    for _ in $(seq 1 120); do
        if curl -fsS -o /dev/null "$url/health/ready"; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "FAIL: $name exited during start-up; its log:" >&2
            sed 's/^/      /' "$WORK/$name.log" >&2
            return 1
        fi
        sleep 0.5
    done
    echo "FAIL: $name did not become ready; its log:" >&2
    sed 's/^/      /' "$WORK/$name.log" >&2
    return 1
}

passed=0
failed=0
results=()

# step NAME COMMAND...: runs COMMAND, reports PASS or FAIL with its output.
step() {
    local name=$1 log
    shift
    log="$WORK/step-$((passed + failed)).log"
    if "$@" >"$log" 2>&1; then
        passed=$((passed + 1))
        results+=("PASS  $name")
        printf 'PASS  %s\n' "$name"
    else
        failed=$((failed + 1))
        results+=("FAIL  $name")
        printf 'FAIL  %s\n' "$name"
        sed 's/^/      /' "$log"
    fi
}

validate() {
    "$VENV/bin/openapi-spec-validator" "$1"
}

# generate_client NAME DOCUMENT: generates a typed client and imports every module of it.
generate_client() {
    local name=$1 document=$2 out="$WORK/$1-client"
    (cd "$WORK" && PATH=$VENV/bin:$PATH "$VENV/bin/openapi-python-client" generate --path "$document" --output-path "$out" --fail-on-warning) || return 1
    local package
    package=$(basename "$(find "$out" -mindepth 2 -maxdepth 2 -name __init__.py -printf '%h\n' | head -n1)")
    PYTHONPATH=$out "$VENV/bin/python" - "$package" <<'PY'
import importlib, pkgutil, sys
package = importlib.import_module(sys.argv[1])
modules = [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
for name in modules:
    importlib.import_module(name)
client = package.Client(base_url="http://127.0.0.1")
print(f"imported {package.__name__} and its {len(modules)} modules; {type(client).__name__} built")
PY
}

fuzz() {
    local url=$1
    local headers=()
    if [[ -n ${API_CHECK_AUTHORIZATION:-} ]]; then
        headers=(--header "Authorization: $API_CHECK_AUTHORIZATION")
    fi
    # One worker: with two, hypothesis parses schemathesis' sources from two threads at
    # once, and CPython 3.11 before 3.11.8 shares the AST builder's recursion counter
    # between threads (cpython#106905): "SystemError: AST constructor recursion depth
    # mismatch" in the coverage phase, now and then.
    # GET /accounts/{id}/updates is an event stream that never ends by design, so no
    # request to it finishes within the request timeout: the API tests
    # (query-service/tests/api/updates.rs) cover it instead.
    "$VENV/bin/schemathesis" --config-file .ci/schemathesis.toml run "$url/openapi.json" \
        --url "$url" --checks all --max-examples "$MAX_EXAMPLES" --seed 1 \
        --exclude-path-regex '/updates$' \
        --workers 1 --no-color --warnings off --request-timeout 15 \
        --generation-database none "${headers[@]}"
}

if ! ensure_venv; then
    echo "FAIL: could not install the tools from $REQUIREMENTS" >&2
    exit 1
fi

echo "Building the services"
if ! cargo build --quiet -p command-service -p query-service; then
    echo "FAIL: cargo build" >&2
    exit 1
fi

COMMAND_PORT=$(free_port)
QUERY_PORT=$(free_port)
COMMAND_URL=http://127.0.0.1:$COMMAND_PORT
QUERY_URL=http://127.0.0.1:$QUERY_PORT

env DATABASE_URL="$POSTGRES/$COMMAND_DB" AMQP_URL="$AMQP" AMQP_EXCHANGE="$EXCHANGE" \
    HTTP_HOST=127.0.0.1 HTTP_PORT="$COMMAND_PORT" RUST_LOG="$SERVICE_LOG" \
    target/debug/command-service >"$WORK/command-service.log" 2>&1 &
PIDS+=($!)
wait_ready command-service "$COMMAND_URL" "${PIDS[0]}" || exit 1

env DATABASE_URL="$MYSQL/$QUERY_DB" AMQP_URL="$AMQP" AMQP_EXCHANGE="$EXCHANGE" AMQP_QUEUE="$QUEUE" \
    COMMAND_SERVICE_URL="$COMMAND_URL" HTTP_HOST=127.0.0.1 HTTP_PORT="$QUERY_PORT" RUST_LOG="$SERVICE_LOG" \
    target/debug/query-service >"$WORK/query-service.log" 2>&1 &
PIDS+=($!)
wait_ready query-service "$QUERY_URL" "${PIDS[1]}" || exit 1

for service in command-service query-service; do
    if [[ $service == command-service ]]; then url=$COMMAND_URL; else url=$QUERY_URL; fi
    document="$WORK/$service.openapi.json"
    if ! curl -fsS -o "$document" "$url/openapi.json"; then
        step "$service: GET /openapi.json" false
        continue
    fi
    step "$service: OpenAPI 3.1 validator" validate "$document"
    step "$service: generate a typed Python client and import it" generate_client "$service" "$document"
    step "$service: schemathesis --checks all ($MAX_EXAMPLES examples per operation)" fuzz "$url"
done

# A 5xx is logged as an ERROR; 504 not_yet_projected is the documented answer of
# GET /accounts/{id} with a `min_version` not reached in time (see .ci/schemathesis.toml).
if sed 's/\x1b\[[0-9;]*m//g' "$WORK"/*-service.log | grep -E 'panicked|ERROR' |
    grep -v -E 'Status code: 504 Gateway Timeout .*method=GET path=/accounts/[^/ ]+ '; then
    failed=$((failed + 1))
    results+=("FAIL  service logs show errors (above)")
fi

echo
echo "Summary"
printf '  %s\n' "${results[@]}"
echo "check-api: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
