//! A WebSocket client that stays connected (feature `client`): reconnects with exponential
//! backoff and jitter, re-subscribes its topics, and exposes its state.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderName, HeaderValue, StatusCode};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::engine::history::Position;
use crate::message::{Message, Text};
use crate::protocol::{self, ServerMessage};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;
type TopicMessage = dyn Fn(&str) -> Message + Send + Sync;
/// The last position received per held topic, shared by the handle and the task.
type Positions = Arc<Mutex<HashMap<String, Position>>>;

/// A connection that survives server restarts: it reconnects with exponential backoff and
/// jitter, subscribes again to the topics it had, and offers [`send`](Client::send) and a
/// stream of incoming messages ([`recv`](Client::recv), or `Client` as a
/// [`Stream`](futures_core::Stream)).
///
/// ```no_run
/// use std::time::Duration;
/// use wshub::{Client, ClientState};
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut client = Client::builder("ws://127.0.0.1:8080/ws")
///     .max_backoff(Duration::from_secs(10))
///     .connect()
///     .await?; // the first attempt's error, if it fails
/// client.subscribe("parcels").await?;
/// client.send(r#"{"type":"chat","text":"hello"}"#).await?;
/// while let Some(message) = client.recv().await {
///     println!("{:?}: {message:?}", client.state());
/// }
/// # Ok(()) }
/// ```
///
/// # Subscriptions
/// wshub's topics live on the server, so subscribing is an application message. By default
/// [`subscribe`](Client::subscribe) sends `{"type":"subscribe","topic":"…"}` and
/// [`unsubscribe`](Client::unsubscribe) `{"type":"unsubscribe","topic":"…"}`; the server's
/// [`Handler::on_message`](crate::Handler::on_message) is expected to call
/// [`Session::subscribe`](crate::Session::subscribe). Change the format with
/// [`ClientBuilder::subscribe_message`]. After every reconnection the client sends the
/// subscribe message of each topic it holds, in the order they were first subscribed,
/// before anything else.
///
/// # Recovery
/// When the server speaks the JSON envelope of `PROTOCOL.md`
/// ([`Config::envelope`](crate::Config::envelope) with
/// [`Config::history`](crate::Config::history)), the client remembers, for each topic it holds,
/// the [`Position`] of the last publication it received ([`position`](Client::position)), and
/// after a reconnection subscribes with
/// `{"type":"subscribe","topic":…,"since":{"epoch":"…","offset":…}}`: the server then replays
/// exactly what was missed, before the live publications. A publication the client already
/// received (same epoch, offset not newer) is not passed on again. When the server cannot
/// replay (its history was lost, e.g. it restarted, or the gap is older than what it keeps) it
/// answers `unrecoverable`: the stream yields that message, which
/// [`ServerMessage::parse`](crate::protocol::ServerMessage::parse) reads as [`ServerMessage::Unrecoverable`](crate::protocol::ServerMessage::Unrecoverable), and the application
/// reloads the topic's state by other means. Every envelope message is passed on as received
/// (text); parse it with [`ServerMessage::parse`](crate::protocol::ServerMessage::parse). With a custom
/// [`subscribe_message`](ClientBuilder::subscribe_message) no `since` is sent.
///
/// ```no_run
/// use wshub::Client;
/// use wshub::protocol::ServerMessage;
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut client = Client::connect("ws://127.0.0.1:8080/ws").await?;
/// client.subscribe("board").await?;
/// while let Some(message) = client.recv().await {
///     match ServerMessage::parse(&message) {
///         Some(ServerMessage::Pub { data, position, .. }) => println!("{position:?}: {data:?}"),
///         Some(ServerMessage::Unrecoverable { topic, .. }) => {
///             println!("missed publications on {topic} are lost: reload its state");
///         }
///         _ => {}
///     }
///     println!("resume point: {:?}", client.position("board"));
/// }
/// # Ok(()) }
/// ```
///
/// # Delivery
/// Sending is at most once: [`send`](Client::send) queues the message (waiting for room in a
/// bounded queue), and messages queued while disconnected go out after the next connection's
/// subscriptions. A message already handed to a connection that then breaks is lost; a server
/// that sends a snapshot on [`open`](crate::Handler::open) lets the client catch up.
///
/// Incoming messages wait in a bounded queue ([`ClientBuilder::queue_capacity`]); while it is
/// full the client stops reading from the socket, so a consumer that falls behind slows the
/// server's sends down to the server's own slow-consumer policy rather than growing memory.
///
/// Dropping the `Client` (or [`close`](Client::close)) ends its connection with close code 1000.
/// Only `ws://` URLs are supported (no TLS).
pub struct Client {
    commands: mpsc::Sender<Command>,
    inbound: mpsc::Receiver<Message>,
    state: watch::Receiver<ClientState>,
    closing: watch::Sender<bool>,
    positions: Positions,
}

