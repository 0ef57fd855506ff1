//! The TLS listener: wss signaling and https for the same routes, via rustls (ring provider). The `turns:` listener
//! (crate::turn) uses the same certificate.
//!
//! Handshakes run in their own tasks with a deadline, so a slow or silent client never holds up others; only
//! finished handshakes reach the HTTP server. The certificate comes from PEM files, or is generated self-signed for
//! development (`--dev-tls`).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Finished handshakes waiting for the HTTP server.
const READY_QUEUE: usize = 256;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS {what} {path}: {reason}")]
    Read { what: &'static str, path: String, reason: String },
    #[error("invalid TLS certificate or key: {0}")]
    Config(String),
}

/// A server config from PEM files.
pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let read = |what, path: &Path, e: String| TlsError::Read { what, path: path.display().to_string(), reason: e };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| read("certificate", cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| read("certificate", cert, e.to_string()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| read("key", key, e.to_string()))?;
    server_config(certs, key)
}

/// A self-signed development certificate.
pub struct SelfSigned {
    pub config: Arc<ServerConfig>,
    /// The certificate, PEM.
    pub pem: String,
    /// base64(SHA-256(SubjectPublicKeyInfo)): what Chromium's `--ignore-certificate-errors-spki-list` takes to trust
    /// this one certificate (wss and `turns:` both) without turning certificate checks off.
    pub spki_sha256: String,
}

/// A self-signed certificate for `localhost`, 127.0.0.1, `ips` and `host`.
pub fn self_signed(ips: &[IpAddr], host: Option<&str>) -> Result<SelfSigned, TlsError> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    names.extend(ips.iter().map(IpAddr::to_string));
    names.extend(host.map(str::to_owned));
    let cert = rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Config(e.to_string()))?;
    let pem = cert.cert.pem();
    let spki_sha256 = {
        use base64::Engine;
        use sha2::Digest;
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(cert.key_pair.public_key_der()))
    };
    let key = PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    Ok(SelfSigned { config: server_config(vec![cert.cert.der().clone()], key)?, pem, spki_sha256 })
}

fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts TCP connections and hands over those that completed the TLS handshake.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `listener`; the acceptor task ends when this listener is dropped.
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>, send_buffer: usize) -> io::Result<TlsListener> {
        let local_addr = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        let acceptor = TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    _ = tx.closed() => return,
                    r = listener.accept() => match r {
                        Ok(v) => v,
                        Err(e) => {
                            debug!(error = %e, "tls accept failed");
                            continue;
                        }
                    },
                };
                crate::listener::tune(&tcp, send_buffer);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => debug!(peer = %peer, error = %e, "tls handshake failed"),
                        Err(_) => debug!(peer = %peer, "tls handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { ready, local_addr })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}
