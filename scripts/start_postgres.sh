#!/usr/bin/env bash
# Start a throw-away PostgreSQL on 127.0.0.1:55432 for the distributed-study tests (CI runs as root).
# Installs the server from Debian's packages where it is missing. Prints the URL to use.
set -euo pipefail
PORT=${AUTOINFER_PG_PORT:-55432}
DATA=${AUTOINFER_PG_DATA:-/tmp/autoinfer-pg}
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
BIN=$(dirname "$(ls /usr/lib/postgresql/*/bin/postgres | sort -V | tail -n1)")
as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/bash -c "$*"; else bash -c "$*"; fi; }
if ! as_pg "$BIN/pg_isready -q -h 127.0.0.1 -p $PORT"; then
  rm -rf "$DATA" && mkdir -p "$DATA"
  [ "$(id -u)" = 0 ] && chown postgres "$DATA"
  as_pg "$BIN/initdb -D $DATA -A trust -U postgres" >/dev/null
  as_pg "$BIN/pg_ctl -D $DATA -l $DATA/log -w -o '-p $PORT -k $DATA -c listen_addresses=127.0.0.1' start" >/dev/null
  as_pg "$BIN/psql -q -h 127.0.0.1 -p $PORT -U postgres -c \"CREATE ROLE autoinfer LOGIN PASSWORD 'autoinfer'\""
  as_pg "$BIN/psql -q -h 127.0.0.1 -p $PORT -U postgres -c 'CREATE DATABASE autoinfer_test OWNER autoinfer'"
fi
# The MLflow tracking server's backend store (scripts/start_mlflow_server.sh), made once.
if [ -z "$(as_pg "$BIN/psql -tA -h 127.0.0.1 -p $PORT -U postgres -c \"SELECT 1 FROM pg_database WHERE datname='autoinfer_mlflow'\"")" ]; then
  as_pg "$BIN/psql -q -h 127.0.0.1 -p $PORT -U postgres -c 'CREATE DATABASE autoinfer_mlflow OWNER autoinfer'"
fi
echo "postgresql://autoinfer:autoinfer@127.0.0.1:$PORT/autoinfer_test"
