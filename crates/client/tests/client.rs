//! The client against a real switchboard server on 127.0.0.1:0.

use std::time::Duration;

use switchboard_client::{CallRequest, Candidate, Client, ClientConfig, ClientError, Event};
use switchboard_proto::RejectCode;
use switchboard_server::config::CredentialMode;
use switchboard_server::{Config, Server};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken as Stop;

const WAIT: Duration = Duration::from_secs(10);

fn config(listen: &str) -> Config {
    let mut c = Config::default();
    c.signaling.listen = listen.parse().unwrap();
    c.turn.listen = "127.0.0.1:0".parse().unwrap();
    c.turn.external_ips = vec!["127.0.0.1".parse().unwrap()];
    c.turn.credentials = CredentialMode::Ephemeral;
    c.turn.secret = "s".into();
    c
}

async fn server(c: Config) -> (String, Stop, tokio::task::JoinHandle<()>) {
    let s = Server::bind(c).await.unwrap();
    let url = format!("ws://{}/signaling", s.local_addr());
    let stop = s.shutdown_token();
    let task = tokio::spawn(async move {
        s.run().await.unwrap();
    });
    (url, stop, task)
}

async fn next(events: &mut mpsc::Receiver<Event>) -> Event {
    tokio::time::timeout(WAIT, events.recv()).await.expect("event").expect("client alive")
}

fn play(guest: &str, room: &str) -> CallRequest {
    CallRequest {
        guest_id: guest.into(),
        room_id: room.into(),
        call_type: "play".into(),
        vhost: "__defaultVhost__".into(),
        app: "live".into(),
        stream: "test".into(),
        sdp: "v=0\r\noffer\r\n".into(),
    }
}

#[tokio::test]
async fn register_call_answer_trickle_and_bye() {
    let (url, _stop, _task) = server(config("127.0.0.1:0")).await;
    let (callee, mut callee_events) = Client::connect(ClientConfig::new(&url)).await.unwrap();
    let (caller, mut caller_events) = Client::connect(ClientConfig::new(&url)).await.unwrap();
    let reg = callee.register(Some("camera")).await.unwrap();
    assert_eq!(reg.room_id, "camera");
    assert!(reg.ice_servers[0].ufrag.ends_with(":camera"), "ephemeral TURN credential: {:?}", reg.ice_servers);
    let mine = caller.register(None).await.unwrap();
    assert!(!mine.room_id.is_empty(), "assigned id");

    let guest = format!("{}_g", mine.room_id);
    let calling = tokio::spawn({
        let caller = caller.clone();
        let guest = guest.clone();
        async move { caller.call(play(&guest, "camera")).await }
    });
    let Event::IncomingCall(call) = next(&mut callee_events).await else { panic!("expected a call") };
    assert_eq!(
        (call.request.guest_id.as_str(), call.request.room_id.as_str(), call.request.call_type.as_str()),
        (guest.as_str(), "camera", "play")
    );
    assert_eq!(call.request.sdp, "v=0\r\noffer\r\n");
    callee.accept(&call, "v=0\r\nanswer\r\n".into()).await.unwrap();
    assert_eq!(calling.await.unwrap().unwrap(), "v=0\r\nanswer\r\n");

    // Browser-style candidates go out without the prefix and arrive without it.
    let line = "7e0de214 1 udp 2113955071 127.0.0.1 46411 typ host";
    let c = Candidate {
        guest_id: guest.clone(),
        room_id: "camera".into(),
        candidate: format!("candidate:{line}"),
        ufrag: "u".into(),
        pwd: "p".into(),
    };
    caller.candidate(c).await.unwrap();
    let Event::Candidate(got) = next(&mut callee_events).await else { panic!() };
    assert_eq!((got.candidate.as_str(), got.ufrag.as_str(), got.pwd.as_str()), (line, "u", "p"));
    callee
        .candidate(Candidate {
            guest_id: guest.clone(),
            room_id: "camera".into(),
            candidate: line.into(),
            ufrag: "u2".into(),
            pwd: "p2".into(),
        })
        .await
        .unwrap();
    let Event::Candidate(back) = next(&mut caller_events).await else { panic!() };
    assert_eq!(back.ufrag, "u2");

    caller.bye(&guest, "camera", Some("done")).await.unwrap();
    let Event::Bye { guest_id, room_id, reason } = next(&mut callee_events).await else { panic!() };
    assert_eq!((guest_id.as_str(), room_id.as_str(), reason.as_deref()), (guest.as_str(), "camera", Some("done")));

    callee.unregister("camera").await.unwrap();
    let again = callee.unregister("camera").await.unwrap_err();
    assert!(matches!(again, ClientError::Rejected { code: Some(RejectCode::NotRegistered), .. }), "{again:?}");
}

