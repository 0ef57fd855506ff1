//! `switchboard peer serve|play|push` end to end: the real binary as signaling server, room keeper and callers, real
//! WebRTC media on loopback (host candidates, or relay-only through the built-in TURN).
//!
//! The H.264 fixture is generated with ffmpeg (a missing ffmpeg fails the tests, with the package to install).
//! Every wait has a deadline: processes are awaited with a timeout and logs are read line by line.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use support::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// A child process whose stdout and stderr lines are collected; killed when dropped.
struct Proc {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn spawn(name: &str, args: &[&str]) -> Proc {
        let mut child = Command::new(BIN)
            .args(args)
            .env("SWITCHBOARD_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let (tx, lines) = mpsc::channel();
        forward(child.stdout.take().unwrap(), tx.clone());
        forward(child.stderr.take().unwrap(), tx);
        Proc { name: name.to_owned(), child, lines, seen: Vec::new() }
    }

    /// Reads lines until one satisfies `pred`, and returns it.
    fn wait_line(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!("{}: no matching line within {timeout:?}; output:\n{}", self.name, self.log()),
            }
        }
    }

    /// Waits for the process to exit, then for the rest of its output.
    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                panic!("{}: still running after {timeout:?}; output:\n{}", self.name, self.log());
            }
            // Drain output meanwhile, so a full pipe never blocks the child.
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(50)) {
                self.seen.push(line);
            }
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        status
    }

    fn log(&self) -> String {
        self.seen.join("\n")
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn forward(stream: impl Read + Send + 'static, tx: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
}

/// A 3-second 320x240 30 fps baseline H.264 clip (Annex-B), generated once per test run.
fn fixture() -> &'static Path {
    static CLIP: OnceLock<PathBuf> = OnceLock::new();
    CLIP.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("switchboard-peer-fixture-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("testsrc.h264");
        let args = "-hide_banner -loglevel error -y -f lavfi -i testsrc=size=320x240:rate=30 -t 3 -c:v libx264 \
                    -profile:v baseline -pix_fmt yuv420p -g 30 -bsf:v h264_mp4toannexb -f h264";
        let result = Command::new("ffmpeg").args(args.split_whitespace()).arg(&out).output();
        match result {
            Err(e) => panic!("ffmpeg is required to generate the test video (Debian: apt-get install -y ffmpeg): {e}"),
            Ok(o) if !o.status.success() => panic!("ffmpeg failed: {}", String::from_utf8_lossy(&o.stderr)),
            Ok(_) => {}
        }
        let data = std::fs::read(&out).unwrap();
        assert!(data.len() > 1000 && data.starts_with(&[0, 0, 0, 1]), "ffmpeg produced no Annex-B H.264");
        out
    })
}

/// The signaling server with its TURN listener on loopback; returns it and its ws URL.
fn signaling_server() -> (Proc, String) {
    let mut server = Proc::spawn(
        "server",
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--turn-listen",
            "127.0.0.1:0",
            "--external-ip",
            "127.0.0.1",
            "--turn-allow-peer",
            "127.0.0.0/8",
        ],
    );
    let line = server.wait_line(Duration::from_secs(10), |l| l.contains("signaling listening"));
    let addr = field(&line, "addr").expect("addr field").to_owned();
    server.wait_line(Duration::from_secs(10), |l| l.contains("turn listening"));
    (server, format!("ws://{addr}/signaling"))
}

/// `peer serve` for `room`, ready once it logs so.
fn room_keeper(url: &str, room: &str, record_dir: &Path) -> Proc {
    let media = fixture().to_str().unwrap();
    let dir = record_dir.to_str().unwrap();
    let args = ["peer", "serve", "--server", url, "--room", room, "--media", media, "--record-dir", dir];
    let mut keeper = Proc::spawn("peer serve", &[&args[..], &["--bind", "127.0.0.1:0"]].concat());
    keeper.wait_line(Duration::from_secs(10), |l| l.contains("room keeper ready"));
    keeper
}

fn player(name: &str, url: &str, room: &str, extra: &[&str]) -> Proc {
    let args = ["peer", "play", "--server", url, "--room", room, "--bind", "127.0.0.1:0"];
    Proc::spawn(name, &[&args[..], extra].concat())
}

/// The frame count of a finished player's summary line.
fn summary_frames(p: &Proc) -> u64 {
    let line = p.seen.iter().find(|l| l.starts_with("summary:")).unwrap_or_else(|| panic!("no summary:\n{}", p.log()));
    field(line, "frames").unwrap().parse().unwrap()
}

fn summary_field(p: &Proc, name: &str) -> String {
    let line = p.seen.iter().find(|l| l.starts_with("summary:")).unwrap_or_else(|| panic!("no summary:\n{}", p.log()));
    field(line, name).unwrap_or_else(|| panic!("no {name} in {line}")).to_owned()
}

