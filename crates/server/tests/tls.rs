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
    stream.read_to_string(&mut out).await.unwrap_or_default();
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

#[tokio::test]
async fn dev_tls_generates_a_self_signed_certificate() {
    let mut c = Config::default();
    c.signaling.listen = "127.0.0.1:0".parse().unwrap();
    c.turn.listen = "127.0.0.1:0".parse().unwrap();
    c.turn.external_ips = vec!["127.0.0.1".parse().unwrap()];
    c.tls.listen = "127.0.0.1:0".parse().unwrap();
    c.tls.dev_self_signed = true;
    let server = Server::bind(c).await.unwrap();
    let addr = server.tls_addr().unwrap();
    tokio::spawn(server.run());
    // Any TLS client gets a handshake (the certificate is ours, so a verifying client would refuse it).
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 5];
    let mut tcp = tcp;
    // A TLS ClientHello answered by a ServerHello record (content type 22 = handshake).
    tcp.write_all(&client_hello()).await.unwrap();
    tcp.read_exact(&mut buf).await.unwrap();
    assert_eq!(buf[0], 22, "a TLS handshake record");
}

/// A minimal TLS 1.2/1.3 ClientHello, produced by rustls itself into a buffer.
fn client_hello() -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}
