//! [`ClientBuilder`]: what the application configures, checked once into the [`Settings`]
//! the connection task reads, and the reconnection backoff they define.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::{Client, ConnectError, task, transport};
use crate::message::Message;
use crate::protocol;

type TopicMessage = dyn Fn(&str) -> Message + Send + Sync;

/// Configures a [`Client`]; from [`Client::builder`].
///
/// ```
/// use std::time::Duration;
/// let builder = wshub::Client::builder("ws://127.0.0.1:8080/ws")
///     .header("authorization", "Bearer abc")
///     .initial_backoff(Duration::from_millis(250))
///     .max_backoff(Duration::from_secs(30));
/// ```
#[must_use]
pub struct ClientBuilder {
    url: String,
    headers: Vec<(String, String)>,
    subprotocols: Vec<String>,
    initial_backoff: Duration,
    max_backoff: Duration,
    connect_timeout: Duration,
    queue_capacity: usize,
    subscribe: Arc<TopicMessage>,
    unsubscribe: Arc<TopicMessage>,
    custom_subscribe: bool,
    ping_interval: Option<Duration>,
    read_timeout: Option<Duration>,
    #[cfg(feature = "tls")]
    tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
}

impl ClientBuilder {
    /// The default settings for `url`.
    pub(super) fn new(url: String) -> Self {
        ClientBuilder {
            url,
            headers: Vec::new(),
            subprotocols: Vec::new(),
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            queue_capacity: 1024,
            subscribe: Arc::new(|topic| Message::text(protocol::command_subscribe(topic, None))),
            unsubscribe: Arc::new(|topic| Message::text(protocol::command_unsubscribe(topic))),
            custom_subscribe: false,
            ping_interval: Some(Duration::from_secs(15)),
            read_timeout: Some(Duration::from_secs(40)),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Adds a header to every upgrade request (a token, a cookie, an `Origin`). An invalid name
    /// or value makes [`connect`](Self::connect) fail with [`ConnectError::InvalidRequest`].
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Offers a subprotocol (`Sec-WebSocket-Protocol`); call once per protocol. The server must
    /// choose one of them, or the connection fails. Default: none.
    pub fn subprotocol(mut self, protocol: &str) -> Self {
        self.subprotocols.push(protocol.to_string());
        self
    }

    /// The delay before the first reconnection attempt; each failed attempt doubles it up to
    /// [`max_backoff`](Self::max_backoff), and each delay is drawn at random between half of
    /// it and all of it, so that clients dropped together do not return together.
    /// Default: 200 ms.
    pub fn initial_backoff(mut self, delay: Duration) -> Self {
        self.initial_backoff = delay.max(Duration::from_millis(1));
        self
    }

    /// The longest delay between reconnection attempts. Default: 30 s.
    pub fn max_backoff(mut self, delay: Duration) -> Self {
        self.max_backoff = delay;
        self
    }

    /// How long one connection attempt (TCP and the upgrade) may take. Default: 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How often the client sends a WebSocket ping while connected, so that a server that
    /// stopped answering (a half-open connection: the server's machine is gone, a NAT or
    /// proxy dropped the flow) shows within the [`read_timeout`](Self::read_timeout);
    /// `None` sends none. Default: 15 s.
    pub fn ping_interval(mut self, every: Option<Duration>) -> Self {
        self.ping_interval = every.map(|d| d.max(Duration::from_millis(1)));
        self
    }

    /// How long a connection may stay silent: when no frame at all (a message, a pong, a
    /// ping) arrives for this long, or a write makes no progress for this long, the connection
    /// is declared dead, dropped, and the client reconnects as after any loss (state
    /// [`Reconnecting`](super::ClientState::Reconnecting)). Time the client spends waiting
    /// for the application to take a message from a full [`recv`](Client::recv) queue does
    /// not count. Keep it well above the [`ping_interval`](Self::ping_interval) plus a round
    /// trip; `None` waits for ever (the operating system's TCP timeouts only).
    /// Default: 40 s.
    ///
    /// ```
    /// use std::time::Duration;
    /// let builder = wshub::Client::builder("ws://127.0.0.1:8080/ws")
    ///     .ping_interval(Some(Duration::from_secs(5)))
    ///     .read_timeout(Some(Duration::from_secs(12)));
    /// ```
    pub fn read_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.read_timeout = timeout.map(|d| d.max(Duration::from_millis(1)));
        self
    }

    /// The rustls client configuration for `wss://` URLs (feature `tls`): which roots to
    /// trust, client certificates. Required for `wss://` (wshub bundles no root certificates);
    /// unused for `ws://`. rustls is re-exported as [`wshub::rustls`](crate::rustls); build
    /// the configuration with its `ring` provider, as the server does, and no ALPN protocol
    /// (or `http/1.1`).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use wshub::rustls::{ClientConfig, RootCertStore};
    ///
    /// # fn f(ca: wshub::rustls::pki_types::CertificateDer<'static>) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut roots = RootCertStore::empty();
    /// roots.add(ca)?;
    /// let provider = Arc::new(wshub::rustls::crypto::ring::default_provider());
    /// let tls = ClientConfig::builder_with_provider(provider)
    ///     .with_safe_default_protocol_versions()?
    ///     .with_root_certificates(roots)
    ///     .with_no_client_auth();
    /// let builder = wshub::Client::builder("wss://example.com/ws").tls_config(Arc::new(tls));
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_config(mut self, config: Arc<tokio_rustls::rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// How many messages wait in each direction: received and not yet taken by
    /// [`recv`](Client::recv), and given to [`send`](Client::send) and not yet written.
    /// Default: 1024.
    pub fn queue_capacity(mut self, messages: usize) -> Self {
        self.queue_capacity = messages.max(1);
        self
    }

    /// The message that subscribes to a topic, and the one that unsubscribes. Default:
    /// `{"type":"subscribe","topic":…}` and `{"type":"unsubscribe","topic":…}`, with
    /// `"since":{…}` after a reconnection when the position is known (see
    /// [Recovery](Client#recovery)); a custom subscribe message never carries `since`.
    ///
    /// ```
    /// let builder = wshub::Client::builder("ws://127.0.0.1:8080/ws")
    ///     .subscribe_message(|topic| format!("SUB {topic}").into(), |topic| format!("UNSUB {topic}").into());
    /// ```
    pub fn subscribe_message(
        mut self,
        subscribe: impl Fn(&str) -> Message + Send + Sync + 'static,
        unsubscribe: impl Fn(&str) -> Message + Send + Sync + 'static,
    ) -> Self {
        self.subscribe = Arc::new(subscribe);
        self.unsubscribe = Arc::new(unsubscribe);
        self.custom_subscribe = true;
        self
    }

    /// Connects once and returns the client, which from then on reconnects by itself.
    ///
    /// # Errors
    /// The first attempt's failure, so that a wrong URL or a refused credential shows at once.
    /// Use [`spawn`](Self::spawn) to keep trying from the start instead.
    pub async fn connect(self) -> Result<Client, ConnectError> {
        let settings = self.settings()?;
        let socket = transport::open(&settings).await?;
        Ok(task::start(settings, Some(socket)))
    }

    /// Returns the client at once and connects in the background, retrying with backoff until
    /// it succeeds (for a server that may not be up yet).
    ///
    /// # Errors
    /// Only an invalid URL or header; connection failures are retried.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn spawn(self) -> Result<Client, ConnectError> {
        Ok(task::start(self.settings()?, None))
    }

    pub(super) fn settings(self) -> Result<Arc<Settings>, ConnectError> {
        let invalid = |e: &dyn fmt::Display| ConnectError::InvalidRequest(e.to_string());
        let mut request = self
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| invalid(&e))?;
        let secure = match request.uri().scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => {
                return Err(ConnectError::InvalidRequest(format!(
                    "{}: only ws:// and wss:// URLs are supported",
                    self.url
                )));
            }
        };
        #[cfg(feature = "tls")]
        let tls = match (secure, self.tls) {
            (false, _) => None,
            (true, Some(config)) => Some(config),
            (true, None) => {
                return Err(ConnectError::InvalidRequest(format!(
                    "{}: wss:// needs ClientBuilder::tls_config",
                    self.url
                )));
            }
        };
        #[cfg(not(feature = "tls"))]
        if secure {
            return Err(ConnectError::InvalidRequest(format!(
                "{}: wss:// needs wshub's `tls` feature",
                self.url
            )));
        }
        let uri = request.uri();
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        for (name, value) in &self.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| invalid(&e))?;
            let value = HeaderValue::from_str(value).map_err(|e| invalid(&e))?;
            request.headers_mut().append(name, value);
        }
        if !self.subprotocols.is_empty() {
            let value =
                HeaderValue::from_str(&self.subprotocols.join(", ")).map_err(|e| invalid(&e))?;
            request
                .headers_mut()
                .insert(http::header::SEC_WEBSOCKET_PROTOCOL, value);
        }
        let (parts, ()) = request.into_parts();
        Ok(Arc::new(Settings {
            url: self.url,
            request: parts,
            initial_backoff: self.initial_backoff,
            max_backoff: self.max_backoff.max(self.initial_backoff),
            connect_timeout: self.connect_timeout,
            queue_capacity: self.queue_capacity,
            subscribe: self.subscribe,
            unsubscribe: self.unsubscribe,
            custom_subscribe: self.custom_subscribe,
            host,
            port,
            ping_interval: self.ping_interval,
            read_timeout: self.read_timeout,
            #[cfg(feature = "tls")]
            tls,
        }))
    }
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("url", &self.url)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("ping_interval", &self.ping_interval)
            .field("read_timeout", &self.read_timeout)
            .finish_non_exhaustive()
    }
}

