#!/usr/bin/env bash
# Builds the release binaries and runs the benchmark: `bench/run.sh` writes docs/benchmarks.md
# (about 10 minutes on 2 cores), `bench/run.sh --quick` is the one-minute smoke run CI executes
# (its report goes to target/bench/benchmarks-quick.md). Other options: `bench/run.sh --help`.
# Needs the local PostgreSQL (with pgbench), MariaDB/MySQL and RabbitMQ, and python3 with venv
# for the peer, which it installs from PyPI into target/bench/venv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

packages=(-p command-service -p bench -p cqrs-peer)
if [[ -f query-service/Cargo.toml ]]; then
    packages+=(-p query-service)
fi
cargo build --release "${packages[@]}"

# The query service's partitions are a consistent-hash exchange (docs/operations.md, "Queue
# topology"); a fresh RabbitMQ may not have the plugin on. Enabling it again is a no-op.
if command -v rabbitmq-plugins >/dev/null 2>&1; then
    rabbitmq-plugins -q enable rabbitmq_consistent_hash_exchange >/dev/null ||
        echo "bench/run.sh: could not enable rabbitmq_consistent_hash_exchange; the query service needs it" >&2
fi

target_dir=${CARGO_TARGET_DIR:-$PWD/target}
export BENCH_INVOCATION="bench/run.sh${*:+ $*}"
exec "$target_dir/release/bench" --bin-dir "$target_dir/release" "$@"
