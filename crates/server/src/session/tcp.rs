//! The session driver for plain TCP: one task, and no per-connection buffer while idle.
//!
//! Invariants:
//! - Reads go into a per-thread buffer ([`SCRATCH`]) and are handled before the task yields; only the bytes of a frame
//!   that is still arriving are copied into the session's own `partial` buffer, which is freed once it empties.
//! - All frames queued while handling one wake-up are written when it ends (see [`crate::outbox::batch`]): each
//!   recipient gets one `writev` per batch, written by this task, and no task switch.
//! - The task waits for the socket to become writable only when a write was refused (`Outbox::blocked`).

use std::cell::RefCell;
use std::future::Future;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::Arc;

use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::sleep_until;
use tracing::{debug, Instrument};

use super::{saw_close, span, Core, End, CLOSE_LINGER};
use crate::auth::Access;
use crate::http::AppState;
use crate::limits::ConnectionSlot;
use crate::outbox::{self, Outbox};
use crate::ws::Decoder;

/// Bytes read per `read` call.
const SCRATCH_SIZE: usize = 64 * 1024;

/// Reads per wake-up before other work gets a turn.
const READS_PER_WAKE: usize = 8;

thread_local! {
    /// Every session's reads land here first; one buffer per runtime thread, not per connection.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_SIZE].into_boxed_slice());
}

/// Serves one websocket over `stream`, whose handshake is done; `early` holds bytes the client sent after it.
///
/// The session is set up before the returned future is built, so that future captures only what the session keeps:
/// an async fn would also keep room for its arguments, which every idle session would pay for.
pub fn run_tcp(
    stream: TcpStream,
    early: Vec<u8>,
    peer: SocketAddr,
    app: AppState,
    access: Access,
    slot: ConnectionSlot,
) -> impl Future<Output = ()> + Send {
    let span = span(peer);
    let stream = Arc::new(stream);
    let outbox = Outbox::new(app.config.outbound_queue, Some(stream.clone()), app.metrics.clone());
    let mut decoder = Decoder::new(app.config.max_message_size);
    let mut core = span.in_scope(|| Core::open(app, access, outbox, slot));
    core.app.metrics.bytes_in.inc_by(early.len() as u64);
    let mut partial = early;
    async move {
        let end = match outbox::batch(|| take(&mut core, &mut decoder, &mut partial, &mut [])) {
            Err(end) => end,
            Ok(()) => serve(&stream, &mut core, &mut decoder, &mut partial).await,
        };
        // The byes to this session's counterparts are written through, like any batch.
        outbox::batch(|| core.close(&end));
        let outbox = &core.outbox;
        let linger = async {
            while !outbox.is_empty() {
                if outbox.blocked() {
                    if stream.writable().await.is_err() {
                        return;
                    }
                    outbox.flush_unblocked();
                } else {
                    outbox.flush();
                }
            }
            if !end.peer_done {
                await_close(&stream, &mut decoder, &mut partial).await;
            }
        };
        // Boxed: closing happens once, and its state must not grow the task every idle session keeps.
        if Box::pin(tokio::time::timeout(CLOSE_LINGER, linger)).await.is_err() {
            debug!("peer did not complete the close handshake");
        }
    }
    .instrument(span)
}

async fn serve(stream: &TcpStream, core: &mut Core, decoder: &mut Decoder, partial: &mut Vec<u8>) -> End {
    let outbox = core.outbox.clone();
    let keepalive = sleep_until(core.first_keepalive());
    let shutdown = core.app.shutdown.clone();
    let shutdown = shutdown.cancelled();
    tokio::pin!(keepalive, shutdown);
    loop {
        let blocked = outbox.blocked();
        tokio::select! {
            biased;
            () = &mut shutdown => return End::shutdown(),
            () = outbox.woken() => {
                if let Some(cause) = outbox.cause() {
                    return End::killed(cause);
                }
                // Frames queued outside any batch (timers, the admin API): write them now.
                outbox.flush();
            }
            // One readiness future for both directions: it is most of what an idle session's task holds.
            ready = stream.ready(if blocked { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE }) => {
                let Ok(ready) = ready else { return End::gone() };
                if ready.is_writable() {
                    outbox.flush_unblocked();
                }
                if ready.is_readable() || ready.is_read_closed() {
                    if let Err(end) = outbox::batch(|| read_ready(stream, core, decoder, partial)) {
                        return end;
                    }
                }
            }
            () = &mut keepalive => match core.on_keepalive() {
                Ok(next) => keepalive.as_mut().reset(next),
                Err(end) => return end,
            },
        }
    }
}

/// Reads what the socket has (a bounded number of reads) and handles every complete frame.
fn read_ready(stream: &TcpStream, core: &mut Core, decoder: &mut Decoder, partial: &mut Vec<u8>) -> Result<(), End> {
    SCRATCH.with_borrow_mut(|scratch| {
        for _ in 0..READS_PER_WAKE {
            let (n, drained) = match read_some(stream, scratch) {
                Ok(read) => read,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => {
                    debug!(error = %e, "read failed");
                    return Err(End::gone());
                }
            };
            if n == 0 {
                return Err(End::gone());
            }
            core.app.metrics.bytes_in.inc_by(n as u64);
            take(core, decoder, partial, &mut scratch[..n])?;
            if drained {
                return Ok(());
            }
        }
        Ok(())
    })
}

/// Handles `fresh` bytes after whatever partial frame is buffered, keeping only an incomplete frame at the end.
fn take(core: &mut Core, decoder: &mut Decoder, partial: &mut Vec<u8>, fresh: &mut [u8]) -> Result<(), End> {
    if partial.is_empty() {
        // The common case: whole frames, handled in place in the per-thread buffer.
        let used = core.on_bytes(decoder, fresh)?;
        partial.extend_from_slice(&fresh[used..]);
        return Ok(());
    }
    partial.extend_from_slice(fresh);
    let used = core.on_bytes(decoder, partial)?;
    partial.drain(..used);
    if partial.is_empty() {
        *partial = Vec::new();
    } else if partial.capacity() > 4 * partial.len().max(1024) {
        partial.shrink_to(partial.len().max(1024));
    }
    Ok(())
}

/// One `read`. A short read also clears the socket's readiness (it is drained), saving the `EAGAIN` read.
pub(crate) fn read_some(stream: &TcpStream, buf: &mut [u8]) -> io::Result<(usize, bool)> {
    let mut short = None;
    let result = stream.try_io(Interest::READABLE, || {
        let n = (&*SockRef::from(stream)).read(buf)?;
        if n > 0 && n < buf.len() {
            short = Some(n);
            return Err(io::ErrorKind::WouldBlock.into()); // tells tokio the socket is drained
        }
        Ok(n)
    });
    match (result, short) {
        (_, Some(n)) => Ok((n, true)),
        (Ok(n), None) => Ok((n, false)),
        (Err(e), None) => Err(e),
    }
}

/// Reads until the peer's close frame or EOF.
async fn await_close(stream: &TcpStream, decoder: &mut Decoder, partial: &mut Vec<u8>) {
    loop {
        if stream.readable().await.is_err() {
            return;
        }
        let done = SCRATCH.with_borrow_mut(|scratch| match read_some(stream, scratch) {
            Ok((0, _)) => true,
            Ok((n, _)) => {
                partial.extend_from_slice(&scratch[..n]);
                saw_close(decoder, partial)
            }
            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
        });
        if done {
            return;
        }
    }
}
