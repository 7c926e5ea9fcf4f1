#!/usr/bin/env bash
# Starts Lookout: a local Redis with a password (unless REDIS_URL is set), a Ray head on loopback,
# then `serve run`. Ctrl-C (or serve run ending) stops what this script started.
#   scripts/run.sh [serve_config.yaml]
# Relative paths in the config are taken from the config file's folder (Ray and serve run start there).
# Settings (environment): REDIS_URL (use that Redis instead), LOOKOUT_REDIS_PORT (6390),
#   LOOKOUT_RAY_PORT (6380), LOOKOUT_RAY_METRICS_PORT (8090), LOOKOUT_RAY_START_TRIES (3),
#   LOOKOUT_DATA (data), VENV (.venv).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=$(realpath -m "${VENV:-.venv}")
DATA=$(realpath -m "${LOOKOUT_DATA:-data}")
CONFIG=$(realpath -m "${1:-serve_config.yaml}")
CONFIG_DIR=$(dirname "$CONFIG")
REDIS_PORT=${LOOKOUT_REDIS_PORT:-6390}
RAY_PORT=${LOOKOUT_RAY_PORT:-6380}
RAY_METRICS_PORT=${LOOKOUT_RAY_METRICS_PORT:-8090}
REDIS_DIR="$DATA/redis"
RAY_LOG="$DATA/ray-head.log"

say() { printf '==> %s\n' "$*"; }
die() { printf 'lookout: %s\n' "$*" >&2; exit 1; }

"$VENV/bin/lookout" check "$CONFIG"

redis_pid=""
ray_pid=""
stop_started() {
  trap - EXIT INT TERM
  if [[ -n $ray_pid ]] && kill -0 "$ray_pid" 2>/dev/null; then
    kill -TERM -- "-$ray_pid" 2>/dev/null || kill -TERM "$ray_pid" 2>/dev/null || true  # its process group
    for _ in $(seq 1 60); do kill -0 "$ray_pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$ray_pid" 2>/dev/null || true
    say "stopped the Ray head"
  fi
  if [[ -n $redis_pid ]] && kill -0 "$redis_pid" 2>/dev/null; then
    kill -TERM "$redis_pid" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$redis_pid" 2>/dev/null || break; sleep 0.25; done
    say "stopped redis-server (pid $redis_pid)"
  fi
}
trap stop_started EXIT
trap 'exit 130' INT TERM

redis_answers() {  # ping with the password; an answer of any kind (PONG, NOAUTH) means a server is there
  REDISCLI_AUTH="$1" redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q "$2"
}

start_redis() {
  # Lookout's own Redis: loopback only, with a password made on first start (data/redis/password, 0600).
  # It sits in a config file (0600), not on the command line, where any local user could read it.
  mkdir -p "$REDIS_DIR"
  chmod 700 "$REDIS_DIR"
  if [[ ! -s "$REDIS_DIR/password" ]]; then
    (umask 077 && "$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(24))' >"$REDIS_DIR/password")
    say "made a Redis password in $REDIS_DIR/password (mode 0600)"
  fi
  local password
  password=$(<"$REDIS_DIR/password")
  local pidfile="$REDIS_DIR/redis.pid"
  if [[ -s $pidfile ]] && kill -0 "$(<"$pidfile")" 2>/dev/null && redis_answers "$password" PONG; then
    redis_pid=$(<"$pidfile")
    say "using the Redis an earlier run started on 127.0.0.1:$REDIS_PORT (pid $redis_pid); stopped on exit"
  else
    if redis_answers "" .; then
      die "127.0.0.1:$REDIS_PORT is taken by a server this script did not start: stop it, or set LOOKOUT_REDIS_PORT to a free port, or REDIS_URL to a Redis of your own"
    fi
    (umask 077 && printf 'bind 127.0.0.1\nport %s\nprotected-mode yes\ndir %s\nsave ""\nappendonly no\ndaemonize yes\nlogfile %s\npidfile %s\nrequirepass %s\n' \
      "$REDIS_PORT" "$REDIS_DIR" "$REDIS_DIR/redis.log" "$pidfile" "$password" >"$REDIS_DIR/redis.conf")
    rm -f "$pidfile"
    redis-server "$REDIS_DIR/redis.conf"
    for _ in $(seq 1 40); do [[ -s $pidfile ]] && redis_answers "$password" PONG && break; sleep 0.25; done
    redis_answers "$password" PONG || die "redis-server did not start: see $REDIS_DIR/redis.log"
    redis_pid=$(<"$pidfile")
    say "started redis-server on 127.0.0.1:$REDIS_PORT with a password (pid $redis_pid, $REDIS_DIR); stopped on exit"
  fi
  export REDIS_URL="redis://:$password@127.0.0.1:$REDIS_PORT/0"
}

start_ray() {
  # Our own single-box head, all of it on 127.0.0.1: Ray binds its metrics exporter (which names every
  # deployment, ingest-<camera>) to all interfaces unless the node's address is loopback, and `ray start`
  # swaps --node-ip-address 127.0.0.1 for the box's address; RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (Ray's
  # single-machine mode, exported for serve run too) keeps it on loopback. The head starts in the config's
  # folder, so the replicas take relative paths from there. Ray gives its raylet a fixed 30 s to come up:
  # on a busy box that fails now and then, so it gets more tries (LOOKOUT_RAY_START_TRIES, 3).
  export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
  mkdir -p "$DATA"
  local try tries=${LOOKOUT_RAY_START_TRIES:-3}
  for ((try = 1; try <= tries; try++)); do
    say "starting a Ray head on 127.0.0.1:$RAY_PORT (metrics on 127.0.0.1:$RAY_METRICS_PORT; log $RAY_LOG)"
    (cd "$CONFIG_DIR" && exec setsid "$VENV/bin/ray" start --head --block --port "$RAY_PORT" \
       --dashboard-host 127.0.0.1 --metrics-export-port "$RAY_METRICS_PORT" --disable-usage-stats) >"$RAY_LOG" 2>&1 &
    ray_pid=$!
    until grep -q "Ray runtime started" "$RAY_LOG" 2>/dev/null || ! kill -0 "$ray_pid" 2>/dev/null; do sleep 0.5; done
    if kill -0 "$ray_pid" 2>/dev/null; then
      export RAY_ADDRESS="127.0.0.1:$RAY_PORT"
      return
    fi
    ray_pid=""
    if ! grep -q "timed out during startup" "$RAY_LOG"; then
      die "Ray did not start: $(grep -E 'Error|error' "$RAY_LOG" | tail -n 1) (Ray's log: $RAY_LOG)"
    fi
    ((try < tries)) && say "Ray did not start in time (load $(cut -d' ' -f1 /proc/loadavg)): trying again"
  done
  die "Ray did not start in time: the box is too busy (load $(cut -d' ' -f1-3 /proc/loadavg)); run \`make run\` again when it is calmer (Ray's log: $RAY_LOG)"
}

if [[ -z "${REDIS_URL:-}" ]]; then
  start_redis
fi
start_ray
export PATH="$VENV/bin:$PATH"
say "serve run $CONFIG (Ctrl-C stops Lookout, the Ray head and the Redis this script started)"
rc=0
(cd "$CONFIG_DIR" && serve run "$CONFIG") || rc=$?
if ((rc != 0 && rc != 130)); then
  say "serve run ended with status $rc"
fi
exit "$rc"
