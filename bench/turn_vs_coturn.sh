#!/usr/bin/env bash
# Relay throughput of switchboard's built-in TURN server against coturn, on loopback, in one run.
#
#   bench/turn_vs_coturn.sh [SWITCHBOARD_BINARY]      (default: target/release/switchboard)
#
# Both servers run pinned to CPU $SERVER_CPU (default 0), the load generator (coturn's turnutils_uclient) to CPU
# $CLIENT_CPU (default 1). Both use TURN REST API credentials from one shared secret: username "<expiry>:<name>",
# password base64(HMAC-SHA1(secret, username)), computed here (switchboard gets the secret with --turn-secret,
# coturn with --static-auth-secret). The same uclient load runs against each server, one after the other.
#
# Needs: coturn (turnserver, turnutils_uclient, turnutils_stunclient), taskset, python3.
#
# Knobs (environment):
#   UCLIENT_FLAGS  load flags (default "-y -c -m 10 -n 10000 -l 100 -z 0": 5 client pairs relaying to each other
#                  through the server, 10 000 packets of 100 bytes per client, sent as fast as uclient can (-z 0))
#   PARALLEL       uclient processes run at once against a server (default 1)
#   RUN_TIMEOUT    seconds one load run may take before it is killed (default 30)
#
# Reading the table:
#   sent/recv      packets uclient sent and got back through the relay (all processes)
#   loss%          (sent - recv) / sent
#   wall s         wall time of the load run, including uclient's connect phase and its random 1-6 s start delays
#   active s       seconds from the first to the last packet, from uclient's once-a-second progress lines
#   pkt/s          recv / active s;  peak pkt/s: the best one-second interval
#   cpu s          CPU time (user + system) the server process used during the run
#   pkt/cpu-s      recv / cpu s: relay efficiency, meaningful even when uclient (not the server) limits the rate
# uclient paces itself with a timer, so pkt/s often shows the load generator's ceiling; compare pkt/cpu-s too.
# A run with any loss lasts 10 s longer: uclient waits that long for missing packets.

# shellcheck disable=SC2317 # functions called indirectly (trap, wait_until)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SWITCHBOARD=${1:-$ROOT/target/release/switchboard}
UCLIENT_FLAGS=${UCLIENT_FLAGS:--y -c -m 10 -n 10000 -l 100 -z 0}
PARALLEL=${PARALLEL:-1}
RUN_TIMEOUT=${RUN_TIMEOUT:-30}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
SECRET=bench-secret-$RANDOM$RANDOM
REALM=switchboard
COTURN_RELAY_PORTS=(40000 44999)
SWITCHBOARD_RELAY_PORTS=(45000 49999)

die() { echo "error: $*" >&2; exit 1; }

for tool in turnserver turnutils_uclient turnutils_stunclient taskset python3 timeout; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install coturn util-linux python3 coreutils)"
done
[[ -x $SWITCHBOARD ]] || die "no switchboard binary at $SWITCHBOARD (cargo build --release, or pass its path)"
if (($(nproc --all) < 2)); then
    die "needs 2 CPUs to keep the servers (CPU $SERVER_CPU) and the load (CPU $CLIENT_CPU) apart"
fi
# A developer's SWITCHBOARD_* settings must not change the server under test.
while read -r var; do unset "$var"; done < <(compgen -e | grep '^SWITCHBOARD_' || true)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/turn-bench.XXXXXX")
PIDS=()
KEEP_WORK=0

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if ((KEEP_WORK)); then
        echo "logs kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A loopback port free for both UDP and TCP.
free_port() {
    python3 - <<'EOF'
import socket
for _ in range(100):
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.bind(("127.0.0.1", 0))
    port = t.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1", port))
    except OSError:
        continue
    print(port)
    break
EOF
}

# REST API credential: prints "username password".
credential() {
    python3 - "$SECRET" "$1" <<'EOF'
import base64, hashlib, hmac, sys, time
secret, name = sys.argv[1], sys.argv[2]
username = "%d:%s" % (int(time.time()) + 3600, name)
password = base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()
print(username, password)
EOF
}

# CPU time of a process (all threads) in seconds.
cpu_seconds() {
    local stat
    stat=$(<"/proc/$1/stat")
    stat=${stat##*) }   # past "pid (comm) "
    # utime and stime are fields 14 and 15 of the whole line: 12 and 13 after "pid (comm) ".
    awk -v tck="$(getconf CLK_TCK)" '{ printf "%.2f", ($12 + $13) / tck }' <<<"$stat"
}

# Waits until $2 (a command) succeeds, polling, for at most $1 seconds.
wait_until() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}

alive() { kill -0 "$1" 2>/dev/null; }

# One STUN Binding through the server; stunclient waits forever for an answer, hence the timeout.
stun_check() {
    local out
    out=$(timeout 5 turnutils_stunclient -p "$1" 127.0.0.1 2>&1) || return 1
    grep -q 'UDP reflexive addr: 127.0.0.1:' <<<"$out"
}

