//! wss://: the hub's own TLS listener (feature `tls`), over tokio-rustls.
//!
//! The TLS handshake runs in the connection's task, under the hub's handshake timeout, so a
//! client that stalls it (a TLS slowloris) holds only its own socket and never the accept loop.
//! The decrypted stream then goes through [`Hub::accept`] like any other.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;

use crate::hub::Hub;

impl Hub {
    /// Accepts `wss://` connections from `listener` until [`shutdown`](Self::shutdown): each in
    /// its own task, the TLS handshake first, then the HTTP upgrade and the session as with
    /// [`serve`](Self::serve). Sets `TCP_NODELAY` on every socket.
    ///
    /// `config` is a rustls server configuration with the certificate chain and key (rustls is
    /// re-exported as [`wshub::rustls`](crate::rustls), so the versions match). Advertise no
    /// ALPN protocol, or `http/1.1`: a WebSocket upgrade is an HTTP/1.1 request, and a client
    /// that negotiated `h2` would be answered in the wrong protocol.
    ///
    /// The TLS handshake and then the HTTP upgrade must each complete within
    /// [`Config::handshake_timeout`](crate::Config::handshake_timeout); a client that fails or
    /// stalls the TLS handshake (a plain-text client on this port, say) is dropped without an
    /// answer and without opening a session, and does not delay other clients.
    ///
    /// # Return
    /// As [`serve`](Self::serve): `Ok(())` after shutdown starts; transient accept errors are
    /// logged and retried, other errors returned.
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use wshub::rustls::pki_types::pem::PemObject;
    /// use wshub::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    /// # struct App;
    /// # impl wshub::Handler for App {}
    ///
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let certs = CertificateDer::pem_file_iter("cert.pem")?.collect::<Result<Vec<_>, _>>()?;
    /// let key = PrivateKeyDer::from_pem_file("key.pem")?;
    /// let provider = Arc::new(wshub::rustls::crypto::ring::default_provider());
    /// let tls = wshub::rustls::ServerConfig::builder_with_provider(provider)
    ///     .with_safe_default_protocol_versions()?
    ///     .with_no_client_auth()
    ///     .with_single_cert(certs, key)?;
    ///
    /// let hub = wshub::Hub::new(App);
    /// let listener = tokio::net::TcpListener::bind("0.0.0.0:443").await?;
    /// hub.serve_tls(listener, Arc::new(tls)).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Cancel safety
    /// Dropping the future stops accepting; connections already accepted (and TLS handshakes
    /// under way) run on in their own tasks.
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub async fn serve_tls(
        self,
        listener: TcpListener,
        config: Arc<ServerConfig>,
    ) -> io::Result<()> {
        let acceptor = TlsAcceptor::from(config);
        self.accept_loop(listener, |stream, peer| {
            tokio::spawn(accept_tls(self.clone(), acceptor.clone(), stream, peer));
        })
        .await
    }
}

async fn accept_tls(hub: Hub, acceptor: TlsAcceptor, tcp: TcpStream, peer: SocketAddr) {
    let core = hub.engine.clone();
    let handshake = tokio::time::timeout(core.config.handshake_timeout, acceptor.accept(tcp));
    let tls = tokio::select! {
        done = handshake => match done {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        },
        _ = core.stopped() => return,
    };
    hub.accept(tls, peer).await;
}
