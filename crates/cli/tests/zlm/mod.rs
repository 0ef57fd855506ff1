//! Harness for the ZLMediaKit interop tests: a private network namespace with a veth, real `MediaServer` processes
//! (keeper, puller) and a real `switchboard serve`, all driven through their HTTP APIs.
//!
//! Invariants:
//! - Everything runs in a network namespace of its own, made by the test thread with `unshare(CLONE_NEWNET)`:
//!   children spawned from that thread inherit it, so no traffic leaves it and fixed addresses cannot collide with
//!   other tests. MediaServer never uses `lo` for ICE, hence the veth (10.77.0.1/24) that exists only in there.
//! - Every process runs in a scratch directory and is killed when its handle drops; every wait has a deadline and a
//!   failure prints the process's output.
//! - MediaServer comes from `SWITCHBOARD_ZLM_BIN` or `../shared/zlm/MediaServer`. Without either the tests say they
//!   were skipped and why; under CI (`CI=true`) that is a failure.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

pub use crate::support::{eventually, http_get, Proc, TempDir, BIN};
/// The address of the veth inside the namespace: what every process binds and advertises.
pub const HOST: &str = "10.77.0.1";
pub const SECRET: &str = "zlmsecret";
pub const ADMIN: &str = "adminsecret";

/// The MediaServer binary, or why there is none (the caller skips, or fails under CI).
pub fn media_server() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("SWITCHBOARD_ZLM_BIN") {
        let p = PathBuf::from(p);
        return if p.exists() { Ok(p) } else { Err(format!("SWITCHBOARD_ZLM_BIN={} does not exist", p.display())) };
    }
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/zlm/MediaServer");
    if shared.exists() {
        return Ok(shared.canonicalize().unwrap());
    }
    Err(format!("no ZLMediaKit MediaServer at {} and SWITCHBOARD_ZLM_BIN is unset", shared.display()))
}

/// `Some(binary)` to run the test, `None` to skip it (said on stderr); panics under CI.
pub fn prerequisites(test: &str) -> Option<PathBuf> {
    match media_server() {
        Ok(p) => Some(p),
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => panic!("{test}: {why} (required under CI)"),
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}; point SWITCHBOARD_ZLM_BIN at a MediaServer build to run it");
            None
        }
    }
}

fn sh(cmd: &str) {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Moves the calling thread into a fresh network namespace with `lo` up and a veth pair holding [`HOST`].
pub fn enter_private_network() {
    // SAFETY: unshare with CLONE_NEWNET only changes this thread's network namespace; it touches no memory.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET) failed ({}): the ZLMediaKit tests need root",
        std::io::Error::last_os_error()
    );
    sh("ip link set lo up");
    sh(&format!(
        "ip link add t0 type veth peer name t1 && ip addr add {HOST}/24 dev t0 && ip link set t0 up && ip link set t1 up"
    ));
}

/// A free TCP port on [`HOST`] (the namespace is ours alone, so it stays free until used).
pub fn free_port() -> u16 {
    TcpListener::bind((HOST, 0)).unwrap().local_addr().unwrap().port()
}

/// A running MediaServer with its HTTP API.
pub struct Zlm {
    pub api: SocketAddr,
    pub proc: Proc,
    pub dir: TempDir,
}

impl Zlm {
    /// Starts MediaServer as `name`; `rtc_extra` lines go into its `[rtc]` section (e.g. `signalingPort=…`).
    pub fn start(bin: &Path, name: &str, ports: (u16, u16), rtc_extra: &str) -> Zlm {
        let dir = TempDir::new(name);
        let api_port = free_port();
        let config = format!(
            "[api]\napiDebug=1\nsecret={SECRET}\n[general]\nmediaServerId={name}\nlisten_ip={HOST}\n[hook]\nenable=0\n\
             [http]\nport={api_port}\nsslport=0\n[rtsp]\nport=0\nsslport=0\n[rtmp]\nport=0\nsslport=0\n[rtp_proxy]\nport=0\n\
             [shell]\nport=0\n[onvif]\nport=0\n[srt]\nport=0\n[protocol]\nenable_hls=0\nenable_mp4=0\n\
             [rtc]\nsignalingPort=0\nsignalingSslPort=0\nicePort=0\niceTcpPort=0\nenableTurn=1\nexternIP={HOST}\nport=0\n\
             tcpPort=0\nport_range={}-{}\n{rtc_extra}\n",
            ports.0, ports.1
        );
        std::fs::write(dir.0.join("config.ini"), config).unwrap();
        let mut cmd = Command::new(bin);
        cmd.args(["-c", "config.ini", "-l", "0", "--log-dir", "./log/", "-t", "2"]).current_dir(&dir.0);
        let proc = Proc::spawn(name, cmd);
        let api = SocketAddr::new(HOST.parse().unwrap(), api_port);
        let mut zlm = Zlm { api, proc, dir };
        eventually(&format!("{name}'s HTTP API"), Duration::from_secs(15), || {
            TcpStream::connect(api).map_err(|e| e.to_string())
        });
        let _ = zlm.proc.log();
        zlm
    }

    /// `GET /index/api/{method}?secret=…&{query}`, answered with JSON.
    pub fn call(&mut self, method: &str, query: &str) -> Value {
        let path = format!("/index/api/{method}?secret={SECRET}&{query}");
        let (status, body) = http_get(self.api, &path, "", Duration::from_secs(25));
        assert_eq!(status, 200, "{method}: HTTP {status}: {body}\n{}", self.proc.log());
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{method}: {e}: {body}"))
    }