/// Where a [`Client`] is in its life, from [`Client::state`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientState {
    /// The first connection is being made.
    Connecting,
    /// Connected: messages flow both ways.
    Open,
    /// The connection was lost or an attempt failed; the next attempt starts after `retry_in`
    /// (exponential backoff with jitter). `attempt` counts the attempts since the last stable
    /// connection, from 1.
    Reconnecting {
        /// Which attempt comes next.
        attempt: u32,
        /// The delay before it.
        retry_in: Duration,
    },
    /// [`Client::close`] was called or the client was dropped: no more reconnections.
    Closed,
}

impl fmt::Display for ClientState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientState::Connecting => f.write_str("connecting"),
            ClientState::Open => f.write_str("open"),
            ClientState::Reconnecting { attempt, retry_in } => {
                write!(f, "reconnecting (attempt {attempt} in {retry_in:?})")
            }
            ClientState::Closed => f.write_str("closed"),
        }
    }
}

/// Why [`ClientBuilder::connect`] failed. Later failures are retried, not returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The URL is not a `ws://` URL, or a header is invalid. Fix the configuration.
    #[error("invalid client request: {0}")]
    InvalidRequest(String),
    /// The server answered the upgrade with this HTTP status (401, 403, 503…). Check the
    /// credentials, origin or server capacity the status points to.
    #[error("server refused the upgrade: {0}")]
    Refused(StatusCode),
    /// No connection within [`ClientBuilder::connect_timeout`].
    #[error("connection timed out")]
    Timeout,
    /// The TCP connection failed (e.g. refused: is the server running?).
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The server broke the WebSocket handshake.
    #[error("handshake failed: {0}")]
    Handshake(String),
}

/// The [`Client`] is closed: nothing more can be sent. Create a new client to reconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the client is closed")]
pub struct ClientClosed;

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
}

