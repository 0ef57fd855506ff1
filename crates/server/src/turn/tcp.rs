//! STUN/TURN over TCP and over TLS (`turns:`): framing of STUN messages and ChannelData on a byte stream (RFC 8656
//! §12.5). A TLS connection is a TCP one with a rustls handshake first; from then on both are served alike, by the
//! same engine, under the same limits.
//!
//! A frame is either a STUN message (20-byte header, length in bytes 2–3) or ChannelData (4-byte header, first byte
//! 0x40–0x7F, length padded to a multiple of four). Anything else ends the connection. Each connection is one client:
//! when it closes, its allocation is freed at once.
//!
//! Limits, so that idle sockets cannot pile up: one source IP holds at most `turn.tcp-connections-per-ip`
//! connections (more are closed at accept), and a connection that goes `turn.tcp-unallocated-timeout` without an
//! allocation (it sent nothing, half a message, or no Allocate that succeeded) is closed; one whose allocation has
//! gone is closed within one more timeout.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use switchboard_turn::{Client, Transport};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use super::{drain_events, now, queue, Outgoing, Shared, TCP_QUEUE};

/// Bytes of queued frames written to a stream client at once.
const WRITE_BATCH: usize = 64 * 1024;

/// Accepts TURN-over-TCP connections, or with `tls` TURN-over-TLS ones (`turns:`), until the server stops.
pub(super) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, tls: Option<TlsAcceptor>) {
    let transport = if tls.is_some() { Transport::Tls } else { Transport::Tcp };
    loop {
        let (stream, addr) = tokio::select! {
            _ = shared.stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    debug!(error = %e, ?transport, "turn stream accept failed");
                    continue;
                }
            },
        };
        {
            let mut st = shared.state.lock();
            let open = st.tcp_per_ip.entry(addr.ip()).or_insert(0);
            if *open >= shared.tcp_per_ip {
                debug!(peer = %addr, open = *open, ?transport, "turn stream: too many connections from this address; closing");
                shared.tcp_refused.fetch_add(1, Relaxed);
                continue; // dropping the stream closes it
            }
            *open += 1;
        }
        let _ = stream.set_nodelay(true);
        let client = Client { transport, addr };
        let (conn_shared, tls) = (shared.clone(), tls.clone());
        shared.tasks.spawn(async move {
            let shared = conn_shared;
            // The handshake counts towards the time a connection may go without an allocation.
            let deadline = Instant::now() + shared.tcp_unallocated_timeout;
            let serve = async {
                match tls {
                    None => connection(&shared, stream, client, deadline).await,
                    Some(acceptor) => match timeout_at(deadline, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => connection(&shared, stream, client, deadline).await,
                        Ok(Err(e)) => debug!(peer = %addr, error = %e, "turns: TLS handshake failed"),
                        Err(_) => {
                            debug!(peer = %addr, "turns: no TLS handshake within the timeout; closing");
                            shared.tcp_unallocated.fetch_add(1, Relaxed);
                        }
                    },
                }
            };
            tokio::select! {
                _ = shared.stop.cancelled() => {}
                () = serve => {}
            }
            closed(&shared, client);
        });
    }
}

/// The length of the frame at the start of `buf`, once its header is there; `Err` for a stream that is not TURN.
fn frame_len(buf: &[u8]) -> Result<Option<usize>, ()> {
    let Some(&first) = buf.first() else { return Ok(None) };
    match first {
        0x00..=0x3F => {
            if buf.len() < 4 {
                return Ok(None);
            }
            Ok(Some(20 + u16::from_be_bytes([buf[2], buf[3]]) as usize))
        }
        0x40..=0x7F => {
            if buf.len() < 4 {
                return Ok(None);
            }
            let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
            Ok(Some(4 + ((len + 3) & !3)))
        }
        _ => Err(()),
    }
}

