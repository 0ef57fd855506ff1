//! Abuse against a real server on loopback, bounded in count and time: slow request heads by the thousand (slowloris),
//! oversized and countless headers, a frame header announcing 2^63 bytes, a storm of close frames. Each time the
//! offender gets a clean refusal (an HTTP status, a close code, or a dropped connection) and everyone else keeps
//! working: a call set up before the attack still relays after it.

mod common;

use std::time::{Duration, Instant};

use common::raw::*;
use common::*;
use futures_util::StreamExt;
use switchboard_server::listener::HEAD_TIMEOUT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// A call in progress relays one candidate each way.
async fn still_relays(caller: &mut Client, callee: &mut Client, n: usize) {
    caller.send(candidate("g", "a", &format!("candidate:up{n}"))).await;
    assert_eq!(callee.recv().await["candidate"], format!("candidate:up{n}"));
    callee.send(candidate("g", "a", &format!("candidate:down{n}"))).await;
    assert_eq!(caller.recv().await["candidate"], format!("candidate:down{n}"));
}

/// Sends `request` and reads until the server closes; returns what it answered.
async fn answer_to(server: &TestServer, request: &[u8]) -> String {
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    // The server may answer and close before it has read everything: a reset on write is an answer too.
    let _ = s.write_all(request).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut response)).await.expect("the server answers and closes");
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn huge_heads_countless_headers_and_a_2_63_byte_frame_are_refused_cleanly() {
    let server = TestServer::start().await;
    let (mut callee, mut caller) = server.in_call().await;

    // A 64 KiB header, on an upgrade and on a plain request: 431 after at most 8 KiB buffered.
    let big = format!("X-Big: {}\r\n", "a".repeat(64 * 1024));
    for head in [UPGRADE.replacen("\r\n", &format!("\r\n{big}"), 1), format!("GET /livez HTTP/1.1\r\n{big}\r\n")] {
        let response = answer_to(&server, head.as_bytes()).await;
        assert!(response.starts_with("HTTP/1.1 431 "), "{response:.80}");
    }
    // Five thousand tiny headers.
    let many: String = (0..5000).map(|i| format!("X-{i}: v\r\n")).collect();
    let response = answer_to(&server, UPGRADE.replacen("\r\n", &format!("\r\n{many}"), 1).as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 431 "), "{response:.80}");
    still_relays(&mut caller, &mut callee, 1).await;

    // A frame header announcing 2^63 bytes (and one announcing u64::MAX): closed 1009 at once, nothing buffered.
    for len in [1u64 << 63, u64::MAX] {
        let mut s = upgraded(&server, &[]).await;
        let mut header = vec![0x81, 0x80 | 127];
        header.extend_from_slice(&len.to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        s.write_all(&header).await.unwrap();
        assert_eq!(read_close(&mut s).await, 1009);
    }
    still_relays(&mut caller, &mut callee, 2).await;
}

#[tokio::test]
async fn a_storm_of_close_frames_ends_each_session_once_and_frees_every_room() {
    let server = TestServer::start().await;
    let (mut callee, mut caller) = server.in_call().await;
    let mut storm = Vec::new();
    for i in 0..200 {
        let mut s = upgraded(&server, &text(&register(&format!("storm{i}")))).await;
        assert_eq!(json_frame(&mut s).await["class"], "accept");
        storm.push(s);
    }
    // Each sends a close, then more closes, a text frame and garbage after it, all in one write.
    let close = masked(true, 0x8, &[0x03, 0xe8]);
    let burst = [close.clone(), close.clone(), text(&register("late")), close, vec![0xff; 64]].concat();
    for s in &mut storm {
        s.write_all(&burst).await.unwrap();
    }
    for s in &mut storm {
        // Exactly one close frame echoed, then the connection ends: nothing answers the frames after the close.
        assert_eq!(read_close(s).await, 1000);
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut rest)).await.expect("closed after the echo");
        assert!(rest.is_empty(), "{} more bytes after the close", rest.len());
    }
    still_relays(&mut caller, &mut callee, 1).await;
    // Every storm room is free again.
    let deadline = Instant::now() + WAIT;
    loop {
        let rooms = sample(&scrape(server.addr).await, "switchboard_rooms", None);
        if rooms == 2.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{rooms} rooms left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _again = server.registered("storm7").await;
}

/// p99 of `n` register → accept round trips on one connection (an unregister between two).
async fn register_p99(server: &TestServer, n: usize) -> Duration {
    let mut c = server.client().await;
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        let accept = c.request(serde_json::json!({"class":"request","method":"register","room_id":"probe"})).await;
        took.push(start.elapsed());
        assert_eq!(accept["class"], "accept", "{accept}");
        let gone = c.request(serde_json::json!({"class":"request","method":"unregister","room_id":"probe"})).await;
        assert_eq!(gone["class"], "accept", "{gone} ({i})");
    }
    took.sort();
    took[n * 99 / 100]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_heads_are_dropped_at_the_head_timeout_and_others_keep_their_latency() {
    const SLOW: usize = 1000;
    // The probe's 1 600 messages in a few seconds would exceed the per-session message rate otherwise.
    let server = TestServer::start_with(|c| {
        c.limits.messages_per_second = 100_000;
        c.limits.message_burst = 100_000;
    })
    .await;
    let (mut callee, mut caller) = server.in_call().await;
    let unloaded = register_p99(&server, 400).await;

    // A thousand connections each send their request head one byte every 100 ms: never finished in time.
    let started = Instant::now();
    let mut slow = Vec::with_capacity(SLOW);
    for _ in 0..SLOW {
        slow.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let dribblers: Vec<_> = slow
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let mut buf = [0u8; 16];
                for &b in UPGRADE.as_bytes().iter().cycle() {
                    tokio::select! {
                        r = s.read(&mut buf) => return r.map_or(true, |n| n == 0),
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                    if s.write_all(&[b]).await.is_err() {
                        return true;
                    }
                }
                unreachable!()
            })
        })
        .collect();
    let loaded = register_p99(&server, 400).await;
    still_relays(&mut caller, &mut callee, 1).await;

    // Every slow connection is dropped by the server (end of stream, no response), once the head timeout is over.
    let deadline =
        tokio::time::timeout(HEAD_TIMEOUT + Duration::from_secs(20), futures_util::future::join_all(dribblers));
    let dropped = deadline.await.expect("every slow head dropped in time");
    assert!(dropped.into_iter().all(|d| d.unwrap()), "a slow connection got a response instead of being dropped");
    assert!(started.elapsed() >= HEAD_TIMEOUT, "dropped before the head timeout");
    // The same round trip under attack: within twice its unloaded p99, with a 5 ms floor: on a 2-core machine the
    // scheduler alone moves sub-millisecond loopback p99s by a couple of milliseconds (a 1 ms floor failed CI at 2.0 ms
    // against 0.29 ms), while an acceptor held up by slow heads costs hundreds of milliseconds or the 10 s head timeout.
    eprintln!("register p99: {unloaded:?} unloaded, {loaded:?} under {SLOW} slow heads");
    let bound = (unloaded * 2).max(Duration::from_millis(5));
    assert!(loaded <= bound, "register p99 {loaded:?} under slowloris, {unloaded:?} without");
    still_relays(&mut caller, &mut callee, 2).await;
}