impl ClientBuilder {
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
        let socket = open(&settings).await?;
        Ok(start(settings, Some(socket)))
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
        Ok(start(self.settings()?, None))
    }

    fn settings(self) -> Result<Arc<Settings>, ConnectError> {
        let invalid = |e: &dyn fmt::Display| ConnectError::InvalidRequest(e.to_string());
        let mut request = self
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| invalid(&e))?;
        if request.uri().scheme_str() != Some("ws") {
            return Err(ConnectError::InvalidRequest(format!(
                "{}: only ws:// URLs are supported",
                self.url
            )));
        }
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
        }))
    }
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("url", &self.url)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A builder for a client of `url` (`ws://host:port/path?query`).
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            headers: Vec::new(),
            subprotocols: Vec::new(),
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            queue_capacity: 1024,
            subscribe: Arc::new(|topic| Message::text(protocol::command_subscribe(topic, None))),
            unsubscribe: Arc::new(|topic| Message::text(protocol::command_unsubscribe(topic))),
            custom_subscribe: false,
        }
    }

    /// Connects to `url` with the default settings; see [`ClientBuilder::connect`].
    pub async fn connect(url: impl Into<String>) -> Result<Client, ConnectError> {
        Client::builder(url).connect().await
    }

    /// Queues `message` for the server, waiting while the outbound queue is full.
    ///
    /// # Return
    /// `Ok` means queued, not delivered: while disconnected the message waits for the next
    /// connection (see [Delivery](Client#delivery)).
    ///
    /// # Cancel safety
    /// Cancelling while waiting for room queues nothing.
    pub async fn send(&self, message: impl Into<Message>) -> Result<(), ClientClosed> {
        self.command(Command::Send(message.into())).await
    }

    /// Subscribes to `topic` now (when connected) and after every reconnection; a topic
    /// already held is not sent again. See [Subscriptions](Client#subscriptions).
    pub async fn subscribe(&self, topic: &str) -> Result<(), ClientClosed> {
        self.command(Command::Subscribe(topic.to_string())).await
    }

    /// Unsubscribes from `topic` and stops subscribing to it after reconnections.
    pub async fn unsubscribe(&self, topic: &str) -> Result<(), ClientClosed> {
        self.command(Command::Unsubscribe(topic.to_string())).await
    }

    async fn command(&self, command: Command) -> Result<(), ClientClosed> {
        if *self.closing.borrow() {
            return Err(ClientClosed);
        }
        self.commands.send(command).await.map_err(|_| ClientClosed)
    }

    /// The next message from the server, across reconnections; `None` once the client is
    /// closed and every received message was taken.
    ///
    /// # Cancel safety
    /// Cancel safe: a message is never lost by dropping the future.
    pub async fn recv(&mut self) -> Option<Message> {
        self.inbound.recv().await
    }

    /// The current state.
    pub fn state(&self) -> ClientState {
        self.state.borrow().clone()
    }

    /// A receiver that sees every change of state, e.g. to show "reconnecting" in a UI or to
    /// wait for the connection:
    ///
    /// ```no_run
    /// # async fn f(client: &wshub::Client) {
    /// let mut states = client.state_changes();
    /// let _ = states.wait_for(|s| *s == wshub::ClientState::Open).await;
    /// # }
    /// ```
    pub fn state_changes(&self) -> watch::Receiver<ClientState> {
        self.state.clone()
    }

    /// The position of the last publication received on `topic`, from a server that sends
    /// the JSON envelope (see [Recovery](Client#recovery)): what the next reconnection
    /// subscribes `since`. `None` for a topic not held, without history, or before the
    /// server's first answer. It counts what the client received, which may still wait in the
    /// queue of [`recv`](Self::recv); after an `unrecoverable` answer it is the server's
    /// current position.
    ///
    /// ```no_run
    /// # fn f(client: &wshub::Client) {
    /// if let Some(p) = client.position("board") {
    ///     println!("board: epoch {} offset {}", p.epoch, p.offset);
    /// }
    /// # }
    /// ```
    pub fn position(&self, topic: &str) -> Option<Position> {
        lock(&self.positions).get(topic).copied()
    }

    /// Closes the connection with code 1000 (messages already queued are sent first) and stops
    /// reconnecting. [`recv`](Self::recv) still returns what had arrived, then `None`.
    pub async fn close(&self) {
        self.closing.send_replace(true);
        let mut state = self.state.clone();
        let _ = state.wait_for(|s| *s == ClientState::Closed).await;
    }
}

impl futures_core::Stream for Client {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.inbound.poll_recv(cx)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.closing.send_replace(true);
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("state", &*self.state.borrow())
            .finish_non_exhaustive()
    }
}

fn lock(positions: &Positions) -> MutexGuard<'_, HashMap<String, Position>> {
    positions.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the handle asks of the connection task.
enum Command {
    Send(Message),
    Subscribe(String),
    Unsubscribe(String),
}

struct Settings {
    url: String,
    request: http::request::Parts,
    initial_backoff: Duration,
    max_backoff: Duration,
    connect_timeout: Duration,
    queue_capacity: usize,
    subscribe: Arc<TopicMessage>,
    unsubscribe: Arc<TopicMessage>,
    custom_subscribe: bool,
}

impl Settings {
    /// The delay before attempt `attempt` (from 1): the exponential step, then a random point
    /// between its half and its whole ("equal jitter").
    fn backoff(&self, attempt: u32) -> Duration {
        let step = self
            .initial_backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.max_backoff);
        let half = step / 2;
        half + half.mul_f64(random_unit())
    }
}