    /// Like [`Zlm::call`], and asserts `code == 0`.
    pub fn ok(&mut self, method: &str, query: &str) -> Value {
        let v = self.call(method, query);
        assert_eq!(v["code"], 0, "{method}?{query} failed: {v}\nits log:\n{}", self.proc.log());
        v
    }

    /// Serves `live/test` from an H.264 MP4 made by ffmpeg (looped).
    pub fn load_clip(&mut self) {
        let file = self.dir.0.join("clip.mp4");
        let out = Command::new("ffmpeg")
            .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-t", "20"])
            .args(["-c:v", "libx264", "-pix_fmt", "yuv420p"])
            .arg(&file)
            .output()
            .expect("ffmpeg is missing: apt-get install -y ffmpeg (the test setup installs it)");
        assert!(out.status.success(), "ffmpeg: {}", String::from_utf8_lossy(&out.stderr));
        let query = format!("vhost=__defaultVhost__&app=live&stream=test&file_path={}&file_repeat=1", file.display());
        self.ok("loadMP4File", &query);
    }

    /// The H.264 track of `live/test`: its frame count, if the stream is online.
    pub fn h264_frames(&mut self) -> Result<u64, String> {
        let v = self.call("getMediaList", "app=live&stream=test");
        let tracks = v["data"].as_array().and_then(|d| d.first()).map(|m| m["tracks"].clone());
        let track = tracks
            .as_ref()
            .and_then(|t| t.as_array())
            .and_then(|t| t.iter().find(|t| t["codec_id_name"] == "H264"))
            .ok_or_else(|| format!("no H264 track of live/test: {v}"))?;
        track["frames"].as_u64().ok_or_else(|| format!("no frame count: {track}"))
    }

    /// Waits until the H.264 frame count of `live/test` grows past `at_least`, twice apart.
    pub fn frames_keep_growing(&mut self, at_least: u64) -> u64 {
        let first = eventually("live/test has H.264 frames", Duration::from_secs(20), || {
            self.h264_frames().and_then(|f| if f >= at_least { Ok(f) } else { Err(format!("{f} frames")) })
        });
        eventually("the H.264 frame count keeps growing", Duration::from_secs(10), || {
            self.h264_frames().and_then(|f| if f > first { Ok(f) } else { Err(format!("still {f} frames")) })
        })
    }

    /// Registers `room` on `sb` from this keeper (`addWebrtcRoomKeeper`), waits until switchboard lists it, and
    /// returns its `room_key` (for `delWebrtcRoomKeeper`).
    pub fn keep_room(&mut self, sb: &Switchboard, room: &str) -> String {
        let v = self
            .ok("addWebrtcRoomKeeper", &format!("server_host={HOST}&server_port={}&room_id={room}&ssl=0", sb.port()));
        let room_key = v["data"]["room_key"].as_str().expect("room_key").to_owned();
        eventually("the keeper's room on switchboard", Duration::from_secs(10), || {
            sb.holds(room).then_some(()).ok_or_else(|| sb.rooms().to_string())
        });
        room_key
    }

    /// The guests of `room` on this keeper.
    pub fn keeper_guests(&mut self, room: &str) -> Vec<String> {
        let v = self.ok("listWebrtcRoomKeepers", "");
        v["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["room_id"] == room)
            .flat_map(|r| r["guests"].as_array().cloned().unwrap_or_default())
            .filter_map(|g| g["guest_id"].as_str().map(str::to_owned))
            .collect()
    }
}

/// A running `switchboard serve` on [`HOST`], with its ws port and admin API.
pub struct Switchboard {
    pub addr: SocketAddr,
    pub proc: Proc,
}

impl Switchboard {
    pub fn start(extra: &[&str]) -> Switchboard {
        let listen = format!("{HOST}:{}", free_port());
        let turn = format!("{HOST}:{}", free_port());
        let mut cmd = Command::new(BIN);
        cmd.args([
            "serve",
            "--listen",
            &listen,
            "--turn-listen",
            &turn,
            "--external-ip",
            HOST,
            "--admin-secret",
            ADMIN,
        ])
        .args(extra)
        .env("SWITCHBOARD_LOG", "info,switchboard_server::turn=debug");
        let mut proc = Proc::spawn("switchboard serve", cmd);
        proc.wait_line(Duration::from_secs(10), |l| l.contains("signaling listening"));
        proc.wait_line(Duration::from_secs(10), |l| l.contains("turn listening"));
        Switchboard { addr: listen.parse().unwrap(), proc }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `GET /api/rooms` as JSON.
    pub fn rooms(&self) -> Value {
        let (status, body) =
            http_get(self.addr, "/api/rooms", &format!("Authorization: Bearer {ADMIN}\r\n"), Duration::from_secs(5));
        assert_eq!(status, 200, "/api/rooms: {status} {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Whether `/api/rooms` lists `room`.
    pub fn holds(&self, room: &str) -> bool {
        self.rooms().as_array().is_some_and(|rooms| rooms.iter().any(|r| r["room_id"] == room))
    }

    /// `GET /metrics`, the Prometheus text.
    pub fn metrics(&self) -> String {
        http_get(self.addr, "/metrics", "", Duration::from_secs(5)).1
    }
}

/// The value of the series named exactly `series` in a Prometheus text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(series))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}
