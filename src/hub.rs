//! The handle users hold: sending, broadcasting, publishing, serving and shutting down. Every
//! operation is one call into the [`Engine`](crate::engine), which does the work.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use crate::backplane::{Backplane, BackplaneError};
use crate::config::Config;
use crate::engine::history::{HistoryError, Position};
use crate::engine::{Delivery, Engine, TaskGuard};
use crate::error::{SendError, TopicError};
use crate::handler::Handler;
use crate::message::{CloseCode, Message};
use crate::protocol::PresenceEntry;
use crate::session::{Session, SessionId};
use crate::stats::Stats;

/// The registry of live sessions and the way to reach them: a cheap, cloneable handle.
///
/// Clone it into every task that needs to push: a database change feed, a timer, an HTTP
/// handler. Every sending method returns at once; none waits for a client.
///
/// ```no_run
/// use wshub::{Handler, Hub, Session};
///
/// struct Orders;
/// #[wshub::async_trait]
/// impl Handler for Orders {
///     async fn open(&self, s: &Session) {
///         let _ = s.subscribe("orders");
///     }
/// }
///
/// # #[tokio::main] async fn main() -> std::io::Result<()> {
/// let hub = Hub::new(Orders);
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:9001").await?;
/// tokio::spawn(hub.clone().serve(listener));
/// hub.publish("orders", "order 17 shipped");
/// # Ok(()) }
/// ```
///
/// The handler is held as a trait object, so `Hub` has no type parameter and can be stored in
/// application state without naming the handler type.
#[derive(Clone)]
pub struct Hub {
    pub(crate) engine: Arc<Engine>,
}

/// Builds a [`Hub`] with a [`Config`].
///
/// ```
/// # struct App;
/// # impl wshub::Handler for App {}
/// let hub = wshub::Hub::builder(App)
///     .config(wshub::Config::default().max_sessions(10_000))
///     .build();
/// assert_eq!(hub.config().get_max_sessions(), 10_000);
/// ```
#[must_use]
pub struct HubBuilder {
    handler: Arc<dyn Handler>,
    config: Config,
    node: u16,
    backplane: Option<Arc<dyn Backplane>>,
}

impl HubBuilder {
    /// Uses `config` instead of [`Config::default`].
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The node number that prefixes session ids, so ids stay unique across hubs that share
    /// sessions (a cluster). Default: 0.
    pub fn node_id(mut self, node: u16) -> Self {
        self.node = node;
        self
    }

    /// Makes this hub one node of a cluster: broadcasts, topic publishes, and `send_to` or
    /// `close` for sessions of other nodes go through `backplane` too, and what other nodes
    /// send arrives through it. Sets the [node id](Self::node_id) to the backplane's
    /// [`node_id`](Backplane::node_id). Default: none, a single node.
    ///
    /// One backplane serves one hub.
    ///
    /// ```no_run
    /// # #[cfg(feature = "redis")]
    /// # async fn f() -> Result<(), wshub::BackplaneError> {
    /// # struct App;
    /// # impl wshub::Handler for App {}
    /// use std::sync::Arc;
    /// let backplane = Arc::new(wshub::RedisBackplane::connect("redis://127.0.0.1/").await?);
    /// let hub = wshub::Hub::builder(App).backplane(backplane.clone()).build();
    /// # Ok(()) }
    /// ```
    pub fn backplane(mut self, backplane: Arc<dyn Backplane>) -> Self {
        self.node = backplane.node_id();
        self.backplane = Some(backplane);
        self
    }

    /// Builds the hub. No task is started until the first session opens.
    pub fn build(self) -> Hub {
        Hub {
            engine: Engine::new(self.config, self.handler, self.node, self.backplane),
        }
    }
}

impl Hub {
    /// A hub with the default [`Config`].
    pub fn new(handler: impl Handler) -> Hub {
        Hub::builder(handler).build()
    }

