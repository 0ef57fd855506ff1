//! The plain-TCP signaling listener. It reads each connection's request head itself: a websocket upgrade (on any
//! path) becomes a session on the raw socket, with no HTTP server in between; anything else is handed, bytes
//! untouched, to the HTTP server (hyper + the axum router).
//!
//! Why not let the HTTP server do the upgrade: hyper's upgrade keeps a task and buffers per connection until the
//! upgrade completes, and hands back a generic stream that can only be read through a buffer of its own. Signaling
//! connections are nearly all upgrades, and most of an idle room's memory and of a short session's CPU went there
//! (see `BENCHMARKS.md`).
//!
//! Invariants:
//! - Every connection runs in one task tracked by `AppState::sessions`, so shutdown waits for it.
//! - A connection that does not complete its request head within [`HEAD_TIMEOUT`] is dropped; a head is at most
//!   [`handshake::MAX_HEAD`] bytes.
//! - Accept errors (a full file table, a connection reset before accept) never end the listener; while the process
//!   is out of descriptors, new connections are answered 503 and closed ([`crate::fd_reserve`]), not left hanging.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::auth::Access;
use crate::fd_reserve::FdReserve;
use crate::http::{admit_upgrade, AppState};
use crate::limits::ConnectionSlot;
use crate::session;
use crate::ws::handshake::{self, Head};

/// How long a new connection may take to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a refused connection's remaining input is drained before it is closed.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// The largest a session's task may be: every idle room holds one (checked in debug builds, whose futures are
/// larger than release ones).
const MAX_SESSION_TASK: usize = 2048;

/// Socket options of every accepted signaling connection (plain or TLS).
pub fn tune(tcp: &TcpStream, send_buffer: usize) {
    // Signaling is small request/response messages: never wait for Nagle.
    let _ = tcp.set_nodelay(true);
    // A fixed send buffer bounds what a reader that stopped reading can hold in the kernel; past it, its outbound
    // queue fills and it is cut off (`signaling.send-buffer`).
    if send_buffer != 0 {
        if let Err(e) = socket2::SockRef::from(tcp).set_send_buffer_size(send_buffer) {
            debug!(error = %e, "SO_SNDBUF refused");
        }
    }
}

