//! `wss://` with the `tls` feature: a certificate made in the test (rcgen), the hub serving it
//! with `Hub::serve_tls` on port 0 next to its plain listener, and a tokio-tungstenite client
//! over tokio-rustls that trusts exactly that certificate.
#![cfg(feature = "tls")]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName,
};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_tungstenite::WebSocketStream;
use wshub::Config;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A self-signed certificate for `localhost`, and a server config that presents it.
fn server_config() -> (CertificateDer<'static>, Arc<wshub::rustls::ServerConfig>) {
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der()));
    let der = cert.der().clone();
    let config = wshub::rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .unwrap();
    (der, Arc::new(config))
}

/// A TLS connector that trusts `cert` only.
fn connector(cert: &CertificateDer<'static>) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// The recorder hub of `support`, also serving `wss://` on a second port.
async fn start_tls(
    config: Config,
) -> (
    TestHub,
    SocketAddr,
    TlsConnector,
    JoinHandle<std::io::Result<()>>,
) {
    let echo = Behaviour::default().on_message(|s, m| {
        let _ = s.send(m.clone());
    });
    let t = start(config, echo).await;
    let (cert, tls) = server_config();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls_addr = listener.local_addr().unwrap();
    let serving = tokio::spawn(t.hub.clone().serve_tls(listener, tls));
    (t, tls_addr, connector(&cert), serving)
}

type TlsClient = WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

async fn connect_tls(addr: SocketAddr, connector: &TlsConnector) -> TlsClient {
    within("a wss:// handshake", async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, tcp).await.expect("TLS handshake");
        let url = format!("wss://localhost:{}/", addr.port());
        tokio_tungstenite::client_async(url, tls)
            .await
            .expect("WebSocket handshake over TLS")
            .0
    })
    .await
}

async fn next_text<S: AsyncRead + AsyncWrite + Unpin>(c: &mut WebSocketStream<S>) -> String {
    loop {
        match within("a message over TLS", c.next()).await {
            Some(Ok(WsMessage::Text(t))) => return t.as_str().to_string(),
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_clients_exchange_messages_with_the_hub() {
    let (mut t, tls_addr, connector, serving) = start_tls(quiet_config()).await;
    let mut secure = connect_tls(tls_addr, &connector).await;
    let (secure_id, peer) = t.events.open().await;
    assert_eq!(peer, secure.get_ref().get_ref().0.local_addr().unwrap());
    let mut plain = connect(t.addr).await;
    t.events.open().await;

    within(
        "a send over TLS",
        secure.send(WsMessage::text("hello over tls")),
    )
    .await
    .unwrap();
    let (from, m) = t.events.message().await;
    assert_eq!((from, m.as_text()), (secure_id, Some("hello over tls")));
    assert_eq!(next_text(&mut secure).await, "hello over tls", "the echo");

    // A broadcast reaches the TLS and the plain session alike, and a large message crosses
    // many TLS records intact.
    assert_eq!(t.hub.broadcast("to everyone").queued, 2);
    assert_eq!(next_text(&mut secure).await, "to everyone");
    assert_eq!(recv_text(&mut plain).await, "to everyone");
    let big: String = (0..300_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    t.hub.send_to(secure_id, big.clone()).unwrap();
    assert!(
        next_text(&mut secure).await == big,
        "the large message arrived altered"
    );

    within("the client's close", secure.close(None))
        .await
        .unwrap();
    let (id, why) = t.events.close().await;
    assert_eq!((id, why), (secure_id, Closed::client(1005, "")));

    drop(plain);
    assert_eq!(t.events.close().await.1, Closed::Disconnected);
    t.hub.shutdown(Duration::from_secs(2)).await;
    let served = within("serve_tls to return", serving).await.unwrap();
    assert!(served.is_ok(), "serve_tls ended with {served:?}");
}

/// A plain-text client on the TLS port, and one that opens TCP and never starts TLS: both are
/// dropped without a session (the second after `handshake_timeout`), and a TLS client that
/// connects meanwhile is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_and_stalled_clients_on_the_tls_port_fail_cleanly() {
    let config = quiet_config().handshake_timeout(Duration::from_millis(300));
    let (mut t, tls_addr, connector, _serving) = start_tls(config).await;

    let stalled_at = std::time::Instant::now();
    let mut stalled = RawClient::connect(tls_addr).await;
    let mut plain = RawClient::connect(tls_addr).await;
    plain
        .write(upgrade_request(tls_addr, "/", &[]).as_bytes())
        .await;
    // Whatever comes back (a TLS alert at most) is not HTTP, then the connection ends.
    let mut answer = Vec::new();
    // (A reset after the alert is fine too.)
    let _ = within(
        "the plain client to be dropped",
        plain.stream.read_to_end(&mut answer),
    )
    .await;
    assert!(
        !answer.starts_with(b"HTTP/"),
        "a plain-text answer on the TLS port"
    );

    // The stalled handshake holds neither the accept loop nor other clients.
    let mut secure = connect_tls(tls_addr, &connector).await;
    t.events.open().await;
    within(
        "a send over TLS",
        secure.send(WsMessage::text("still served")),
    )
    .await
    .unwrap();
    t.events.message().await;
    assert_eq!(next_text(&mut secure).await, "still served");

    let mut rest = Vec::new();
    let _ = within(
        "the stalled client to be dropped",
        stalled.stream.read_to_end(&mut rest),
    )
    .await;
    assert!(rest.is_empty(), "the stalled client got {rest:?}");
    let waited = stalled_at.elapsed();
    assert!(
        waited < Duration::from_secs(3),
        "dropped after {waited:?}, not the 300 ms timeout"
    );
    assert_eq!(t.hub.stats().sessions_opened, 1);
    assert_eq!(t.hub.session_count(), 1);
    t.events.assert_none_pending();
}
