//! Cluster mode (SPEC.md §9) with three nodes in one process over the in-memory backbone: every node a real server
//! on a real socket, every client a real websocket client. The same flows over Redis, with processes and faults:
//! crates/cli/tests/cluster_redis.rs.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{json, Value};
use switchboard_server::auth::{mint, Claims};
use switchboard_server::cluster::MemoryWorld;
use switchboard_server::Config;

fn register(room: &str) -> Value {
    json!({"class":"request","method":"register","room_id":room})
}

/// Three nodes of one cluster, each tweaked alike.
async fn three(tweak: impl Fn(&mut Config)) -> (MemoryWorld, [TestServer; 3]) {
    let world = MemoryWorld::new(CLUSTER_NODE_TIMEOUT);
    let n1 = TestServer::in_cluster(world.node("n1"), &tweak).await;
    let n2 = TestServer::in_cluster(world.node("n2"), &tweak).await;
    let n3 = TestServer::in_cluster(world.node("n3"), &tweak).await;
    (world, [n1, n2, n3])
}

async fn admin(node: &TestServer, method: &str, path: &str) -> (u16, Value) {
    let (status, body) = http(node.addr, method, path, &[("Authorization", "Bearer adm")], "").await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_call_across_nodes_relays_the_exact_bytes_both_ways_and_ends_with_bye() {
    let (_world, [n1, n2, _n3]) = three(|_| {}).await;
    let mut callee = n1.registered("cam").await;
    let mut caller = n2.registered("viewer").await;

    // Odd spacing and key order: what arrives must be these bytes, not a re-encoding.
    let offer = r#"{ "class":"request","method":"call", "transaction_id":"T1","guest_id":"g","room_id":"cam","type":"play","vhost":"v","app":"live","stream":"s","sdp":"v=0\r\nx" }"#;
    caller.send_text(offer).await;
    assert_eq!(callee.recv_raw().await, offer);
    let accept = r#"{"class":"accept","method":"call","transaction_id":"T1","guest_id":"g","room_id":"cam","type":"play","vhost":"v","app":"live","stream":"s","sdp":"v=0\r\ny",  "extra":1}"#;
    callee.send_text(accept).await;
    assert_eq!(caller.recv_raw().await, accept);

    let up = candidate("g", "cam", "candidate:1 1 udp 1 192.0.2.1 5000 typ host").to_string();
    caller.send_text(up.clone()).await;
    assert_eq!(callee.recv_raw().await, up);
    let down = candidate("g", "cam", "candidate:2 1 udp 1 192.0.2.2 6000 typ host").to_string();
    callee.send_text(down.clone()).await;
    assert_eq!(caller.recv_raw().await, down);

    let b = bye("g", "cam").to_string();
    caller.send_text(b.clone()).await;
    assert_eq!(callee.recv_raw().await, b);
    // The call is over on both nodes: neither side may relay for it any more.
    assert_reject(&caller.request(candidate("g", "cam", "candidate:3")).await, "unknown_guest");
    assert_reject(&callee.request(candidate("g", "cam", "candidate:4")).await, "unknown_guest");
    // And the guest id is free again.
    caller.send(call("T2", "g", "cam")).await;
    assert_eq!(callee.recv().await["transaction_id"], "T2");
}

#[tokio::test]
async fn room_ids_are_one_namespace_across_nodes() {
    let (_world, [n1, n2, n3]) = three(|_| {}).await;
    let mut holder = n1.registered("shared").await;
    for node in [&n2, &n3, &n1] {
        let mut other = node.client().await;
        assert_reject(&other.request(register("shared")).await, "room_conflict");
    }
    // Assigned ids never collide, whichever node assigns them.
    let mut ids = std::collections::HashSet::new();
    let mut keep = Vec::new();
    for i in 0..30 {
        let node = [&n1, &n2, &n3][i % 3];
        let mut c = node.client().await;
        let accept = c.request(json!({"class":"request","method":"register"})).await;
        assert_eq!(accept["class"], "accept", "{accept}");
        assert!(ids.insert(accept["room_id"].as_str().unwrap().to_owned()), "{accept}");
        keep.push(c);
    }
    // A session already holding a room gets the single-node answers, whichever node holds the other id.
    let mut second = n2.registered("mine").await;
    assert_reject(&second.request(register("shared")).await, "room_conflict");
    assert_reject(&second.request(register("free-id")).await, "already_registered");

    // Unregister frees the id for every node at once: the accept comes after the backbone forgot it.
    let un = holder.request(json!({"class":"request","method":"unregister","room_id":"shared"})).await;
    assert_eq!(un["class"], "accept", "{un}");
    let mut next = n3.client().await;
    assert_eq!(next.request(register("shared")).await["class"], "accept");
    // And a disconnect frees it too (the release follows the close, so another node may need a moment).
    drop(next);
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut holder = loop {
        let mut probe = n1.client().await;
        if probe.request(register("shared")).await["class"] == "accept" {
            break probe;
        }
        assert!(tokio::time::Instant::now() < deadline, "the id was never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut again = n2.client().await;
    assert_reject(&again.request(register("shared")).await, "room_conflict");
    holder.assert_nothing_pending().await;
}

#[tokio::test]
async fn call_rules_hold_across_nodes() {
    let (_world, [n1, n2, n3]) = three(|c| {
        c.limits.max_calls_per_room = 2;
        c.limits.max_calls_per_caller = 2;
    })
    .await;
    let mut callee = n1.registered("cam").await;
    let mut a = n2.registered("a").await;
    let mut b = n3.registered("b").await;

    a.send(call("T1", "g", "cam")).await;
    assert_eq!(callee.recv().await["transaction_id"], "T1");
    // Guest binding: the guest id is in use towards that room, by a session on another node.
    assert_reject(&b.request(call("T2", "g", "cam")).await, "guest_conflict");
    assert_reject(&a.request(call("T3", "g", "cam")).await, "guest_conflict");
    // Only the caller that owns the guest id may relay for it.
    assert_reject(&b.request(candidate("g", "cam", "candidate:1")).await, "unknown_guest");
    assert_reject(&b.request(bye("g", "cam")).await, "unknown_guest");
    // A room nobody holds, anywhere.
    assert_reject(&b.request(call("T4", "h", "nobody")).await, "room_not_found");
    assert_reject(&b.request(candidate("h", "nobody", "candidate:1")).await, "room_not_found");
    // Answering for a room one does not hold.
    assert_reject(&b.request(answer("accept", "T1", "g", "cam")).await, "unknown_guest");
    // Not registered: no call at all.
    let mut anonymous = n3.client().await;
    assert_reject(&anonymous.request(call("T5", "x", "cam")).await, "not_registered");

    // Per room: two calls at most, from whichever nodes.
    b.send(call("T6", "g2", "cam")).await;
    assert_eq!(callee.recv().await["transaction_id"], "T6");
    let mut c = n1.registered("c").await;
    let full = c.request(call("T7", "g3", "cam")).await;
    assert_reject(&full, "rate_limited");
    assert!(full["reason"].as_str().unwrap().contains("into this room"), "{full}");

    // Per caller: calls into rooms on other nodes count.
    let _other = n3.registered("other").await;
    let _third = n1.registered("third").await;
    a.send(call("T8", "g4", "other")).await;
    let over = a.request(call("T9", "g5", "third")).await;
    assert_reject(&over, "rate_limited");
    assert!(over["reason"].as_str().unwrap().contains("from this session"), "{over}");
    assert_reject(&a.request(json!({"class":"request","method":"register","room_id":"x"})).await, "already_registered");
    let _ = n2;
}

#[tokio::test]
async fn a_cross_node_call_times_out_with_a_reject_and_a_bye() {
    let (_world, [n1, n2, _n3]) = three(|c| c.signaling.call_timeout = Duration::from_millis(300)).await;
    let mut callee = n1.registered("cam").await;
    let mut caller = n2.registered("viewer").await;
    caller.send(call("T1", "g", "cam")).await;
    assert_eq!(callee.recv().await["transaction_id"], "T1");
    let reject = caller.recv().await;
    assert_reject(&reject, "call_timeout");
    assert_eq!((reject["transaction_id"].as_str(), reject["guest_id"].as_str()), (Some("T1"), Some("g")));
    assert_server_bye(&callee.recv().await, "g", "cam", "call timeout");
    // Over on the caller's node too: the guest id is free.
    caller.send(call("T2", "g", "cam")).await;
    assert_eq!(callee.recv().await["transaction_id"], "T2");
}

#[tokio::test]
async fn disconnects_send_byes_across_nodes() {
    let (_world, [n1, n2, n3]) = three(|_| {}).await;
    let mut callee = n1.registered("cam").await;
    let mut caller = n2.registered("viewer").await;
    let mut other = n3.registered("other").await;
    caller.send(call("T1", "g", "cam")).await;
    callee.recv().await;
    other.send(call("T2", "h", "cam")).await;
    callee.recv().await;

    // The caller leaves: its callee on another node gets the bye.
    drop(caller);
    assert_server_bye(&callee.recv().await, "g", "cam", "peer unregister");
    // The callee unregisters: the remaining caller on a third node gets the bye.
    let un = callee.request(json!({"class":"request","method":"unregister","room_id":"cam"})).await;
    assert_eq!(un["class"], "accept");
    assert_server_bye(&other.recv().await, "h", "cam", "peer unregister");
    other.assert_nothing_pending().await;
}

#[tokio::test]
async fn messages_from_one_session_arrive_in_order_across_nodes() {
    let (_world, [n1, n2, _n3]) = three(|c| c.limits.message_burst = 2000).await;
    let mut callee = n1.registered("cam").await;
    let mut caller = n2.registered("viewer").await;
    // The call goes to the backbone first; the candidates sent right behind it must wait for it, not overtake it.
    caller.send(call("T1", "g", "cam")).await;
    for i in 0..300 {
        caller.send(candidate("g", "cam", &format!("candidate:{i}"))).await;
    }
    assert_eq!(callee.recv().await["transaction_id"], "T1");
    for i in 0..300 {
        assert_eq!(callee.recv().await["candidate"], format!("candidate:{i}"));
    }
}

#[tokio::test]
async fn admin_answers_for_the_whole_cluster_on_every_node() {
    let (_world, [n1, n2, n3]) = three(|_| {}).await;
    let mut callee = n1.registered("cam").await;
    let mut caller = n2.registered("viewer").await;
    caller.send(call("T1", "g", "cam")).await;
    callee.recv().await;

    let expected = json!([
        {"room_id":"cam","guests":[{"guest_id":"g"}],"tours":[]},
        {"room_id":"viewer","guests":[],"tours":[{"guest_id":"g","room_id":"cam"}]},
    ]);
    for node in [&n1, &n2, &n3] {
        assert_eq!(admin(node, "GET", "/api/rooms").await, (200, expected.clone()));
        assert_eq!(admin(node, "GET", "/api/rooms/cam").await, (200, expected[0].clone()));
        assert_eq!(admin(node, "GET", "/api/rooms/nope").await.0, 404);
        let (status, zlm) = admin(node, "GET", "/index/api/listWebrtcRooms").await;
        assert_eq!((status, &zlm["data"]), (200, &expected));
    }
    // A kick from a third node closes the holder (4001) and its caller gets the bye.
    assert_eq!(admin(&n3, "DELETE", "/api/rooms/cam").await.0, 200);
    let (code, _) = callee.until_closed(WAIT).await;
    assert_eq!(code, Some(4001));
    assert_server_bye(&caller.recv().await, "g", "cam", "peer unregister");
    // Its release reaches the backbone one round trip after the close; from then on the room is gone everywhere.
    eventually(|| async {
        let (status, body) = admin(&n3, "DELETE", "/api/rooms/cam").await;
        if status == 404 {
            Ok(())
        } else {
            Err(format!("{status} {body}"))
        }
    })
    .await;
}

/// A member that does not answer (crashed or cut off, not yet past the node timeout) makes a cluster-wide admin
/// query fail with 503 naming it, never a partial list that looks complete; once the node is declared lost the answer
/// is complete again, without its rooms.
#[tokio::test]
async fn admin_queries_answer_503_while_a_member_is_silent_and_whole_once_it_is_gone() {
    let (world, [n1, n2, n3]) = three(|_| {}).await;
    let _cam = n1.registered("cam").await;
    let _gone = n3.registered("on-n3").await;
    world.set_cut("n3", true);
    // Both asked at once, within the node timeout (each waits for n3 up to the query timeout).
    let ((status, body), (zlm_status, zlm)) = tokio::join!(
        http(n1.addr, "GET", "/api/rooms", &[("Authorization", "Bearer adm")], ""),
        admin(&n2, "GET", "/index/api/listWebrtcRooms"),
    );
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("n3"), "the silent node is named: {body}");
    assert!(zlm_status == 503 || zlm["code"] == -500, "{zlm_status} {zlm}");
    // Past the node timeout n3 is lost: the list is whole again, and n3's room is gone from it.
    eventually(|| async {
        let (status, rooms) = admin(&n1, "GET", "/api/rooms").await;
        (status == 200 && rooms == json!([{"room_id":"cam","guests":[],"tours":[]}]))
            .then_some(())
            .ok_or(format!("{status} {rooms}"))
    })
    .await;
}

/// A session's requests queue behind its pending backbone operation, in order, up to a bound: a burst past it is
/// refused with `unavailable` at once (never buffered without limit, never silence), and what was queued goes on in
/// order once the operation completes.
#[tokio::test]
async fn a_burst_behind_a_pending_backbone_lookup_is_bounded_and_refused_past_the_bound() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    const QUEUE_LIMIT: usize = 256;
    const CANDIDATES: usize = 300;
    // Room in the callee's outbound queue for the whole burst, so that only the cluster's queue bound is exercised.
    let (_world, [n1, n2, _n3]) = three(|c| c.signaling.outbound_queue = 1024).await;
    let mut callee = n1.registered("cam").await;
    let mut caller = n2.registered("viewer").await;
    // One write: the call waits for the owner lookup, and the candidates queue behind it.
    let frames = std::iter::once(call("T1", "g", "cam"))
        .chain((0..CANDIDATES).map(|i| candidate("g", "cam", &format!("candidate:{i}"))));
    for f in frames {
        caller.ws.feed(WsMessage::Text(f.to_string().into())).await.unwrap();
    }
    caller.ws.flush().await.unwrap();
    for _ in 0..CANDIDATES - QUEUE_LIMIT {
        let m = caller.recv().await;
        assert_eq!((m["class"].as_str(), m["code"].as_str()), (Some("reject"), Some("unavailable")), "{m}");
        assert!(m["reason"].as_str().unwrap().contains("too many requests waiting"), "{m}");
    }
    assert_eq!(callee.recv().await["transaction_id"], "T1");
    for i in 0..QUEUE_LIMIT {
        assert_eq!(callee.recv().await["candidate"], format!("candidate:{i}"), "the queued ones, in order");
    }
    callee.assert_nothing_pending().await;
    caller.assert_nothing_pending().await;
}

#[tokio::test]
async fn a_token_holder_takes_a_room_over_from_another_node() {
    const SECRET: &str = "token-secret";
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 60;
    let grant = mint(
        SECRET,
        &Claims { exp, sub: "t".into(), rooms: vec!["cam".into(), "viewer".into()], call: vec!["cam".into()] },
    )
    .unwrap();
    let (world, [n1, n2, n3]) = three(|c| c.auth.secret = SECRET.into()).await;
    let connect = |node: &TestServer| format!("ws://{}/signaling?token={grant}", node.addr);
    let mut old = Client::connect(&connect(&n1)).await;
    assert_eq!(old.request(register("cam")).await["class"], "accept");
    let mut viewer = Client::connect(&connect(&n3)).await;
    assert_eq!(viewer.request(register("viewer")).await["class"], "accept");
    viewer.send(call("T", "g", "cam")).await;
    old.recv().await;

    let mut new = Client::connect(&connect(&n2)).await;
    assert_eq!(new.request(register("cam")).await["class"], "accept");
    assert_server_bye(&viewer.recv().await, "g", "cam", "peer unregister");
    let (code, _) = old.until_closed(WAIT).await;
    assert_eq!(code, Some(4409));
    // The old session's end frees nothing: n1 dropped the fence with the room (the new owner took the record over),
    // so it does not even try to release it, and the new holder keeps the room, on every node. All nodes share this
    // test's one thread, so a release n1 had spawned would have run during the call's round trip.
    assert_eq!(world.holder("cam").as_deref(), Some("n2"));
    viewer.send(call("T2", "g2", "cam")).await;
    assert_eq!(new.recv().await["transaction_id"], "T2");
    assert_eq!(world.release_attempts("cam"), 0, "the old holder's node tried to release the room");
    assert_eq!(world.holder("cam").as_deref(), Some("n2"));
}

#[tokio::test]
async fn a_lost_node_ends_its_calls_frees_its_rooms_and_closes_its_sessions_1012() {
    let (world, [n1, n2, n3]) = three(|_| {}).await;
    let mut callee = n1.registered("cam").await;
    let mut lost_caller = n3.registered("on-n3").await;
    let mut lost_callee = n3.registered("cam3").await;
    let mut caller = n2.registered("viewer").await;
    lost_caller.send(call("T1", "g", "cam")).await;
    callee.recv().await;
    caller.send(call("T2", "h", "cam3")).await;
    lost_callee.recv().await;

    // n3 is cut off from the backbone (a crash or a partition, as the cluster sees it).
    world.set_cut("n3", true);
    let started = tokio::time::Instant::now();
    assert_server_bye(&callee.recv().await, "g", "cam", "peer unregister");
    assert_server_bye(&caller.recv().await, "h", "cam3", "peer unregister");
    assert!(started.elapsed() < CLUSTER_NODE_TIMEOUT * 3, "byes took {:?}", started.elapsed());
    // Its rooms are free for everyone else.
    let mut taker = n1.client().await;
    assert_eq!(taker.request(register("cam3")).await["class"], "accept");
    // Meanwhile the cut-off node knows it is not ready, and refuses what needs the backbone.
    n3.wait_ready(false).await;
    let mut late = n3.client().await;
    assert_reject(&late.request(register("late")).await, "unavailable");

    // Back on the backbone, it learns it was declared lost: every session closes with 1012 and no bye.
    world.set_cut("n3", false);
    for c in [&mut lost_caller, &mut lost_callee] {
        let (code, seen) = c.until_closed(WAIT).await;
        assert_eq!(code, Some(1012), "{seen:?}");
        assert!(seen.iter().all(|m| m["method"] != "bye"), "{seen:?}");
    }
    // Counted under their own cause: these two and the late client, whose session was open too.
    let (code, _) = late.until_closed(WAIT).await;
    assert_eq!(code, Some(1012));
    assert_eq!(disconnects(n3.addr, "restart").await, 3.0);
    // It rejoins, and never serves the room another node registered meanwhile.
    n3.wait_ready(true).await;
    let mut back = n3.client().await;
    assert_reject(&back.request(register("cam3")).await, "room_conflict");
    assert_eq!(back.request(register("on-n3")).await["class"], "accept");
    callee.assert_nothing_pending().await;
}

#[tokio::test]
async fn while_the_backbone_is_out_same_node_calls_work_and_the_rest_is_unavailable() {
    let (world, [n1, n2, _n3]) = three(|_| {}).await;
    let mut local_callee = n1.registered("local").await;
    let mut local_caller = n1.registered("local-caller").await;
    let mut remote_callee = n2.registered("remote").await;
    let mut c2 = n1.registered("local2").await;
    local_caller.send(call("T0", "r", "remote")).await;
    remote_callee.recv().await;

    world.set_cut("n1", true);
    n1.wait_ready(false).await;
    // Same node: works as before.
    local_caller.send(call("T1", "g", "local")).await;
    assert_eq!(local_callee.recv().await["transaction_id"], "T1");
    local_callee.send(answer("accept", "T1", "g", "local")).await;
    assert_eq!(local_caller.recv().await["class"], "accept");
    // Needs the backbone: a reject, never silence.
    let mut newcomer = n1.client().await;
    assert_reject(&newcomer.request(register("new")).await, "unavailable");
    assert_reject(&local_caller.request(candidate("r", "remote", "candidate:1")).await, "unavailable");
    assert_reject(&c2.request(call("T2", "x", "remote")).await, "unavailable");

    // Back before the node timeout: nothing was lost, the call into the other node still relays.
    world.set_cut("n1", false);
    n1.wait_ready(true).await;
    local_caller.send(candidate("r", "remote", "candidate:2")).await;
    assert_eq!(remote_callee.recv().await["candidate"], "candidate:2");
    assert_eq!(newcomer.request(register("new")).await["class"], "accept");
}

#[tokio::test]
async fn a_backbone_that_lost_its_state_gets_every_room_back() {
    let (world, [n1, n2, _n3]) = three(|_| {}).await;
    let mut callee = n1.registered("cam").await;
    let mut caller = n2.registered("viewer").await;
    caller.send(call("T1", "g", "cam")).await;
    callee.recv().await;

    // The backbone loses its state while n1 cannot reach it for a while (less than the node timeout, so n1 is not
    // lost and keeps its room): n2 learns of the reset first and must not hand n1's room out before n1 could
    // re-assert it. New registers wait one node timeout after a reset: meanwhile a register of `cam` on n2 is refused
    // as unavailable, then, once n1 is back and has re-asserted, it is a conflict again. Never an accept.
    world.wipe();
    world.set_cut("n1", true);
    let reconnect_at = tokio::time::Instant::now() + CLUSTER_NODE_TIMEOUT / 2;
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut refused = 0;
    loop {
        if tokio::time::Instant::now() >= reconnect_at {
            world.set_cut("n1", false);
        }
        let mut probe = n2.client().await;
        let answer = probe.request(register("cam")).await;
        match answer["code"].as_str() {
            Some("room_conflict") => break,
            Some("unavailable") => refused += 1,
            _ => panic!("n1's room was handed out again after the reset: {answer}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "cam never became a conflict again");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused > 0, "no register was ever refused while n1 was away");
    // The call in progress keeps working.
    caller.send(candidate("g", "cam", "candidate:1")).await;
    assert_eq!(callee.recv().await["candidate"], "candidate:1");
    // n1 takes registers again once its own quiet period is over; n2's room is a conflict there too.
    n1.wait_ready(true).await;
    let mut probe = n1.client().await;
    assert_reject(&probe.request(register("viewer")).await, "room_conflict");
}

#[tokio::test]
async fn cluster_metrics_and_a_clean_leave() {
    let (_world, [n1, n2, n3]) = three(|_| {}).await;
    let mut callee = n1.registered("cam").await;
    let mut caller = n2.registered("viewer").await;
    caller.send(call("T1", "g", "cam")).await;
    callee.recv().await;
    eventually(|| async {
        let m = scrape(n1.addr).await;
        (sample(&m, "switchboard_cluster_nodes", None) == 3.0).then_some(()).ok_or(m)
    })
    .await;
    let m1 = scrape(n1.addr).await;
    let m2 = scrape(n2.addr).await;
    assert_eq!(sample(&m1, "switchboard_cluster_backbone_up", None), 1.0);
    assert_eq!(sample(&m1, "switchboard_cluster_relays_received_total", None), 1.0);
    assert_eq!(sample(&m2, "switchboard_cluster_relays_sent_total", None), 1.0);
    assert_eq!(sample(&m1, "switchboard_rooms", None), 1.0);
    assert!(sample(&m2, "switchboard_cluster_backbone_rtt_seconds", None) >= 1.0);

    // A node shut down cleanly frees its rooms at once; its callers elsewhere get their byes.
    n1.stop.cancel();
    let (code, _) = callee.until_closed(WAIT).await;
    assert_eq!(code, Some(1001));
    assert_server_bye(&caller.recv().await, "g", "cam", "peer unregister");
    let mut taker = n3.client().await;
    assert_eq!(taker.request(register("cam")).await["class"], "accept");
}

/// Retries `check` until it succeeds, within the test deadline.
async fn eventually<F, Fut, E>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Debug,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match check().await {
            Ok(()) => return,
            Err(e) if tokio::time::Instant::now() >= deadline => panic!("never happened; last: {e:?}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
