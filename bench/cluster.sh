#!/usr/bin/env bash
# Cluster benchmarks (issue 12): two `switchboard serve --cluster` nodes plus a redis-server, against one node in the
# same batch. The nodes share CPU 0, Redis and the load generator CPU 1.
#
#   bench/cluster.sh [BINARY] [RUNS]      (defaults: target/release/switchboard, 3)
#
# Prints one JSON line per run, prefixed by the scenario; for the cluster runs also the Redis commands per relayed
# message (or per call flow), from INFO commandstats before and after.
set -euo pipefail
BIN=${1:-target/release/switchboard}
RUNS=${2:-3}
RPORT=6391
cd "$(dirname "$0")/.."
DIR=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$DIR"' EXIT

redis_calls() { redis-cli -p "$RPORT" info commandstats | awk -F'[=,:]' '/^cmdstat_/ {n += $3} END {print n}'; }
# The nodes are started in command substitutions, so they are not this shell's children: wait by polling.
stop() { kill -TERM "$@" 2>/dev/null || true; for p in "$@"; do while kill -0 "$p" 2>/dev/null; do sleep 0.05; done; done; }
wait_ready() { for _ in $(seq 200); do curl -sf "http://$1/readyz" >/dev/null 2>&1 && return; sleep 0.05; done; echo "not ready: $1" >&2; exit 1; }

node() { # ADDR [cluster args...]
  local addr=$1; shift
  taskset -c 0 "$BIN" --log warn serve --config bench/server.toml --listen "$addr" "$@" >/dev/null 2>&1 &
  echo $!
}

bench() { # NAME BENCH-ARGS...
  local name=$1; shift
  taskset -c 1 "$BIN" bench "$@" 2>/dev/null | sed "s/^/$name /"
}

for _ in $(seq "${RUNS}"); do
  [ "$RUNS" = 0 ] && break
  # One node.
  pid=$(node 127.0.0.1:3910); wait_ready 127.0.0.1:3910
  bench single-relay --server ws://127.0.0.1:3910/signaling --server-pid "$pid" relay --pairs 20 --duration 10 --window 64
  bench single-calls --server ws://127.0.0.1:3910/signaling --server-pid "$pid" calls --pairs 50 --duration 10
  bench single-relay-light --server ws://127.0.0.1:3910/signaling --server-pid "$pid" relay --pairs 20 --duration 10 --window 4
  bench single-calls-light --server ws://127.0.0.1:3910/signaling --server-pid "$pid" calls --pairs 5 --duration 10
  stop "$pid"

  # Two nodes and Redis, every pair split across them.
  taskset -c 1 redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$DIR" >/dev/null &
  rpid=$!
  for _ in $(seq 100); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
  c=(--cluster "redis://127.0.0.1:$RPORT")
  p1=$(node 127.0.0.1:3911 "${c[@]}" --cluster-node-id b1); p2=$(node 127.0.0.1:3912 "${c[@]}" --cluster-node-id b2)
  wait_ready 127.0.0.1:3911; wait_ready 127.0.0.1:3912
  sleep 3 # both nodes see each other (one heartbeat)
  servers=(--server ws://127.0.0.1:3911/signaling --server ws://127.0.0.1:3912/signaling --server-pid "$p1" --server-pid "$p2")
  before=$(redis_calls)
  out=$(bench cluster-relay "${servers[@]}" relay --pairs 20 --duration 10 --window 64)
  after=$(redis_calls)
  relayed=$(sed -n 's/.*"relayed":\([0-9]*\).*/\1/p' <<<"$out")
  echo "$out redis_cmds_per_msg=$(awk -v a="$before" -v b="$after" -v n="$relayed" 'BEGIN {printf "%.4f", (b - a) / n}')"
  before=$(redis_calls)
  out=$(bench cluster-calls "${servers[@]}" calls --pairs 50 --duration 10)
  after=$(redis_calls)
  flows=$(sed -n 's/.*"flows":\([0-9]*\).*/\1/p' <<<"$out")
  echo "$out redis_cmds_per_flow=$(awk -v a="$before" -v b="$after" -v n="$flows" 'BEGIN {printf "%.2f", (b - a) / n}')"
  bench cluster-relay-light "${servers[@]}" relay --pairs 20 --duration 10 --window 4
  bench cluster-calls-light "${servers[@]}" calls --pairs 5 --duration 10
  stop "$p1" "$p2"
  kill "$rpid"; wait "$rpid" || true
done

# Idle: three nodes × 15 000 rooms in one cluster, and Redis memory per room (set IDLE=0 to skip).
if [ "${IDLE:-1}" = 1 ]; then
  taskset -c 1 redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$DIR" >/dev/null &
  rpid=$!
  for _ in $(seq 100); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
  c=(--cluster "redis://127.0.0.1:$RPORT")
  pids=(); benches=()
  for i in 1 2 3; do pids+=("$(node 127.0.0.1:392$i "${c[@]}" --cluster-node-id i$i)"); done
  for i in 1 2 3; do wait_ready 127.0.0.1:392$i; done
  mem0=$(redis-cli -p "$RPORT" info memory | sed -n 's/^used_memory:\([0-9]*\).*/\1/p')
  for i in 1 2 3; do
    bench "cluster-idle-node$i" --server ws://127.0.0.1:392$i/signaling --server-pid "${pids[$((i - 1))]}" \
      idle --conns 15000 --hold 8 --concurrency 128 > "$DIR/idle$i" &
    benches+=($!)
  done
  sleep 6 # all three are registered and holding by now (each reports its own register time)
  rooms=$(redis-cli -p "$RPORT" hlen switchboard:rooms)
  mem1=$(redis-cli -p "$RPORT" info memory | sed -n 's/^used_memory:\([0-9]*\).*/\1/p')
  wait "${benches[@]}"
  cat "$DIR"/idle*
  echo "cluster-idle rooms_in_redis=$rooms redis_bytes_per_room=$(( (mem1 - mem0) / (rooms > 0 ? rooms : 1) ))"
  stop "${pids[@]}"
  kill "$rpid" 2>/dev/null || true
fi
