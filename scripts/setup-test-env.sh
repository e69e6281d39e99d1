#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine (idempotent):
# - a virtualenv in .venv with the real ZODB from PyPI (the oracle);
# - mariadb-server and its RocksDB plugin (Debian) for the MySQL backend
#   tests, which run their own private server (scripts/mysql-test-server.sh),
#   never the system one.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v python3 >/dev/null || need_apt+=(python3 python3-venv)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
have_mysqld() {
    command -v mariadbd || command -v mysqld || [ -x /usr/sbin/mariadbd ] || [ -x /usr/sbin/mysqld ]
}
have_mysqld >/dev/null 2>&1 || need_apt+=(mariadb-server)
# NEO's other MySQL engine, tested when the server has it.
dpkg -s mariadb-plugin-rocksdb >/dev/null 2>&1 || need_apt+=(mariadb-plugin-rocksdb)
if [ ${#need_apt[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
fi

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import ZODB, BTrees' 2>/dev/null; then
    python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check -r scripts/requirements-test.txt
fi
.venv/bin/python -c 'import ZODB; print("oracle: ZODB", ZODB.__file__)'
