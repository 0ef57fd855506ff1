//! Unit tests of parsing, validation precedence and the server's own messages.

use std::borrow::Cow;

use serde_json::{json, Value};

use crate::reply::{RegisterAccept, ServerBye, UnregisterAccept};
use crate::*;

fn reject_of(v: Value) -> Value {
    let text = v.to_string();
    let r = Message::parse(&text).expect_err("must be rejected");
    serde_json::from_str(&r.to_json()).unwrap()
}

fn code_of(v: Value) -> String {
    reject_of(v)["code"].as_str().unwrap().to_owned()
}

fn call() -> Value {
    json!({"class":"request","method":"call","transaction_id":"t1","guest_id":"g1","room_id":"r1",
           "type":"play","vhost":"__defaultVhost__","app":"live","stream":"s","sdp":"v=0\r\n"})
}

#[test]
fn parses_every_method() {
    let cases = [
        (json!({"class":"request","method":"register","transaction_id":"t"}), Body::Register { room_id: None }),
        (
            json!({"class":"request","method":"register","transaction_id":"t","room_id":"r"}),
            Body::Register { room_id: Some("r".into()) },
        ),
        (
            json!({"class":"request","method":"register","transaction_id":"t","room_id":""}),
            Body::Register { room_id: None },
        ),
        (
            json!({"class":"request","method":"register","transaction_id":"t","room_id":null}),
            Body::Register { room_id: None },
        ),
        (
            json!({"class":"request","method":"unregister","transaction_id":"t","room_id":"r"}),
            Body::Unregister { room_id: "r".into() },
        ),
        (json!({"class":"request","method":"ice_servers","transaction_id":"t"}), Body::IceServers),
        (call(), Body::Call { guest_id: "g1".into(), room_id: "r1".into(), call_type: CallType::Play }),
        (
            json!({"class":"accept","method":"call","transaction_id":"t","guest_id":"g","room_id":"r","sdp":"x"}),
            Body::Answer { accepted: true, guest_id: "g".into(), room_id: "r".into() },
        ),
        (
            json!({"class":"reject","method":"call","transaction_id":"t","guest_id":"g","room_id":"r","reason":"no"}),
            Body::Answer { accepted: false, guest_id: "g".into(), room_id: "r".into() },
        ),
        (
            json!({"class":"indication","method":"candidate","transaction_id":"t","guest_id":"g","room_id":"r",
                   "candidate":"7e0de214 1 udp 2113955071 192.168.1.1 46411 typ host","ufrag":"u","pwd":"p"}),
            Body::Candidate { guest_id: "g".into(), room_id: "r".into() },
        ),
        (
            json!({"class":"indication","method":"bye","transaction_id":"t","guest_id":"g","room_id":"r"}),
            Body::Bye { guest_id: "g".into(), room_id: "r".into() },
        ),
    ];
    for (frame, body) in cases {
        let text = frame.to_string();
        let msg = Message::parse(&text).unwrap_or_else(|r| panic!("{frame} rejected: {}", r.to_json()));
        assert_eq!(msg.body, body, "{frame}");
    }
}

#[test]
fn strings_without_escapes_are_borrowed_and_escaped_ones_decoded() {
    let text = r#"{"class":"request","method":"unregister","transaction_id":"t\u0031","room_id":"plain"}"#;
    let msg = Message::parse(text).unwrap();
    assert_eq!(msg.transaction_id, "t1");
    assert!(matches!(msg.transaction_id, Cow::Owned(_)));
    match msg.body {
        Body::Unregister { room_id } => assert!(matches!(room_id, Cow::Borrowed("plain"))),
        other => panic!("{other:?}"),
    }
}

