//! A WebSocket client that stays connected (feature `client`): reconnects with exponential
//! backoff and jitter, re-subscribes its topics, and exposes its state.
//!
//! This file is the application's side: the [`Client`] handle, its states and errors.
//! `builder.rs` holds [`ClientBuilder`] and the settings it produces; `task.rs` the
//! background task that pumps messages both ways, keeps the connection alive (pings, read
//! timeout), tracks positions and reconnects; `transport.rs` opens one connection (TCP, TLS
//! for `wss://`, the upgrade).
//! The JSON it reads and writes is [`crate::protocol`]'s.

mod builder;
mod task;
mod transport;

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use http::StatusCode;
use tokio::sync::{mpsc, watch};

use crate::engine::history::Position;
use crate::message::Message;

pub use builder::ClientBuilder;

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
/// received (same epoch, offset not newer) is not passed on again.
///
/// The live stream is checked too (the *gap rule* of `PROTOCOL.md`): a publication from
/// another epoch, or whose offset skips past the next one, means publications were lost on
/// the way (a node or a backplane dropped them). The client then does not pass it on and does
/// not move its position past the gap: it subscribes again `since` its last position and
/// ignores that topic's publications until the server answers, so the application receives
/// the missing publications and the following ones from the replay, each exactly once and in
/// order.
///
/// When the server cannot replay (its history was lost, e.g. it restarted, or the gap is
/// older than what it keeps) it answers `unrecoverable`, and a server that lost part of a live
/// stream says so unasked: the stream yields that message, which
/// [`ServerMessage::parse`](crate::protocol::ServerMessage::parse) reads as [`ServerMessage::Unrecoverable`](crate::protocol::ServerMessage::Unrecoverable), and the application
/// reloads the topic's state by other means; the client takes the server's position and stays
/// subscribed. Every envelope message is passed on as received
/// (text); parse it with [`ServerMessage::parse`](crate::protocol::ServerMessage::parse). With a custom
/// [`subscribe_message`](ClientBuilder::subscribe_message) no `since` is sent, and a gap is
/// passed on unrepaired.
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
/// Sending is at most once: [`send`](Client::send) queues the message in a bounded queue
/// ([`ClientBuilder::queue_capacity`]) and returns at once, and messages queued while
/// disconnected go out after the next connection's subscriptions. `send` never waits for the
/// network: when the queue is full (the server does not read, or the connection is down and
/// the application keeps sending) it returns [`ClientSendError::Full`] and the message is not
/// queued; the application decides whether to drop it, retry later or give up. A message
/// already handed to a connection that then breaks is lost; a server that sends a snapshot on
/// [`open`](crate::Handler::open) lets the client catch up.
///
/// Incoming messages wait in a bounded queue ([`ClientBuilder::queue_capacity`]); while it is
/// full the client stops reading from the socket, so a consumer that falls behind slows the
/// server's sends down to the server's own slow-consumer policy rather than growing memory.
///
/// # Liveness
/// A connection can die without a close: the server's machine vanishes, a NAT or proxy drops
/// the flow, the server process hangs. The client sends a WebSocket ping every
/// [`ping_interval`](ClientBuilder::ping_interval) (15 s by default) and declares the
/// connection dead when nothing at all has arrived for the
/// [`read_timeout`](ClientBuilder::read_timeout) (40 s by default), or when a write has been
/// stuck that long on a socket the server does not drain; it then reconnects as after any
/// other loss, and [`state`](Client::state) says
/// [`Reconnecting`](ClientState::Reconnecting).
///
/// # TLS
/// With the `tls` feature, `wss://` URLs connect over TLS (tokio-rustls with rustls's `ring`
/// provider, as [`Hub::serve_tls`](crate::Hub::serve_tls)); pass the rustls client
/// configuration (the roots to trust) with `ClientBuilder::tls_config`. Without the feature,
/// or without a configuration, a `wss://` URL is refused with
/// [`ConnectError::InvalidRequest`].
///
/// Dropping the `Client` (or [`close`](Client::close)) ends its connection with close code 1000.
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

/// Why [`Client::send`], [`subscribe`](Client::subscribe) or
/// [`unsubscribe`](Client::unsubscribe) did not queue its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientSendError {
    /// The outbound queue ([`ClientBuilder::queue_capacity`] messages) is full: the server is
    /// not reading as fast as the application sends, or the client is disconnected. Nothing
    /// was queued; try again later, or drop the message.
    #[error("the client's outbound queue is full")]
    Full,
    /// The client is closed: nothing more can be sent. Create a new client to reconnect.
    #[error("the client is closed")]
    Closed,
}

impl Client {
    /// A builder for a client of `url` (`ws://host:port/path?query`, or `wss://` with the
    /// `tls` feature).
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(url.into())
    }

    /// Connects to `url` with the default settings; see [`ClientBuilder::connect`].
    pub async fn connect(url: impl Into<String>) -> Result<Client, ConnectError> {
        Client::builder(url).connect().await
    }

    /// Queues `message` for the server, without waiting: when the outbound queue is full it
    /// returns [`ClientSendError::Full`] at once.
    ///
    /// # Return
    /// `Ok` means queued, not delivered: while disconnected the message waits for the next
    /// connection (see [Delivery](Client#delivery)).
    ///
    /// # Errors
    /// [`ClientSendError::Full`] when the queue is full (the message is not queued),
    /// [`ClientSendError::Closed`] after [`close`](Self::close).
    pub async fn send(&self, message: impl Into<Message>) -> Result<(), ClientSendError> {
        self.command(Command::Send(message.into()))
    }

    /// Subscribes to `topic` now (when connected) and after every reconnection; a topic
    /// already held is not sent again. See [Subscriptions](Client#subscriptions).
    ///
    /// # Errors
    /// As [`send`](Self::send): the subscription goes through the same queue, in order with
    /// the messages; when it is full nothing changes (the topic is not held).
    pub async fn subscribe(&self, topic: &str) -> Result<(), ClientSendError> {
        self.command(Command::Subscribe(topic.to_string()))
    }

    /// Unsubscribes from `topic` and stops subscribing to it after reconnections.
    ///
    /// # Errors
    /// As [`send`](Self::send); when the queue is full the topic is still held.
    pub async fn unsubscribe(&self, topic: &str) -> Result<(), ClientSendError> {
        self.command(Command::Unsubscribe(topic.to_string()))
    }

    fn command(&self, command: Command) -> Result<(), ClientSendError> {
        if *self.closing.borrow() {
            return Err(ClientSendError::Closed);
        }
        self.commands.try_send(command).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ClientSendError::Full,
            mpsc::error::TrySendError::Closed(_) => ClientSendError::Closed,
        })
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
    /// current position. It never moves past a gap in the stream (see
    /// [Recovery](Client#recovery)).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{self, ServerMessage};

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
