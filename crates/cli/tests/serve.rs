//! The real `switchboard` binary: start on port 0, read the bound address from its log, serve, stop on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// Starts `switchboard serve` with `args` and `env`, and returns it with the address it logged.
fn spawn(args: &[&str], env: &[(&str, &str)]) -> (Child, String) {
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(args)
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn switchboard");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().expect("switchboard exited before logging its address").unwrap();
        if line.contains("signaling listening") {
            let addr = line.split("addr=").nth(1).expect("addr field").split_whitespace().next().unwrap();
            break addr.to_owned();
        }
    };
    // Keep draining the log so the child never blocks on a full pipe; a failing test shows it (output capture).
    std::thread::spawn(move || lines.for_each(|l| eprintln!("CHILD {}", l.unwrap_or_default())));
    (child, addr)
}

fn sigterm(child: &Child) {
    let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn serve_on_port_0_register_then_sigterm_closes_1001_and_exits_0() {
    let (mut child, addr) = spawn(
        &[
            "--listen",
            "127.0.0.1:0",
            "--turn-listen",
            "127.0.0.1:0",
            "--turn-port",
            "3478",
            "--external-ip",
            "192.0.2.10,192.0.2.11",
        ],
        &[],
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/signaling")).await.unwrap();
    let reg = json!({"class":"request","method":"register","transaction_id":"t","room_id":"r"});
    ws.send(Message::Text(reg.to_string().into())).await.unwrap();
    let Some(Ok(Message::Text(t))) = ws.next().await else { panic!("no accept") };
    let accept: Value = serde_json::from_str(t.as_str()).unwrap();
    assert_eq!(accept["class"], "accept");
    let urls: Vec<_> = accept["ice_servers"].as_array().unwrap().iter().map(|s| s["url"].as_str().unwrap()).collect();
    assert_eq!(urls, ["turn:192.0.2.10:3478?transport=udp", "turn:192.0.2.11:3478?transport=udp"]);

    sigterm(&child);
    let close = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(Message::Text(t))) => panic!("unexpected message during shutdown: {t}"),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(close, Some(1001));
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn env_vars_configure_and_flags_win() {
    let dir = std::env::temp_dir().join(format!("switchboard-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("c.toml");
    std::fs::write(&file, "[signaling]\nlisten = \"127.0.0.1:1\"\n[turn]\nport = 4000\n").unwrap();
    let file_s = file.to_str().unwrap();
    // File says port 1 for listening; the env var overrides it with port 0; the flag overrides the TURN port.
    let (mut child, addr) = spawn(
        &["--turn-port", "5000", "--turn-listen", "127.0.0.1:0"],
        &[
            ("SWITCHBOARD_CONFIG", file_s),
            ("SWITCHBOARD_LISTEN", "127.0.0.1:0"),
            ("SWITCHBOARD_TURN_PORT", "4500"),
            ("SWITCHBOARD_EXTERNAL_IP", "192.0.2.1"),
        ],
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/")).await.unwrap();
    ws.send(Message::Text(json!({"class":"request","method":"register","transaction_id":"t"}).to_string().into()))
        .await
        .unwrap();
    let Some(Ok(Message::Text(t))) = ws.next().await else { panic!("no accept") };
    let accept: Value = serde_json::from_str(t.as_str()).unwrap();
    assert_eq!(accept["ice_servers"][0]["url"], "turn:192.0.2.1:5000?transport=udp");
    sigterm(&child);
    assert!(child.wait().unwrap().success());
}

#[test]
fn invalid_config_exits_at_start_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("switchboard-cli-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        ("[signaling]\nlisten = \"nowhere\"\n", "signaling.listen"),
        ("[signaling]\nping-after = \"40s\"\n", "signaling.idle-timeout"),
        ("[turn]\ncredentials = \"magic\"\n", "turn.credentials"),
    ];
    for (text, field) in cases {
        let file = dir.join("bad.toml");
        std::fs::write(&file, text).unwrap();
        let out = Command::new(BIN).args(["serve", "--config", file.to_str().unwrap()]).output().unwrap();
        assert!(!out.status.success(), "{text}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(field), "{field} not named in: {stderr}");
    }
}

/// One HTTP/1.1 request over a plain socket; returns (status, body).
fn http(addr: &str, method: &str, path: &str, secret: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {secret}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned())
}

#[tokio::test]
async fn minted_tokens_authorize_and_the_log_level_changes_at_runtime() {
    let (mut child, addr) = spawn(
        &["--listen", "127.0.0.1:0", "--turn-listen", "127.0.0.1:0", "--external-ip", "192.0.2.1"],
        &[("SWITCHBOARD_AUTH_SECRET", "tok-secret"), ("SWITCHBOARD_ADMIN_SECRET", "adm")],
    );
    let out = Command::new(BIN)
        .args(["token", "--secret", "tok-secret", "--sub", "cam", "--rooms", "cam_*", "--ttl", "5m"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");

    let register =
        |room: &str| json!({"class":"request","method":"register","transaction_id":"t","room_id":room}).to_string();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/signaling?token={token}")).await.unwrap();
    ws.send(Message::Text(register("elsewhere").into())).await.unwrap();
    let Some(Ok(Message::Text(t))) = ws.next().await else { panic!() };
    assert_eq!(serde_json::from_str::<Value>(t.as_str()).unwrap()["code"], "unauthorized");
    ws.send(Message::Text(register("cam_1").into())).await.unwrap();
    let Some(Ok(Message::Text(t))) = ws.next().await else { panic!() };
    assert_eq!(serde_json::from_str::<Value>(t.as_str()).unwrap()["class"], "accept");

    let addr2 = addr.clone();
    let (status, body) =
        tokio::task::spawn_blocking(move || http(&addr2, "PUT", "/api/log-level", "adm", "debug")).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let addr2 = addr.clone();
    let (_, body) =
        tokio::task::spawn_blocking(move || http(&addr2, "GET", "/api/log-level", "adm", "")).await.unwrap();
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["filter"], "debug");
    let addr2 = addr.clone();
    let (status, _) = tokio::task::spawn_blocking(move || http(&addr2, "PUT", "/api/log-level", "adm", "not[a(filter"))
        .await
        .unwrap();
    assert_eq!(status, 400);
    sigterm(&child);
    assert!(child.wait().unwrap().success());
}

/// `switchboard bench` against a real `switchboard serve`: one JSON summary line on stdout, progress on stderr.
#[test]
fn bench_prints_one_json_summary_line_and_progress() {
    // The benchmark configuration (raised message budgets: a load test floods by design), on a free port.
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/server.toml");
    let (mut server, addr) = spawn(&["--config", config, "--listen", "127.0.0.1:0"], &[]);
    let pid = server.id().to_string();
    let url = format!("ws://{addr}/signaling");
    let bench = |scenario: &[&str]| {
        let out = Command::new(BIN)
            .args(["bench", "--server", &url, "--server-pid", &pid])
            .args(scenario)
            .output()
            .expect("run switchboard bench");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 1, "exactly one summary line: {stdout}");
        let summary: Value = serde_json::from_str(lines[0]).expect("the summary is JSON");
        (summary, String::from_utf8(out.stderr).unwrap())
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

    sigterm(&server);
    assert!(server.wait().unwrap().success());
}
