//! The browser SDK and demo page (`web/`), tested from `cargo test`.
//!
//! - `sdk_unit_tests`: `node --test web/tests/sdk.test.mjs` (the protocol layer of `web/switchboard.js` against a fake socket).
//! - `sdk_and_demo_type_check`: `tsc -p web/tests` checks the JSDoc types of the SDK and the demo.
//! - `demo_page_in_chromium`: `web/tests/run.mjs` starts this crate's `switchboard` binary and drives Debian's Chromium
//!   through the demo page the binary serves, asserting that decoded video frames keep rising. It runs inside a private
//!   network namespace (`unshare -n`, loopback up), so WebRTC gathers and probes loopback only.
//! - `demo_page_and_sdk_with_zlmediakit_in_chromium`: the same suite's ZLMediaKit cases (`run.mjs --zlm`) against a real
//!   MediaServer (keeper, puller, signaling server), in a namespace that also holds a veth pair, since MediaServer never
//!   uses `lo` for ICE. Skipped with a message without a MediaServer, a failure under CI (see `zlm/mod.rs`).
//!
//! Invariants: every child runs in its own process group and is killed (the whole group) at its deadline; a failure
//! shows the child's full output; missing prerequisites (node, Chromium, `unshare`) fail with a message saying what
//! to install, never skip. `node_modules` is installed with `npm ci` when missing. The two Chromium suites take turns
//! (one lock): on two cores, two browsers plus their media servers at once would only make both slower.

mod support;
#[allow(dead_code)] // the browser tests use only the MediaServer lookup of the ZLMediaKit harness
mod zlm;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");
const CHROMIUM: &str = "/usr/bin/chromium";
/// The suite keeps itself under 170 s; this is the outer bound, Chromium start-up included.
const BROWSER_DEADLINE: Duration = Duration::from_secs(300);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

fn tests_dir() -> PathBuf {
    repo().join("web/tests")
}

/// Runs `cmd` in its own process group, killing the group at `deadline`; returns the status (None on timeout) and
/// the combined output.
fn run(mut cmd: Command, deadline: Duration) -> (Option<ExitStatus>, String) {
    let what = format!("{cmd:?}");
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break Some(status);
        }
        if start.elapsed() > deadline {
            let _ = Command::new("kill").arg("-KILL").arg(format!("-{}", child.id())).status();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = format!("{}{}", out.join().unwrap_or_default(), err.join().unwrap_or_default());
    (status, output)
}

fn require_node() {
    let ok = Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(ok, "node is not installed: the browser SDK tests need Node.js (>= 20) and npm on PATH");
}

/// `npm ci` in web/tests once, when node_modules is missing or incomplete.
fn node_modules() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        require_node();
        let dir = tests_dir();
        let complete = ["playwright-core", "typescript"]
            .iter()
            .all(|p| dir.join("node_modules").join(p).join("package.json").exists());
        if complete {
            return;
        }
        let mut npm = Command::new("npm");
        npm.args(["ci", "--no-audit", "--no-fund"]).current_dir(&dir);
        let (status, output) = run(npm, Duration::from_secs(300));
        assert!(
            status.is_some_and(|s| s.success()),
            "`npm ci` in {} failed ({status:?}); scripts/test.sh runs it first:\n{output}",
            dir.display()
        );
    });
}

fn check(what: &str, status: Option<ExitStatus>, output: &str, start: Instant) {
    match status {
        Some(s) if s.success() => println!("{what} passed in {:.1} s:\n{output}", start.elapsed().as_secs_f64()),
        Some(s) => panic!("{what} failed ({s}):\n{output}"),
        None => panic!("{what} did not finish in time and was killed:\n{output}"),
    }
}

#[test]
fn sdk_unit_tests() {
    node_modules();
    let start = Instant::now();
    let mut node = Command::new("node");
    // Files by name: a bare directory is run as a module by Node >= 22 and fails.
    node.args(["--test", "web/tests/sdk.test.mjs"]).current_dir(repo());
    let (status, output) = run(node, Duration::from_secs(60));
    check("node --test web/tests/sdk.test.mjs", status, &output, start);
    let passed = output.lines().find_map(|l| l.strip_prefix("# pass ")).and_then(|n| n.trim().parse::<u32>().ok());
    assert!(passed.is_some_and(|n| n > 0), "no SDK test ran:\n{output}");
}

#[test]
fn sdk_and_demo_type_check() {
    node_modules();
    let start = Instant::now();
    let mut tsc = Command::new("node");
    tsc.arg("node_modules/typescript/bin/tsc").args(["-p", "."]).current_dir(tests_dir());
    let (status, output) = run(tsc, Duration::from_secs(120));
    check("tsc -p web/tests (JSDoc types of switchboard.js and demo.js)", status, &output, start);
}

/// One Chromium suite at a time.
static CHROMIUM_TURN: Mutex<()> = Mutex::new(());

/// The `unshare` flags that make a network namespace here: root (as CI) directly, anyone else via a user namespace.
fn unshare_flags() -> &'static str {
    if Command::new("unshare").args(["-n", "true"]).status().is_ok_and(|s| s.success()) {
        "-n"
    } else if Command::new("unshare").args(["-rn", "true"]).status().is_ok_and(|s| s.success()) {
        "-rn"
    } else {
        panic!("cannot create a network namespace with `unshare -n` (needs root) or `unshare -rn` (user namespaces)");
    }
}

/// Runs `web/tests/run.mjs` with `args` inside a fresh network namespace prepared by `net_setup` (shell commands).
fn browser_suite(what: &str, net_setup: &str, args: &str) {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: the browser tests need Debian's Chromium (apt-get install -y chromium; scripts/test.sh installs it)"
    );
    node_modules();
    let _turn = CHROMIUM_TURN.lock().unwrap_or_else(|e| e.into_inner());
    let artifacts = repo().join("target/browser-artifacts");
    let script = format!(
        "{net_setup} && exec node web/tests/run.mjs --switchboard '{BIN}' --chromium '{CHROMIUM}' --artifacts '{}' {args}",
        artifacts.display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args([unshare_flags(), "sh", "-c", &script]).current_dir(repo());
    let start = Instant::now();
    let (status, output) = run(cmd, BROWSER_DEADLINE);
    check(what, status, &output, start);
}

#[test]
fn demo_page_in_chromium() {
    browser_suite("the browser suite (web/tests/run.mjs in Chromium)", "ip link set lo up", "");
}

#[test]
fn demo_page_and_sdk_with_zlmediakit_in_chromium() {
    let Some(media_server) = zlm::prerequisites("demo_page_and_sdk_with_zlmediakit_in_chromium") else { return };
    let host = zlm::HOST;
    let veth = format!(
        "ip link set lo up && ip link add t0 type veth peer name t1 && ip addr add {host}/24 dev t0 && \
         ip link set t0 up && ip link set t1 up"
    );
    let args = format!("--zlm '{}' --host {host}", media_server.display());
    browser_suite("the browser suite's ZLMediaKit cases (web/tests/run.mjs --zlm in Chromium)", &veth, &args);
}
