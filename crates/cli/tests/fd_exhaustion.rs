//! File-descriptor exhaustion against the real binary: `switchboard serve` under `prlimit --nofile`, and more
//! websocket connections than it may hold. The server stays up, the call in progress keeps relaying, every new
//! connection beyond the limit is answered `503` at once (never left hanging in the backlog), and connections are
//! accepted again as soon as descriptors free up.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::json;
use support::serve::{Serve, Ws, WAIT};

const NOFILE: usize = 160;
const UPGRADE: &str = "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// Opens a connection and upgrades: the status code, and the connection (kept open when upgraded).
fn upgrade(addr: SocketAddr) -> (u16, TcpStream) {
    let mut s = TcpStream::connect(addr).expect("the kernel accepts the TCP connection");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(UPGRADE.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            Ok(_) => break,
            Err(e) => panic!("no answer to an upgrade (left hanging?): {e}; got {:?}", String::from_utf8_lossy(&head)),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("bad answer {head:?}"));
    (status, s)
}

fn candidate(guest: &str, room: &str, n: usize) -> serde_json::Value {
    json!({"class":"indication","method":"candidate","transaction_id":"c","guest_id":guest,"room_id":room,
           "candidate":format!("candidate:{n}"),"ufrag":"u","pwd":"p"})
}

async fn still_relays(caller: &mut Ws, callee: &mut Ws, n: usize) {
    caller.send(&candidate("g", "cam", n)).await;
    assert_eq!(callee.recv().await["candidate"], format!("candidate:{n}"));
    callee.send(&candidate("g", "cam", n + 1)).await;
    assert_eq!(caller.recv().await["candidate"], format!("candidate:{}", n + 1));
}

#[tokio::test]
async fn out_of_descriptors_new_connections_get_503_existing_ones_keep_relaying() {
    let nofile = format!("--nofile={NOFILE}:{NOFILE}");
    let mut server = Serve::start_under(&["prlimit", &nofile], &[], &[]);
    let mut callee = Ws::connect(&server.url()).await;
    let reg = |room: &str| json!({"class":"request","method":"register","transaction_id":"r","room_id":room});
    assert_eq!(callee.request(&reg("cam")).await["class"], "accept");
    let mut caller = Ws::connect(&server.url()).await;
    assert_eq!(caller.request(&reg("viewer")).await["class"], "accept");
    let call = json!({"class":"request","method":"call","transaction_id":"T","guest_id":"g","room_id":"cam",
                      "type":"play","vhost":"__defaultVhost__","app":"live","stream":"s","sdp":"v=0\r\n"});
    caller.send(&call).await;
    assert_eq!(callee.recv().await["transaction_id"], "T");

    // More connections than the process may hold: upgraded ones are kept open, the rest must be refused.
    let addr = server.addr;
    let (mut held, mut refused) = (Vec::new(), 0);
    for _ in 0..NOFILE + 60 {
        match upgrade(addr) {
            (101, s) => held.push(s),
            (503, _) => refused += 1,
            (other, _) => panic!("answered {other}"),
        }
    }
    assert!(held.len() < NOFILE && held.len() > NOFILE / 2, "{} upgraded under a limit of {NOFILE}", held.len());
    assert!(refused >= 60, "{refused} refused");
    still_relays(&mut caller, &mut callee, 1).await;
    server.proc.find_line(WAIT, |l| l.contains("out of file descriptors"));

    // Descriptors free up: new connections are served again.
    held.truncate(held.len() - 20);
    let deadline = Instant::now() + WAIT;
    loop {
        match upgrade(addr) {
            (101, s) => {
                held.push(s);
                break;
            }
            (503, _) => assert!(Instant::now() < deadline, "still refusing after connections closed"),
            (other, _) => panic!("answered {other}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    still_relays(&mut caller, &mut callee, 3).await;
    let status = server.stop(WAIT);
    assert!(status.success(), "{status:?}");
}
