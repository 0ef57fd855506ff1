#!/usr/bin/env bash
# Two server builds, measured in one batch: for each scenario, runs alternate between them (A, B, A, B, ...), so
# machine noise hits both alike and their ratio is meaningful. The load generator is always B's `switchboard bench`.
#
#   bench/compare.sh A_BINARY B_BINARY [RUNS]      (default RUNS: 3)
#
# Prints one JSON line per run, prefixed with the build (A or B) and the scenario.
set -euo pipefail
A=$1
B=$2
RUNS=${3:-3}
URL=ws://127.0.0.1:3900/signaling
cd "$(dirname "$0")/.."

one() {
  local tag=$1 bin=$2 name=$3; shift 3
  taskset -c 0 "$bin" --log warn serve --config bench/server.toml >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:3900/livez >/dev/null 2>&1 && break; sleep 0.05; done
  taskset -c 1 "$B" bench --server "$URL" --server-pid "$pid" "$@" 2>/dev/null | sed "s/^/$tag $name /"
  kill -TERM "$pid"; wait "$pid" || true
}

run() {
  local name=$1; shift
  for _ in $(seq "$RUNS"); do
    one A "$A" "$name" "$@"
    one B "$B" "$name" "$@"
  done
}

run relay relay --pairs 20 --duration 10 --window 64
run calls calls --pairs 50 --duration 10
run churn churn --conns 50 --duration 10
run idle  idle --conns 15000 --hold 2