    /// A builder, to set the [`Config`].
    pub fn builder(handler: impl Handler) -> HubBuilder {
        HubBuilder {
            handler: Arc::new(handler),
            config: Config::default(),
            node: 0,
            backplane: None,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.engine.config
    }

    /// Accepts connections from `listener` until [`shutdown`](Self::shutdown), each in its own
    /// task. Sets `TCP_NODELAY` on every socket.
    ///
    /// Returns `Ok(())` after shutdown starts. Transient accept errors (out of file descriptors,
    /// a connection reset before it was accepted) are logged and retried after a short pause;
    /// other errors are returned.
    ///
    /// # Bursts of connections
    /// `TcpListener::bind` listens with a backlog of 128. When more clients connect at once
    /// than the accept loop has taken yet (every page reconnecting after a restart), Linux
    /// drops the extra SYNs and those clients retry a second later. To absorb larger bursts,
    /// listen with a deeper backlog (the kernel caps it at `net.core.somaxconn`):
    ///
    /// ```no_run
    /// # async fn f(hub: wshub::Hub) -> std::io::Result<()> {
    /// let socket = tokio::net::TcpSocket::new_v4()?;
    /// socket.set_reuseaddr(true)?;
    /// socket.bind("0.0.0.0:9001".parse().unwrap())?;
    /// hub.serve(socket.listen(4096)?).await
    /// # }
    /// ```
    ///
    /// # Cancel safety
    /// Dropping the future stops accepting; connections already accepted run on in their
    /// own tasks.
    pub async fn serve(self, listener: TcpListener) -> io::Result<()> {
        self.accept_loop(listener, |stream, peer| {
            tokio::spawn(self.accept(stream, peer));
        })
        .await
    }

    /// Accepts from `listener` until shutdown, handing each socket (with `TCP_NODELAY` set)
    /// to `spawn`; transient errors are logged and retried with a growing pause.
    pub(crate) async fn accept_loop(
        &self,
        listener: TcpListener,
        mut spawn: impl FnMut(tokio::net::TcpStream, SocketAddr),
    ) -> io::Result<()> {
        let mut stopped = pin!(self.engine.stopped());
        let mut backoff = Duration::from_millis(5);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        backoff = Duration::from_millis(5);
                        let _ = stream.set_nodelay(true);
                        spawn(stream, peer);
                    }
                    Err(e) if is_transient(&e) => {
                        tracing::warn!(error = %e, "accept failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                    Err(e) => return Err(e),
                },
                _ = &mut stopped => return Ok(()),
            }
        }
    }

    /// Runs one connection from any byte stream (TCP, TLS, a Unix socket, an in-memory pipe):
    /// the HTTP upgrade with its hooks, then the session until it ends. Spawn the returned
    /// future; it finishes after [`Handler::on_close`].
    ///
    /// ```no_run
    /// # async fn f(hub: wshub::Hub, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    /// let (stream, peer) = listener.accept().await?;
    /// tokio::spawn(hub.accept(stream, peer));
    /// # Ok(()) }
    /// ```
    pub fn accept<S>(
        &self,
        stream: S,
        peer: SocketAddr,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let task = TaskGuard::new(&self.engine);
        // Boxed: a task spawned with a box holds a pointer in its 128-byte-aligned cell, and
        // the connection's state gets an allocation of exactly its size (see BENCHMARKS.md,
        // the bytes of an idle connection).
        Box::pin(crate::connection::run(self.clone(), stream, peer, task))
    }

    /// Queues `message` for one session.
    ///
    /// # Return
    /// `Ok` means queued, not delivered. An error says the session is unknown or closing, or
    /// that its queue was full and what the [`SlowConsumerPolicy`](crate::SlowConsumerPolicy)
    /// did ([`SendError::Full`]).
    ///
    /// With a [`Backplane`], an id of another node's session is forwarded to that node: `Ok`
    /// then means handed to the backplane (forwarded), and [`SendError::Remote`] that the
    /// backplane is down or full. What the owning node then finds (the session gone, its
    /// queue full) is not reported back.
    ///
    /// ```
    /// # fn f(hub: &wshub::Hub, id: wshub::SessionId) {
    /// match hub.send_to(id, "your order shipped") {
    ///     Ok(()) => {}
    ///     Err(wshub::SendError::NotFound(_)) => { /* forget the id */ }
    ///     Err(e) => eprintln!("{e}"),
    /// }
    /// # }
    /// ```
    pub fn send_to(&self, id: SessionId, message: impl Into<Message>) -> Result<(), SendError> {
        self.engine.send_to(id, &message.into())
    }

    /// Queues `message` for every session. The frame is built once and shared.
    ///
    /// # Return
    /// The per-recipient counts of this node, and whether the other nodes' part was handed to
    /// the backplane; see [`Delivery`].
    pub fn broadcast(&self, message: impl Into<Message>) -> Delivery {
        self.engine.broadcast(None, &message.into())
    }

    /// Queues `message` for every session but `except` (typically the sender).
    pub fn broadcast_except(&self, except: SessionId, message: impl Into<Message>) -> Delivery {
        self.engine.broadcast(Some(except), &message.into())
    }

    /// Queues `message` for every subscriber of `topic`.
    ///
    /// ```
    /// # fn f(hub: &wshub::Hub) {
    /// let report = hub.publish("orders", r#"{"order":17,"status":"shipped"}"#);
    /// println!("queued for {} subscribers", report.queued);
    /// # }
    /// ```
    pub fn publish(&self, topic: &str, message: impl Into<Message>) -> Delivery {
        self.engine.publish(topic, message.into())
    }

    /// [`publish`](Self::publish), then waits for the publication's [`Position`](crate::Position)
    /// when a [`Backplane`] keeps the topic's history (with `RedisBackplane`, Redis numbers
    /// it after `publish` would have returned). Elsewhere it is `publish`, position included
    /// for a topic with history.
    ///
    /// # Return
    /// The report, with `position` set once the shared log numbered the publication; `None`
    /// when it failed (`remote` says why) or was not numbered within 5 seconds.
    ///
    /// # Cancel safety
    /// Dropping the future does not withdraw the publication.
    ///
    /// ```
    /// # async fn f(hub: &wshub::Hub) {
    /// let report = hub.publish_confirmed("board", "parcel 17 delivered").await;
    /// if let Some(position) = report.position {
    ///     println!("published at {position}");
    /// }
    /// # }
    /// ```
    ///
    pub async fn publish_confirmed(&self, topic: &str, message: impl Into<Message>) -> Delivery {
        self.engine.publish_confirmed(topic, message.into()).await
    }

    /// The publications of `topic` after `since` (every one kept when `None`), in order, with
    /// their positions.
    ///
    /// # Errors
    /// [`HistoryError::NotEnabled`](crate::HistoryError::NotEnabled) for a topic without
    /// history, [`HistoryError::Unrecoverable`](crate::HistoryError::Unrecoverable) when
    /// `since` is older than what is kept or of another epoch (the current position is in the
    /// error), [`HistoryError::Backplane`](crate::HistoryError::Backplane) when the shared log
    /// cannot be read.
    ///
    /// # Cancel safety
    /// Reading has no side effect: dropping the future loses nothing.
    ///
    /// ```
    /// # async fn f(hub: &wshub::Hub) -> Result<(), wshub::HistoryError> {
    /// for (position, message) in hub.history("board", None).await? {
    ///     println!("{position}: {} bytes", message.len());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn history(
        &self,
        topic: &str,
        since: Option<Position>,
    ) -> Result<Vec<(Position, Message)>, HistoryError> {
        crate::engine::read_history(&self.engine, topic, since).await
    }

    /// The sessions subscribed to `topic`, on every node with a backplane that keeps presence
    /// (Redis), for topics with [presence](crate::Config::presence); empty for other topics.
    ///
    /// # Errors
    /// [`BackplaneError`] when the shared state cannot be read.
    ///
    /// # Cancel safety
    /// Reading has no side effect: dropping the future loses nothing.
    ///
    /// ```
    /// # async fn f(hub: &wshub::Hub) -> Result<(), wshub::BackplaneError> {
    /// let here = hub.presence("room:7").await?;
    /// println!("{} present", here.len());
    /// # Ok(()) }
    /// ```
    pub async fn presence(&self, topic: &str) -> Result<Vec<PresenceEntry>, BackplaneError> {
        self.engine.presence(topic).await
    }

    /// Subscribes session `id` to `topic`; `Ok(false)` when already subscribed or closing.
    pub fn subscribe(&self, id: SessionId, topic: &str) -> Result<bool, TopicError> {
        let session = self.session(id).ok_or(TopicError::NotFound(id))?;
        session.subscribe(topic)
    }

    /// Unsubscribes session `id` from `topic`; `Ok(false)` when it was not subscribed.
    pub fn unsubscribe(&self, id: SessionId, topic: &str) -> Result<bool, TopicError> {
        let session = self.session(id).ok_or(TopicError::NotFound(id))?;
        Ok(session.unsubscribe(topic))
    }

    /// Closes session `id` with `code` and `reason` once the messages already queued for it are
    /// written. [`Handler::on_close`] follows when the client answers or `close_timeout` passes.
    ///
    /// With a [`Backplane`], an id of another node's session is forwarded to that node, with
    /// the same meaning of `Ok` and [`SendError::Remote`] as for [`send_to`](Self::send_to).
    ///
    /// # Errors
    /// [`SendError::NotFound`], [`SendError::Closing`] when it is already closing, and
    /// [`SendError::InvalidCloseCode`] for a code that may not be sent.
    pub fn close(&self, id: SessionId, code: CloseCode, reason: &str) -> Result<(), SendError> {
        self.engine.close(id, code, reason)
    }

    /// The session with this id, if it is connected.
    pub fn session(&self, id: SessionId) -> Option<Session> {
        let inner = self.engine.registry.get(id)?;
        Some(Session {
            inner,
            hub: self.clone(),
        })
    }

    /// How many sessions are connected.
    pub fn session_count(&self) -> usize {
        self.engine.registry.len()
    }

    /// How many sessions are subscribed to `topic`.
    pub fn subscriber_count(&self, topic: &str) -> usize {
        self.engine.registry.topic_len(topic)
    }

    /// The topics with at least one subscriber, sorted.
    pub fn topics(&self) -> Vec<String> {
        self.engine.registry.topic_names()
    }

    /// A snapshot of the hub's counters, cheap enough to take every second.
    pub fn stats(&self) -> Stats {
        self.engine.stats()
    }

    /// Whether [`shutdown`](Self::shutdown) has started.
    pub fn is_shutting_down(&self) -> bool {
        self.engine.is_shutting_down()
    }

    /// Shuts the hub down gracefully.
    ///
    /// Stops [`serve`](Self::serve) loops and refuses new upgrades with 503, sends close 1001
    /// to every session behind what is already queued, lets the queues drain and the clients
    /// answer until `deadline` has passed, then drops the connections still open. Returns when
    /// every connection task has ended, each session's [`Handler::on_close`] having run once.
    ///
    /// # Cancel safety
    /// Dropping the returned future early leaves the shutdown in progress: sessions still close
    /// by their `close_timeout`, but connections are not force-dropped at `deadline`.
    pub async fn shutdown(&self, deadline: Duration) {
        self.engine.shutdown(deadline).await
    }
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("sessions", &self.session_count())
            .finish_non_exhaustive()
    }
}

fn is_transient(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock | OutOfMemory
    ) || matches!(e.raw_os_error(), Some(23 | 24 | 105 | 12)) // ENFILE, EMFILE, ENOBUFS, ENOMEM
}
