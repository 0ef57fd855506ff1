//! An in-process listener: connections are in-memory duplex pipes instead of TCP sockets.
//!
//! Above the byte stream it is the server's own code: HTTP upgrade through hyper, the websocket framing, the session
//! core and the hub (plain TCP differs only in its driver, `session::tcp`).
//! It exists for tests that run in paused (virtual) time: with real sockets, every wait on the kernel lets tokio's
//! paused clock jump to the next timer, so timer tests cannot be exact. Pipes wake their reader directly, and the clock
//! moves only when every task is really idle.

use std::io;
use std::net::SocketAddr;

use tokio::io::DuplexStream;
use tokio::sync::mpsc;

/// Bytes buffered in each direction of one pipe.
const PIPE_CAPACITY: usize = 64 * 1024;

/// Accepts pipes opened by its [`MemoryConnector`].
pub struct MemoryListener {
    incoming: mpsc::Receiver<(DuplexStream, SocketAddr)>,
}

/// Opens connections to a [`MemoryListener`]. Cheap to clone.
#[derive(Clone)]
pub struct MemoryConnector {
    tx: mpsc::Sender<(DuplexStream, SocketAddr)>,
    next_port: std::sync::Arc<std::sync::atomic::AtomicU16>,
}

/// A listener and the connector that reaches it.
pub fn pair() -> (MemoryListener, MemoryConnector) {
    let (tx, incoming) = mpsc::channel(64);
    let next_port = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(1));
    (MemoryListener { incoming }, MemoryConnector { tx, next_port })
}

impl MemoryConnector {
    /// Opens a connection; the other end is handed to the listener.
    pub async fn connect(&self) -> io::Result<DuplexStream> {
        let (client, server) = tokio::io::duplex(PIPE_CAPACITY);
        let port = self.next_port.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let peer = SocketAddr::from(([127, 0, 0, 1], port));
        self.tx
            .send((server, peer))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::ConnectionRefused, "memory listener closed"))?;
        Ok(client)
    }
}

impl axum::serve::Listener for MemoryListener {
    type Io = DuplexStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.recv().await {
            Some(conn) => conn,
            // Every connector is gone: no connection will ever come again.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(SocketAddr::from(([0, 0, 0, 0], 0)))
    }
}