#[test]
fn pretty_printed_zlmediakit_json_with_tabs_and_extra_fields_parses() {
    let text = "{\n\t\"class\" : \"indication\",\n\t\"method\" : \"candidate\",\n\t\"transaction_id\" : \"x\",\n\t\
                \"guest_id\" : \"g\",\n\t\"room_id\" : \"r\",\n\t\"candidate\" : \"c 1 udp 1 1.2.3.4 5 typ host\",\n\t\"ufrag\" : \"u\",\n\t\"pwd\" : \"p\",\n\t\
                \"sender\" : \"r\",\n\t\"extra\" : {\"nested\" : [1, 2, {\"a\":null}]}\n}";
    assert!(matches!(Message::parse(text).unwrap().body, Body::Candidate { .. }));
}

#[test]
fn bad_json_cases() {
    for text in ["", "not json", "[1,2]", "\"str\"", "42", "null", "{\"class\":", "{} trailing"] {
        let r = Message::parse(text).expect_err(text);
        assert_eq!(r.code, RejectCode::BadJson, "{text:?}");
        assert_eq!(r.echo.transaction_id, "");
        assert_eq!(r.echo.method, "");
        assert!(r.reason.starts_with("invalid JSON"), "{}", r.reason);
    }
}

#[test]
fn duplicate_known_field_is_bad_json() {
    let text =
        r#"{"class":"indication","method":"bye","transaction_id":"t","guest_id":"a","guest_id":"b","room_id":"r"}"#;
    assert_eq!(Message::parse(text).unwrap_err().code, RejectCode::BadJson);
}

#[test]
fn missing_fields_are_named_in_order() {
    let r = reject_of(json!({"method":"register","transaction_id":"t"}));
    assert_eq!(r["code"], "missing_field");
    assert_eq!(r["reason"], "missing field \"class\"");
    assert_eq!(r["method"], "register");
    assert_eq!(r["transaction_id"], "t");

    assert_eq!(reject_of(json!({"class":"request","transaction_id":"t"}))["reason"], "missing field \"method\"");
    assert_eq!(reject_of(json!({"class":"request","method":"register"}))["reason"], "missing field \"transaction_id\"");
    assert_eq!(
        reject_of(json!({"class":"request","method":"register","transaction_id":""}))["reason"],
        "missing field \"transaction_id\""
    );
    for field in ["guest_id", "room_id", "type", "vhost", "app", "stream", "sdp"] {
        let mut c = call();
        c.as_object_mut().unwrap().remove(field);
        let r = reject_of(c);
        assert_eq!(r["code"], "missing_field", "{field}");
        assert_eq!(r["reason"], format!("missing field \"{field}\""));
        assert_eq!(r["transaction_id"], "t1");
        assert_eq!(r["method"], "call");
    }
    let cand = json!({"class":"indication","method":"candidate","transaction_id":"t","guest_id":"g","room_id":"r"});
    assert_eq!(reject_of(cand)["reason"], "missing field \"candidate\"");
    // An empty candidate (a browser's end-of-candidates) is missing too: ZLMediaKit closes the socket on one.
    let empty = json!({"class":"indication","method":"candidate","transaction_id":"t","guest_id":"g","room_id":"r",
        "candidate":"","ufrag":"u","pwd":"p"});
    assert_eq!(reject_of(empty)["reason"], "missing field \"candidate\"");
    let unreg = json!({"class":"request","method":"unregister","transaction_id":"t","room_id":null});
    assert_eq!(code_of(unreg), "missing_field");
}

#[test]
fn wrong_types_are_bad_field() {
    let r = reject_of(json!({"class":"request","method":"register","transaction_id":42}));
    assert_eq!(r["code"], "bad_field");
    assert_eq!(r["reason"], "field \"transaction_id\" must be a string");
    assert_eq!(r["transaction_id"], "", "a non-string transaction_id is echoed as empty");
    for bad in [json!(1), json!(true), json!([1]), json!({"a":1}), json!(1.5)] {
        let mut c = call();
        c["room_id"] = bad.clone();
        assert_eq!(code_of(c), "bad_field", "{bad}");
    }
    let mut c = call();
    c["sdp"] = json!({"type":"offer"});
    assert_eq!(reject_of(c)["reason"], "field \"sdp\" must be a string");
    let bye = json!({"class":"indication","method":"bye","transaction_id":"t","guest_id":"g","room_id":"r","reason":7});
    assert_eq!(code_of(bye), "bad_field");
}

