//! A real `redis-server` on a free loopback port, without persistence, for the cluster tests: started, killed,
//! restarted (empty) or started late by the test itself.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{Proc, TempDir};

pub struct Redis {
    pub port: u16,
    dir: TempDir,
    proc: Option<Proc>,
    /// Serves TLS only (`rediss://`), with this certificate and key (PEM files), and a password.
    tls: Option<(PathBuf, PathBuf, String)>,
}

impl Redis {
    /// A port for a Redis that is not running yet.
    pub fn reserve() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Redis { port, dir: TempDir::new("redis"), proc: None, tls: None }
    }

    pub fn start() -> Redis {
        let mut redis = Redis::reserve();
        redis.run();
        redis
    }

    /// A Redis that speaks only TLS with `cert_pem`/`key_pem` and wants `password`.
    pub fn start_tls(cert_pem: &str, key_pem: &str, password: &str) -> Redis {
        let mut redis = Redis::reserve();
        let (cert, key) = (redis.dir.0.join("cert.pem"), redis.dir.0.join("key.pem"));
        std::fs::write(&cert, cert_pem).unwrap();
        std::fs::write(&key, key_pem).unwrap();
        redis.tls = Some((cert, key, password.to_owned()));
        redis.run();
        redis
    }

    pub fn url(&self) -> String {
        match &self.tls {
            None => format!("redis://127.0.0.1:{}", self.port),
            Some((_, _, password)) => format!("rediss://:{password}@127.0.0.1:{}", self.port),
        }
    }

    /// Starts it (empty: nothing is persisted) and waits until it listens.
    pub fn run(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]).arg("--dir").arg(&self.dir.0);
        match &self.tls {
            None => cmd.args(["--port", &self.port.to_string()]),
            Some((cert, key, password)) => cmd
                .args(["--port", "0", "--tls-port", &self.port.to_string(), "--tls-auth-clients", "no"])
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key)
                .arg("--tls-ca-cert-file")
                .arg(cert)
                .args(["--requirepass", password]),
        };
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
