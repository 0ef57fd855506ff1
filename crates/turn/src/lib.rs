//! STUN/TURN for switchboard, sans-IO.
//!
//! - [`stun`]: the wire format.
pub mod stun;
