//! One connected client, as handlers and the application see it.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64};

use http::HeaderMap;

use crate::error::{SendError, TopicError};
use crate::handler::Request;
use crate::hub::Hub;
use crate::message::{CloseCode, Message};
use crate::outbox::Outbox;
use crate::registry::{Registry, SessionTopics};

/// A session's id: unique within its hub (and across a cluster, where each node has its own
/// prefix), `Copy`, printable, and never reused while the hub lives.
///
/// ```
/// # fn show(id: wshub::SessionId) {
/// println!("session {id}");
/// let raw: u64 = id.as_u64();
/// assert_eq!(wshub::SessionId::from_u64(raw), id);
/// # }
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub(crate) u64);

impl SessionId {
    /// The id as a number, e.g. to store it or send it to a client.
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// An id from [`as_u64`](Self::as_u64).
    pub fn from_u64(raw: u64) -> Self {
        SessionId(raw)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}
impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", self.0)
    }
}

/// What the hub keeps for one session.
pub(crate) struct SessionInner {
    pub(crate) id: SessionId,
    pub(crate) request: Request,
    pub(crate) subprotocol: Option<Box<str>>,
    pub(crate) outbox: Outbox,
    /// The permessage-deflate parameters it negotiated, if any.
    pub(crate) deflate: Option<crate::deflate::Negotiated>,
    /// The topic compression stream this session follows (its epoch), 0 for none.
    #[cfg_attr(not(feature = "deflate"), allow(dead_code))]
    pub(crate) following: AtomicU64,
    pub(crate) topics: Mutex<SessionTopics>,
    /// Milliseconds since the hub started when the last frame arrived.
    pub(crate) last_seen: AtomicU64,
    /// When the heartbeat last asked for a ping (0: none outstanding).
    pub(crate) ping_sent: AtomicU64,
    /// When a closing session is dropped regardless (0: not closing).
    pub(crate) close_deadline: AtomicU64,
    /// A handler call is running: the connection is not reading, timeouts wait.
    pub(crate) in_handler: AtomicBool,
}

/// A handle to one connected client: cheap to clone, usable from any task.
///
/// Handlers receive `&Session`; the application can also look one up with
/// [`Hub::session`]. Sending never waits for the client: it queues (see [`Session::send`]).
///
/// ```
/// # async fn f(session: &wshub::Session) {
/// session.send("welcome").ok();
/// let _ = session.subscribe("news");
/// println!("{} at {} asked for {}", session.id(), session.peer_addr(), session.path());
/// # }
/// ```
#[derive(Clone)]
pub struct Session {
    pub(crate) inner: Arc<SessionInner>,
    pub(crate) hub: Hub,
}

