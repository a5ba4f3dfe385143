#!/usr/bin/env bash
# Start a Ray head on this machine (GCS 6379, Ray client 10001, dashboard 8265) so flows can
# run with `--ray-address ray://127.0.0.1:10001` (or `auto` on this machine). `ray stop` ends it.
#   infra/start-ray-head.sh [--num-cpus N] [--num-gpus N]
set -euo pipefail
export RAY_USAGE_STATS_ENABLED=0
exec ray start --head --port=6379 --ray-client-server-port=10001 \
  --dashboard-host=127.0.0.1 --include-dashboard=true "$@"
