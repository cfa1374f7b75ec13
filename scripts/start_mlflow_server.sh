#!/usr/bin/env bash
# Start a throw-away MLflow tracking server on 127.0.0.1:55000 for the distributed-study tests
# (CI starts it): runs in the PostgreSQL of scripts/start_postgres.sh, artifacts proxied by the
# server into a local folder, one worker process. Prints the tracking URI to use.
#   AUTOINFER_MLFLOW_PORT, AUTOINFER_MLFLOW_ARTIFACTS, AUTOINFER_MLFLOW_DB override the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${AUTOINFER_MLFLOW_PORT:-55000}
ART=${AUTOINFER_MLFLOW_ARTIFACTS:-/tmp/autoinfer-mlflow-artifacts}
PG=$(scripts/start_postgres.sh)
DB=${AUTOINFER_MLFLOW_DB:-${PG%/*}/autoinfer_mlflow}
MLFLOW=${MLFLOW:-$(pwd)/.venv/bin/mlflow}
up() { python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=2)" 2>/dev/null; }
if ! up; then
  mkdir -p "$ART"
  nohup "$MLFLOW" server --host 127.0.0.1 --port "$PORT" --workers 1 \
    --backend-store-uri "${DB/postgresql:/postgresql+psycopg:}" --artifacts-destination "$ART" \
    >"$ART/server.log" 2>&1 &
  for _ in $(seq 1 120); do up && break; sleep 1; done
  up || { echo "mlflow server did not start; its log:" >&2; tail -n 20 "$ART/server.log" >&2; exit 1; }
fi
echo "http://127.0.0.1:$PORT"