# ------------------------------------------------------------------------------------------------ coturn
COTURN_PORT=$(free_port)
taskset -c "$SERVER_CPU" turnserver -n \
    --listening-ip=127.0.0.1 --relay-ip=127.0.0.1 --listening-port="$COTURN_PORT" \
    --min-port="${COTURN_RELAY_PORTS[0]}" --max-port="${COTURN_RELAY_PORTS[1]}" \
    --use-auth-secret --static-auth-secret="$SECRET" --realm="$REALM" \
    --allow-loopback-peers --no-cli --no-tls --no-dtls \
    --pidfile="$WORK/turnserver.pid" --userdb="$WORK/turndb" --log-file=stdout \
    >"$WORK/coturn.log" 2>&1 &
COTURN_PID=$!
PIDS+=("$COTURN_PID")
coturn_ready() { alive "$COTURN_PID" && (exec 3<>"/dev/tcp/127.0.0.1/$COTURN_PORT") 2>/dev/null && stun_check "$COTURN_PORT"; }
if ! wait_until 15 coturn_ready; then
    KEEP_WORK=1
    tail -n 30 "$WORK/coturn.log" >&2
    die "coturn did not come up on 127.0.0.1:$COTURN_PORT"
fi

# ------------------------------------------------------------------------------------------------ switchboard
cat >"$WORK/switchboard.toml" <<EOF
[turn]
# uclient puts every allocation of a run (probes included) under one username.
user-quota = 100000
total-quota = 100000
EOF
SWITCHBOARD_LOG=info taskset -c "$SERVER_CPU" "$SWITCHBOARD" serve --config "$WORK/switchboard.toml" \
    --listen 127.0.0.1:0 --turn-listen 127.0.0.1:0 --external-ip 127.0.0.1 --turn-allow-peer 127.0.0.0/8 \
    --turn-secret "$SECRET" --turn-relay-ports "${SWITCHBOARD_RELAY_PORTS[0]}-${SWITCHBOARD_RELAY_PORTS[1]}" \
    >/dev/null 2>"$WORK/switchboard.log" &
SWITCHBOARD_PID=$!
PIDS+=("$SWITCHBOARD_PID")
switchboard_logged() { alive "$SWITCHBOARD_PID" && grep -q 'turn listening addr=' "$WORK/switchboard.log"; }
if ! wait_until 15 switchboard_logged; then
    KEEP_WORK=1
    tail -n 30 "$WORK/switchboard.log" >&2
    die "switchboard did not log 'turn listening addr=...'"
fi
SWITCHBOARD_PORT=$(grep -m1 -o 'turn listening addr=[^ ]*' "$WORK/switchboard.log" | sed 's/.*://; s/"//g')
if ! wait_until 10 stun_check "$SWITCHBOARD_PORT"; then
    KEEP_WORK=1
    die "switchboard does not answer STUN on 127.0.0.1:$SWITCHBOARD_PORT"
fi

echo "coturn      $(turnserver --version 2>/dev/null | head -n1 || true) on 127.0.0.1:$COTURN_PORT (pid $COTURN_PID)"
echo "switchboard $SWITCHBOARD on 127.0.0.1:$SWITCHBOARD_PORT (pid $SWITCHBOARD_PID)"
echo "servers on CPU $SERVER_CPU, load on CPU $CLIENT_CPU: $PARALLEL x turnutils_uclient $UCLIENT_FLAGS"
echo

# ------------------------------------------------------------------------------------------------ load
# Summarises the uclient outputs given as arguments into:
#   sent recv active_s peak_pps ok
# ok is 1 when every output has its final summary.
summarise() {
    awk '
        FNR == 1 { file++; t_zero[file] = ""; done[file] = 0 }
        /msz=.*tot_send_msgs=/ {
            t = $1 + 0
            match($0, /tot_send_msgs=[0-9]+/); s = substr($0, RSTART + 14, RLENGTH - 14) + 0
            match($0, /tot_recv_msgs=[0-9]+/); r = substr($0, RSTART + 14, RLENGTH - 14) + 0
            n[file]++; T[file, n[file]] = t; R[file, n[file]] = r
            if (s == 0) t_zero[file] = t
            next
        }
        /tot_send_msgs=.*tot_recv_msgs=/ {
            match($0, /tot_send_msgs=[0-9]+/); fs[file] = substr($0, RSTART + 14, RLENGTH - 14) + 0
            match($0, /tot_recv_msgs=[0-9]+/); fr[file] = substr($0, RSTART + 14, RLENGTH - 14) + 0
            t_final[file] = $1 + 0
            done[file] = 1
        }
        END {
            ok = 1; active = 0; peak = 0
            for (f = 1; f <= file; f++) {
                if (!done[f]) { ok = 0; continue }
                sent += fs[f]; recv += fr[f]
                # Start: the last progress line before anything was sent. End: the first with everything that
                # would ever arrive, else the final summary.
                start = (t_zero[f] != "") ? t_zero[f] : T[f, 1] - 1
                end = t_final[f]
                for (i = 1; i <= n[f]; i++) if (R[f, i] >= fr[f]) { end = T[f, i]; break }
                a = end - start; if (a < 1) a = 1
                if (a > active) active = a
                for (i = 2; i <= n[f]; i++) {
                    dt = T[f, i] - T[f, i - 1]
                    if (dt > 0 && (R[f, i] - R[f, i - 1]) / dt > best[f]) best[f] = (R[f, i] - R[f, i - 1]) / dt
                }
                peak += best[f]
            }
            printf "%d %d %d %d %d\n", sent, recv, active, peak, ok
        }' "$@"
}

