#!/usr/bin/env bash
# Starts Lookout: a local Redis on loopback unless REDIS_URL is set, then `serve run`.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
CONFIG=${1:-serve_config.yaml}
"$VENV/bin/lookout" check "$CONFIG"
if [[ -z "${REDIS_URL:-}" ]]; then
  mkdir -p data/redis
  if ! redis-cli -p 6379 ping >/dev/null 2>&1; then
    echo "==> starting redis-server on 127.0.0.1:6379 (data/redis)"
    redis-server --bind 127.0.0.1 --port 6379 --dir "$PWD/data/redis" --save "" --appendonly no \
      --daemonize yes --logfile "$PWD/data/redis/redis.log" --pidfile "$PWD/data/redis/redis.pid"
  fi
  export REDIS_URL=redis://127.0.0.1:6379/0
fi
export PATH="$PWD/$VENV/bin:$PATH"
exec serve run "$CONFIG"
