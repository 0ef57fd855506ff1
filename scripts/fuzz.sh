#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ (or the ones named) for a bounded time each, from the checked-in seeds plus the
# local working corpus (fuzz/corpus, not committed). Fails, naming the crashing input, as soon as one target fails.
#   scripts/fuzz.sh [SECONDS per target, default 30] [target...]
# scripts/test.sh runs it with 30 s per target. See docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-30}
shift || true

# cargo-fuzz drives libFuzzer; it needs nightly flags (-Zsanitizer), which RUSTC_BOOTSTRAP=1 allows on this stable
# toolchain.
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "+ cargo install cargo-fuzz --locked" >&2
  cargo install cargo-fuzz --locked
fi
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || mapfile -t TARGETS < <(cd fuzz && cargo fuzz list)
echo "+ cargo fuzz build (${TARGETS[*]})" >&2
(cd fuzz && cargo fuzz build)
# Files in a directory, 0 when it does not exist.
count() { if [ -d "$1" ]; then find "$1" -type f | wc -l; else echo 0; fi; }
for t in "${TARGETS[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  # libFuzzer reads every directory named and writes new inputs to the first: the working corpus, then the
  # checked-in seeds where the target has any.
  dirs=("corpus/$t")
  if [ "$(count "fuzz/seeds/$t")" -gt 0 ]; then dirs+=("seeds/$t"); fi
  echo "+ fuzz $t for ${SECONDS_EACH}s" >&2
  log=$(mktemp)
  before=$(count "fuzz/artifacts/$t")
  if ! (cd fuzz && cargo fuzz run "$t" "${dirs[@]}" -- \
      -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1) >"$log" 2>&1; then
    tail -60 "$log" >&2
    if [ "$(count "fuzz/artifacts/$t")" -gt "$before" ]; then
      echo "fuzz target $t FAILED; the input is under fuzz/artifacts/$t/ (replay: cd fuzz && cargo fuzz run $t <file>)" >&2
    else
      echo "fuzz target $t: libFuzzer failed without a crash input; its log is above" >&2
    fi
    exit 1
  fi
  grep -E "^Done|stat::number_of_executed_units|cov:" "$log" | tail -2 >&2 || true
  rm -f "$log"
done