/// A connection that lasted this long resets the backoff to its first step.
const STABLE: Duration = Duration::from_secs(5);
/// How long closing may take: flushing what was queued and the close handshake.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// A uniform number in `[0, 1)`: SipHash of a counter under the standard library's randomly
/// seeded keys (no `rand` dependency for a jitter).
fn random_unit() -> f64 {
    static DRAWS: AtomicU64 = AtomicU64::new(0);
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    let mut h = KEYS.get_or_init(RandomState::new).build_hasher();
    h.write_u64(DRAWS.fetch_add(1, Ordering::Relaxed));
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

fn start(settings: Arc<Settings>, first: Option<Socket>) -> Client {
    let (commands, command_rx) = mpsc::channel(settings.queue_capacity);
    let (inbound_tx, inbound) = mpsc::channel(settings.queue_capacity);
    let initial = if first.is_some() {
        ClientState::Open
    } else {
        ClientState::Connecting
    };
    let (state_tx, state) = watch::channel(initial);
    let (closing, closing_rx) = watch::channel(false);
    let positions = Positions::default();
    let task = Task {
        settings,
        commands: command_rx,
        inbound: inbound_tx,
        state: state_tx,
        closing: closing_rx,
        topics: Vec::new(),
        positions: positions.clone(),
    };
    tokio::spawn(task.run(first));
    Client {
        commands,
        inbound,
        state,
        closing,
        positions,
    }
}

/// Opens one connection within the connect timeout.
async fn open(settings: &Settings) -> Result<Socket, ConnectError> {
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
    let connecting = tokio_tungstenite::connect_async(request);
    match tokio::time::timeout(settings.connect_timeout, connecting).await {
        Err(_) => Err(ConnectError::Timeout),
        Ok(Ok((socket, _response))) => Ok(socket),
        Ok(Err(tungstenite::Error::Http(response))) => {
            Err(ConnectError::Refused(response.status()))
        }
        Ok(Err(tungstenite::Error::Io(e))) => Err(ConnectError::Io(e)),
        Ok(Err(e)) => Err(ConnectError::Handshake(e.to_string())),
    }
}

/// The background task of one client: connect, pump, back off, repeat.
struct Task {
    settings: Arc<Settings>,
    commands: mpsc::Receiver<Command>,
    inbound: mpsc::Sender<Message>,
    state: watch::Sender<ClientState>,
    closing: watch::Receiver<bool>,
    /// The topics to subscribe to after each reconnection, in first-subscribed order.
    topics: Vec<String>,
    /// The last position received per topic in `topics` (envelope servers only).
    positions: Positions,
}

/// How a connection ended.
enum Ended {
    /// The server or the network ended it: reconnect.
    Lost,
    /// The application closed the client.
    Closed,
}

impl Task {
    async fn run(mut self, mut socket: Option<Socket>) {
        let mut attempt = 0u32;
        loop {
            let ws = match socket.take() {
                Some(ws) => ws,
                None => {
                    let opened = tokio::select! {
                        opened = open(&self.settings) => opened,
                        _ = closed(&mut self.closing) => break,
                    };
                    match opened {
                        Ok(ws) => ws,
                        Err(e) => {
                            attempt += 1;
                            tracing::debug!(url = %self.settings.url, attempt, error = %e, "connection attempt failed");
                            if self.back_off(attempt).await {
                                continue;
                            }
                            break;
                        }
                    }
                }
            };
            tracing::debug!(url = %self.settings.url, "client connected");
            self.state.send_replace(ClientState::Open);
            let since = Instant::now();
            let ended = self.pump(ws).await;
            if matches!(ended, Ended::Closed) {
                break;
            }
            if since.elapsed() >= STABLE {
                attempt = 0;
            }
            attempt += 1;
            tracing::debug!(url = %self.settings.url, "client connection lost");
            if !self.back_off(attempt).await {
                break;
            }
        }
        self.state.send_replace(ClientState::Closed);
    }

    /// Waits the backoff before `attempt`; false when the client was closed meanwhile.
    async fn back_off(&mut self, attempt: u32) -> bool {
        let retry_in = self.settings.backoff(attempt);
        self.state
            .send_replace(ClientState::Reconnecting { attempt, retry_in });
        tokio::select! {
            _ = tokio::time::sleep(retry_in) => {
                self.state.send_replace(ClientState::Connecting);
                true
            }
            _ = closed(&mut self.closing) => false,
        }
    }

    /// Runs one connection: subscriptions first, then messages both ways until it ends.
    async fn pump(&mut self, mut ws: Socket) -> Ended {
        let resubscribe: Vec<Message> = self
            .topics
            .iter()
            .map(|topic| self.resubscribe_message(topic))
            .collect();
        for m in resubscribe {
            if ws.feed(to_wire(m)).await.is_err() {
                return Ended::Lost;
            }
        }
        if ws.flush().await.is_err() {
            return Ended::Lost;
        }
        loop {
            tokio::select! {
                biased;
                _ = closed(&mut self.closing) => {
                    self.close_socket(&mut ws).await;
                    return Ended::Closed;
                }
                command = self.commands.recv() => {
                    let Some(command) = command else {
                        self.close_socket(&mut ws).await;
                        return Ended::Closed;
                    };
                    let Some(m) = self.apply(command) else { continue };
                    // A server that does not read must not keep `close` waiting.
                    let sent = tokio::select! {
                        sent = ws.send(m) => Some(sent.is_ok()),
                        _ = closed(&mut self.closing) => None,
                    };
                    match sent {
                        Some(true) => {}
                        Some(false) => return Ended::Lost,
                        None => {
                            self.close_socket(&mut ws).await;
                            return Ended::Closed;
                        }
                    }
                }
                incoming = ws.next() => {
                    let message = match incoming {
                        Some(Ok(tungstenite::Message::Text(t))) => {
                            let m = Message::Text(Text::from_validated(Bytes::from(t)));
                            if !self.track(&m) {
                                continue;
                            }
                            m
                        }
                        Some(Ok(tungstenite::Message::Binary(b))) => Message::Binary(b),
                        // Pings are answered by tungstenite; a close frame is answered and
                        // then ends the stream.
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => {
                            tracing::debug!(url = %self.settings.url, error = %e, "client connection error");
                            return Ended::Lost;
                        }
                        None => return Ended::Lost,
                    };
                    // While the application does not read, neither does the client (the
                    // queue is bounded), but a close must still get through.
                    let delivered = tokio::select! {
                        sent = self.inbound.send(message) => sent.is_ok(),
                        _ = closed(&mut self.closing) => false,
                    };
                    if !delivered {
                        self.close_socket(&mut ws).await;
                        return Ended::Closed;
                    }
                }
            }
        }
    }

    /// Sends what the application queued before closing, then closes with 1000 and waits for
    /// the server's answer, all within [`CLOSE_TIMEOUT`].
    async fn close_socket(&mut self, ws: &mut Socket) {
        let closing = async {
            while let Ok(command) = self.commands.try_recv() {
                if let Some(m) = self.apply(command) {
                    ws.feed(m).await?;
                }
            }
            let normal = tungstenite::protocol::CloseFrame {
                code: tungstenite::protocol::frame::coding::CloseCode::Normal,
                reason: "".into(),
            };
            ws.close(Some(normal)).await?;
            while ws.next().await.is_some() {}
            Ok::<_, tungstenite::Error>(())
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
    }

    /// The subscribe message for `topic` after a reconnection: with `since` when its
    /// position is known and the message format is the default one.
    fn resubscribe_message(&self, topic: &str) -> Message {
        match lock(&self.positions).get(topic) {
            Some(p) if !self.settings.custom_subscribe => {
                Message::text(protocol::command_subscribe(topic, Some(*p)))
            }
            _ => (self.settings.subscribe)(topic),
        }
    }

    /// Follows the positions of the held topics in envelope messages (PROTOCOL.md, "Client
    /// algorithm"); false for a publication already received, which is not passed on.
    fn track(&self, message: &Message) -> bool {
        let Some(m) = ServerMessage::parse(message) else {
            return true;
        };
        let held = |topic: &String| self.topics.contains(topic);
        let mut positions = lock(&self.positions);
        match m {
            ServerMessage::Pub {
                topic,
                position: Some(p),
                ..
            } if held(&topic) => {
                if let Some(last) = positions.get(&topic) {
                    if last.epoch == p.epoch && p.offset <= last.offset {
                        tracing::debug!(url = %self.settings.url, %topic, position = %p, "duplicate publication ignored");
                        return false;
                    }
                }
                positions.insert(topic, p);
            }
            ServerMessage::Subscribed {
                topic,
                position: Some(p),
                ..
            } if held(&topic) => {
                positions.entry(topic).or_insert(p);
            }
            ServerMessage::Unrecoverable { topic, position } if held(&topic) => {
                tracing::debug!(url = %self.settings.url, %topic, "unrecoverable: the application must reload");
                match position {
                    Some(p) => positions.insert(topic, p),
                    None => positions.remove(&topic),
                };
            }
            _ => {}
        }
        true
    }

    /// Updates the topic list for a command; the message to write, if any.
    fn apply(&mut self, command: Command) -> Option<tungstenite::Message> {
        match command {
            Command::Send(m) => Some(to_wire(m)),
            Command::Subscribe(topic) => {
                if self.topics.contains(&topic) {
                    return None;
                }
                let m = (self.settings.subscribe)(&topic);
                self.topics.push(topic);
                Some(to_wire(m))
            }
            Command::Unsubscribe(topic) => {
                let i = self.topics.iter().position(|t| *t == topic)?;
                self.topics.remove(i);
                lock(&self.positions).remove(&topic);
                Some(to_wire((self.settings.unsubscribe)(&topic)))
            }
        }
    }
}

/// Resolves when the application closed the client (or dropped it).
async fn closed(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|c| *c).await;
}

fn to_wire(message: Message) -> tungstenite::Message {
    match message {
        Message::Text(t) => {
            // The bytes of a `Text` are UTF-8 by construction; this checks them once more.
            match tungstenite::Utf8Bytes::try_from(t.into_bytes()) {
                Ok(text) => tungstenite::Message::Text(text),
                Err(_) => unreachable!("Text holds UTF-8"),
            }
        }
        Message::Binary(b) => tungstenite::Message::Binary(b),
    }
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
    fn only_ws_urls_are_accepted() {
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
    }

    #[test]
    fn subscribe_since_matches_the_protocol() {
        let m = Message::text(protocol::command_subscribe(
            "bo\"ard",
            Some(Position::new(u64::MAX, 17)),
        ));
        assert_eq!(
            m.as_text(),
            Some(
                r#"{"type":"subscribe","topic":"bo\"ard","since":{"epoch":"18446744073709551615","offset":17}}"#
            )
        );
        let command = protocol::ClientCommand::parse(&m).unwrap();
        assert_eq!(
            command,
            protocol::ClientCommand::Subscribe {
                topic: "bo\"ard".into(),
                since: Some(Position::new(u64::MAX, 17))
            }
        );
    }

    #[test]
    fn server_messages_parse() {
        let m = Message::from(
            r#"{"type":"pub","topic":"b","epoch":"3","offset":2,"data_base64":"AAEC"}"#,
        );
        assert_eq!(
            ServerMessage::parse(&m),
            Some(ServerMessage::Pub {
                topic: "b".into(),
                position: Some(Position::new(3, 2)),
                data: Message::binary(vec![0u8, 1, 2]),
            })
        );
        let m = Message::from(
            r#"{"type":"subscribed","topic":"t","recovered":false,"replayed":0,"position":null}"#,
        );
        assert_eq!(
            ServerMessage::parse(&m),
            Some(ServerMessage::Subscribed {
                topic: "t".into(),
                recovered: false,
                replayed: 0,
                position: None
            })
        );
        assert_eq!(
            ServerMessage::parse(&Message::from(r#"{"type":"chat","topic":"t"}"#)),
            None
        );
    }

    #[test]
    fn default_subscribe_message_is_escaped_json() {
        let m = Message::text(protocol::command_subscribe("a\"b\\c\u{1}", None));
        assert_eq!(
            m.as_text(),
            Some(r#"{"type":"subscribe","topic":"a\"b\\c\u0001"}"#)
        );
    }
}