/// Serves one connection's frames until it ends; the caller cleans up.
async fn connection<S>(shared: &Arc<Shared>, stream: S, client: Client, mut deadline: Instant)
where
    S: AsyncRead + AsyncWrite + Send,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(TCP_QUEUE);
    shared.state.lock().tcp_clients.insert(client, tx);
    let writer = async {
        // Over TCP, frames queued meanwhile leave together in one write. Over TLS each frame stays one record of its
        // own: with several frames in one record, coturn's turnutils_uclient lost some of them (4 of 40, every run),
        // and other clients may read TLS the same way.
        let coalesce = client.transport == Transport::Tcp;
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        while let Some(frame) = rx.recv().await {
            if !coalesce {
                if wr.write_all(&frame).await.is_err() {
                    return;
                }
            } else {
                batch.clear();
                batch.extend_from_slice(&frame);
                while batch.len() < WRITE_BATCH {
                    match rx.try_recv() {
                        Ok(frame) => batch.extend_from_slice(&frame),
                        Err(_) => break,
                    }
                }
                if wr.write_all(&batch).await.is_err() {
                    return;
                }
            }
            // TLS buffers what it encrypts; push it out unless more frames are already queued.
            if rx.is_empty() && wr.flush().await.is_err() {
                return;
            }
        }
    };
    let reader = async {
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 16 * 1024];
        loop {
            // Every whole frame of this read, under one lock; their datagrams leave as a batch after it.
            let handled = Outgoing::with(&shared.udp, |out| {
                let mut st = shared.state.lock();
                let mut at = 0;
                while let Ok(Some(len)) = frame_len(&buf[at..]) {
                    if buf.len() - at < len {
                        break;
                    }
                    let produced = st.engine.handle_client(now(), client, &buf[at..at + len]);
                    queue(&st, out, produced);
                    drain_events(shared, &mut st, out);
                    at += len;
                }
                at
            });
            buf.drain(..handled);
            if frame_len(&buf).is_err() {
                return;
            }
            // The allocation is looked at only when the deadline passes, never per read (the relay path).
            match timeout_at(deadline, rd.read(&mut chunk)).await {
                Ok(Ok(0) | Err(_)) => return,
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                // With an allocation its lifetime rules: look again one timeout later. Without one: closed.
                Err(_) if shared.state.lock().engine.has_allocation(client) => {
                    deadline = Instant::now() + shared.tcp_unallocated_timeout;
                }
                Err(_) => {
                    debug!(peer = %client.addr, transport = ?client.transport, "turn stream: no allocation within the timeout; closing");
                    shared.tcp_unallocated.fetch_add(1, Relaxed);
                    return;
                }
            }
        }
    };
    tokio::select! {
        () = reader => {}
        () = writer => {}
    }
}

/// Forgets a connection that ended, and frees its allocation at once.
fn closed(shared: &Arc<Shared>, client: Client) {
    Outgoing::with(&shared.udp, |out| {
        let mut st = shared.state.lock();
        st.tcp_clients.remove(&client);
        if let Some(open) = st.tcp_per_ip.get_mut(&client.addr.ip()) {
            *open -= 1;
            if *open == 0 {
                st.tcp_per_ip.remove(&client.addr.ip());
            }
        }
        st.engine.client_gone(client);
        drain_events(shared, &mut st, out);
    });
}

#[cfg(test)]
mod tests {
    use super::frame_len;

    #[test]
    fn framing_of_stun_and_padded_channel_data() {
        assert_eq!(frame_len(&[]), Ok(None));
        assert_eq!(frame_len(&[0x00, 0x01, 0x00]), Ok(None));
        assert_eq!(frame_len(&[0x00, 0x01, 0x00, 0x08]), Ok(Some(28)));
        assert_eq!(frame_len(&[0x40, 0x00, 0x00, 0x05]), Ok(Some(12)));
        assert_eq!(frame_len(&[0x40, 0x00, 0x00, 0x04]), Ok(Some(8)));
        assert_eq!(frame_len(&[0x80, 0, 0, 0]), Err(()));
    }
}
