#!/usr/bin/env bash
# Create the work pools infra/prefect.yaml deploys to (idempotent), then register every
# deployment with `prefect deploy` — run from anywhere; it deploys from the repository root,
# which the CPU deployments' pull step then points process workers at.
# Needs a running server: PREFECT_API_URL (or the active profile's) pointing at it
# (infra/start-prefect-server.sh for a local one). Exercised by tests/test_prefect_deploy.py.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PREFECT_API_URL:-}" ] && ! prefect config view 2>/dev/null | grep -q '^PREFECT_API_URL='; then
  echo "error: PREFECT_API_URL is not set: without it the pools and deployments would go to a" \
    "throwaway ephemeral server. export PREFECT_API_URL=http://HOST:4200/api" >&2
  exit 2
fi
prefect work-pool inspect ragvid-cpu >/dev/null 2>&1 || prefect work-pool create ragvid-cpu --type process
prefect work-pool inspect ragvid-gpu >/dev/null 2>&1 || prefect work-pool create ragvid-gpu --type kubernetes
prefect --no-prompt deploy --prefect-file infra/prefect.yaml --all
echo "start workers with: prefect worker start --pool ragvid-cpu   (and --pool ragvid-gpu where GPU pods may start)"
