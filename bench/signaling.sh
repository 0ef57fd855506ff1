#!/usr/bin/env bash
# Signaling benchmarks: the server pinned to CPU 0, the load generator (`switchboard bench`) to CPU 1.
#
#   bench/signaling.sh [BINARY] [RUNS]      (defaults: target/release/switchboard, 3)
#
# Each scenario runs RUNS times against a fresh server (bench/server.toml: limits raised, since a load test floods by
# design) and prints one JSON line per run; BENCHMARKS.md reports the medians.
set -euo pipefail
BIN=${1:-target/release/switchboard}
RUNS=${2:-3}
URL=ws://127.0.0.1:3900/signaling
cd "$(dirname "$0")/.."

run() {
  local name=$1; shift
  for _ in $(seq "$RUNS"); do
    taskset -c 0 "$BIN" --log warn serve --config bench/server.toml >/dev/null 2>&1 &
    local pid=$!
    for _ in $(seq 100); do curl -sf http://127.0.0.1:3900/livez >/dev/null 2>&1 && break; sleep 0.05; done
    taskset -c 1 "$BIN" bench --server "$URL" --server-pid "$pid" "$@" 2>/dev/null | sed "s/^/$name /"
    kill -TERM "$pid"; wait "$pid" || true
  done
}

run relay relay --pairs 20 --duration 10 --window 64
run calls calls --pairs 50 --duration 10
run churn churn --conns 50 --duration 10
run idle  idle --conns 15000 --hold 2