/// The process's resident memory, in bytes (this test's server runs in this process).
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap();
    kb * 1024
}

/// p99 of `n` candidate round trips across an answered call (one each way per sample).
async fn relay_p99(caller: &mut Client, callee: &mut Client, n: usize) -> Duration {
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        still_relays(caller, callee, 1000 + i).await;
        took.push(start.elapsed());
    }
    took.sort();
    took[n * 99 / 100]
}

const KEEPERS: usize = 1000;
/// Each one calls 20 keepers: the byes of their cut-offs (20 at once) fit its own outbound queue.
const FLOODERS: usize = 50;
/// Candidates each flooder sends per 10 ms tick: 10 000 frames of 1 KiB a second in all. The pace keeps this test's own
/// clients from taking the two cores the server shares with them.
const PER_TICK: usize = 2;
/// Frames queued per session (`signaling.outbound-queue`).
const QUEUE: usize = 32;

/// `KEEPERS` room keepers on raw sockets with a 4 KiB receive buffer (so that the kernel stops taking bytes for them
/// early). Unless `stall`, a task per keeper reads and discards whatever arrives; a stalled one never reads again.
async fn keepers(server: &TestServer, prefix: &str, stall: bool) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for i in 0..KEEPERS {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut s = socket.connect(server.addr).await.unwrap();
        s.write_all(&[UPGRADE.as_bytes(), &text(&register(&format!("{prefix}{i}")))].concat()).await.unwrap();
        response_head(&mut s).await;
        assert_eq!(json_frame(&mut s).await["class"], "accept");
        if stall {
            held.push(s);
        } else {
            tokio::spawn(async move {
                let mut sink = vec![0; 64 * 1024];
                while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    }
    held
}

/// `FLOODERS` callers call every keeper room `{prefix}{i}`, then relay 1 KiB candidates to them at the `PER_TICK`
/// pace, round robin, until each room has been sent `frames` candidates or has been cut off (its keeper's bye, or a
/// `room_not_found` reject, came back). Meanwhile the relay p99 of the answered call between `caller` and `callee` is
/// measured. Returns the rooms cut off and that p99.
async fn flood(
    server: &TestServer,
    prefix: &str,
    frames: usize,
    caller: &mut Client,
    callee: &mut Client,
) -> (usize, Duration) {
    let line = "x".repeat(1024);
    let deadline = Instant::now() + 3 * WAIT;
    let mut floods = Vec::new();
    for c in 0..FLOODERS {
        let mut f = server.registered(&format!("{prefix}flooder{c}")).await;
        let mine: Vec<usize> = (c..KEEPERS).step_by(FLOODERS).collect();
        for &i in &mine {
            f.send(call(&format!("T{i}"), "g", &format!("{prefix}{i}"))).await;
        }
        let (mut sink, mut stream) = f.ws.split();
        // What comes back (byes of rooms cut off, rejects of candidates sent after that) is read apart from the
        // sending, so that the flooder itself never falls behind its own queue limit.
        let cut = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
        let reader = {
            let (cut, prefix) = (cut.clone(), prefix.to_owned());
            tokio::spawn(async move {
                while let Some(Ok(Message::Text(t))) = stream.next().await {
                    let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                    if let Some(room) = v["room_id"].as_str().and_then(|r| r.strip_prefix(prefix.as_str())) {
                        if v["method"] == "bye" || v["code"] == "room_not_found" {
                            cut.lock().unwrap().insert(room.parse::<usize>().unwrap());
                        }
                    }
                }
            })
        };
        let (line, prefix) = (line.clone(), prefix.to_owned());
        floods.push(tokio::spawn(async move {
            let mut sent = vec![0usize; mine.len()];
            let mut next = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let done = |sent: &[usize], cut: &std::collections::HashSet<usize>| {
                mine.iter().zip(sent).all(|(i, &n)| n >= frames || cut.contains(i))
            };
            while !done(&sent, &cut.lock().unwrap()) && Instant::now() < deadline {
                tick.tick().await;
                let mut batch = Vec::new();
                {
                    let cut = cut.lock().unwrap();
                    for _ in 0..mine.len() {
                        if batch.len() == PER_TICK {
                            break;
                        }
                        let k = next % mine.len();
                        next += 1;
                        if sent[k] < frames && !cut.contains(&mine[k]) {
                            sent[k] += 1;
                            batch.push(candidate("g", &format!("{prefix}{}", mine[k]), &line));
                        }
                    }
                }
                for v in batch {
                    futures_util::SinkExt::send(&mut sink, Message::Text(v.to_string().into())).await.unwrap();
                }
            }
            reader.abort();
            let n = cut.lock().unwrap().len();
            n
        }));
    }
    // Round trips sampled every 2 ms for as long as the flood lasts (its cut-offs included), at least 200 of them.
    let mut took = Vec::new();
    while took.len() < 200 || !floods.iter().all(|f| f.is_finished()) {
        let start = Instant::now();
        still_relays(caller, callee, 1000 + took.len()).await;
        took.push(start.elapsed());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    took.sort();
    let p99 = took[took.len() * 99 / 100];
    let mut cut = 0;
    for f in floods {
        cut += f.await.unwrap();
    }
    (cut, p99)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sessions_that_stop_reading_are_cut_off_and_nobody_else_notices() {
    let server = TestServer::start_with(|c| {
        c.signaling.outbound_queue = QUEUE;
        c.signaling.send_buffer = 16 * 1024;
        c.limits.messages_per_second = 1_000_000;
        c.limits.message_burst = 1_000_000;
        c.limits.max_connections_per_ip = 5_000;
        c.limits.max_calls_per_caller = KEEPERS;
    })
    .await;
    let (mut callee, mut caller) = server.in_call().await;
    let unloaded = relay_p99(&mut caller, &mut callee, 200).await;

    // The control: the same relay load into keepers that read, as many candidates each as a stalled one takes.
    keepers(&server, "reader", false).await;
    let (cut, control) = flood(&server, "reader", 64, &mut caller, &mut callee).await;
    assert_eq!(cut, 0, "keepers that read are never cut off");
    let rss_before = rss();

    // A stalled keeper holds at most its send buffer (32 KiB, as Linux doubles it) plus 32 queued frames of ~1 KiB,
    // so about 64 candidates; 1 000 are allowed before it counts as never cut off.
    let stalled = keepers(&server, "stall", true).await;
    let (cut, during) = flood(&server, "stall", 1000, &mut caller, &mut callee).await;
    assert_eq!(cut, KEEPERS, "stalled sessions cut off");
    let deadline = Instant::now() + WAIT;
    while disconnects(server.addr, "slow_consumer").await < KEEPERS as f64 {
        assert!(
            Instant::now() < deadline,
            "slow-consumer disconnects: {}",
            disconnects(server.addr, "slow_consumer").await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let grown = rss().saturating_sub(rss_before);
    eprintln!(
        "relay p99 {unloaded:?} unloaded, {control:?} relaying into {KEEPERS} readers, {during:?} into {KEEPERS} stalled \
         sessions; RSS +{} KiB",
        grown / 1024
    );
    // Bounded queues: 1 000 sessions × 32 queued frames of ~1 KiB, plus the connections' own state, not megabytes each.
    assert!(grown < 64 << 20, "RSS grew by {} MiB", grown >> 20);
    let bound = (control * 2).max(Duration::from_millis(2));
    assert!(during <= bound, "relay p99 {during:?} into stalled sessions, {control:?} into readers");
    still_relays(&mut caller, &mut callee, 1).await;
    drop(stalled);
}
