//! Message templates and cheap field lookups for the load generator.

/// `"name":"value"` in compact JSON → `value`. Benchmark messages never escape quotes inside the fields read here.
pub fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("\"{name}\":\"");
    value_after(text, &key)
}

/// The string value after `key` (which ends with the opening quote): the allocation-free form of [`field`].
pub fn value_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let start = text.find(key)? + key.len();
    let end = text[start..].find('"')? + start;
    Some(&text[start..end])
}

/// A candidate indication split around its `candidate` value, so a hot loop writes only the value.
pub struct CandidateTemplate {
    head: String,
    tail: String,
}

impl CandidateTemplate {
    pub fn new(guest: &str, room: &str) -> CandidateTemplate {
        let whole = candidate(guest, room, "\u{0}");
        let (head, tail) = whole.split_once('\u{0}').unwrap_or((&whole, ""));
        CandidateTemplate { head: head.to_owned(), tail: tail.to_owned() }
    }

    /// The message with `value` as its candidate (one allocation).
    pub fn with(&self, value: std::fmt::Arguments<'_>) -> String {
        use std::fmt::Write;
        let mut s = String::with_capacity(self.head.len() + self.tail.len() + 48);
        s.push_str(&self.head);
        let _ = s.write_fmt(value);
        s.push_str(&self.tail);
        s
    }
}

pub fn register(tid: &str, room: &str) -> String {
    format!(r#"{{"class":"request","method":"register","transaction_id":"{tid}","room_id":"{room}"}}"#)
}

pub fn unregister(tid: &str, room: &str) -> String {
    format!(r#"{{"class":"request","method":"unregister","transaction_id":"{tid}","room_id":"{room}"}}"#)
}

pub fn call(tid: &str, guest: &str, room: &str, sdp: &str) -> String {
    format!(
        r#"{{"class":"request","method":"call","transaction_id":"{tid}","guest_id":"{guest}","room_id":"{room}","type":"play","vhost":"__defaultVhost__","app":"live","stream":"bench","sdp":"{sdp}"}}"#
    )
}

pub fn accept(tid: &str, guest: &str, room: &str, sdp: &str) -> String {
    format!(
        r#"{{"class":"accept","method":"call","transaction_id":"{tid}","guest_id":"{guest}","room_id":"{room}","type":"play","vhost":"__defaultVhost__","app":"live","stream":"bench","sdp":"{sdp}"}}"#
    )
}

pub fn candidate(guest: &str, room: &str, value: &str) -> String {
    format!(
        r#"{{"class":"indication","method":"candidate","transaction_id":"c","guest_id":"{guest}","room_id":"{room}","candidate":"{value}","ufrag":"benchufrag","pwd":"benchpasswordbenchpassword"}}"#
    )
}

pub fn bye(guest: &str, room: &str) -> String {
    format!(r#"{{"class":"indication","method":"bye","transaction_id":"b","guest_id":"{guest}","room_id":"{room}"}}"#)
}

/// A Chrome-like SDP of about `size` bytes, JSON-escaped (`\r\n` as the two escapes).
pub fn sdp(size: usize, setup: &str) -> String {
    let mut s = String::from(
        "v=0\\r\\no=- 4611731400430051336 2 IN IP4 127.0.0.1\\r\\ns=-\\r\\nt=0 0\\r\\na=group:BUNDLE 0 1\\r\\n\
         a=extmap-allow-mixed\\r\\na=msid-semantic: WMS\\r\\n",
    );
    let block = format!(
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 104 105 106 107 108 109 127 125\\r\\nc=IN IP4 0.0.0.0\\r\\n\
         a=rtcp:9 IN IP4 0.0.0.0\\r\\na=ice-ufrag:Wl0h\\r\\na=ice-pwd:5rbqH5VJUBm+nCBf8PFCBMxq\\r\\n\
         a=ice-options:trickle\\r\\na=fingerprint:sha-256 6B:8B:5D:EA:59:04:20:23:29:C8:87:1C:CC:87:32:BE:DD:8C:66:\
         A5:8E:50:55:AB:3B:E2:D7:92:07:53:3F:A4\\r\\na=setup:{setup}\\r\\na=mid:0\\r\\n\
         a=extmap:1 urn:ietf:params:rtp-hdrext:toffset\\r\\na=recvonly\\r\\na=rtcp-mux\\r\\na=rtcp-rsize\\r\\n\
         a=rtpmap:96 VP8/90000\\r\\na=rtcp-fb:96 goog-remb\\r\\na=rtcp-fb:96 transport-cc\\r\\na=rtcp-fb:96 ccm fir\\r\\n\
         a=rtcp-fb:96 nack\\r\\na=rtcp-fb:96 nack pli\\r\\na=rtpmap:102 H264/90000\\r\\n\
         a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f\\r\\n"
    );
    while s.len() < size {
        s.push_str(&block);
    }
    s.truncate(size);
    // Never cut an escape in half.
    while s.ends_with('\\') {
        s.pop();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_valid_json_and_fields_are_found() {
        let offer = sdp(6000, "actpass");
        let msgs = [
            register("t", "r"),
            unregister("t", "r"),
            call("t", "g", "r", &offer),
            accept("t", "g", "r", &sdp(3000, "active")),
            candidate("g", "r", "bench 1 2"),
            bye("g", "r"),
        ];
        for m in &msgs {
            let v: serde_json::Value = serde_json::from_str(m).unwrap_or_else(|e| panic!("{e}: {m}"));
            assert!(v.is_object());
        }
        assert!(msgs[2].len() > 6000 && msgs[3].len() > 3000);
        assert_eq!(field(&msgs[4], "candidate"), Some("bench 1 2"));
        assert_eq!(field(&msgs[2], "guest_id"), Some("g"));
        assert_eq!(field(&msgs[0], "nope"), None);
        let t = CandidateTemplate::new("g", "r");
        assert_eq!(t.with(format_args!("bench {} {}", 1, 2)), msgs[4]);
    }
}
