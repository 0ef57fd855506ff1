//! One test per core reject row of SPEC.md §2, over real websockets. Every reject keeps the session open.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn bad_json_keeps_the_session_and_others_unaffected() {
    let server = TestServer::start().await;
    let mut other = server.registered("other").await;
    let mut c = server.client().await;
    for text in ["not json", "[1,2,3]", "{\"class\":", "42", ""] {
        c.send_text(text).await;
        let r = c.recv().await;
        assert_reject(&r, "bad_json");
        assert_eq!(r["transaction_id"], "");
        assert_eq!(r["method"], "");
    }
    let r = c.request(json!({"class":"request","method":"register","room_id":"me"})).await;
    assert_eq!(r["class"], "accept");
    other.assert_nothing_pending().await;
}

#[tokio::test]
async fn missing_field() {
    let server = TestServer::start().await;
    let mut c = server.registered("me").await;
    let r = c.request(json!({"class":"request","method":"unregister","transaction_id":"t"})).await;
    assert_reject(&r, "missing_field");
    assert_eq!(r["reason"], "missing field \"room_id\"");
    assert_eq!(r["transaction_id"], "t");
    assert_eq!(r["method"], "unregister");
    let mut bad = call("T", "g", "x");
    bad.as_object_mut().unwrap().remove("sdp");
    let r = c.request(bad).await;
    assert_reject(&r, "missing_field");
    assert_eq!((r["guest_id"].as_str(), r["room_id"].as_str()), (Some("g"), Some("x")));
}

#[tokio::test]
async fn bad_field() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let r = c.request(json!({"class":"request","method":"register","transaction_id":42})).await;
    assert_reject(&r, "bad_field");
    assert_eq!(r["transaction_id"], "");
    let r =
        c.request(json!({"class":"request","method":"register","transaction_id":"t","room_id":"x".repeat(129)})).await;
    assert_reject(&r, "bad_field");
    let mut bad = call("T", "g", "x");
    bad["type"] = json!("record");
    assert_reject(&c.request(bad).await, "bad_field");
}

#[tokio::test]
async fn unsupported() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let r = c.request(json!({"class":"request","method":"bye","transaction_id":"t"})).await;
    assert_reject(&r, "unsupported");
    assert_eq!(r["reason"], "unsupported class/method: request/bye");
}

#[tokio::test]
async fn room_conflict() {
    let server = TestServer::start().await;
    let _a = server.registered("r").await;
    let mut b = server.client().await;
    let r = b.request(json!({"class":"request","method":"register","transaction_id":"t","room_id":"r"})).await;
    assert_reject(&r, "room_conflict");
    assert_eq!(r["reason"], "room id conflict");
    assert_eq!(r["room_id"], "r");
    // Precedence: a session holding a room that asks for someone else's room gets room_conflict.
    let mut c = server.registered("c").await;
    assert_reject(&c.request(json!({"class":"request","method":"register","room_id":"r"})).await, "room_conflict");
}

#[tokio::test]
async fn already_registered() {
    let server = TestServer::start().await;
    let mut a = server.registered("r").await;
    for again in [json!("r"), json!("r2"), json!(null)] {
        let r = a.request(json!({"class":"request","method":"register","room_id":again})).await;
        assert_reject(&r, "already_registered");
        assert_eq!(r["reason"], "already registered as \"r\"");
    }
    // The second room was not leaked.
    let _b = server.registered("r2").await;
}

#[tokio::test]
async fn not_registered() {
    let server = TestServer::start().await;
    let _room = server.registered("a").await;
    let mut c = server.client().await;
    let r = c.request(call("T", "g", "a")).await;
    assert_reject(&r, "not_registered");
    assert_eq!(r["reason"], "should register first");
    // ZLMediaKit's call reject shape: the call details are echoed.
    for (k, v) in [
        ("app", "live"),
        ("guest_id", "g"),
        ("room_id", "a"),
        ("stream", "test"),
        ("type", "play"),
        ("vhost", "__defaultVhost__"),
    ] {
        assert_eq!(r[k], v);
    }
    for msg in
        [answer("accept", "T", "g", "a"), answer("reject", "T", "g", "a"), candidate("g", "a", "x"), bye("g", "a")]
    {
        assert_reject(&c.request(msg).await, "not_registered");
    }
    let r = c.request(json!({"class":"request","method":"unregister","room_id":"a"})).await;
    assert_reject(&r, "not_registered");
    assert_eq!(r["reason"], "unregistered");
}

