//! `wss://` without a proxy: an echo hub behind TLS, with a self-signed certificate for
//! `localhost` and `127.0.0.1` made at startup (rcgen), so the example needs no files.
//!
//! The certificate is written to the system's temporary directory as PEM; give it to the
//! client as its trusted root (a real deployment loads a certificate from its CA instead; see
//! [`Hub::serve_tls`]).
//!
//! ```text
//! cargo run --example tls --features tls -- 127.0.0.1:9443
//! ```
use std::sync::Arc;

use wshub::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use wshub::{Handler, Hub, Message, Session};

struct Echo;

#[wshub::async_trait]
impl Handler for Echo {
    async fn on_message(&self, session: &Session, message: Message) {
        let _ = session.send(message);
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9443".into());

    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let rcgen::CertifiedKey { cert, key_pair } = rcgen::generate_simple_self_signed(names)?;
    let pem_path = std::env::temp_dir().join("wshub-example-cert.pem");
    std::fs::write(&pem_path, cert.pem())?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der()));

    // Name the crypto provider: `ServerConfig::builder()` would panic if the application's
    // dependencies enabled a second one.
    let provider = Arc::new(wshub::rustls::crypto::ring::default_provider());
    let mut tls = wshub::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)?;
    // A WebSocket upgrade is HTTP/1.1.
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];

    let hub = Hub::new(Echo);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("echo listening on wss://{}", listener.local_addr()?);
    println!("trust the certificate in {}", pem_path.display());
    hub.serve_tls(listener, Arc::new(tls)).await?;
    Ok(())
}
