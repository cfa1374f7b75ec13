#!/usr/bin/env bash
# Start a throw-away MLflow tracking server on 127.0.0.1:55000 for the distributed-study tests
# (CI starts it): runs in the PostgreSQL of scripts/start_postgres.sh, artifacts proxied by the
# server into a local folder, one worker process. Prints the tracking URI to use.
# The server runs in a session (process group) of its own, whose id is written to the pid file:
# `scripts/start_mlflow_server.sh --stop` ends it with its uvicorn and job-runner children.
#   AUTOINFER_MLFLOW_PORT, AUTOINFER_MLFLOW_ARTIFACTS, AUTOINFER_MLFLOW_DB, AUTOINFER_MLFLOW_PIDFILE
#   override the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${AUTOINFER_MLFLOW_PORT:-55000}
ART=${AUTOINFER_MLFLOW_ARTIFACTS:-/tmp/autoinfer-mlflow-artifacts}
PIDFILE=${AUTOINFER_MLFLOW_PIDFILE:-$ART/server.pid}
if [ "${1:-}" = "--stop" ]; then
  if [ -f "$PIDFILE" ]; then
    PGID=$(cat "$PIDFILE")
    if ps -o args= -p "$PGID" | grep -q mlflow; then  # not a reused pid of something else
      kill -TERM -- "-$PGID" 2>/dev/null || true
      for _ in $(seq 1 20); do kill -0 -- "-$PGID" 2>/dev/null || break; sleep 0.5; done
      kill -KILL -- "-$PGID" 2>/dev/null || true
    fi
    rm -f "$PIDFILE"
  fi
  exit 0
fi
PG=$(scripts/start_postgres.sh)
DB=${AUTOINFER_MLFLOW_DB:-${PG%/*}/autoinfer_mlflow}
MLFLOW=${MLFLOW:-$(pwd)/.venv/bin/mlflow}
up() { python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=2)" 2>/dev/null; }
if ! up; then
  mkdir -p "$ART"
  # setsid: the server leads a process group of its own (a background job of this script is no
  # group leader, so setsid execs in place and $! is that group's id), which --stop ends whole.
  setsid nohup "$MLFLOW" server --host 127.0.0.1 --port "$PORT" --workers 1 \
    --backend-store-uri "${DB/postgresql:/postgresql+psycopg:}" --artifacts-destination "$ART" \
    >"$ART/server.log" 2>&1 </dev/null &
  mkdir -p "$(dirname "$PIDFILE")" && echo $! >"$PIDFILE"
  for _ in $(seq 1 120); do up && break; sleep 1; done
  up || { echo "mlflow server did not start; its log:" >&2; tail -n 20 "$ART/server.log" >&2; exit 1; }
fi
echo "http://127.0.0.1:$PORT"
