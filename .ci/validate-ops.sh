#!/usr/bin/env bash
# Static validation of the operator-facing files (no Docker engine, no cluster needed):
# docker-compose.yml with the real Compose v2, every kustomization rendered with kubectl's kustomize
# and checked against the Kubernetes schemas (the operators' custom resources, which those schemas
# do not cover, are listed and checked by .ci/ops_checks.py instead), the Dockerfile with hadolint,
# the YAML with yamllint, the shell scripts with shellcheck, the Prometheus alert rules with promtool
# (check and unit tests). The tools come from PyPI into a cached venv; promtool from Debian's
# `prometheus` package, installed here when missing.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2

VENV=${BANK_CI_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/bank-ci-venv}
K8S_VERSION=${K8S_VERSION:-1.30.0}
REQUIREMENTS=.ci/ops-requirements.txt

WORK=$(mktemp -d "${TMPDIR:-/tmp}/validate-ops.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

ensure_venv() {
    local want stamp="$VENV/.requirements.sha256"
    want=$( { sha256sum "$REQUIREMENTS"; python3 --version; } | sha256sum | cut -d' ' -f1)
    if [[ -x $VENV/bin/python && -f $stamp && $(<"$stamp") == "$want" ]] && "$VENV/bin/python" -c '' 2>/dev/null; then
        return 0
    fi
    echo "Installing validation tools into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV" &&
        "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-input -r "$REQUIREMENTS" &&
        echo "$want" >"$stamp"
}

if ! ensure_venv; then
    echo "FAIL: could not install the tools from $REQUIREMENTS" >&2
    exit 1
fi
BIN=$VENV/bin

# promtool comes with Debian's `prometheus` package. Its maintainer scripts would start a Prometheus
# server: a policy-rc.d (exit 101) forbids that for the install, unless the machine already has one.
ensure_promtool() {
    command -v promtool >/dev/null 2>&1 && return 0
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        echo "promtool is missing; install Debian's prometheus package (as root: apt-get install prometheus)" >&2
        return 1
    fi
    echo "Installing promtool (Debian package prometheus, its service not started)"
    local policy=/usr/sbin/policy-rc.d ours=false rc=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\n# validate-ops.sh: no service starts while it installs packages\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        ours=true
    fi
    local install=(apt-get install -y -qq --no-install-recommends prometheus)
    DEBIAN_FRONTEND=noninteractive "${install[@]}" >/dev/null ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive "${install[@]}" >/dev/null; } || rc=$?
    if $ours; then rm -f "$policy"; fi
    [[ $rc -eq 0 ]] && command -v promtool >/dev/null 2>&1
}
if ! ensure_promtool; then
    echo "FAIL: could not install promtool" >&2
    exit 1
fi
COMPOSE=$("$BIN/python" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')

passed=0
failed=0
results=()

# step NAME COMMAND...: runs COMMAND, keeps its output, reports PASS or FAIL with the output.
step() {
    local name=$1 log
    shift
    log="$WORK/step-$((passed + failed)).log"
    if "$@" >"$log" 2>&1; then
        passed=$((passed + 1))
        results+=("PASS  $name")
        printf 'PASS  %s\n' "$name"
        grep -E '^  ' "$log" | tail -n 1
        return 0
    else
        failed=$((failed + 1))
        results+=("FAIL  $name")
        printf 'FAIL  %s\n' "$name"
        sed 's/^/      /' "$log"
        return 1
    fi
}

compose() {
    "$COMPOSE" --env-file /dev/null --project-directory "$ROOT" -f docker-compose.yml "$@"
}

compose_config() {
    compose --profile '*' config -q 2>"$WORK/compose.err"
    local rc=$?
    cat "$WORK/compose.err"
    [[ $rc -eq 0 ]] && ! grep -q 'variable is not set' "$WORK/compose.err"
}

compose_env() {
    compose --profile '*' config --format json >"$WORK/compose.json" &&
        "$BIN/python" .ci/ops_checks.py compose "$WORK/compose.json"
}

# Every kustomization under k8s/ that can be built on its own (components cannot).
mapfile -t KUSTOMIZATIONS < <(
    find k8s -name kustomization.yaml -print0 | xargs -0 grep -L '^kind: Component' | xargs -n1 dirname | sort
)

render() {
    "$BIN/kubectl" kustomize "$1" >"$2"
}

# schemas RENDERED: the objects the offline Kubernetes schemas cover, validated strictly; the custom
# resources listed (ops_checks.py split) and left to the `checks` step. A kind the schemas do not
# know and that is not one of those custom resources (a typo, a new CRD) fails.
schemas() {
    local rendered=$1 checked="$1.schema-checked" listed
    listed=$("$BIN/python" .ci/ops_checks.py split "$rendered" "$checked" "$WORK/unvalidated") ||
        { echo "$listed"; return 1; }
    "$BIN/kubernetes-validate" --strict --quiet --kubernetes-version "$K8S_VERSION" "$checked" >"$rendered.kv" 2>&1
    local rc=$?
    cat "$rendered.kv"
    if grep -q "Couldn't find schema" "$rendered.kv"; then
        echo "  a kind above has no schema and is not a known custom resource (CUSTOM_KINDS in .ci/ops_checks.py)"
        return 1
    fi
    echo "$listed"
    return "$rc"
}

RULES=k8s/base/monitoring/alerts.yml
RULE_TESTS=k8s/base/monitoring/alerts_test.yml

step "yamllint (.yamllint, strict)" "$BIN/yamllint" --strict -c .yamllint docker-compose.yml k8s .yamllint
step "hadolint Dockerfile" "$BIN/hadolint" Dockerfile
step "shellcheck scripts" "$BIN/shellcheck" scripts/*.sh .ci/validate-ops.sh .ci/check-api.sh
step "promtool check rules ($(promtool --version 2>/dev/null | head -n 1 | cut -d' ' -f3))" promtool check rules "$RULES"
step "promtool test rules" promtool test rules "$RULE_TESTS"
step "alert rules: for, severity, annotations, runbooks in docs/operations.md" \
    "$BIN/python" .ci/ops_checks.py alerts "$RULES" docs/operations.md
step "compose config ($("$COMPOSE" version --short 2>/dev/null || echo '?'))" compose_config
step "compose: required variables per service" compose_env

for dir in "${KUSTOMIZATIONS[@]}"; do
    out="$WORK/$(echo "$dir" | tr / -).yaml"
    step "kustomize build $dir" render "$dir" "$out" || continue
    step "schemas $dir (Kubernetes $K8S_VERSION, strict)" schemas "$out"
    # base is a building block whose URLs point at Services an overlay adds.
    if [[ $dir != k8s/base ]]; then
        step "checks $dir (variables, probes, security, selectors)" "$BIN/python" .ci/ops_checks.py k8s "$dir" "$out"
    fi
done

echo
echo "Summary"
printf '  %s\n' "${results[@]}"
if [[ -s $WORK/unvalidated ]]; then
    echo "Not validated against schemas here (custom resources; only the checks in .ci/ops_checks.py apply):"
    sort -u "$WORK/unvalidated" | sed 's/^/  /'
fi
echo "validate-ops: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
