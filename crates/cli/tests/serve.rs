//! The real `switchboard` binary: start on port 0, read the bound address from its log, serve, stop on SIGTERM;
//! where each setting comes from (file, env, flag); the settings of README's table taking effect; its logs.

mod support;

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use support::serve::{addr_in, spawn_exact, Serve, Ws, WAIT};
use support::{output, TempDir, BIN};

fn register(room: &str) -> Value {
    json!({"class":"request","method":"register","transaction_id":"t","room_id":room})
}

fn call(room: &str, guest: &str) -> Value {
    json!({"class":"request","method":"call","transaction_id":"c","guest_id":guest,"room_id":room,"type":"play",
           "vhost":"__defaultVhost__","app":"live","stream":"test","sdp":"v=0\r\n"})
}

fn urls(accept: &Value) -> Vec<String> {
    accept["ice_servers"].as_array().unwrap().iter().map(|s| s["url"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn serve_on_port_0_register_then_sigterm_closes_1001_and_exits_0() {
    let server = Serve::start(&["--turn-port", "3478", "--external-ip", "192.0.2.10,192.0.2.11"], &[]);
    let mut ws = Ws::connect(&server.url()).await;
    let accept = ws.request(&register("r")).await;
    assert_eq!(accept["class"], "accept");
    assert_eq!(urls(&accept), ["turn:192.0.2.10:3478?transport=udp", "turn:192.0.2.11:3478?transport=udp"]);

    server.sigterm();
    let (close, seen) = ws.until_closed(WAIT).await;
    assert!(seen.is_empty(), "no message during shutdown: {seen:?}");
    assert_eq!(close, Some(1001));
    let mut proc = server.proc;
    let status = proc.wait_exit(WAIT);
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn env_beats_the_file_and_flags_beat_env() {
    let dir = TempDir::new("config");
    // The file's listen port is held by this test: a server that ignored the env var would fail to bind.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let file = dir.0.join("c.toml");
    let toml = format!("[signaling]\nlisten = \"{}\"\n[turn]\nport = 4000\n", held.local_addr().unwrap());
    std::fs::write(&file, toml).unwrap();
    let file = file.to_str().unwrap();

    // The file alone: its TURN port is advertised.
    let only_file = Serve::start(&[], &[("SWITCHBOARD_CONFIG", file), ("SWITCHBOARD_LISTEN", "127.0.0.1:0")]);
    assert_ne!(only_file.addr, held.local_addr().unwrap(), "the env var's listen address, not the file's");
    let mut ws = Ws::connect(&only_file.url()).await;
    assert_eq!(urls(&ws.request(&register("a")).await), ["turn:127.0.0.1:4000?transport=udp"]);

    // Env over the file (TURN port), a flag over env (external IP).
    let layered = Serve::start(
        &["--external-ip", "192.0.2.2"],
        &[
            ("SWITCHBOARD_CONFIG", file),
            ("SWITCHBOARD_LISTEN", "127.0.0.1:0"),
            ("SWITCHBOARD_TURN_PORT", "4500"),
            ("SWITCHBOARD_EXTERNAL_IP", "192.0.2.1"),
        ],
    );
    let mut ws = Ws::connect(&layered.url()).await;
    assert_eq!(urls(&ws.request(&register("a")).await), ["turn:192.0.2.2:4500?transport=udp"]);

    // A flag over env and file (TURN port).
    let flagged = Serve::start(
        &["--turn-port", "5000"],
        &[("SWITCHBOARD_CONFIG", file), ("SWITCHBOARD_LISTEN", "127.0.0.1:0"), ("SWITCHBOARD_TURN_PORT", "4500")],
    );
    let mut ws = Ws::connect(&flagged.url()).await;
    assert_eq!(urls(&ws.request(&register("a")).await), ["turn:127.0.0.1:5000?transport=udp"]);

    // And the held port really is what the file asks for: without the env var the server cannot start.
    let mut failing = spawn_exact(&["--turn-listen", "127.0.0.1:0"], &[("SWITCHBOARD_CONFIG", file)]);
    assert!(!failing.wait_exit(WAIT).success(), "bound a port that is in use?\n{}", failing.log());
}

#[test]
fn invalid_config_exits_at_start_naming_the_field() {
    let dir = TempDir::new("bad-config");
    let cases = [
        ("[signaling]\nlisten = \"nowhere\"\n", "signaling.listen"),
        ("[signaling]\nping-after = \"40s\"\n", "signaling.idle-timeout"),
        ("[turn]\ncredentials = \"magic\"\n", "turn.credentials"),
    ];
    for (text, field) in cases {
        let file = dir.0.join("bad.toml");
        std::fs::write(&file, text).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config", file.to_str().unwrap()]);
        let (status, _, stderr) = output(cmd, WAIT);
        assert!(!status.success(), "{text}");
        assert!(stderr.contains(field), "{field} not named in: {stderr}");
    }
}

/// `switchboard token` with `--secret`, `--sub`, `--rooms`, `--call`, `--ttl`; prints the JWT.
fn mint(args: &[&str]) -> String {
    let mut cmd = Command::new(BIN);
    cmd.arg("token").args(args);
    let (status, stdout, stderr) = output(cmd, WAIT);
    assert!(status.success(), "switchboard token {args:?}: {stderr}");
    let token = stdout.trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    token
}

#[tokio::test]
async fn minted_tokens_grant_exactly_their_rooms_and_calls() {
    let server = Serve::start(&["--auth-secret", "tok-secret"], &[]);
    let keeper = mint(&["--secret", "tok-secret", "--sub", "cam", "--rooms", "cam_*", "--ttl", "5m"]);
    let viewer =
        mint(&["--secret", "tok-secret", "--sub", "v", "--rooms", "viewer_*", "--call", "cam_1", "--ttl", "5m"]);
    let forged = mint(&["--secret", "other-secret", "--sub", "cam", "--rooms", "cam_*", "--ttl", "5m"]);

    let mut cam = Ws::connect(&format!("{}?token={keeper}", server.url())).await;
    assert_eq!(cam.request(&register("elsewhere")).await["code"], "unauthorized");
    assert_eq!(cam.request(&register("cam_1")).await["class"], "accept");
    let mut cam2 = Ws::connect(&format!("{}?token={keeper}", server.url())).await;
    assert_eq!(cam2.request(&register("cam_2")).await["class"], "accept");

    let mut v = Ws::connect(&format!("{}?token={viewer}", server.url())).await;
    assert_eq!(v.request(&register("viewer_1")).await["class"], "accept");
    // --call cam_1: that room may be called (the keeper gets the call), cam_2 may not.
    v.send(&call("cam_1", "g1")).await;
    assert_eq!(cam.recv().await["guest_id"], "g1");
    let refused = v.request(&call("cam_2", "g2")).await;
    assert_eq!((refused["class"].as_str(), refused["code"].as_str()), (Some("reject"), Some("unauthorized")));
    // The keeper's token has no call claim: it may not call at all.
    assert_eq!(cam2.request(&call("cam_1", "g3")).await["code"], "unauthorized");

    // A token signed with another secret grants nothing, and the reject says why.
    let mut f = Ws::connect(&format!("{}?token={forged}", server.url())).await;
    let refused = f.request(&register("cam_3")).await;
    assert_eq!(refused["code"], "unauthorized", "{refused}");
    assert!(refused["reason"].as_str().unwrap().contains("signature"), "{refused}");
}

#[tokio::test]
async fn the_log_level_changes_at_runtime_and_debug_lines_appear() {
    let mut server = Serve::start(&["--admin-secret", "adm"], &[]);
    let bearer = "Authorization: Bearer adm\r\n";
    let mut first = Ws::connect(&server.url()).await;
    assert_eq!(first.request(&register("before")).await["class"], "accept");
    let (_, body) = server.http("GET", "/api/log-level", bearer, "");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["filter"], "info");
    assert!(!server.proc.log().contains("session opened"), "a debug line at level info");

    let (status, body) = server.http("PUT", "/api/log-level", bearer, "debug");
    assert_eq!(status, 200, "{body}");
    let (_, body) = server.http("GET", "/api/log-level", bearer, "");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["filter"], "debug");
    let _second = Ws::connect(&server.url()).await;
    let line = server.proc.wait_line(WAIT, |l| l.contains("session opened"));
    assert!(line.contains("DEBUG"), "{line}");

    let (status, _) = server.http("PUT", "/api/log-level", bearer, "not[a(filter");
    assert_eq!(status, 400);
    let (status, _) = server.http("PUT", "/api/log-level", "", "trace");
    assert_eq!(status, 401, "the log level needs the admin secret");
}

#[tokio::test]
async fn log_format_json_writes_one_object_per_line() {
    let mut server = Serve::start(&["--log-format", "json"], &[]);
    let mut ws = Ws::connect(&server.url()).await;
    assert_eq!(ws.request(&register("j")).await["class"], "accept");
    server.sigterm();
    let status = server.proc.wait_exit(WAIT);
    assert!(status.success());
    let log = server.proc.log();
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 3, "{log}");
    for line in &lines {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"]["message"].is_string(), "{line}");
    }
    let listening = lines.iter().find(|l| l.contains("signaling listening")).unwrap();
    assert_eq!(addr_in(listening), server.addr);
}

#[tokio::test]
async fn call_timeout_and_max_message_size_flags_take_effect() {
    // Defaults are 30 s and 256 KiB: the flag is what makes these happen.
    let server = Serve::start(&["--call-timeout", "1s", "--max-message-size", "2000"], &[]);
    let mut callee = Ws::connect(&server.url()).await;
    assert_eq!(callee.request(&register("a")).await["class"], "accept");
    let mut caller = Ws::connect(&server.url()).await;
    assert_eq!(caller.request(&register("b")).await["class"], "accept");
    caller.send(&call("a", "g")).await;
    assert_eq!(callee.recv().await["method"], "call");
    let timeout = caller.recv().await;
    assert_eq!((timeout["class"].as_str(), timeout["code"].as_str()), (Some("reject"), Some("call_timeout")));
    assert_eq!(callee.recv().await["method"], "bye", "the callee hears the call ended");

    // 2000 bytes pass (and get their answer), 2001 close the session with 1009.
    let pad = |n: usize| {
        let base = json!({"class":"request","method":"probe","transaction_id":"p","pad":""}).to_string();
        json!({"class":"request","method":"probe","transaction_id":"p","pad":"x".repeat(n - base.len())}).to_string()
    };
    caller.send_text(pad(2000)).await;
    assert_eq!(caller.recv().await["code"], "unsupported");
    caller.send_text(pad(2001)).await;
    assert_eq!(caller.until_closed(WAIT).await.0, Some(1009));
}

#[tokio::test]
async fn anonymous_network_lets_tokenless_clients_in_only_from_it() {
    let open = Serve::start(&["--auth-secret", "s", "--anonymous-network", "127.0.0.0/8"], &[]);
    let mut ws = Ws::connect(&open.url()).await;
    assert_eq!(ws.request(&register("legacy")).await["class"], "accept");
    let closed = Serve::start(&["--auth-secret", "s", "--anonymous-network", "10.0.0.0/8"], &[]);
    let mut ws = Ws::connect(&closed.url()).await;
    assert_eq!(ws.request(&register("legacy")).await["code"], "unauthorized");
}

#[tokio::test]
async fn turn_credentials_flag_selects_static_or_ephemeral() {
    let ephemeral = Serve::start(&["--turn-credentials", "ephemeral"], &[]);
    let mut ws = Ws::connect(&ephemeral.url()).await;
    let ice = ws.request(&register("cam")).await["ice_servers"][0].clone();
    let (expiry, room) = ice["ufrag"].as_str().unwrap().split_once(':').expect("<expiry>:<room>");
    assert!(expiry.parse::<u64>().is_ok() && room == "cam", "{ice}");

    let dir = TempDir::new("static");
    let file = dir.0.join("c.toml");
    std::fs::write(&file, "[turn]\nstatic-username = \"zlm\"\nstatic-password = \"pw\"\n").unwrap();
    let fixed = Serve::start(&["--config", file.to_str().unwrap(), "--turn-credentials", "static"], &[]);
    let mut ws = Ws::connect(&fixed.url()).await;
    let ice = ws.request(&register("cam")).await["ice_servers"][0].clone();
    assert_eq!((ice["ufrag"].as_str(), ice["pwd"].as_str()), (Some("zlm"), Some("pw")), "{ice}");
}

/// Seconds since midnight of a text log line's leading RFC 3339 timestamp (`2026-12-03T12:00:00.123456Z …`).
fn timestamp(line: &str) -> f64 {
    let time = line.split_whitespace().next().and_then(|t| t.split_once('T')).map(|(_, t)| t.trim_end_matches('Z'));
    let parts: Vec<f64> =
        time.unwrap_or_else(|| panic!("no timestamp: {line}")).split(':').map(|p| p.parse().unwrap()).collect();
    parts[0] * 3600.0 + parts[1] * 60.0 + parts[2]
}

#[tokio::test]
async fn shutdown_grace_flag_bounds_the_wait_for_sessions() {
    // A client that never answers the close frame keeps its session open until the server gives up on it: after the
    // 2 s close linger, or earlier when the grace period (here 0.5 s) runs out first.
    let mut server = Serve::start(&["--shutdown-grace", "500ms"], &[]);
    let mut silent = Ws::connect(&server.url()).await;
    assert_eq!(silent.request(&register("silent")).await["class"], "accept");
    server.sigterm();
    let closing = server.proc.wait_line(WAIT, |l| l.contains("shutting down: closing sessions"));
    let over = server.proc.wait_line(WAIT, |l| l.contains("shutdown grace period over"));
    let waited = timestamp(&over) - timestamp(&closing);
    assert!((0.5..1.5).contains(&waited), "waited {waited:.3} s for a 0.5 s grace:\n{closing}\n{over}");
    assert!(server.proc.wait_exit(WAIT).success());
    drop(silent);
}

/// `switchboard bench` against a real `switchboard serve`: one JSON summary line on stdout, progress on stderr.
#[test]
fn bench_prints_one_json_summary_line_and_progress() {
    // The benchmark configuration (raised message budgets: a load test floods by design), on a free port.
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/server.toml");
    let server = Serve::start(&["--config", config, "--listen", "127.0.0.1:0"], &[]);
    let pid = server.proc.pid().to_string();
    let url = server.url();
    let bench = |scenario: &[&str]| {
        let mut cmd = Command::new(BIN);
        cmd.args(["bench", "--server", &url, "--server-pid", &pid]).args(scenario);
        let (status, stdout, stderr) = output(cmd, Duration::from_secs(30));
        assert!(status.success(), "{stderr}");
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 1, "exactly one summary line: {stdout}");
        let summary: Value = serde_json::from_str(lines[0]).expect("the summary is JSON");
        (summary, stderr)
    };

    let (idle, progress) = bench(&["idle", "--conns", "20", "--hold", "0"]);
    assert_eq!((idle["scenario"].as_str(), idle["conns"].as_u64()), (Some("idle"), Some(20)));
    assert!(idle["server_rss_per_room_kib"].as_f64().is_some(), "--server-pid gives memory figures: {idle}");
    assert!(progress.contains("idle: 20 rooms registered"), "{progress}");

    let (calls, _) = bench(&["calls", "--pairs", "2", "--duration", "0.5"]);
    let flows = calls["flows"].as_u64().unwrap();
    assert!(flows > 0, "{calls}");
    assert_eq!(calls["call_to_accept"]["count"].as_u64(), Some(flows), "{calls}");
    assert!(calls["server_cpu_us_per_flow"].as_f64().is_some_and(|us| us > 0.0), "{calls}");

    assert!(server.stop(WAIT).success());
}
