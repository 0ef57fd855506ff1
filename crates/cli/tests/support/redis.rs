//! A real `redis-server` on a free loopback port, without persistence, for the cluster tests: started, killed,
//! restarted (empty) or started late by the test itself.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{Proc, TempDir};

pub struct Redis {
    pub port: u16,
    dir: TempDir,
    proc: Option<Proc>,
}

impl Redis {
    /// A port for a Redis that is not running yet.
    pub fn reserve() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Redis { port, dir: TempDir::new("redis"), proc: None }
    }

    pub fn start() -> Redis {
        let mut redis = Redis::reserve();
        redis.run();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (empty: nothing is persisted) and waits until it listens.
    pub fn run(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir.0);
        self.proc = Some(Proc::spawn("redis-server", cmd));
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen on {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it; its data is gone.
    pub fn kill(&mut self) {
        self.proc = None;
    }
}
