//! What our answers must look like for ZLMediaKit, and what webrtc-rs 0.21 gets wrong about it.
//!
//! Invariants:
//! - The DTLS role of an answer follows the offer (RFC 5763 §5): `a=setup:active` is answered `passive`,
//!   `a=setup:passive` is answered `active`. webrtc-rs 0.21 picks the answer's role from its own settings alone, so
//!   an `active` offer (ZLMediaKit's puller) got `active` back and DTLS never completed; [`answering_role`] tells the
//!   endpoint which role to pin before it answers.
//! - A rejected m-section (port 0) of an answer still carries a direction (`a=inactive`), `a=rtcp-mux` and an
//!   `a=rtpmap` for its payload type: ZLMediaKit's SDP parser asserts on a section without a direction.
//!   [`complete_rejected_sections`] adds only what is missing and touches nothing else.
//! - A caller that *receives* media (`play`) offers `a=setup:passive`, so the remote side is the DTLS client and
//!   its first media can only follow our own Finished ([`offer_as_dtls_server`]). webrtc-rs 0.21's driver feeds a
//!   whole burst of datagrams to the connection before it hands the DTLS "handshake complete" event to the SRTP
//!   layer, so media that lands in the same burst as the remote's Finished is dropped ("remote_srtp_context is not
//!   set yet"). ZLMediaKit starts a player's video at sequence 65534 (two config packets before 0): dropping those
//!   two leaves our receiver's rollover counter at 0 while the sender's is 1, and every later packet fails its auth
//!   tag. As the DTLS server we complete first, and the driver installs the SRTP keys before it reads again. A
//!   caller that *sends* media (`push`) keeps `actpass`: the race is on the receiving side, the remote's.

use rtc::peer_connection::transport::RTCDtlsRole;

/// The DTLS role to answer `offer` with, when the offer fixes one.
pub(crate) fn answering_role(offer: &str) -> Option<RTCDtlsRole> {
    let setup = offer.lines().find_map(|l| l.trim().strip_prefix("a=setup:"))?;
    match setup.trim() {
        "active" => Some(RTCDtlsRole::Server),
        "passive" => Some(RTCDtlsRole::Client),
        _ => None,
    }
}

/// `offer` with its `a=setup:actpass` lines turned into `a=setup:passive` (see the module's invariants).
pub(crate) fn offer_as_dtls_server(offer: &str) -> String {
    offer.replace("a=setup:actpass\r\n", "a=setup:passive\r\n")
}

/// `answer` with every port-0 m-section completed as ZLMediaKit's parser needs; `offer` supplies the rtpmap.
pub(crate) fn complete_rejected_sections(answer: &str, offer: &str) -> String {
    let mut sections = answer.split("\r\nm=");
    let mut out = sections.next().unwrap_or_default().to_owned();
    for section in sections {
        out.push_str("\r\nm=");
        let mut fields = section.split_whitespace();
        let (Some(_kind), Some("0"), Some(_proto), Some(pt)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            out.push_str(section);
            continue;
        };
        let body = section.trim_end_matches("\r\n");
        let has = |prefix: &str| body.split("\r\n").any(|l| l.starts_with(prefix));
        let mut extra = Vec::new();
        if !["a=inactive", "a=sendonly", "a=recvonly", "a=sendrecv"].iter().any(|d| has(d)) {
            extra.push("a=inactive".to_owned());
        }
        if !has("a=rtcp-mux") {
            extra.push("a=rtcp-mux".to_owned());
        }
        let rtpmap = format!("a=rtpmap:{pt} ");
        if !has(&rtpmap) {
            let from_offer = offer.lines().map(str::trim).find(|l| l.starts_with(&rtpmap)).map(str::to_owned);
            let static_pt = match pt {
                "0" => Some(format!("{rtpmap}PCMU/8000")),
                "8" => Some(format!("{rtpmap}PCMA/8000")),
                _ => None,
            };
            extra.extend(from_offer.or(static_pt));
        }
        out.push_str(body);
        for line in extra {
            out.push_str("\r\n");
            out.push_str(&line);
        }
        if section.ends_with("\r\n") {
            out.push_str("\r\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_role_follows_the_offer() {
        assert_eq!(answering_role("v=0\r\na=setup:active\r\n"), Some(RTCDtlsRole::Server));
        assert_eq!(answering_role("v=0\r\na=setup:passive\r\n"), Some(RTCDtlsRole::Client));
        assert_eq!(answering_role("v=0\r\na=setup:actpass\r\n"), None);
        assert_eq!(answering_role("v=0\r\n"), None);
    }

    #[test]
    fn a_receiving_caller_offers_to_be_the_dtls_server() {
        let offer = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=setup:actpass\r\na=mid:0\r\n\
                     m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=setup:actpass\r\na=mid:1\r\n";
        let out = offer_as_dtls_server(offer);
        assert_eq!(out, offer.replace("actpass", "passive"));
        assert_eq!(answering_role(&out), Some(RTCDtlsRole::Client), "the answerer takes the client role");
    }

    #[test]
    fn a_rejected_section_gets_direction_rtcp_mux_and_rtpmap() {
        // What webrtc-rs answered ZLMediaKit's puller: its audio section rejected with only a mid.
        let answer = "v=0\r\ns=-\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=mid:0\r\na=sendonly\r\n\
                      m=audio 0 UDP/TLS/RTP/SAVPF 0\r\na=mid:1\r\n";
        let offer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 8 0 111\r\na=rtpmap:0 PCMU/8000\r\n";
        let out = complete_rejected_sections(answer, offer);
        assert_eq!(
            out,
            "v=0\r\ns=-\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=mid:0\r\na=sendonly\r\n\
             m=audio 0 UDP/TLS/RTP/SAVPF 0\r\na=mid:1\r\na=inactive\r\na=rtcp-mux\r\na=rtpmap:0 PCMU/8000\r\n"
        );
        assert_eq!(complete_rejected_sections(&out, offer), out, "idempotent");
        let live = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=mid:0\r\n";
        assert_eq!(complete_rejected_sections(live, offer), live, "live sections are untouched");
        let dynamic = "v=0\r\nm=audio 0 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\n";
        let offer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n";
        assert!(complete_rejected_sections(dynamic, offer).contains("a=rtpmap:111 opus/48000/2\r\n"));
    }
}
