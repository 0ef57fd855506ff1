//! wss and https with a certificate generated in the test.

mod common;

use std::sync::Arc;

use switchboard_client::{Client, ClientConfig};
use switchboard_server::{Config, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn client_tls(cert_der: rustls_pki_types::CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

#[tokio::test]
async fn wss_and_https_with_a_certificate_from_files() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = std::env::temp_dir().join(format!("switchboard-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), cert.key_pair.serialize_pem()).unwrap();

    let mut c = Config::default();
    c.signaling.listen = "127.0.0.1:0".parse().unwrap();
    c.turn.listen = "127.0.0.1:0".parse().unwrap();
    c.turn.external_ips = vec!["127.0.0.1".parse().unwrap()];
    c.tls.listen = "127.0.0.1:0".parse().unwrap();
    c.tls.cert = Some(dir.join("cert.pem"));
    c.tls.key = Some(dir.join("key.pem"));
    let server = Server::bind(c).await.unwrap();
    let tls_addr = server.tls_addr().expect("TLS listener bound");
    let stop = server.shutdown_token();
    let task = tokio::spawn(server.run());

    // wss: the signaling protocol over TLS, with the client crate.
    let tls = client_tls(cert.cert.der().clone());
    let mut config = ClientConfig::new(format!("wss://localhost:{}/signaling", tls_addr.port()));
    config.tls = Some(tls.clone());
    let (client, _events) = Client::connect(config).await.unwrap();
    let reg = client.register(Some("secure")).await.unwrap();
    assert_eq!(reg.room_id, "secure");

    // https: the same routes.
    let tcp = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(tls);
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = connector.connect(name, tcp).await.unwrap();
    stream.write_all(b"GET /livez HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = String::new();
    let _ = tokio::time::timeout(common::WAIT, stream.read_to_string(&mut out)).await.expect("an answer in time");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");

    // A client that does not trust the certificate fails the handshake.
    let untrusting = ClientConfig {
        tls: Some(client_tls(
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap().cert.der().clone(),
        )),
        ..ClientConfig::new(format!("wss://localhost:{}/signaling", tls_addr.port()))
    };
    assert!(Client::connect(untrusting).await.is_err());

    stop.cancel();
    task.await.unwrap().unwrap();
}

/// Accepts any server certificate and keeps the one it saw (to learn what `--dev-tls` generated).
#[derive(Debug)]
struct Capture(
    std::sync::Mutex<Option<rustls_pki_types::CertificateDer<'static>>>,
    Arc<rustls::crypto::CryptoProvider>,
);

impl rustls::client::danger::ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        *self.0.lock().unwrap() = Some(end_entity.clone().into_owned());
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.1.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.1.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.1.signature_verification_algorithms.supported_schemes()
    }
}

/// `GET /livez` over TLS with `config`, to `name`; the answer's first line.
async fn livez_over_tls(addr: std::net::SocketAddr, config: Arc<rustls::ClientConfig>, name: &str) -> String {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let connect = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
    let mut stream = tokio::time::timeout(common::WAIT, connect).await.expect("handshake in time").expect("handshake");
    stream.write_all(b"GET /livez HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = String::new();
    let _ = tokio::time::timeout(common::WAIT, stream.read_to_string(&mut out)).await.expect("an answer in time");
    out.lines().next().unwrap_or_default().to_owned()
}

/// `--dev-tls`: a finished handshake, and the certificate is a valid self-signed one for localhost, 127.0.0.1 and
/// the advertised addresses (a client that trusts exactly it verifies each name), and a working https/wss listener.
#[tokio::test]
async fn dev_tls_generates_a_self_signed_certificate() {
    let mut c = Config::default();
    c.signaling.listen = "127.0.0.1:0".parse().unwrap();
    c.turn.listen = "127.0.0.1:0".parse().unwrap();
    c.turn.external_ips = vec!["127.0.0.1".parse().unwrap(), "192.0.2.7".parse().unwrap()];
    c.tls.listen = "127.0.0.1:0".parse().unwrap();
    c.tls.dev_self_signed = true;
    let server = Server::bind(c).await.unwrap();
    let addr = server.tls_addr().unwrap();
    tokio::spawn(server.run());

    // Learn the certificate through a full handshake that accepts anything.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let capture = Arc::new(Capture(std::sync::Mutex::new(None), provider.clone()));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(capture.clone())
        .with_no_client_auth();
    assert_eq!(livez_over_tls(addr, Arc::new(config), "localhost").await, "HTTP/1.1 200 OK");
    let cert = capture.0.lock().unwrap().clone().expect("the server presented a certificate");

    // Trusting exactly that certificate, real verification passes for each of its names, and fails for others.
    for name in ["localhost", "127.0.0.1", "192.0.2.7"] {
        assert_eq!(livez_over_tls(addr, client_tls(cert.clone()), name).await, "HTTP/1.1 200 OK", "{name}");
    }
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let wrong = rustls_pki_types::ServerName::try_from("example.org").unwrap();
    assert!(tokio_rustls::TlsConnector::from(client_tls(cert.clone())).connect(wrong, tcp).await.is_err());

    // wss on it, with the client crate.
    let mut config = ClientConfig::new(format!("wss://localhost:{}/signaling", addr.port()));
    config.tls = Some(client_tls(cert));
    let (client, _events) = Client::connect(config).await.unwrap();
    assert_eq!(client.register(Some("dev")).await.unwrap().room_id, "dev");
}