/// A [`ClientBuilder`] checked: what the connection task reads.
pub(super) struct Settings {
    pub(super) url: String,
    pub(super) request: http::request::Parts,
    pub(super) initial_backoff: Duration,
    pub(super) max_backoff: Duration,
    pub(super) connect_timeout: Duration,
    pub(super) queue_capacity: usize,
    pub(super) subscribe: Arc<TopicMessage>,
    pub(super) unsubscribe: Arc<TopicMessage>,
    pub(super) custom_subscribe: bool,
    /// Where to connect (without the brackets of an IPv6 literal).
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) ping_interval: Option<Duration>,
    pub(super) read_timeout: Option<Duration>,
    /// For `wss://` URLs only.
    #[cfg(feature = "tls")]
    pub(super) tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
}

impl Settings {
    /// The delay before attempt `attempt` (from 1): the exponential step, then a random point
    /// between its half and its whole ("equal jitter").
    pub(super) fn backoff(&self, attempt: u32) -> Duration {
        let step = self
            .initial_backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.max_backoff);
        let half = step / 2;
        half + half.mul_f64(random_unit())
    }
}

/// A uniform number in `[0, 1)`: SipHash of a counter under the standard library's randomly
/// seeded keys (no `rand` dependency for a jitter).
fn random_unit() -> f64 {
    static DRAWS: AtomicU64 = AtomicU64::new(0);
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    let mut h = KEYS.get_or_init(RandomState::new).build_hasher();
    h.write_u64(DRAWS.fetch_add(1, Ordering::Relaxed));
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(initial: u64, max: u64) -> Arc<Settings> {
        Client::builder("ws://127.0.0.1:1/")
            .initial_backoff(Duration::from_millis(initial))
            .max_backoff(Duration::from_millis(max))
            .settings()
            .unwrap()
    }

    #[test]
    fn backoff_doubles_with_equal_jitter_up_to_the_maximum() {
        let s = settings(100, 1000);
        for (attempt, step) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            for _ in 0..50 {
                let d = s.backoff(attempt).as_millis() as u64;
                assert!(d >= step / 2 && d <= step, "attempt {attempt}: {d} ms");
            }
        }
        let draws: std::collections::HashSet<_> = (0..20).map(|_| s.backoff(3)).collect();
        assert!(draws.len() > 1, "jitter draws differ");
    }

    #[test]
    fn only_ws_and_wss_urls_are_accepted() {
        assert!(matches!(
            Client::builder("http://127.0.0.1/").settings(),
            Err(ConnectError::InvalidRequest(_))
        ));
        assert!(matches!(
            Client::builder("ws://127.0.0.1/")
                .header("bad name", "v")
                .settings(),
            Err(ConnectError::InvalidRequest(_))
        ));
        // wss:// needs the feature and a TLS configuration: a clear error, not a plain-text
        // connection to a TLS port.
        match Client::builder("wss://localhost/").settings() {
            Err(ConnectError::InvalidRequest(why)) => assert!(why.contains("wss://"), "{why}"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("wss:// without a TLS configuration was accepted"),
        }
        let s = Client::builder("ws://[::1]:9/x").settings().unwrap();
        assert_eq!((s.host.as_str(), s.port), ("::1", 9));
        let s = Client::builder("ws://example.com/").settings().unwrap();
        assert_eq!((s.host.as_str(), s.port), ("example.com", 80));
    }
}
