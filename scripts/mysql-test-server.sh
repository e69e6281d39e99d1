#!/usr/bin/env bash
# A private MariaDB/MySQL server for the tests of the MySQL storage backend.
#
#   scripts/mysql-test-server.sh start DIR   # prints the socket path
#   scripts/mysql-test-server.sh stop DIR
#
# `start` initialises a data directory in DIR (which must exist), starts the
# server as the current user, listening only on the unix socket DIR/mysqld.sock
# (no TCP), waits until it answers, and creates the database `neo_test`.
# The account is `root` without a password (reachable only through the
# socket, which lives in the caller's private DIR). Tests make their own
# databases (`neo_test_*`) next to it. `stop` shuts the server down and
# waits for it. Nothing outside DIR is touched.
set -euo pipefail

usage() {
    echo "usage: $0 start|stop DIR" >&2
    exit 2
}
[ $# -eq 2 ] || usage
cmd=$1
dir=$(cd "$2" && pwd)
sock="$dir/mysqld.sock"
pidfile="$dir/mysqld.pid"

find_prog() {
    local p
    for p in "$@"; do
        if command -v "$p" >/dev/null 2>&1; then
            command -v "$p"
            return 0
        fi
        if [ -x "/usr/sbin/$p" ]; then
            echo "/usr/sbin/$p"
            return 0
        fi
    done
    return 1
}

client() {
    local c
    c=$(find_prog mariadb mysql) || { echo "no mariadb/mysql client found" >&2; exit 1; }
    "$c" --no-defaults --socket="$sock" -uroot "$@"
}

case "$cmd" in
start)
    server=$(find_prog mariadbd mysqld) || {
        echo "no mariadbd/mysqld found: run scripts/setup-test-env.sh" >&2
        exit 1
    }
    installer=$(find_prog mariadb-install-db mysql_install_db) || {
        echo "no mariadb-install-db found" >&2
        exit 1
    }
    user=$(id -un)
    if [ ! -d "$dir/data/mysql" ]; then
        "$installer" --no-defaults --auth-root-authentication-method=normal \
            --datadir="$dir/data" --user="$user" --skip-test-db \
            >"$dir/install.log" 2>&1 || {
            cat "$dir/install.log" >&2
            exit 1
        }
    fi
    # RocksDB (NEO's other engine) when its plugin is installed.
    plugins=()
    plugin_dir=$("$server" --no-defaults --verbose --help 2>/dev/null |
        awk '$1 == "plugin-dir" { print $2 }')
    if [ -n "$plugin_dir" ] && [ -f "$plugin_dir/ha_rocksdb.so" ]; then
        plugins+=(--plugin-load-add=ha_rocksdb)
    fi
    # max_allowed_packet: NEO refuses less than 32769 KiB (bigdata chunks).
    # The test server trades durability for speed (the tests do not cut
    # power): the log is written at each commit but synced once a second.
    "$server" --no-defaults --user="$user" --datadir="$dir/data" \
        --socket="$sock" --skip-networking --pid-file="$pidfile" \
        --log-error="$dir/error.log" --max-allowed-packet=64M \
        --innodb-buffer-pool-size=256M --innodb-flush-log-at-trx-commit=2 \
        --innodb-log-file-size=64M --max-connections=500 "${plugins[@]}" \
        >/dev/null 2>&1 </dev/null &
    server_pid=$!
    for _ in $(seq 1 600); do
        if client -e 'SELECT 1' >/dev/null 2>&1; then
            break
        fi
        if ! kill -0 "$server_pid" 2>/dev/null; then
            echo "the server died at start:" >&2
            tail -n 30 "$dir/error.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    client -e 'SELECT 1' >/dev/null || {
        echo "the server does not answer:" >&2
        tail -n 30 "$dir/error.log" >&2
        exit 1
    }
    client -e 'CREATE DATABASE IF NOT EXISTS neo_test'
    echo "$sock"
    ;;
stop)
    [ -f "$pidfile" ] || exit 0
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 1 300); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "the server (pid $pid) does not stop; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$pidfile"
    ;;
*)
    usage
    ;;
esac