#[test]
fn id_length_limit_is_inclusive() {
    let ok = "r".repeat(MAX_ID_LEN);
    let text = json!({"class":"request","method":"register","transaction_id":"t","room_id":ok}).to_string();
    assert!(Message::parse(&text).is_ok());
    for field in ["transaction_id", "room_id", "guest_id"] {
        let mut c = call();
        c[field] = json!("x".repeat(MAX_ID_LEN + 1));
        let r = reject_of(c);
        assert_eq!(r["code"], "bad_field", "{field}");
        assert!(r["reason"].as_str().unwrap().contains(field));
    }
    // Length is bytes, not characters.
    let mut c = call();
    c["guest_id"] = json!("é".repeat(MAX_ID_LEN / 2 + 1));
    assert_eq!(code_of(c), "bad_field");
}

#[test]
fn call_type_must_be_play_or_push() {
    let mut c = call();
    c["type"] = json!("push");
    let text = c.to_string();
    assert!(matches!(Message::parse(&text).unwrap().body, Body::Call { call_type: CallType::Push, .. }));
    c["type"] = json!("record");
    let r = reject_of(c);
    assert_eq!(r["code"], "bad_field");
    assert_eq!(r["type"], "record");
}

#[test]
fn unsupported_pairs() {
    for (class, method) in [
        ("request", "candidate"),
        ("request", "bye"),
        ("accept", "register"),
        ("indication", "call"),
        ("request", "dance"),
        ("hello", "register"),
    ] {
        let r = reject_of(json!({"class":class,"method":method,"transaction_id":"t"}));
        assert_eq!(r["code"], "unsupported", "{class}/{method}");
        assert_eq!(r["reason"], format!("unsupported class/method: {class}/{method}"));
        assert_eq!(r["method"], method);
    }
}

#[test]
fn precedence_follows_the_table() {
    // missing beats bad_field beats unsupported.
    let r = reject_of(json!({"class":"request","method":"call","transaction_id":"t","room_id":5}));
    assert_eq!(r["code"], "missing_field");
    let r = reject_of(json!({"class":"request","method":"dance","transaction_id":"t","room_id":5}));
    assert_eq!(r["code"], "bad_field");
    let r = reject_of(json!({"class":5,"method":"register","transaction_id":"t"}));
    assert_eq!(r["code"], "bad_field");
}

#[test]
fn rejects_echo_call_details_like_zlmediakit() {
    let mut c = call();
    c["type"] = json!("bogus");
    let r = reject_of(c);
    for (k, v) in
        [("app", "live"), ("guest_id", "g1"), ("room_id", "r1"), ("stream", "s"), ("vhost", "__defaultVhost__")]
    {
        assert_eq!(r[k], v, "{k}");
    }
    assert_eq!(r["class"], "reject");
    assert_eq!(r["method"], "call");

    let text = call().to_string();
    let msg = Message::parse(&text).unwrap();
    let r: Value =
        serde_json::from_str(&msg.reject(RejectCode::RoomNotFound, "room_id: \"r1\" unregistered").to_json()).unwrap();
    assert_eq!(
        r,
        json!({"class":"reject","method":"call","transaction_id":"t1","room_id":"r1","guest_id":"g1","type":"play",
               "vhost":"__defaultVhost__","app":"live","stream":"s","reason":"room_id: \"r1\" unregistered",
               "code":"room_not_found"})
    );
}