/// Accepts connections until `stop` completes.
pub async fn serve(listener: TcpListener, app: AppState, router: Router, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let mut reserve = FdReserve::new();
    let mut exhausted = false;
    loop {
        let accepted = tokio::select! {
            () = &mut stop => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                exhausted = false;
                tune(&tcp, app.config.send_buffer);
                let sessions = app.sessions.clone();
                sessions.spawn(connection(tcp, peer, app.clone(), router.clone()));
            }
            Err(e) if FdReserve::is_exhaustion(&e) => {
                if !exhausted {
                    warn!(error = %e, "out of file descriptors: refusing new connections with 503 until some close");
                    exhausted = true;
                }
                if !reserve.shed(&listener) {
                    tokio::select! {
                        () = &mut stop => return,
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, "accept failed");
                // Out of memory or the like: give sessions time to end before trying again.
                if !matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset) {
                    tokio::select! {
                        () = &mut stop => return,
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
        }
    }
}

/// One accepted connection: its request head decides what it is. A websocket session then runs as a task of its
/// own, so that the state of this handshake is not part of the task every idle room keeps.
async fn connection(tcp: TcpStream, peer: SocketAddr, app: AppState, router: Router) {
    let Some((tcp, early, access, slot)) = handshake(tcp, peer, &app, router).await else { return };
    let session = session::run_tcp(tcp, early, peer, app.clone(), access, slot);
    debug_assert!(std::mem::size_of_val(&session) <= MAX_SESSION_TASK, "{}", std::mem::size_of_val(&session));
    app.sessions.spawn(session);
}

/// Reads the request head and answers it. Returns the upgraded connection (with any bytes that followed the head)
/// and its admission, or `None` when the connection was something else and has been served or refused.
async fn handshake(
    mut tcp: TcpStream,
    peer: SocketAddr,
    app: &AppState,
    router: Router,
) -> Option<(TcpStream, Vec<u8>, Access, ConnectionSlot)> {
    let mut head = Vec::new();
    let parsed = tokio::time::timeout(HEAD_TIMEOUT, read_head(&tcp, &mut head)).await;
    let upgrade = match parsed {
        Ok(Ok(Head::Upgrade(upgrade))) => upgrade,
        Ok(Ok(Head::Http)) => {
            serve_http(tcp, head, peer, app.clone(), router).await;
            return None;
        }
        Ok(Ok(Head::Partial)) | Err(_) => return None, // EOF, error or too slow
        Ok(Err(refusal)) => {
            debug!(%peer, %refusal, "upgrade refused");
            refuse(tcp, &refusal.response()).await;
            return None;
        }
    };
    let (access, slot) = match admit_upgrade(app, peer, upgrade.token.as_deref()) {
        Ok(admitted) => admitted,
        Err(refusal) => {
            refuse(tcp, &refusal.response()).await;
            return None;
        }
    };
    tcp.write_all(&handshake::accept_response(&upgrade.accept)).await.ok()?;
    let early = head.split_off(upgrade.len);
    Some((tcp, early, access, slot))
}

/// Sends an error response and closes. The client may still be sending (a head too large, say): closing with unread
/// bytes would reset the connection and destroy the response, so the rest is read and dropped for a moment first.
async fn refuse(mut tcp: TcpStream, response: &[u8]) {
    if tcp.write_all(response).await.is_err() || tcp.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut sink = vec![0; 4096];
        let mut left: usize = 256 * 1024;
        while left > 0 {
            match tcp.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, drain).await;
}

/// Reads until `head` holds a whole request head (or more).
async fn read_head(tcp: &TcpStream, head: &mut Vec<u8>) -> Result<Head, handshake::Refusal> {
    const CHUNK: usize = 1024;
    loop {
        if tcp.readable().await.is_err() {
            return Ok(Head::Partial);
        }
        let filled = head.len();
        head.resize(filled + CHUNK, 0);
        // A short read leaves the socket marked drained, so the session does not start with a wasted `read`.
        let read = session::read_some(tcp, &mut head[filled..]);
        head.truncate(filled + *read.as_ref().map_or(&0, |(n, _)| n));
        match read {
            Ok((0, _)) => return Ok(Head::Partial),
            Ok(_) => match handshake::parse(head)? {
                Head::Partial => {}
                done => return Ok(done),
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return Ok(Head::Partial),
        }
    }
}

/// Hands a plain HTTP connection to the HTTP server, replaying the bytes already read.
async fn serve_http(tcp: TcpStream, head: Vec<u8>, peer: SocketAddr, app: AppState, router: Router) {
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let router = router.clone();
        async move {
            Ok::<_, Infallible>(router.oneshot(req.map(axum::body::Body::new)).await.unwrap_or_else(|e| match e {}))
        }
    });
    let io = TokioIo::new(Replay { head, at: 0, io: tcp });
    // A request whose head arrives during shutdown is still answered (`/readyz` says 503 then): hyper's graceful
    // shutdown would close a connection whose request it has not read yet, so such a connection instead serves this
    // one request without keep-alive. Connections that were open before shutdown finish their request and close.
    let shutting_down = app.shutdown.is_cancelled();
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(!shutting_down)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = if shutting_down {
        conn.await
    } else {
        tokio::select! {
            result = conn.as_mut() => result,
            () = app.shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    };
    if let Err(e) = result {
        debug!(%peer, error = %e, "http connection failed");
    }
}

/// A stream that first yields bytes already read from it.
struct Replay<S> {
    head: Vec<u8>,
    at: usize,
    io: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.head.len() {
            let n = buf.remaining().min(this.head.len() - this.at);
            buf.put_slice(&this.head[this.at..this.at + n]);
            this.at += n;
            if this.at == this.head.len() {
                this.head = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replay_yields_the_head_then_the_stream() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b" world").await.unwrap();
        drop(a);
        let mut r = Replay { head: b"hello".to_vec(), at: 0, io: b };
        let mut out = String::new();
        r.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }
}
