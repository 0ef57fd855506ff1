//! The session driver for any byte stream (TLS, in-memory pipes, connections upgraded through the HTTP server): a
//! reader (this task) and a writer task fed by the outbox.
//!
//! Invariants:
//! - The writer is the only task that writes to the stream; it writes everything the outbox holds in one
//!   `write_all` + `flush`, and ends after the close frame.
//! - Every wake-up of the outbox reaches the writer: this task forwards it, and the closing path wakes it once more.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::Notify;
use tokio::time::sleep_until;
use tracing::{debug, Instrument};

use super::{saw_close, span, Core, End, CLOSE_LINGER};
use crate::auth::Access;
use crate::http::AppState;
use crate::limits::ConnectionSlot;
use crate::outbox::{self, Cause, Outbox};
use crate::ws::Decoder;

/// Serves one websocket over `io`, whose handshake is done.
pub async fn run_stream<S>(io: S, peer: SocketAddr, app: AppState, access: Access, slot: ConnectionSlot)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    async move {
        let (mut reader, writer) = tokio::io::split(io);
        let outbox = Outbox::new(app.config.outbound_queue, None, app.metrics.clone());
        let writer_wake = Arc::new(Notify::new());
        let mut writer = tokio::spawn(write_loop(writer, outbox.clone(), writer_wake.clone()));
        let shutdown = app.shutdown.clone();
        let read_size = app.config.read_buffer_size;
        let mut decoder = Decoder::new(app.config.max_message_size);
        let mut core = Core::open(app, access, outbox.clone(), slot);
        let mut buf = Vec::with_capacity(read_size);

        let end = {
            let keepalive = sleep_until(core.first_keepalive());
            tokio::pin!(keepalive);
            loop {
                if buf.capacity() - buf.len() < read_size / 4 {
                    buf.reserve(read_size);
                }
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break End::shutdown(),
                    () = outbox.woken() => {
                        if let Some(cause) = outbox.cause() {
                            break End::killed(cause);
                        }
                        writer_wake.notify_one();
                    }
                    read = reader.read_buf(&mut buf) => match read {
                        Ok(0) | Err(_) => break End::gone(),
                        Ok(n) => match outbox::batch(|| {
                            core.app.metrics.bytes_in.inc_by(n as u64);
                            core.on_bytes(&mut decoder, &mut buf)
                        }) {
                            Ok(used) => {
                                buf.drain(..used);
                            }
                            Err(end) => break end,
                        },
                    },
                    () = &mut keepalive => match core.on_keepalive() {
                        Ok(next) => keepalive.as_mut().reset(next),
                        Err(end) => break end,
                    },
                }
            }
        };
        outbox::batch(|| core.close(&end));
        writer_wake.notify_one();
        let linger = async {
            let _ = (&mut writer).await;
            if !end.peer_done {
                await_close(&mut reader, &mut decoder, &mut buf).await;
            }
        };
        if tokio::time::timeout(CLOSE_LINGER, linger).await.is_err() {
            debug!("peer did not complete the close handshake");
            writer.abort();
        }
    }
    .instrument(span(peer))
    .await
}

/// Writes what the outbox holds whenever woken, until the close frame is out.
async fn write_loop<S: AsyncWrite>(mut writer: WriteHalf<S>, outbox: Outbox, wake: Arc<Notify>) {
    let mut frames: Vec<Bytes> = Vec::new();
    let mut buf = Vec::new();
    loop {
        let closing = outbox.take(&mut frames);
        if frames.is_empty() {
            if closing {
                let _ = writer.shutdown().await;
                return;
            }
            wake.notified().await;
            continue;
        }
        buf.clear();
        for frame in frames.drain(..) {
            buf.extend_from_slice(&frame);
        }
        if writer.write_all(&buf).await.is_err() || writer.flush().await.is_err() {
            outbox.kill(Cause::Closed);
            return;
        }
        outbox.wrote(buf.len());
    }
}

/// Reads until the peer's close frame or EOF.
async fn await_close<S: AsyncRead>(reader: &mut ReadHalf<S>, decoder: &mut Decoder, buf: &mut Vec<u8>) {
    loop {
        buf.reserve(1024);
        match reader.read_buf(buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) if saw_close(decoder, buf) => return,
            Ok(_) => {}
        }
    }
}