#[tokio::test]
async fn rejects_surface_their_code_and_a_callee_reject_too() {
    let (url, _stop, _task) = server(config("127.0.0.1:0")).await;
    let (a, mut a_events) = Client::connect(ClientConfig::new(&url)).await.unwrap();
    let (b, _b_events) = Client::connect(ClientConfig::new(&url)).await.unwrap();
    a.register(Some("a")).await.unwrap();
    b.register(Some("b")).await.unwrap();
    let err = b.call(play("g", "nobody")).await.unwrap_err();
    assert!(matches!(err, ClientError::Rejected { code: Some(RejectCode::RoomNotFound), .. }), "{err:?}");
    let err = b.register(Some("x")).await.unwrap_err();
    assert!(matches!(err, ClientError::Rejected { code: Some(RejectCode::AlreadyRegistered), .. }), "{err:?}");

    let calling = tokio::spawn({
        let b = b.clone();
        async move { b.call(play("g", "a")).await }
    });
    let Event::IncomingCall(call) = next(&mut a_events).await else { panic!() };
    a.reject(&call, "stream not found").await.unwrap();
    let err = calling.await.unwrap().unwrap_err();
    assert!(matches!(&err, ClientError::Rejected { code: None, reason } if reason == "stream not found"), "{err:?}");
}

#[tokio::test]
async fn a_pending_call_fails_with_hangup_when_the_callee_leaves() {
    let (url, _stop, _task) = server(config("127.0.0.1:0")).await;
    let (a, mut a_events) = Client::connect(ClientConfig::new(&url)).await.unwrap();
    let (b, _b_events) = Client::connect(ClientConfig::new(&url)).await.unwrap();
    a.register(Some("a")).await.unwrap();
    b.register(Some("b")).await.unwrap();
    let calling = tokio::spawn({
        let b = b.clone();
        async move { b.call(play("g", "a")).await }
    });
    let Event::IncomingCall(_) = next(&mut a_events).await else { panic!() };
    a.shutdown().await;
    let err = calling.await.unwrap().unwrap_err();
    assert!(matches!(&err, ClientError::Hangup(r) if r == "peer unregister"), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn requests_time_out() {
    let (url, _stop, _task) = server(config("127.0.0.1:0")).await;
    let (a, _a_events) = Client::connect(ClientConfig::new(&url)).await.unwrap();
    let (b, _b_events) = Client::connect(ClientConfig::new(&url)).await.unwrap();
    a.register(Some("a")).await.unwrap();
    b.register(Some("b")).await.unwrap();
    // `a` never answers; the server's own call timeout (30 s) is longer than the client's (10 s).
    let err = b.call(play("g", "a")).await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout(d) if d == Duration::from_secs(10)), "{err:?}");
}

#[tokio::test]
async fn reconnects_after_a_server_restart_and_registers_the_room_again() {
    let (url, stop, task) = server(config("127.0.0.1:0")).await;
    let addr = url.trim_start_matches("ws://").trim_end_matches("/signaling").to_owned();
    let (a, mut events) = Client::connect(ClientConfig::new(&url)).await.unwrap();
    a.register(Some("keeper")).await.unwrap();

    stop.cancel();
    task.await.unwrap();
    assert!(matches!(next(&mut events).await, Event::Disconnected));
    // A new server on the same address.
    let (_url2, _stop2, _task2) = server(config(&addr)).await;
    let Event::Reconnected { room_id } = next(&mut events).await else { panic!("expected a reconnect") };
    assert_eq!(room_id.as_deref(), Some("keeper"));
    // The room really is held again: another client cannot take it, and calls reach `a`.
    let (other, _o) = Client::connect(ClientConfig::new(&url)).await.unwrap();
    let err = other.register(Some("keeper")).await.unwrap_err();
    assert!(matches!(err, ClientError::Rejected { code: Some(RejectCode::RoomConflict), .. }), "{err:?}");
    other.register(Some("other")).await.unwrap();
    let calling = tokio::spawn(async move { other.call(play("g", "keeper")).await });
    let Event::IncomingCall(call) = next(&mut events).await else { panic!() };
    a.accept(&call, "answer".into()).await.unwrap();
    assert_eq!(calling.await.unwrap().unwrap(), "answer");
}

