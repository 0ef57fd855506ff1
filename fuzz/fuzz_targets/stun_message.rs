//! The STUN message parser (`switchboard_turn::stun::Message`) on arbitrary datagrams.
//!
//! Checked besides "never panics": a parsed message's attributes all lie within it, in order, with their padding;
//! every typed reader copes with whatever an attribute holds; and integrity checks against any key give an answer.
//! Re-encoding the parsed attributes with our own builder gives a message that parses to the same attributes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_turn::stun::{attr, split_type, Builder, Message};

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = Message::parse(data) else { return };
    let mut end = 20;
    let mut attrs = Vec::new();
    for (t, value) in msg.attributes() {
        let start = value.as_ptr() as usize - data.as_ptr() as usize;
        assert_eq!(start, end + 4, "attribute {t:#06x} not where the previous one ended");
        end = start + value.len().div_ceil(4) * 4;
        assert!(end <= data.len(), "attribute {t:#06x} runs past the message");
        attrs.push((t, value));
    }
    for t in [attr::XOR_PEER_ADDRESS, attr::XOR_RELAYED_ADDRESS, attr::XOR_MAPPED_ADDRESS] {
        let _ = msg.xor_address(t);
        let _ = msg.xor_addresses(t).count();
    }
    let _ = (msg.text(attr::USERNAME), msg.text(attr::REALM), msg.u32(attr::LIFETIME), msg.error_code());
    let _ = msg.unknown_required(&[attr::USERNAME, attr::REALM]);
    let _ = (msg.has_integrity(), msg.uses_sha256(), msg.verify(&[0; 16]), msg.verify(b""));

    // Everything before MESSAGE-INTEGRITY/FINGERPRINT re-encodes to the same attributes.
    let (class, method) = split_type(u16::from_be_bytes([data[0], data[1]]));
    let plain: Vec<_> = attrs
        .iter()
        .take_while(|(t, _)| ![attr::MESSAGE_INTEGRITY, attr::MESSAGE_INTEGRITY_SHA256, attr::FINGERPRINT].contains(t))
        .collect();
    let rebuilt = plain.iter().fold(Builder::new(class, method, msg.transaction_id()), |b, (t, v)| b.attr(*t, v));
    let rebuilt = rebuilt.finish();
    let again = Message::parse(&rebuilt).expect("our own encoding parses");
    let again: Vec<_> = again.attributes().collect();
    assert_eq!(again.len(), plain.len());
    for ((t1, v1), (t2, v2)) in again.iter().zip(plain) {
        assert_eq!((t1, v1), (t2, v2));
    }
});
