#!/usr/bin/env bash
# Create the work pools infra/prefect.yaml deploys to (idempotent), then register the deployments.
# Needs PREFECT_API_URL pointing at a running server (infra/start-prefect-server.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
prefect work-pool inspect ragvid-cpu >/dev/null 2>&1 || prefect work-pool create ragvid-cpu --type process
prefect work-pool inspect ragvid-gpu >/dev/null 2>&1 || prefect work-pool create ragvid-gpu --type kubernetes
prefect deploy --prefect-file infra/prefect.yaml --all
echo "start workers with: prefect worker start --pool ragvid-cpu   (and --pool ragvid-gpu on GPU nodes)"
