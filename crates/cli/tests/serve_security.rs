//! The real `switchboard serve` binary's security promises: wss/https from `--tls-cert`/`--tls-key` with a finished
//! handshake, and secrets (auth and admin secrets, tokens, TURN secret and passwords) never in its log, even at
//! `trace` while every one of them is used.

mod support;

use std::net::UdpSocket;
use std::sync::Arc;

use serde_json::{json, Value};
use support::serve::{Serve, Ws, WAIT};
use support::{output, TempDir, BIN};
use switchboard_turn::stun::{attr, long_term_key, method, Builder, Class, Message};

fn client_tls(cert: rustls_pki_types::CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

#[tokio::test]
async fn tls_cert_and_key_flags_serve_wss_and_https() {
    let dir = TempDir::new("tls");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_file, key_file) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.key_pair.serialize_pem()).unwrap();
    let mut server = Serve::start(
        &[
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert_file.to_str().unwrap(),
            "--tls-key",
            key_file.to_str().unwrap(),
        ],
        &[],
    );
    let tls_addr = support::serve::addr_in(&server.proc.find_line(WAIT, |l| l.contains("wss listening")));
    let tls = client_tls(cert.cert.der().clone());

    // wss: a full handshake verified against the certificate given on the command line, then the protocol.
    let mut config = switchboard_client::ClientConfig::new(format!("wss://localhost:{}/signaling", tls_addr.port()));
    config.tls = Some(tls.clone());
    let (client, _events) = tokio::time::timeout(WAIT, switchboard_client::Client::connect(config))
        .await
        .expect("wss connect within the deadline")
        .expect("wss handshake");
    let reg = tokio::time::timeout(WAIT, client.register(Some("secure"))).await.unwrap().unwrap();
    assert_eq!(reg.room_id, "secure");

    // https on the same listener.
    let tcp = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream =
        tokio::time::timeout(WAIT, tokio_rustls::TlsConnector::from(tls).connect(name, tcp)).await.unwrap().unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(b"GET /livez HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = String::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_string(&mut out)).await.expect("https answer");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");

    // --tls-cert without --tls-key is refused at start.
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["serve", "--tls-cert", cert_file.to_str().unwrap()]);
    let (status, _, stderr) = output(cmd, WAIT);
    assert!(!status.success() && stderr.contains("--tls-key"), "{stderr}");
}

/// Sends `req` to the TURN server and returns its answer.
fn turn_round_trip(sock: &UdpSocket, req: &[u8]) -> Vec<u8> {
    sock.send(req).unwrap();
    let mut buf = vec![0; 2048];
    let n = sock.recv(&mut buf).expect("a TURN answer within the deadline");
    buf.truncate(n);
    buf
}

#[tokio::test]
async fn secrets_and_credentials_never_reach_the_log_even_at_trace() {
    const AUTH: &str = "auth-secret-7f3a9c";
    const ADMIN: &str = "admin-secret-51be02";
    const TURN: &str = "turn-secret-c4d8e1";
    let mut server =
        Serve::start(&["--auth-secret", AUTH, "--admin-secret", ADMIN, "--turn-secret", TURN, "--log", "trace"], &[]);
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["token", "--secret", AUTH, "--sub", "cam", "--rooms", "cam_*", "--call", "cam_*", "--ttl", "5m"]);
    let (status, token, _) = output(cmd, WAIT);
    assert!(status.success());
    let token = token.trim().to_owned();

    // The token in the query and in an Authorization header; a wrong token too.
    let mut cam = Ws::connect(&format!("{}?token={token}", server.url())).await;
    let accept =
        cam.request(&json!({"class":"request","method":"register","transaction_id":"t","room_id":"cam_1"})).await;
    assert_eq!(accept["class"], "accept", "{accept}");
    let wrong = format!("{}x", &token[..token.len() - 1]);
    let mut w = Ws::connect(&format!("{}?token={wrong}", server.url())).await;
    let refused =
        w.request(&json!({"class":"request","method":"register","transaction_id":"t","room_id":"cam_2"})).await;
    assert_eq!(refused["code"], "unauthorized");
    let (status, _) = server.http("GET", "/api/rooms", &format!("Authorization: Bearer {ADMIN}\r\n"), "");
    assert_eq!(status, 200);
    let (status, _) = server.http("GET", &format!("/index/api/listWebrtcRooms?secret={ADMIN}"), "", "");
    assert_eq!(status, 200);
    let (status, _) = server.http("GET", "/api/rooms?secret=wrong-admin-secret", "", "");
    assert_eq!(status, 401);

    // The TURN credential of the accept, used for an Allocate (and once with a wrong password).
    let ice: &Value = &accept["ice_servers"][0];
    let (user, password) = (ice["ufrag"].as_str().unwrap(), ice["pwd"].as_str().unwrap());
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    sock.connect(server.turn).unwrap();
    let transport = |b: Builder| b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    let challenge =
        turn_round_trip(&sock, &transport(Builder::new(Class::Request, method::ALLOCATE, [1; 12])).finish());
    let nonce = Message::parse(&challenge).unwrap().text(attr::NONCE).unwrap().to_owned();
    let allocate = |password: &str, tid: [u8; 12]| {
        transport(Builder::new(Class::Request, method::ALLOCATE, tid))
            .attr(attr::USERNAME, user.as_bytes())
            .attr(attr::REALM, b"switchboard")
            .attr(attr::NONCE, nonce.as_bytes())
            .integrity(&long_term_key(user, "switchboard", password))
            .fingerprint()
            .finish()
    };
    let bad = Message::parse(&turn_round_trip(&sock, &allocate("wrong-password", [2; 12]))).unwrap().error_code();
    assert_eq!(bad, Some(401));
    let ok = turn_round_trip(&sock, &allocate(password, [3; 12]));
    assert_eq!(Message::parse(&ok).unwrap().class(), Class::Success);

    server.sigterm();
    assert!(server.proc.wait_exit(WAIT).success());
    let log = server.proc.log();
    // The log is really verbose (nothing of ours logs below debug) and saw all of the above…
    for seen in ["DEBUG", "session opened", "cam_1", "turn error answer"] {
        assert!(log.contains(seen), "the log lacks {seen:?}:\n{log}");
    }
    // …and none of the secrets. (A token's signature alone is a credential too: it is checked separately.)
    let signature = token.rsplit('.').next().unwrap();
    for secret in [AUTH, ADMIN, TURN, &token, signature, &wrong, password, "wrong-admin-secret"] {
        assert!(!log.contains(secret), "the log contains a secret ({secret}):\n{log}");
    }
}
