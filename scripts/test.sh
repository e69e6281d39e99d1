#!/usr/bin/env bash
# Runs every test, after installing what they need. This is the README's test
# command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-test-env.sh
export NEO_TEST_PYTHON="$PWD/.venv/bin/python"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -q -- -D warnings
# A private MariaDB server (temp dir, unix socket only) for the MySQL backend
# tests, which fail under CI=true without it; stopped and removed on exit.
mysql_dir=$(mktemp -d)
trap 'scripts/mysql-test-server.sh stop "$mysql_dir"; rm -rf "$mysql_dir"' EXIT
NEO_TEST_MYSQL_SOCKET=$(scripts/mysql-test-server.sh start "$mysql_dir")
export NEO_TEST_MYSQL_SOCKET
cargo test --workspace --all-targets --no-fail-fast