#[test]
fn play_receives_frames_and_writes_h264() {
    let dir = TempDir::new("play");
    let (_server, url) = signaling_server();
    let mut keeper = room_keeper(&url, "cam1", &dir.0);
    let out = dir.0.join("received.h264");
    let mut p =
        player("peer play", &url, "cam1", &["--duration", "4s", "--min-frames", "30", "--out", out.to_str().unwrap()]);
    let status = p.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{}", p.log());
    assert!(summary_frames(&p) >= 30, "{}", p.log());
    assert!(p.seen.iter().any(|l| l.contains("bitrate=")), "a progress line:\n{}", p.log());
    assert_eq!(summary_field(&p, "end"), "duration");
    // The remote side may be learned as peer-reflexive (its checks can beat its trickled candidate).
    assert!(summary_field(&p, "pair").starts_with("host/"), "{}", p.log());
    let data = std::fs::read(&out).unwrap();
    assert!(data.len() > 1000 && data.starts_with(&[0, 0, 0, 1]), "{} bytes", data.len());
    // SIGTERM stops the room keeper cleanly.
    let status = Command::new("kill").arg("-TERM").arg(keeper.child.id().to_string()).status().unwrap();
    assert!(status.success());
    let status = keeper.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status:?}\n{}", keeper.log());
    assert!(keeper.seen.iter().any(|l| l == "served 1 calls, rejected 0, recorded 0"), "{}", keeper.log());
}

#[test]
fn play_to_a_missing_room_fails_clearly() {
    let (_server, url) = signaling_server();
    let mut p = player("peer play", &url, "nobody-here", &["--duration", "5s"]);
    let status = p.wait_exit(Duration::from_secs(20));
    assert!(!status.success(), "{}", p.log());
    assert!(p.log().contains("error: the call was rejected: room_id: \"nobody-here\" unregistered"), "{}", p.log());
}

#[test]
fn relay_only_play_goes_through_the_builtin_turn() {
    let dir = TempDir::new("relay");
    let (_server, url) = signaling_server();
    let _keeper = room_keeper(&url, "cam2", &dir.0);
    let mut p =
        player("peer play --relay-only", &url, "cam2", &["--duration", "7s", "--min-frames", "30", "--relay-only"]);
    let status = p.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{}", p.log());
    assert!(summary_frames(&p) >= 30, "{}", p.log());
    assert!(summary_field(&p, "pair").starts_with("relay/"), "{}", p.log());
}

#[test]
fn push_is_recorded_by_the_room_keeper() {
    let dir = TempDir::new("push");
    let (_server, url) = signaling_server();
    let mut keeper = room_keeper(&url, "cam3", &dir.0);
    let media = fixture().to_str().unwrap();
    let args = ["peer", "push", "--server", &url, "--room", "cam3", "--media", media, "--duration", "3s"];
    let mut pusher = Proc::spawn("peer push", &[&args[..], &["--bind", "127.0.0.1:0"]].concat());
    let status = pusher.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{}", pusher.log());
    assert!(summary_field(&pusher, "sent").parse::<u64>().unwrap() >= 30, "{}", pusher.log());
    // The pusher's bye makes the keeper close the call and flush the file.
    let line = keeper.wait_line(Duration::from_secs(15), |l| l.contains("recording finished"));
    let frames: u64 = field(&line, "frames").unwrap().parse().unwrap();
    assert!(frames >= 30, "{line}");
    let path = field(&line, "path").unwrap();
    assert!(Path::new(path).starts_with(&dir.0), "{path}");
    let data = std::fs::read(path).unwrap();
    assert!(data.len() > 1000 && data.starts_with(&[0, 0, 0, 1]), "{} bytes", data.len());
}

#[test]
fn two_players_at_once_both_receive() {
    let dir = TempDir::new("two");
    let (_server, url) = signaling_server();
    let _keeper = room_keeper(&url, "cam4", &dir.0);
    let extra = ["--duration", "4s", "--min-frames", "30"];
    let mut a = player("player a", &url, "cam4", &extra);
    let mut b = player("player b", &url, "cam4", &extra);
    for p in [&mut a, &mut b] {
        let status = p.wait_exit(Duration::from_secs(30));
        assert!(status.success(), "{}: {status:?}\n{}", p.name, p.log());
        assert!(summary_frames(p) >= 30, "{}", p.log());
    }
}

#[test]
fn killed_room_keeper_ends_the_call_with_a_clear_message() {
    let dir = TempDir::new("kill");
    let (_server, url) = signaling_server();
    let mut keeper = room_keeper(&url, "cam5", &dir.0);
    // Both players wait for the bye; one has enough frames by then, the other cannot.
    let mut enough = player("player enough", &url, "cam5", &["--duration", "40s", "--min-frames", "15"]);
    let mut short = player("player short", &url, "cam5", &["--duration", "40s", "--min-frames", "1000000"]);
    for p in [&mut enough, &mut short] {
        p.wait_line(Duration::from_secs(20), |l| field(l, "frames").and_then(|f| f.parse::<u64>().ok()) >= Some(15));
    }
    keeper.kill();
    let mut statuses = Vec::new();
    for p in [&mut enough, &mut short] {
        statuses.push(p.wait_exit(Duration::from_secs(15)));
        assert!(p.seen.iter().any(|l| l == "call ended by peer: peer unregister"), "{}:\n{}", p.name, p.log());
        assert_eq!(summary_field(p, "end"), "bye", "{}", p.log());
    }
    assert!(statuses[0].success(), "{}", enough.log());
    assert!(!statuses[1].success(), "{}", short.log());
    assert!(short.log().contains("fewer than --min-frames"), "{}", short.log());
}