impl Session {
    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.inner.id
    }

    /// The client's address (the TCP peer).
    pub fn peer_addr(&self) -> SocketAddr {
        self.inner.request.peer_addr()
    }

    /// The upgrade request: path, query, headers, peer address.
    pub fn request(&self) -> &Request {
        &self.inner.request
    }

    /// The request path.
    pub fn path(&self) -> &str {
        self.inner.request.path()
    }

    /// The request query string, without `?`.
    pub fn query(&self) -> Option<&str> {
        self.inner.request.query()
    }

    /// The request headers (see [`Request::headers`]). The map is made on the first call;
    /// to read one value, `session.request().header(name)` does without it.
    pub fn headers(&self) -> &HeaderMap {
        self.inner.request.headers()
    }

    /// The subprotocol chosen by [`Handler::select_subprotocol`](crate::Handler::select_subprotocol).
    pub fn subprotocol(&self) -> Option<&str> {
        self.inner.subprotocol.as_deref()
    }

    /// Typed data attached in [`Handler::authorize`](crate::Handler::authorize).
    ///
    /// ```
    /// # struct User { name: String }
    /// # fn f(session: &wshub::Session) {
    /// if let Some(user) = session.data::<User>() {
    ///     println!("hello {}", user.name);
    /// }
    /// # }
    /// ```
    pub fn data<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.inner.request.extensions().get::<T>()
    }

    /// Queues `message` for this client.
    ///
    /// # Return
    /// `Ok` means the message is queued, not that the client received it. `Err` says why it was
    /// not queued as asked; see [`SendError`].
    pub fn send(&self, message: impl Into<Message>) -> Result<(), SendError> {
        let frame = crate::frame::encode_message(&message.into());
        let pushed = self.hub.engine.deliver_to(&self.inner, frame);
        crate::engine::send_result(self.inner.id, pushed)
    }

    /// Starts the close handshake with `code` and `reason` after the messages already queued.
    ///
    /// # Errors
    /// [`SendError::Closing`] when it is already closing, [`SendError::InvalidCloseCode`] for
    /// a code that may not be sent on the wire.
    pub fn close(&self, code: CloseCode, reason: &str) -> Result<(), SendError> {
        self.hub.engine.close_by_app(&self.inner, code, reason)
    }

    /// Subscribes to `topic`; `Ok(false)` when already subscribed or closing.
    ///
    /// # Errors
    /// [`TopicError::InvalidName`], or [`TopicError::TooManyTopics`] beyond
    /// [`Config::max_topics_per_session`](crate::Config::max_topics_per_session).
    pub fn subscribe(&self, topic: &str) -> Result<bool, TopicError> {
        self.hub.engine.subscribe(self, topic)
    }

    /// Unsubscribes from `topic`; false when not subscribed.
    pub fn unsubscribe(&self, topic: &str) -> bool {
        self.hub.engine.unsubscribe(self, topic)
    }

    /// Subscribes to `topic` and first queues exactly the publications made after `since`,
    /// the last position this client saw: no gap and no duplicate between them and the live
    /// publications that follow, even while others publish concurrently.
    ///
    /// When `since` cannot be served (older than the history kept, another epoch, a topic
    /// without history) nothing is replayed and [`Recovered::Unrecoverable`](crate::Recovered)
    /// says so: the application should send the full state. In every `Ok` case the session is
    /// subscribed. With [`Config::envelope`](crate::Config::envelope), a `subscribed` or
    /// `unrecoverable` message (PROTOCOL.md) is queued before the replay.
    ///
    /// # Errors
    /// [`HistoryError::InvalidName`](crate::HistoryError::InvalidName),
    /// [`HistoryError::Closing`](crate::HistoryError::Closing), or
    /// [`HistoryError::Backplane`](crate::HistoryError::Backplane) when the shared log cannot
    /// be read (then the session is not subscribed).
    ///
    /// # Cancel safety
    /// On a single node it completes without waiting. With a backplane, dropping the future
    /// during the read leaves the session unsubscribed from `topic`, and nothing else behind.
    ///
    /// ```
    /// # async fn f(session: &wshub::Session, last_seen: wshub::Position) {
    /// match session.subscribe_from("board", last_seen).await {
    ///     Ok(wshub::Recovered::Unrecoverable { .. }) => { /* send a full snapshot */ }
    ///     Ok(_) => {}
    ///     Err(e) => eprintln!("{e}"),
    /// }
    /// # }
    /// ```
    pub async fn subscribe_from(
        &self,
        topic: &str,
        since: crate::Position,
    ) -> Result<crate::Recovered, crate::HistoryError> {
        crate::engine::join(self, topic, Some(since)).await
    }

    /// Applies a command of the JSON protocol (see
    /// [`ClientCommand`](crate::protocol::ClientCommand) and PROTOCOL.md): a subscribe with or
    /// without `since`, an unsubscribe, a `ping` (answered with `pong`) or a `presence`
    /// request (answered with the topic's `presence`). With
    /// [`Config::envelope`](crate::Config::envelope), a subscribe is answered with
    /// `subscribed` or `unrecoverable`, and a refused command with an `error` message.
    ///
    /// # Return
    /// What a subscribe did; `Recovered::Live { position: None }` for the other commands.
    ///
    /// # Errors
    /// As [`subscribe_from`](Self::subscribe_from); for `presence`, a topic without presence
    /// ([`HistoryError::NotEnabled`](crate::HistoryError::NotEnabled)) or a backplane that
    /// cannot be read.
    ///
    /// # Cancel safety
    /// As [`subscribe_from`](Self::subscribe_from). A `presence` request dropped before it
    /// completes is not answered.
    ///
    /// ```
    /// # struct App;
    /// #[wshub::async_trait]
    /// impl wshub::Handler for App {
    ///     async fn on_message(&self, s: &wshub::Session, m: wshub::Message) {
    ///         if let Some(command) = wshub::protocol::ClientCommand::parse(&m) {
    ///             let _ = s.apply(&command).await;
    ///         }
    ///     }
    /// }
    /// ```
    pub async fn apply(
        &self,
        command: &crate::protocol::ClientCommand,
    ) -> Result<crate::Recovered, crate::HistoryError> {
        crate::engine::apply(self, command).await
    }

    /// The topics this session is subscribed to.
    pub fn topics(&self) -> Vec<String> {
        Registry::session_topics(&self.inner)
    }

    /// Whether the session still accepts messages (not closing, not ended).
    pub fn is_open(&self) -> bool {
        self.inner.outbox.is_open()
    }

    /// The hub this session belongs to, for broadcasting or publishing from a handler.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.inner.id)
            .field("peer", &self.peer_addr())
            .field("path", &self.path())
            .finish_non_exhaustive()
    }
}