/// A TCP proxy in front of the server that can cut a connection on the client's side only: the server keeps the old
/// session (and its room) until the test hands back the upstream half and drops it, as when a client's network dies
/// before the server notices.
struct CuttingProxy {
    url: String,
    cuts: mpsc::Receiver<tokio::sync::oneshot::Sender<tokio::sync::oneshot::Sender<tokio::net::TcpStream>>>,
}

impl CuttingProxy {
    async fn start(upstream: std::net::SocketAddr) -> CuttingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/signaling", listener.local_addr().unwrap());
        let (tx, cuts) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut server = tokio::net::TcpStream::connect(upstream).await.unwrap();
                let (cut_tx, cut_rx) = tokio::sync::oneshot::channel::<tokio::sync::oneshot::Sender<_>>();
                let _ = tx.send(cut_tx).await;
                tokio::spawn(async move {
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        Ok(hand_back) = cut_rx => {
                            drop(client);
                            let _ = hand_back.send(server);
                        }
                    }
                });
            }
        });
        CuttingProxy { url, cuts }
    }

    /// Cuts the oldest connection not yet cut on the client's side; returns its still-open server side.
    async fn cut_next(&mut self) -> tokio::net::TcpStream {
        let cut = tokio::time::timeout(WAIT, self.cuts.recv()).await.unwrap().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        cut.send(tx).unwrap();
        tokio::time::timeout(WAIT, rx).await.unwrap().unwrap()
    }
}

/// `switchboard_rejects_total{code="room_conflict"}` of the server at `url`.
async fn room_conflicts(url: &str) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("ws://").trim_end_matches("/signaling");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut text = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut text)).await.unwrap().unwrap();
    let line = text.lines().find(|l| l.starts_with("switchboard_rejects_total{code=\"room_conflict\"}"));
    line.and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0)
}

/// A client through the proxy, registered as "keeper", whose connection is then cut on its side only.
async fn keeper_cut_off(url: &str) -> (CuttingProxy, Client, mpsc::Receiver<Event>, tokio::net::TcpStream) {
    let mut proxy =
        CuttingProxy::start(url.trim_start_matches("ws://").trim_end_matches("/signaling").parse().unwrap()).await;
    let mut config = ClientConfig::new(&proxy.url);
    config.reconnect =
        Some(switchboard_client::Backoff { initial: Duration::from_millis(50), max: Duration::from_secs(1) });
    let (a, mut events) = Client::connect(config).await.unwrap();
    a.register(Some("keeper")).await.unwrap();
    let old_session = proxy.cut_next().await;
    assert!(matches!(next(&mut events).await, Event::Disconnected));
    (proxy, a, events, old_session)
}

#[tokio::test]
async fn re_register_retries_while_the_old_session_still_holds_the_room() {
    let (url, _stop, _task) = server(config("127.0.0.1:0")).await;
    let (_proxy, _a, mut events, old_session) = keeper_cut_off(&url).await;
    // The server has not noticed the drop: the fresh connection's re-register is refused as a conflict…
    let deadline = tokio::time::Instant::now() + WAIT;
    while room_conflicts(&url).await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no re-register attempt reached the server");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // …until the old session ends; a retry then takes the room back.
    drop(old_session);
    let Event::Reconnected { room_id } = next(&mut events).await else { panic!("expected a reconnect") };
    assert_eq!(room_id.as_deref(), Some("keeper"));
    let conflicts = room_conflicts(&url).await;
    assert!((1..5).contains(&conflicts), "{conflicts} refused attempts before the accept");
    let (other, _o) = Client::connect(ClientConfig::new(&url)).await.unwrap();
    let err = other.register(Some("keeper")).await.unwrap_err();
    assert!(matches!(err, ClientError::Rejected { code: Some(RejectCode::RoomConflict), .. }), "{err:?}");
}

#[tokio::test]
async fn re_register_gives_up_after_five_refusals_and_says_so() {
    let (url, _stop, _task) = server(config("127.0.0.1:0")).await;
    let (_proxy, a, mut events, _old_session) = keeper_cut_off(&url).await;
    let Event::Reconnected { room_id } = next(&mut events).await else { panic!("expected a reconnect") };
    assert_eq!(room_id, None, "the room could not be taken back");
    assert_eq!(room_conflicts(&url).await, 5);
    // The connection itself works: the client can register another room.
    assert_eq!(a.register(Some("keeper2")).await.unwrap().room_id, "keeper2");
}