#[test]
fn server_messages_have_the_documented_shape() {
    let servers = [IceServer { url: "turn:1.2.3.4:3478?transport=udp".into(), ufrag: "u".into(), pwd: "p".into() }];
    let v: Value = serde_json::from_str(&RegisterAccept::new("t", "r", &servers, None).to_json()).unwrap();
    assert_eq!(
        v,
        json!({"class":"accept","method":"register","transaction_id":"t","room_id":"r",
               "ice_servers":[{"url":"turn:1.2.3.4:3478?transport=udp","ufrag":"u","pwd":"p"}]})
    );
    let v: Value = serde_json::from_str(&RegisterAccept::refreshed("t", "r", &servers, Some(7)).to_json()).unwrap();
    assert_eq!(
        v,
        json!({"class":"accept","method":"ice_servers","transaction_id":"t","room_id":"r",
               "ice_servers":[{"url":"turn:1.2.3.4:3478?transport=udp","ufrag":"u","pwd":"p"}],
               "ice_servers_expire":7})
    );
    let v: Value = serde_json::from_str(&UnregisterAccept::new("t", "r").to_json()).unwrap();
    assert_eq!(v, json!({"class":"accept","method":"unregister","transaction_id":"t","room_id":"r"}));
    let v: Value = serde_json::from_str(&ServerBye::new("t", "g", "r", reply::BYE_PEER_UNREGISTER).to_json()).unwrap();
    assert_eq!(
        v,
        json!({"class":"indication","method":"bye","transaction_id":"t","guest_id":"g","room_id":"r",
               "reason":"peer unregister"})
    );
}

#[test]
fn arbitrary_bytes_never_panic() {
    // A cheap deterministic fuzz: every prefix of valid frames and a spread of byte soup.
    let base = call().to_string();
    for i in 0..=base.len() {
        if let Some(prefix) = base.get(..i) {
            let _ = Message::parse(prefix);
        }
    }
    let mut x: u32 = 0x9e37_79b9;
    for _ in 0..2000 {
        let mut s = String::new();
        for _ in 0..(x % 40) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let alphabet = b"{}[]\":,nul0123 abcdefghijklmnopqrstuvwxyz\\";
            s.push(alphabet[x as usize % alphabet.len()] as char);
        }
        let _ = Message::parse(&s);
    }
}

#[test]
fn a_candidate_without_ufrag_or_pwd_is_missing_a_field() {
    let base = json!({"class":"indication","method":"candidate","transaction_id":"t","guest_id":"g","room_id":"r",
                      "candidate":"7e0de214 1 udp 2113955071 192.168.1.1 46411 typ host","ufrag":"u","pwd":"p"});
    assert!(Message::parse(&base.to_string()).is_ok());
    for (field, empty) in [("ufrag", json!(null)), ("ufrag", json!("")), ("pwd", json!(null)), ("pwd", json!(""))] {
        let mut v = base.clone();
        if empty.is_null() {
            v.as_object_mut().unwrap().remove(field);
        } else {
            v[field] = empty;
        }
        let r = reject_of(v);
        assert_eq!(r["code"], "missing_field", "{field}: {r}");
        assert_eq!(r["reason"], format!("missing field \"{field}\""));
        assert_eq!((r["room_id"].as_str(), r["guest_id"].as_str()), (Some("r"), Some("g")));
    }
}

#[test]
fn a_reject_echoes_room_and_guest_ids_given_as_empty_strings() {
    let r = reject_of(json!({"class":"indication","method":"bye","transaction_id":"t","guest_id":"","room_id":""}));
    assert_eq!(r["code"], "missing_field");
    assert_eq!((r["room_id"].as_str(), r["guest_id"].as_str()), (Some(""), Some("")), "{r}");
    // Absent and null are not echoed.
    let r = reject_of(json!({"class":"indication","method":"bye","transaction_id":"t","guest_id":null}));
    assert!(r.get("room_id").is_none() && r.get("guest_id").is_none(), "{r}");
    // An empty transaction_id is missing, and echoed as "" as always.
    let r = reject_of(json!({"class":"request","method":"register","transaction_id":""}));
    assert_eq!(r["transaction_id"], "");
}
