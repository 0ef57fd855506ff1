//! A spare file descriptor, kept so that the listener can still refuse connections cleanly when the process runs out
//! of descriptors.
//!
//! When `accept` fails with EMFILE/ENFILE the pending connection stays in the kernel's backlog: its client sees a
//! connected socket that never answers, and the listener would wake again at once for the same connection. With one
//! descriptor held in reserve (on `/dev/null`), the listener frees it, accepts the waiting connection, answers it
//! `503 Service Unavailable` and closes it, then takes the reserve back (the well-known trick of libev and nginx).
//!
//! Invariants:
//! - At most one descriptor is held; it is released only for the moment of one accept.
//! - A shed connection gets the whole 503 in one non-blocking write or nothing: shedding never waits on a client.

use std::fs::File;
use std::io;

use futures_util::FutureExt;
use tokio::net::TcpListener;

const REFUSAL: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 21\r\nConnection: close\r\n\r\nout of file handles\r\n";

/// The reserve descriptor.
pub struct FdReserve(Option<File>);

impl FdReserve {
    pub fn new() -> FdReserve {
        FdReserve(File::open("/dev/null").ok())
    }

    /// Whether `e` is the process or the system running out of descriptors.
    pub fn is_exhaustion(e: &io::Error) -> bool {
        // EMFILE, ENFILE (the same numbers on every Linux architecture).
        matches!(e.raw_os_error(), Some(24) | Some(23))
    }

    /// Refuses one waiting connection with a 503, using the reserve. False when there was no reserve to use (the
    /// caller should then back off) or nothing to accept.
    pub fn shed(&mut self, listener: &TcpListener) -> bool {
        if self.0.take().is_none() {
            self.0 = File::open("/dev/null").ok();
            return false;
        }
        // The failed accept left the listener readable: this poll does the accept(2) now, or gives up.
        let shed = match listener.accept().now_or_never() {
            Some(Ok((tcp, _))) => {
                let _ = tcp.try_write(REFUSAL);
                true
            }
            _ => false,
        };
        self.0 = File::open("/dev/null").ok();
        shed
    }
}

impl Default for FdReserve {
    fn default() -> Self {
        Self::new()
    }
}
