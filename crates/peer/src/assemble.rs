//! Reassembles H.264 access units (frames) from RTP packets (RFC 6184: single NAL, STAP-A, FU-A).
//!
//! Invariants:
//! - A frame is emitted only when its marker packet arrives and every packet since the previous frame arrived in
//!   sequence; a gap or a timestamp change without a marker drops the frame in progress (counted in
//!   [`Assembler::dropped`]) instead of emitting a corrupt one.
//! - Emitted frames are Annex-B (each NAL unit prefixed by a start code), so concatenating them is a playable
//!   `.h264` stream.
//! - Packets with an empty payload (padding) are ignored without breaking the frame.

use bytes::{Bytes, BytesMut};
use rtc::rtp::codec::h264::H264Packet;
use rtc::rtp::packetizer::Depacketizer;
use rtc::rtp::Packet;

/// Turns an RTP packet stream into frames.
#[derive(Default)]
pub struct Assembler {
    depacketizer: H264Packet,
    frame: BytesMut,
    timestamp: Option<u32>,
    next_seq: Option<u16>,
    /// The frame in progress lost a packet (or failed to parse); it will be dropped.
    broken: bool,
    dropped: u64,
}

impl Assembler {
    /// Feeds one packet; returns a frame when this packet completes one.
    pub fn push(&mut self, packet: &Packet) -> Option<Bytes> {
        let h = &packet.header;
        let gap = self.next_seq.is_some_and(|expected| expected != h.sequence_number);
        self.next_seq = Some(h.sequence_number.wrapping_add(1));
        if self.timestamp.is_some_and(|ts| ts != h.timestamp) {
            // The previous frame never saw its marker.
            self.dropped += 1;
            self.reset();
        }
        if gap {
            // The missing packet may belong to this frame: it cannot be trusted.
            self.broken = true;
        }
        self.timestamp = Some(h.timestamp);
        if !packet.payload.is_empty() && !self.broken {
            match self.depacketizer.depacketize(&packet.payload) {
                Ok(data) => self.frame.extend_from_slice(&data),
                Err(e) => {
                    tracing::debug!(error = %e, "undecodable H.264 payload");
                    self.broken = true;
                }
            }
        }
        if !h.marker {
            return None;
        }
        let frame = if self.broken {
            self.dropped += 1;
            None
        } else {
            (!self.frame.is_empty()).then(|| std::mem::take(&mut self.frame).freeze())
        };
        self.reset();
        frame
    }

    /// Frames dropped because a packet was missing or unreadable.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Starts a new frame; a half-received FU-A must not leak into it.
    fn reset(&mut self) {
        self.frame.clear();
        self.depacketizer = H264Packet::default();
        self.broken = false;
        self.timestamp = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtp::Header;

    fn packet(seq: u16, ts: u32, marker: bool, payload: &[u8]) -> Packet {
        Packet {
            header: Header { sequence_number: seq, timestamp: ts, marker, ..Default::default() },
            payload: Bytes::copy_from_slice(payload),
        }
    }

    #[test]
    fn single_nal_stap_a_and_fu_a_make_annex_b_frames() {
        let mut a = Assembler::default();
        // STAP-A carrying SPS and PPS, then an IDR split into two FU-A fragments.
        let stap = [0x78, 0, 2, 0x67, 0x42, 0, 2, 0x68, 0xce];
        assert!(a.push(&packet(10, 90, false, &stap)).is_none());
        assert!(a.push(&packet(11, 90, false, &[0x7c, 0x85, 0xaa])).is_none());
        let f = a.push(&packet(12, 90, true, &[0x7c, 0x45, 0xbb])).expect("frame");
        assert_eq!(&f[..], &[0, 0, 0, 1, 0x67, 0x42, 0, 0, 0, 1, 0x68, 0xce, 0, 0, 0, 1, 0x65, 0xaa, 0xbb]);
        let f = a.push(&packet(13, 180, true, &[0x41, 0x9a, 0x07])).expect("frame");
        assert_eq!(&f[..], &[0, 0, 0, 1, 0x41, 0x9a, 0x07]);
        assert_eq!(a.dropped(), 0);
    }

    #[test]
    fn a_gap_drops_the_frame_and_the_next_one_is_clean() {
        let mut a = Assembler::default();
        assert!(a.push(&packet(1, 90, false, &[0x7c, 0x85, 0xaa])).is_none());
        // Packet 2 (the FU-A end) is lost; the marker packet of the same frame arrives.
        assert!(a.push(&packet(3, 90, true, &[0x41, 0x9a, 0x07])).is_none());
        assert_eq!(a.dropped(), 1);
        assert_eq!(&a.push(&packet(4, 180, true, &[0x41, 0x9b, 0x07])).unwrap()[..], &[0, 0, 0, 1, 0x41, 0x9b, 0x07]);
    }

    #[test]
    fn a_lost_marker_is_detected_by_the_timestamp_change() {
        let mut a = Assembler::default();
        assert!(a.push(&packet(1, 90, false, &[0x41, 0x01, 0x07])).is_none());
        // The marker packet (seq 2) is lost; the next frame starts at seq 3 with a new timestamp.
        let f = a.push(&packet(3, 180, true, &[0x41, 0x02, 0x07]));
        assert!(f.is_none(), "the gap also breaks the frame that starts at the gap");
        assert_eq!(&a.push(&packet(4, 270, true, &[0x41, 0x03, 0x07])).unwrap()[..], &[0, 0, 0, 1, 0x41, 0x03, 0x07]);
        // In order, but a new timestamp without a marker on the previous frame.
        assert!(a.push(&packet(5, 360, false, &[0x41, 0x04, 0x07])).is_none());
        assert_eq!(&a.push(&packet(6, 450, true, &[0x41, 0x05, 0x07])).unwrap()[..], &[0, 0, 0, 1, 0x41, 0x05, 0x07]);
        assert_eq!(a.dropped(), 3);
    }

    #[test]
    fn padding_is_ignored() {
        let mut a = Assembler::default();
        assert!(a.push(&packet(1, 90, false, &[0x41, 0x01, 0x07])).is_none());
        assert!(a.push(&packet(2, 90, false, &[])).is_none());
        assert_eq!(
            &a.push(&packet(3, 90, true, &[0x41, 0x02, 0x07])).unwrap()[..],
            &[0, 0, 0, 1, 0x41, 0x01, 0x07, 0, 0, 0, 1, 0x41, 0x02, 0x07]
        );
    }
}
