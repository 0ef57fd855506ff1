//! Fresh TURN credentials for long-lived registrations (SPEC.md §4.6): the client refreshes them before
//! `ice_servers_expire` on its own, the fresh ones allocate on the built-in TURN server after the originals expired,
//! and against a server without the extension (ZLMediaKit stays silent) the client keeps its servers and carries on.
//!
//! Real time, on purpose: TURN credentials expire by the wall clock (unix seconds in the username), which
//! `tokio::time::pause` cannot move. The TTL is 2 s, so every wait below is bounded by a few seconds.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard_client::{Client, ClientConfig, Event};
use switchboard_proto::IceServer;
use switchboard_server::config::CredentialMode;
use switchboard_server::{Config, Server};
use switchboard_turn::stun::{attr, long_term_key, method, Builder, Class, Message};
use tokio::net::{TcpListener, UdpSocket};
use tokio_tungstenite::tungstenite::Message as Ws;

const WAIT: Duration = Duration::from_secs(10);

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Allocate over UDP with `server`'s credential; the error code, or None on success.
async fn allocate(turn: SocketAddr, server: &IceServer) -> Option<u16> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = vec![0; 2048];
    let unauth = Builder::new(Class::Request, method::ALLOCATE, rand::random())
        .attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        .finish();
    sock.send_to(&unauth, turn).await.unwrap();
    let n = tokio::time::timeout(WAIT, sock.recv(&mut buf)).await.unwrap().unwrap();
    let nonce = Message::parse(&buf[..n]).unwrap().text(attr::NONCE).unwrap().to_owned();
    let key = long_term_key(&server.ufrag, "switchboard", &server.pwd);
    let req = Builder::new(Class::Request, method::ALLOCATE, rand::random())
        .attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        .attr(attr::USERNAME, server.ufrag.as_bytes())
        .attr(attr::REALM, b"switchboard")
        .attr(attr::NONCE, nonce.as_bytes())
        .integrity(&key)
        .fingerprint()
        .finish();
    sock.send_to(&req, turn).await.unwrap();
    let n = tokio::time::timeout(WAIT, sock.recv(&mut buf)).await.unwrap().unwrap();
    Message::parse(&buf[..n]).unwrap().error_code()
}

#[tokio::test]
async fn credentials_are_refreshed_before_they_expire_and_the_fresh_ones_allocate_after_the_old_expired() {
    let mut c = Config::default();
    c.signaling.listen = "127.0.0.1:0".parse().unwrap();
    c.turn.listen = "127.0.0.1:0".parse().unwrap();
    c.turn.external_ips = vec!["127.0.0.1".parse().unwrap()];
    c.turn.credentials = CredentialMode::Ephemeral;
    c.turn.secret = "s".into();
    c.turn.credential_ttl = Duration::from_secs(2);
    let server = Server::bind(c).await.unwrap();
    let url = format!("ws://{}/signaling", server.local_addr());
    let turn = server.turn().unwrap().local_addr();
    let stop = server.shutdown_token();
    let task = tokio::spawn(server.run());

    let (keeper, mut events) = Client::connect(ClientConfig::new(&url)).await.unwrap();
    let reg = keeper.register(Some("camera")).await.unwrap();
    let first_expire = reg.ice_servers_expire.expect("ephemeral credentials carry their expiry");
    assert_eq!(keeper.ice_servers(), reg.ice_servers);
    let original = reg.ice_servers[0].clone();

    // The refresh comes by itself, before the original expiry.
    let refreshed = match tokio::time::timeout(WAIT, events.recv()).await.expect("a refresh").expect("client alive") {
        Event::IceServers(r) => r,
        other => panic!("unexpected {other:?}"),
    };
    assert!(unix_now() < first_expire as f64, "refreshed only at {}, expiry {first_expire}", unix_now());
    assert_eq!(refreshed.room_id, "camera");
    let expire = refreshed.ice_servers_expire.unwrap();
    assert!(expire > first_expire, "{expire} vs {first_expire}");
    assert_eq!(refreshed.ice_servers[0].ufrag, format!("{expire}:camera"));

    // Past the original expiry: the original credential is refused, the client's current one allocates.
    let deadline = tokio::time::Instant::now() + WAIT;
    // The TURN server compares whole seconds (the expiry second itself is still valid), on a clock that started from
    // a whole second (up to one behind): two seconds past the expiry, the credential is refused for sure.
    while unix_now() < first_expire as f64 + 2.05 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(allocate(turn, &original).await, Some(401), "the original credential has expired");
    let current = keeper.ice_servers();
    assert_ne!(current[0].ufrag, original.ufrag);
    assert_eq!(allocate(turn, &current[0]).await, None, "the refreshed credential allocates");

    stop.cancel();
    task.await.unwrap().unwrap();
}

/// A server that answers register (with an expiry hint) and unregister, and ignores every other request, as
/// ZLMediaKit does. Every request it sees goes to `seen`.
async fn silent_server() -> (String, tokio::sync::mpsc::UnboundedReceiver<Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/signaling", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        while let Some(Ok(frame)) = ws.next().await {
            let Ws::Text(text) = frame else { continue };
            let v: Value = serde_json::from_str(text.as_str()).unwrap();
            let _ = tx.send(v.clone());
            let answer = match v["method"].as_str() {
                Some("register") => json!({"class":"accept","method":"register","transaction_id":v["transaction_id"],
                    "room_id":v["room_id"], "ice_servers_expire": unix_now() as u64 + 1,
                    "ice_servers":[{"url":"turn:127.0.0.1:3478?transport=udp","ufrag":"old","pwd":"old"}]}),
                Some("unregister") => {
                    json!({"class":"accept","method":"unregister","transaction_id":v["transaction_id"],
                    "room_id":v["room_id"]})
                }
                _ => continue,
            };
            ws.send(Ws::Text(answer.to_string().into())).await.unwrap();
        }
    });
    (url, rx)
}

#[tokio::test]
async fn a_server_without_the_extension_is_asked_once_and_the_old_servers_stay_in_use() {
    let (url, mut seen) = silent_server().await;
    let mut config = ClientConfig::new(&url);
    config.request_timeout = Duration::from_millis(300);
    let (keeper, mut events) = Client::connect(config).await.unwrap();
    let reg = keeper.register(Some("camera")).await.unwrap();
    let first = tokio::time::timeout(WAIT, seen.recv()).await.expect("the register request").unwrap();
    assert_eq!(first["method"], "register");
    // The hint says 1 s: the client asks at 80 % of what is left.
    let asked = tokio::time::timeout(WAIT, seen.recv()).await.expect("an ice_servers request").unwrap();
    assert_eq!((&asked["class"], &asked["method"]), (&json!("request"), &json!("ice_servers")), "{asked}");
    // No answer comes. After its request timeout the client gives up on the extension, and keeps working: its
    // next request goes through, it was not asked again meanwhile, and the servers are the register accept's.
    tokio::time::sleep(Duration::from_millis(600)).await; // past the 300 ms request timeout
    keeper.unregister("camera").await.unwrap();
    let next = tokio::time::timeout(WAIT, seen.recv()).await.expect("the unregister request").unwrap();
    assert_eq!(next["method"], "unregister", "asked again instead: {next}");
    assert_eq!(keeper.ice_servers(), reg.ice_servers);
    assert!(events.try_recv().is_err(), "no event: nothing was refreshed and nothing dropped");
}
