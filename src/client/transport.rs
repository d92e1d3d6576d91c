//! The byte stream under a [`Client`](super::Client)'s WebSocket: plain TCP for `ws://`, or
//! TLS over TCP for `wss://` (feature `tls`: tokio-rustls with rustls's `ring` provider, the
//! same stack as [`Hub::serve_tls`](crate::Hub::serve_tls)), and the connection of one
//! attempt: TCP, then TLS, then the WebSocket upgrade.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderValue;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite;

use super::ConnectError;
use super::builder::Settings;

/// One connection's WebSocket.
pub(super) type Socket = WebSocketStream<Transport>;

/// TCP, or TLS over TCP.
pub(super) enum Transport {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Opens one connection (TCP, TLS for `wss://`, the upgrade) within the connect timeout.
pub(super) async fn open(settings: &Settings) -> Result<Socket, ConnectError> {
    let mut request = http::Request::new(());
    *request.method_mut() = settings.request.method.clone();
    *request.uri_mut() = settings.request.uri.clone();
    *request.headers_mut() = settings.request.headers.clone();
    // Each attempt needs its own key.
    request.headers_mut().insert(
        http::header::SEC_WEBSOCKET_KEY,
        HeaderValue::from_str(&tungstenite::handshake::client::generate_key())
            .expect("a base64 key is a valid header value"),
    );
    let connecting = async {
        let tcp = TcpStream::connect((settings.host.as_str(), settings.port)).await?;
        // Small frames (pings, commands) go out at once.
        let _ = tcp.set_nodelay(true);
        let stream = secure(settings, tcp).await?;
        tokio_tungstenite::client_async(request, stream)
            .await
            .map_err(|e| match e {
                tungstenite::Error::Http(response) => ConnectError::Refused(response.status()),
                tungstenite::Error::Io(e) => ConnectError::Io(e),
                e => ConnectError::Handshake(e.to_string()),
            })
    };
    match tokio::time::timeout(settings.connect_timeout, connecting).await {
        Err(_) => Err(ConnectError::Timeout),
        Ok(Ok((socket, _response))) => Ok(socket),
        Ok(Err(e)) => Err(e),
    }
}

/// The TLS handshake for `wss://`; the TCP stream as it is for `ws://`.
#[cfg(feature = "tls")]
async fn secure(settings: &Settings, tcp: TcpStream) -> Result<Transport, ConnectError> {
    use tokio_rustls::rustls::pki_types::ServerName;
    let Some(config) = &settings.tls else {
        return Ok(Transport::Plain(tcp));
    };
    let name = ServerName::try_from(settings.host.clone())
        .map_err(|e| ConnectError::InvalidRequest(format!("{}: {e}", settings.host)))?;
    let tls = tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| ConnectError::Handshake(format!("TLS: {e}")))?;
    Ok(Transport::Tls(Box::new(tls)))
}

#[cfg(not(feature = "tls"))]
async fn secure(_settings: &Settings, tcp: TcpStream) -> Result<Transport, ConnectError> {
    Ok(Transport::Plain(tcp))
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "tls")]
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "tls")]
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            #[cfg(feature = "tls")]
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(feature = "tls")]
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            #[cfg(feature = "tls")]
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(s) => s.is_write_vectored(),
            #[cfg(feature = "tls")]
            Transport::Tls(s) => s.is_write_vectored(),
        }
    }
}