declare -A RESULT
FAILED=0

# run_load NAME PORT PID
run_load() {
    local name=$1 port=$2 pid=$3 i rc user pass start_ns end_ns cpu0 cpu1 pids=() failed=0
    read -r user pass < <(credential "bench-$name")
    cpu0=$(cpu_seconds "$pid")
    start_ns=$(date +%s%N)
    for ((i = 1; i <= PARALLEL; i++)); do
        # shellcheck disable=SC2086 # UCLIENT_FLAGS is a list of flags
        timeout --kill-after=5 "$RUN_TIMEOUT" taskset -c "$CLIENT_CPU" turnutils_uclient $UCLIENT_FLAGS \
            -u "$user" -w "$pass" -p "$port" 127.0.0.1 >"$WORK/$name.$i.out" 2>&1 &
        pids+=("$!")
        PIDS+=("$!")
    done
    for i in "${!pids[@]}"; do
        rc=0
        wait "${pids[$i]}" || rc=$?
        if ((rc)); then
            failed=1
            echo "$name: uclient $((i + 1)) failed (exit status $rc; 124/137: killed after ${RUN_TIMEOUT}s); last lines:" >&2
            tail -n 5 "$WORK/$name.$((i + 1)).out" >&2
        fi
    done
    end_ns=$(date +%s%N)
    alive "$pid" || { echo "$name: the server died during the run" >&2; failed=1; }
    cpu1=$(cpu_seconds "$pid" 2>/dev/null || echo "$cpu0")

    local sent recv active peak ok
    read -r sent recv active peak ok < <(summarise "$WORK/$name".*.out)
    ((ok)) || failed=1
    if ((failed)); then
        FAILED=1
        KEEP_WORK=1
    fi
    RESULT[$name]=$(awk -v s="$sent" -v r="$recv" -v a="$active" -v p="$peak" -v c0="$cpu0" -v c1="$cpu1" \
        -v ns=$((end_ns - start_ns)) -v f="$failed" 'BEGIN {
            cpu = c1 - c0
            printf "%d %d %.3f %.1f %d %d %d %.2f %d %d\n", s, r, (s ? 100 * (s - r) / s : 0), ns / 1e9, a,
                (a ? r / a : 0), p, cpu, (cpu > 0 ? r / cpu : 0), f
        }')
}

run_load coturn "$COTURN_PORT" "$COTURN_PID"
run_load switchboard "$SWITCHBOARD_PORT" "$SWITCHBOARD_PID"

# ------------------------------------------------------------------------------------------------ report
printf '%-12s %9s %9s %7s %7s %8s %9s %10s %7s %10s\n' \
    server sent recv 'loss%' 'wall s' 'active s' 'pkt/s' 'peak pkt/s' 'cpu s' 'pkt/cpu-s'
for name in coturn switchboard; do
    read -r sent recv loss wall active pps peak cpu eff failed <<<"${RESULT[$name]}"
    printf '%-12s %9d %9d %7.3f %7.1f %8d %9d %10d %7.2f %10d%s\n' \
        "$name" "$sent" "$recv" "$loss" "$wall" "$active" "$pps" "$peak" "$cpu" "$eff" \
        "$(if ((failed)); then echo '  FAILED'; fi)"
done
read -r _ _ _ _ _ c_pps c_peak _ c_eff _ <<<"${RESULT[coturn]}"
read -r _ _ _ _ _ s_pps s_peak _ s_eff _ <<<"${RESULT[switchboard]}"
awk -v a="$s_pps" -v b="$c_pps" -v c="$s_peak" -v d="$c_peak" -v e="$s_eff" -v f="$c_eff" 'BEGIN {
    printf "%-12s %9s %9s %7s %7s %8s %9s %10s %7s %10s\n", "sb/coturn", "", "", "", "", "",
        (b > 0 ? sprintf("%.2fx", a / b) : "-"), (d > 0 ? sprintf("%.2fx", c / d) : "-"), "",
        (f > 0 ? sprintf("%.2fx", e / f) : "-")
}'

exit "$FAILED"
