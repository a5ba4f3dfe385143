#!/usr/bin/env bash
# Start a local Prefect server with its UI (http://127.0.0.1:4200 by default) and point this
# shell's ragvid runs at it. Data lives in $PREFECT_HOME (default ~/.prefect).
#   infra/start-prefect-server.sh [--host 0.0.0.0] [--port 4200]
set -euo pipefail
HOST=127.0.0.1
PORT=4200
while [[ $# -gt 0 ]]; do
  case "$1" in
    --host) HOST="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    *) echo "usage: $0 [--host HOST] [--port PORT]" >&2; exit 2 ;;
  esac
done
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_UI_API_URL="http://${HOST}:${PORT}/api"
echo "Prefect UI:  http://${HOST}:${PORT}"
echo "In other shells:  export PREFECT_API_URL=http://${HOST}:${PORT}/api"
# the repo's venv (README set-up) when this shell has not activated it
PREFECT="$(dirname "$0")/../.venv/bin/prefect"
[[ -x "$PREFECT" ]] || PREFECT=prefect
exec "$PREFECT" server start --host "$HOST" --port "$PORT"
