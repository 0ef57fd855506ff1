//! H.264 Annex-B byte streams: splitting into NAL units and grouping them into access units (frames).
//!
//! Invariants:
//! - Every access unit returned holds exactly one coded picture (at least one VCL NAL unit, types 1–5) plus the
//!   non-VCL units that precede it (SPS, PPS, SEI, AUD), each prefixed with a 4-byte start code, in file order.
//! - A new access unit starts at an AUD, SPS, PPS or SEI that follows a picture, or at a slice whose
//!   `first_mb_in_slice` is 0 (H.264 §7.4.1.2.3, simplified: no redundant pictures, no arbitrary slice order).
//! - Non-VCL units after the last picture of the stream are dropped: they describe nothing that is sent.

use bytes::{BufMut, Bytes, BytesMut};

/// The 4-byte Annex-B start code every access unit uses.
pub const START_CODE: [u8; 4] = [0, 0, 0, 1];

/// NAL unit types this module cares about.
const NAL_SEI: u8 = 6;
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;
const NAL_AUD: u8 = 9;
const NAL_IDR: u8 = 5;

fn nal_type(nal: &[u8]) -> u8 {
    nal[0] & 0x1f
}

fn is_vcl(nal: &[u8]) -> bool {
    (1..=5).contains(&nal_type(nal))
}

/// `first_mb_in_slice` is the first field of a slice header, coded ue(v); it is 0 exactly when its first bit is 1.
fn starts_picture(nal: &[u8]) -> bool {
    is_vcl(nal) && nal.get(1).is_some_and(|b| b & 0x80 != 0)
}

/// Splits an Annex-B stream into NAL units (start codes removed; empty units skipped).
pub fn nal_units(data: &[u8]) -> Vec<&[u8]> {
    let mut units = Vec::new();
    let mut start: Option<usize> = None;
    let mut i = 0;
    while i + 2 < data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            if let Some(s) = start {
                // A 4-byte start code leaves one zero byte at the end of the previous unit; trailing zeros are
                // never part of a NAL unit (rbsp_trailing_bits end with a 1 bit).
                let mut end = i;
                while end > s && data[end - 1] == 0 {
                    end -= 1;
                }
                if end > s {
                    units.push(&data[s..end]);
                }
            }
            i += 3;
            start = Some(i);
        } else {
            i += 1;
        }
    }
    if let Some(s) = start {
        if s < data.len() {
            units.push(&data[s..]);
        }
    }
    units
}

/// Groups an Annex-B stream into access units (see the module invariants).
pub fn access_units(data: &[u8]) -> Vec<Bytes> {
    let mut frames = Vec::new();
    let mut current = BytesMut::new();
    let mut has_picture = false;
    for nal in nal_units(data) {
        let ends_previous = match nal_type(nal) {
            NAL_AUD | NAL_SPS | NAL_PPS | NAL_SEI => has_picture,
            _ => has_picture && starts_picture(nal),
        };
        if ends_previous {
            frames.push(std::mem::take(&mut current).freeze());
            has_picture = false;
        }
        current.put_slice(&START_CODE);
        current.put_slice(nal);
        has_picture |= is_vcl(nal);
    }
    if has_picture {
        frames.push(current.freeze());
    }
    frames
}

/// Whether an Annex-B access unit holds an IDR picture (NAL type 5), i.e. decoding can start there.
pub fn is_keyframe(frame: &[u8]) -> bool {
    nal_units(frame).iter().any(|nal| nal_type(nal) == NAL_IDR)
}

/// Whether `data` starts with an Annex-B start code (3 or 4 bytes).
pub fn starts_with_start_code(data: &[u8]) -> bool {
    data.starts_with(&START_CODE) || data.starts_with(&START_CODE[1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPS: &[u8] = &[0x67, 0x42, 0xc0, 0x1e];
    const PPS: &[u8] = &[0x68, 0xce, 0x3c, 0x80];
    const IDR: &[u8] = &[0x65, 0x88, 0x84, 0x21];
    const P_FIRST: &[u8] = &[0x41, 0x9a, 0x02];
    /// A second slice of the same picture (first_mb_in_slice != 0: first bit 0).
    const P_SECOND: &[u8] = &[0x41, 0x40, 0x11];

    fn stream(nals: &[&[u8]], four_byte: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for n in nals {
            out.extend_from_slice(if four_byte { &START_CODE } else { &START_CODE[1..] });
            out.extend_from_slice(n);
        }
        out
    }

    #[test]
    fn splits_nal_units_with_3_and_4_byte_start_codes() {
        for four in [false, true] {
            let s = stream(&[SPS, PPS, IDR], four);
            assert_eq!(nal_units(&s), vec![SPS, PPS, IDR]);
        }
        assert!(nal_units(b"no start code").is_empty());
        assert!(nal_units(&[]).is_empty());
    }

    #[test]
    fn groups_parameter_sets_with_the_next_picture_and_slices_into_one_frame() {
        let s = stream(&[SPS, PPS, IDR, P_FIRST, P_SECOND, P_FIRST, SPS], true);
        let frames = access_units(&s);
        assert_eq!(frames.len(), 3, "{frames:?}");
        assert_eq!(&frames[0][..], &stream(&[SPS, PPS, IDR], true)[..]);
        assert_eq!(&frames[1][..], &stream(&[P_FIRST, P_SECOND], true)[..]);
        assert_eq!(&frames[2][..], &stream(&[P_FIRST], true)[..]);
        assert!(frames.iter().all(|f| starts_with_start_code(f)));
        assert!(is_keyframe(&frames[0]) && !is_keyframe(&frames[1]));
    }

    #[test]
    fn aud_starts_a_new_frame() {
        let aud: &[u8] = &[0x09, 0xf0];
        let s = stream(&[aud, IDR, aud, P_SECOND], false);
        let frames = access_units(&s);
        assert_eq!(frames.len(), 2);
        assert_eq!(&frames[1][..], &stream(&[aud, P_SECOND], true)[..]);
    }
}
