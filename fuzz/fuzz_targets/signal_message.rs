//! The signaling frame parser and validator (`switchboard_proto::Message::parse`) on arbitrary text.
//!
//! Beyond "never panics": an accepted message keeps every id within `MAX_ID_LEN`, and every answer the server could
//! build from the outcome (the parser's own reject, or a routing reject echoing the message) is one JSON object with
//! `class: reject`, a known stable `code` and the echoed `transaction_id`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use switchboard_proto::{Message, RejectCode, MAX_ID_LEN};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Message::parse(text) {
        Ok(msg) => {
            let ids = [Some(&*msg.transaction_id), msg.body.room_id(), msg.body.guest_id()];
            for id in ids.into_iter().flatten() {
                assert!(id.len() <= MAX_ID_LEN, "id of {} bytes accepted", id.len());
            }
            let reject = check_reject(&msg.reject(RejectCode::RoomNotFound, "fuzz").to_json());
            assert_eq!(reject["transaction_id"].as_str(), Some(&*msg.transaction_id));
            assert_eq!(reject["method"].as_str(), Some(msg.body.method()));
        }
        Err(reject) => {
            check_reject(&reject.to_json());
        }
    }
});

fn check_reject(json: &str) -> Value {
    let v: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("reject is not JSON ({e}): {json}"));
    assert_eq!(v["class"], "reject", "{json}");
    let code = v["code"].as_str().unwrap_or_else(|| panic!("no code: {json}"));
    assert!(RejectCode::from_wire(code).is_some(), "unknown code {code}");
    assert!(v["reason"].is_string(), "{json}");
    v
}
