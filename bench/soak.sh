#!/usr/bin/env bash
# Soak (issue 13): `switchboard bench soak` against a release server for DURATION seconds (default 600) with 15 000
# connections (14 480 idle rooms, 200 call pairs, 50 relay pairs, 20 churners), the server pinned to CPU 0 and the
# generator to CPU 1. Writes the JSON report to bench/results/soak.json and its plot to docs/soak.svg.
#   bash bench/soak.sh [target/release/switchboard] [DURATION]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/switchboard}
DURATION=${2:-600}
URL=ws://127.0.0.1:3900/signaling
taskset -c 0 "$BIN" --log warn serve --config bench/server.toml >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -fs http://127.0.0.1:3900/livez >/dev/null 2>&1 && break
  sleep 0.1
done
taskset -c 1 "$BIN" bench --server "$URL" --server-pid "$pid" soak --duration "$DURATION" --interval 10 \
  --idle 14480 --call-pairs 200 --relay-pairs 50 --churners 20 >bench/results/soak.json
python3 bench/plot_soak.py bench/results/soak.json docs/soak.svg
python3 - <<'PY'
import json
r = json.load(open("bench/results/soak.json"))
s = r.pop("samples")
print(json.dumps(r))
warm = [x for x in s if x["t_s"] >= 60]
for k in ("rss_kib", "fds", "threads", "sessions", "tasks"):
    v = [x[k] for x in warm if x[k] is not None]
    print(f"{k}: after 60 s min {min(v)} max {max(v)}")
PY
