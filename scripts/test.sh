#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine with only the Rust toolchain and Node.js:
# installs what the tests need (Debian packages, the browser tests' npm packages), then runs every test.
# Extra arguments go to `cargo nextest run` (e.g. `scripts/test.sh -p switchboard-turn`). .ci/run runs this same script.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use:
# - coturn: turnutils_uclient / turnutils_stunclient, real foreign clients of our TURN server.
# - ffmpeg: generates the H.264 clips the `switchboard peer` and ZLMediaKit tests stream (no media in the repo).
# - chromium (+ a font for readable screenshots): the browser tests drive Debian's /usr/bin/chromium.
# - iproute2: `ip link` inside the private network namespaces of the browser and ZLMediaKit tests.
# - libsrtp2-1, libssl3: runtime libraries of ZLMediaKit's MediaServer (../shared/zlm or SWITCHBOARD_ZLM_BIN).
# - redis-server: the cluster backbone's tests start their own (free port, no persistence); nothing runs it here.
APT_PACKAGES=(coturn ffmpeg chromium fonts-liberation iproute2 libsrtp2-1 libssl3 redis-server)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "+ installing ${missing[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
command -v turnutils_uclient >/dev/null || { echo "turnutils_uclient missing after install" >&2; exit 1; }

# Node.js >= 20 and the browser tests' packages (playwright-core, typescript), exactly as locked.
command -v node >/dev/null || { echo "node not found: the browser tests need Node.js (>= 20) and npm" >&2; exit 1; }
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || { echo "Node.js $(node --version) is too old: the browser tests need >= 20" >&2; exit 1; }
(cd web/tests && npm ci --no-audit --no-fund)

command -v cargo >/dev/null || { echo "cargo not found: the tests need the Rust toolchain" >&2; exit 1; }
cargo --version
# cargo-nextest runs every test in its own process under the hard per-test deadlines of .config/nextest.toml, so a
# hung test is killed and named instead of stalling the run. It comes with this project's machines; elsewhere it is
# installed from crates.io.
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "+ cargo install cargo-nextest --locked" >&2
  cargo install cargo-nextest --locked
fi
cargo nextest --version
echo "+ cargo nextest run --workspace --locked $*" >&2
cargo nextest run --workspace --locked "$@"
# nextest does not run doc tests; the workspace's docs hold no Rust examples today, this keeps any future one honest.
echo "+ cargo test --workspace --locked --doc" >&2
cargo test --workspace --locked --doc
# Every fuzz target for 30 s from its checked-in seeds (docs/fuzzing.md); a run narrowed by arguments skips it.
if [ $# -eq 0 ]; then
  echo "+ scripts/fuzz.sh 30" >&2
  exec bash scripts/fuzz.sh 30
fi
