//! `https://` SockJS URLs: our client over TLS (rustls, ring) to sockjs-node serving HTTPS
//! with a self-signed certificate made by the test.
#![allow(clippy::unwrap_used)]

mod client_support;

use std::sync::Arc;
use std::time::Duration;

use client_support::{recv, NodeProcess};
use kite_sockjs::client::{connect, ClientConfig, ClientTransport, ConnectError};
use kite_sockjs::Transport;

struct TlsServer {
    node: NodeProcess,
    roots: Arc<rustls::ClientConfig>,
    _dir: tempfile::TempDir,
}

async fn tls_server() -> TlsServer {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let node = NodeProcess::start(
        "sockjs/echo_server.js",
        &["--tls", cert.to_str().unwrap(), key.to_str().unwrap()],
        &[],
    )
    .await;
    let mut store = rustls::RootCertStore::empty();
    store.add(certified.cert.der().clone()).unwrap();
    let roots = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    TlsServer {
        node,
        roots: Arc::new(roots),
        _dir: dir,
    }
}

fn config(transport: ClientTransport, tls: Option<Arc<rustls::ClientConfig>>) -> ClientConfig {
    ClientConfig {
        transport,
        tls,
        handshake_timeout: Duration::from_secs(10),
        ..ClientConfig::default()
    }
}

#[tokio::test]
async fn echo_over_https_and_wss() {
    let server = tls_server().await;
    for (host, transport, expected) in [
        (
            "127.0.0.1",
            ClientTransport::WebSocket,
            Transport::WebSocket,
        ),
        (
            "localhost",
            ClientTransport::XhrPolling,
            Transport::XhrPolling,
        ),
        ("localhost", ClientTransport::Auto, Transport::WebSocket),
    ] {
        let url = format!("https://{host}:{}/echo", server.node.port);
        let session = connect(&url, &config(transport, Some(server.roots.clone())))
            .await
            .unwrap_or_else(|e| panic!("{url} {transport:?}: {e}"));
        assert_eq!(session.info().transport(), expected);
        let (tx, mut rx) = session.split();
        let msg = format!("secure {transport:?} \u{2028} 😀");
        tx.send(msg.clone()).await.unwrap();
        assert_eq!(recv(&mut rx).await, Some(msg));
    }
}

#[tokio::test]
async fn untrusted_certificate_is_a_tls_error_without_fallback() {
    let server = tls_server().await;
    let url = format!("https://127.0.0.1:{}/echo", server.node.port);
    for transport in [ClientTransport::Auto, ClientTransport::XhrPolling] {
        // Default configuration: webpki roots, which don't include the test certificate.
        match connect(&url, &config(transport, None)).await {
            Err(e @ ConnectError::Tls { .. }) => {
                assert!(e.to_string().contains("127.0.0.1"), "{e}");
            }
            other => panic!("{transport:?}: expected a TLS error, got {other:?}"),
        }
    }
}
