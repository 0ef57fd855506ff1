//! A real `switchboard serve` process on loopback, and a websocket client with a deadline on every wait.
//!
//! Invariants: the process never inherits the developer's `SWITCHBOARD_*` variables; it listens on free ports
//! (port 0, read back from its log) unless the test names the address itself; it is killed when dropped.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use super::{http, Proc, BIN};

/// How long any single network wait of these tests may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// A running `switchboard serve`.
pub struct Serve {
    pub addr: SocketAddr,
    pub turn: SocketAddr,
    pub proc: Proc,
}

/// `switchboard serve ARGS` with `env`, and loopback defaults for whatever neither names: `--listen` and
/// `--turn-listen` on port 0, `--external-ip 127.0.0.1`. Not waited on.
pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Proc {
    spawn_with_defaults(&[], args, env)
}

fn spawn_with_defaults(under: &[&str], args: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut defaults = Vec::new();
    let named = |flag: &str, var: &str| args.contains(&flag) || env.iter().any(|(k, _)| *k == var);
    for (flag, var, default) in [
        ("--listen", "SWITCHBOARD_LISTEN", "127.0.0.1:0"),
        ("--turn-listen", "SWITCHBOARD_TURN_LISTEN", "127.0.0.1:0"),
        ("--external-ip", "SWITCHBOARD_EXTERNAL_IP", "127.0.0.1"),
    ] {
        if !named(flag, var) {
            defaults.extend([flag, default]);
        }
    }
    spawn_under(under, &[args, &defaults].concat(), env)
}

/// `switchboard serve ARGS` with `env` and nothing else (but `SWITCHBOARD_LOG=info` unless `--log` or env set it).
pub fn spawn_exact(args: &[&str], env: &[(&str, &str)]) -> Proc {
    spawn_under(&[], args, env)
}

/// [`spawn_exact`], run by `under`: a command that runs the rest of its arguments, such as `prlimit --nofile=N:N`.
pub fn spawn_under(under: &[&str], args: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut cmd = match under.split_first() {
        Some((program, rest)) => {
            let mut cmd = Command::new(program);
            cmd.args(rest).arg(BIN);
            cmd
        }
        None => Command::new(BIN),
    };
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SWITCHBOARD_") {
            cmd.env_remove(key);
        }
    }
    if !args.contains(&"--log") {
        cmd.env("SWITCHBOARD_LOG", "info");
    }
    cmd.arg("serve").args(args).envs(env.iter().copied());
    Proc::spawn("switchboard serve", cmd)
}

impl Serve {
    /// Starts the server and waits until it has logged both listening addresses.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Serve {
        Serve::start_under(&[], args, env)
    }

    /// [`Serve::start`], run by `under` (see [`spawn_under`]).
    pub fn start_under(under: &[&str], args: &[&str], env: &[(&str, &str)]) -> Serve {
        let mut proc = spawn_with_defaults(under, args, env);
        let addr = addr_in(&proc.wait_line(WAIT, |l| l.contains("signaling listening")));
        let turn = addr_in(&proc.wait_line(WAIT, |l| l.contains("turn listening")));
        Serve { addr, turn, proc }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/signaling", self.addr)
    }

    pub fn sigterm(&self) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(self.proc.pid() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill -TERM: {}", std::io::Error::last_os_error());
    }

    /// SIGTERM, then the exit status within `within`.
    pub fn stop(mut self, within: Duration) -> std::process::ExitStatus {
        self.sigterm();
        self.proc.wait_exit(within)
    }

    /// One HTTP request to the signaling listener, with `headers` as whole lines.
    pub fn http(&self, method: &str, path: &str, headers: &str, body: &str) -> (u16, String) {
        http(self.addr, method, path, headers, body, WAIT)
    }
}

/// The `addr` field of a log line, in text (`addr=1.2.3.4:5`) or JSON (`"addr":"1.2.3.4:5"`) format.
pub fn addr_in(line: &str) -> SocketAddr {
    let value = line
        .split("addr=")
        .nth(1)
        .or_else(|| line.split("\"addr\":\"").nth(1))
        .and_then(|rest| rest.split(|c: char| c.is_whitespace() || c == '"').next())
        .unwrap_or_else(|| panic!("no addr field in: {line}"));
    value.parse().unwrap_or_else(|e| panic!("bad addr field in {line:?}: {e}"))
}

type Stream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A websocket client whose every wait has the deadline [`WAIT`].
pub struct Ws(pub Stream);

impl Ws {
    pub async fn connect(url: &str) -> Ws {
        let connect = tokio_tungstenite::connect_async(url);
        let (ws, _) = tokio::time::timeout(WAIT, connect)
            .await
            .unwrap_or_else(|_| panic!("websocket handshake with {url}: no answer within {WAIT:?}"))
            .unwrap_or_else(|e| panic!("websocket handshake with {url}: {e}"));
        Ws(ws)
    }

    pub async fn send(&mut self, v: &Value) {
        self.send_text(v.to_string()).await;
    }

    pub async fn send_text(&mut self, text: String) {
        tokio::time::timeout(WAIT, self.0.send(Message::Text(text.into())))
            .await
            .expect("send: no progress within the deadline")
            .expect("send");
    }

    /// The next text message as JSON; panics on a close or at the deadline.
    pub async fn recv(&mut self) -> Value {
        match self.next(WAIT).await {
            Ok(v) => v,
            Err(code) => panic!("connection closed ({code:?}) while a message was expected"),
        }
    }

    /// Sends `v` and returns the next message (its answer).
    pub async fn request(&mut self, v: &Value) -> Value {
        self.send(v).await;
        self.recv().await
    }

    /// The next text message (`Ok`) or the close code the connection ended with (`Err`), within `limit`.
    pub async fn next(&mut self, limit: Duration) -> Result<Value, Option<u16>> {
        let next = async {
            loop {
                match self.0.next().await {
                    Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(t.as_str()).expect("JSON")),
                    Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| u16::from(f.code))),
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return Err(None),
                }
            }
        };
        tokio::time::timeout(limit, next).await.unwrap_or_else(|_| panic!("nothing received within {limit:?}"))
    }

    /// Reads until the server closes; the close code and every message before it.
    pub async fn until_closed(&mut self, limit: Duration) -> (Option<u16>, Vec<Value>) {
        let mut seen = Vec::new();
        loop {
            match self.next(limit).await {
                Ok(v) => seen.push(v),
                Err(code) => return (code, seen),
            }
        }
    }
}