#[tokio::test]
async fn room_mismatch() {
    let server = TestServer::start().await;
    let _other = server.registered("theirs").await;
    let mut c = server.registered("mine").await;
    let r = c.request(json!({"class":"request","method":"unregister","transaction_id":"t","room_id":"theirs"})).await;
    assert_reject(&r, "room_mismatch");
    assert_eq!(r["reason"], "room_id: \"theirs\" not match room_id: mine");
    // Nothing was freed.
    let mut x = server.client().await;
    assert_reject(&x.request(json!({"class":"request","method":"register","room_id":"theirs"})).await, "room_conflict");
}

#[tokio::test]
async fn room_not_found() {
    let server = TestServer::start().await;
    let mut c = server.registered("me").await;
    let r = c.request(call("T", "g", "nobody")).await;
    assert_reject(&r, "room_not_found");
    assert_eq!(r["reason"], "room_id: \"nobody\" unregistered");
    assert_reject(&c.request(candidate("g", "nobody", "x")).await, "room_not_found");
    assert_reject(&c.request(bye("g", "nobody")).await, "room_not_found");
    assert_reject(&c.request(answer("accept", "T", "g", "nobody")).await, "room_not_found");
}

#[tokio::test]
async fn self_call() {
    let server = TestServer::start().await;
    let mut c = server.registered("me").await;
    let r = c.request(call("T", "g", "me")).await;
    assert_reject(&r, "self_call");
    assert_eq!(r["reason"], "cannot call own room");
    // And the session still works (ZLMediaKit crashes here).
    assert_reject(&c.request(call("T", "g", "nobody")).await, "room_not_found");
}

#[tokio::test]
async fn guest_conflict() {
    let server = TestServer::start().await;
    let mut callee = server.registered("a").await;
    let mut b = server.registered("b").await;
    let mut c = server.registered("c").await;
    b.send(call("T1", "g", "a")).await;
    callee.recv().await;
    // Another session with the same guest id towards the same room...
    let r = c.request(call("T2", "g", "a")).await;
    assert_reject(&r, "guest_conflict");
    assert_eq!(r["reason"], "guest_id \"g\" in use");
    // ...and the same session again.
    assert_reject(&b.request(call("T3", "g", "a")).await, "guest_conflict");
    callee.assert_nothing_pending().await;
}

#[tokio::test]
async fn unknown_guest() {
    let server = TestServer::start().await;
    let mut callee = server.registered("a").await;
    let mut caller = server.registered("b").await;
    // No such call.
    let r = callee.request(answer("accept", "T", "nope", "a")).await;
    assert_reject(&r, "unknown_guest");
    assert_eq!(r["reason"], "guest_id \"nope\" not found");
    assert_reject(&callee.request(candidate("nope", "a", "x")).await, "unknown_guest");
    assert_reject(&caller.request(candidate("nope", "a", "x")).await, "unknown_guest");

    caller.send(call("T", "g", "a")).await;
    callee.recv().await;
    // Answering for a room the sender does not hold.
    assert_reject(&caller.request(answer("accept", "T", "g", "a")).await, "unknown_guest");
    callee.send(answer("accept", "T", "g", "a")).await;
    caller.recv().await;
    // A second answer to an answered call.
    assert_reject(&callee.request(answer("accept", "T", "g", "a")).await, "unknown_guest");
    assert_reject(&callee.request(answer("reject", "T", "g", "a")).await, "unknown_guest");
    // After the call ended.
    caller.send(bye("g", "a")).await;
    callee.recv().await;
    assert_reject(&callee.request(candidate("g", "a", "late")).await, "unknown_guest");
    assert_reject(&caller.request(bye("g", "a")).await, "unknown_guest");
}

/// A candidate without the sender's ICE credentials is useless to the other side: rejected, never forwarded
/// (ZLMediaKit drops it too). Both directions of a live call.
#[tokio::test]
async fn a_candidate_without_ufrag_or_pwd_is_rejected_and_not_forwarded() {
    let server = TestServer::start().await;
    let (mut callee, mut caller) = server.in_call().await;
    for field in ["ufrag", "pwd"] {
        let mut c = candidate("g", "a", "1 1 udp 1 192.0.2.1 9 typ host");
        c.as_object_mut().unwrap().remove(field);
        let r = caller.request(c.clone()).await;
        assert_reject(&r, "missing_field");
        assert_eq!(r["reason"], format!("missing field \"{field}\""));
        assert_eq!((r["guest_id"].as_str(), r["room_id"].as_str()), (Some("g"), Some("a")), "{r}");
        c[field] = json!("");
        assert_reject(&callee.request(c).await, "missing_field");
    }
    // Nothing reached either side: the next message each gets is its probe's answer.
    callee.assert_nothing_pending().await;
    caller.assert_nothing_pending().await;
}
