//! The handle users hold: sending, broadcasting, publishing, serving and shutting down.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::backplane::{self, Backplane, Remote};
use crate::config::Config;
use crate::error::{FullOutcome, SendError, TopicError};
use crate::frame;
use crate::handler::Handler;
use crate::message::{CloseCode, CloseFrame, Message};
use crate::outbox::{Abort, Pushed};
use crate::registry::Registry;
use crate::session::{Session, SessionId, SessionInner};
use crate::stats::{Counters, Stats};

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
    pub(crate) core: Arc<Core>,
}

/// What a broadcast or publish did, counted per recipient on this node, and what became of
/// it for the other nodes of a cluster (`remote`).
///
/// Nothing is lost without being counted: every matching session of this node is either in
/// `queued`, `dropped` or `disconnected`; the sessions of other nodes are counted there.
///
/// ```
/// # fn f(hub: &wshub::Hub) {
/// let report = hub.broadcast("tick");
/// if report.dropped + report.disconnected > 0 {
///     eprintln!("{} slow clients missed a tick", report.dropped + report.disconnected);
/// }
/// # }
/// ```
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivery {
    /// Sessions the message was queued for. Queued is not delivered: a session may still end
    /// before its queue is written.
    pub queued: usize,
    /// Messages discarded: recipients whose queue was full under
    /// [`DropNewest`](crate::SlowConsumerPolicy::DropNewest), older messages discarded under
    /// [`DropOldest`](crate::SlowConsumerPolicy::DropOldest), and recipients already closing.
    pub dropped: usize,
    /// Recipients closed with 1008 under
    /// [`Disconnect`](crate::SlowConsumerPolicy::Disconnect) because their queue was full.
    pub disconnected: usize,
    /// Whether the message was handed to the [`Backplane`] for the other nodes:
    /// [`Remote::NotConfigured`] on a hub without one, [`Remote::Failed`] when the other nodes
    /// will not get it.
    pub remote: Remote,
    /// The publication's place in its topic's history, for a topic with
    /// [history](crate::Config::history) on a single node. `None` for other topics, for
    /// broadcasts, and with a backplane that keeps history, where the position is assigned by
    /// the shared log after `publish` returns: [`Hub::publish_confirmed`] waits for it.
    pub position: Option<crate::Position>,
}

/// How long [`Hub::publish_confirmed`] waits for a shared log to number a publication.
const CONFIRM_WAIT: Duration = Duration::from_secs(5);

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
        let (stop, _) = watch::channel(false);
        let hook = backplane::interest_hook(&self.backplane);
        let hub = Hub {
            core: Arc::new(Core {
                registry: Registry::new(self.node).with_interest_hook(hook),
                backplane: self.backplane,
                histories: Default::default(),
                presence: Default::default(),
                counters: Arc::default(),
                config: self.config,
                handler: self.handler,
                epoch: Instant::now(),
                clock_ms: std::sync::atomic::AtomicU64::new(1),
                stop,
                shutting_down: AtomicBool::new(false),
                shutdown_deadline_ms: std::sync::atomic::AtomicU64::new(0),
                tasks: AtomicUsize::new(0),
                tasks_idle: Notify::new(),
                timer: Once::new(),
            }),
        };
        backplane::attach(&hub.core);
        hub
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
        &self.core.config
    }

    /// Accepts connections from `listener` until [`shutdown`](Self::shutdown), each in its own
    /// task. Sets `TCP_NODELAY` on every socket.
    ///
    /// Returns `Ok(())` after shutdown starts. Transient accept errors (out of file descriptors,
    /// a connection reset before it was accepted) are logged and retried after a short pause;
    /// other errors are returned.
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
        let mut stopped = pin!(self.core.stopped());
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
        let task = TaskGuard::new(&self.core);
        crate::connection::run(self.clone(), stream, peer, task)
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
        let message = message.into();
        if let Some(forwarded) = backplane::send_to(&self.core, id, &message) {
            return forwarded;
        }
        let frame = frame::encode_message(&message);
        let push = |s: &SessionInner| {
            let frame = crate::deflate::for_one(s.deflate.as_ref(), frame);
            s.outbox.push(frame)
        };
        match self.core.registry.with(id, push) {
            Some(pushed) => self.core.push_result(id, pushed),
            None => Err(SendError::NotFound(id)),
        }
    }

    /// Queues `message` for every session. The frame is built once and shared.
    ///
    /// # Return
    /// The per-recipient counts of this node, and whether the other nodes' part was handed to
    /// the backplane; see [`Delivery`].
    pub fn broadcast(&self, message: impl Into<Message>) -> Delivery {
        let message = message.into();
        let frame = frame::encode_message(&message);
        let mut report = self.core.registry.deliver_all(&frame, None);
        self.core.counters.delivery(&report);
        report.remote = backplane::broadcast(&self.core, None, &message);
        report
    }

    /// Queues `message` for every session but `except` (typically the sender).
    pub fn broadcast_except(&self, except: SessionId, message: impl Into<Message>) -> Delivery {
        let message = message.into();
        let frame = frame::encode_message(&message);
        let mut report = self.core.registry.deliver_all(&frame, Some(except));
        self.core.counters.delivery(&report);
        report.remote = backplane::broadcast(&self.core, Some(except), &message);
        report
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
        let message = message.into();
        if !self.core.config.plain_publish() {
            if let Some(policy) = self.core.config.history_policy(topic) {
                return crate::history::publish(&self.core, topic, message, policy, None);
            }
        }
        // Plain, or in the envelope when the config asks for it.
        let frame = crate::history::frame_for(&self.core, topic, None, &message);
        let mut report = self.core.registry.deliver_topic(topic, &frame, None);
        self.core.counters.delivery(&report);
        report.remote = backplane::publish(&self.core, topic, &message);
        report
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
        let message = message.into();
        let Some(policy) = self.core.config.history_policy(topic) else {
            return self.publish(topic, message);
        };
        if !crate::history::shared_log(&self.core) {
            return self.publish(topic, message);
        }
        let (confirm, position) = crate::backplane::Confirm::new();
        let mut report = crate::history::publish(&self.core, topic, message, policy, Some(confirm));
        let numbered = tokio::time::timeout(CONFIRM_WAIT, position).await;
        report.position = numbered.ok().and_then(Result::ok);
        report
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
        since: Option<crate::Position>,
    ) -> Result<Vec<(crate::Position, Message)>, crate::HistoryError> {
        crate::history::read(&self.core, topic, since).await
    }

    /// The sessions subscribed to `topic`, on every node with a backplane that keeps presence
    /// (Redis), for topics with [presence](crate::Config::presence); empty for other topics.
    ///
    /// # Errors
    /// [`BackplaneError`](crate::BackplaneError) when the shared state cannot be read.
    pub async fn presence(
        &self,
        topic: &str,
    ) -> Result<Vec<crate::PresenceEntry>, crate::BackplaneError> {
        crate::presence::read(&self.core, topic).await
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
        if !code.is_sendable() {
            return Err(SendError::InvalidCloseCode(code));
        }
        let frame = CloseFrame::new(code, reason);
        if let Some(forwarded) = backplane::close(&self.core, id, &frame) {
            return forwarded;
        }
        let s = self.core.registry.get(id).ok_or(SendError::NotFound(id))?;
        self.core.close_by_app(&s, code, reason)
    }

    /// The session with this id, if it is connected.
    pub fn session(&self, id: SessionId) -> Option<Session> {
        let inner = self.core.registry.get(id)?;
        Some(Session {
            inner,
            hub: self.clone(),
        })
    }

    /// How many sessions are connected.
    pub fn session_count(&self) -> usize {
        self.core.registry.len()
    }

    /// How many sessions are subscribed to `topic`.
    pub fn subscriber_count(&self, topic: &str) -> usize {
        self.core.registry.topic_len(topic)
    }

    /// The topics with at least one subscriber, sorted.
    pub fn topics(&self) -> Vec<String> {
        self.core.registry.topic_names()
    }

    /// A snapshot of the hub's counters, cheap enough to take every second.
    pub fn stats(&self) -> Stats {
        self.core
            .counters
            .snapshot(self.core.registry.len(), self.core.registry.topic_count())
    }

    /// Whether [`shutdown`](Self::shutdown) has started.
    pub fn is_shutting_down(&self) -> bool {
        self.core.shutting_down.load(Ordering::Acquire)
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
        let core = &self.core;
        // Saturating: `Duration::MAX` ("wait as long as it takes") must not wrap into the past.
        let until = core
            .now_ms()
            .saturating_add(deadline.as_millis().try_into().unwrap_or(u64::MAX));
        core.shutdown_deadline_ms.store(until, Ordering::Release);
        core.shutting_down.store(true, Ordering::Release);
        core.stop.send_replace(true);
        tracing::info!(sessions = core.registry.len(), "shutting down");
        let going_away = CloseFrame::new(CloseCode::GOING_AWAY, "server shutting down");
        core.registry.for_each(|s| {
            core.close_session(s, going_away.clone());
        });
        if tokio::time::timeout(deadline, core.tasks_finished())
            .await
            .is_err()
        {
            let left = core.registry.len();
            tracing::warn!(
                sessions = left,
                "shutdown deadline passed; dropping the rest"
            );
            core.registry
                .for_each(|s| s.outbox.abort(Abort::CloseTimeout));
            core.tasks_finished().await;
        }
        tracing::info!("shutdown complete");
    }
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("sessions", &self.session_count())
            .finish_non_exhaustive()
    }
}

impl Core {
    /// Counts one push to one session and turns it into `send_to`'s result.
    pub(crate) fn push_result(&self, id: SessionId, pushed: Pushed) -> Result<(), SendError> {
        if pushed == Pushed::Disconnected {
            tracing::info!(%id, "slow consumer: queue full, closing with 1008");
        }
        let mut report = Delivery::default();
        report.count(pushed);
        self.counters.delivery(&report);
        push_result(id, pushed)
    }
}

fn push_result(id: SessionId, pushed: Pushed) -> Result<(), SendError> {
    match pushed {
        Pushed::Queued => Ok(()),
        Pushed::Closed => Err(SendError::Closing(id)),
        other => Err(SendError::Full {
            id,
            outcome: other.full_outcome().unwrap_or(FullOutcome::Disconnected),
        }),
    }
}

fn is_transient(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock | OutOfMemory
    ) || matches!(e.raw_os_error(), Some(23 | 24 | 105 | 12)) // ENFILE, EMFILE, ENOBUFS, ENOMEM
}

/// State shared by every handle and connection of one hub.
pub(crate) struct Core {
    pub(crate) config: Config,
    pub(crate) handler: Arc<dyn Handler>,
    pub(crate) registry: Registry,
    pub(crate) counters: Arc<Counters>,
    pub(crate) backplane: Option<Arc<dyn Backplane>>,
    pub(crate) histories: crate::history::Histories,
    pub(crate) presence: crate::presence::Presence,
    epoch: Instant,
    clock_ms: std::sync::atomic::AtomicU64,
    stop: watch::Sender<bool>,
    shutting_down: AtomicBool,
    shutdown_deadline_ms: std::sync::atomic::AtomicU64,
    tasks: AtomicUsize,
    tasks_idle: Notify,
    timer: Once,
}

impl Core {
    /// Milliseconds since the hub was built, plus one (0 means "never").
    pub(crate) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// [`now_ms`](Self::now_ms) as of the heartbeat timer's last tick (a quarter of the
    /// shortest timeout, at most a second, behind): free to read on every message, and
    /// precise enough for liveness and the inbound rate limit.
    pub(crate) fn coarse_ms(&self) -> u64 {
        self.clock_ms.load(Ordering::Relaxed)
    }

    /// Advances the coarse clock (the heartbeat timer, on every tick).
    pub(crate) fn tick(&self) -> u64 {
        let now = self.now_ms();
        self.clock_ms.store(now, Ordering::Relaxed);
        now
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Resolves once shutdown has started.
    pub(crate) fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stop = self.stop.subscribe();
        async move {
            // The guard `wait_for` returns is dropped here, not held by the caller.
            let _ = stop.wait_for(|stopped| *stopped).await.map(|_| ());
        }
    }

    /// An application's close: the code must be sendable.
    pub(crate) fn close_by_app(
        &self,
        s: &SessionInner,
        code: CloseCode,
        reason: &str,
    ) -> Result<(), SendError> {
        if !code.is_sendable() {
            return Err(SendError::InvalidCloseCode(code));
        }
        if self.close_session(s, CloseFrame::new(code, reason)) {
            Ok(())
        } else {
            Err(SendError::Closing(s.id))
        }
    }

    /// Queues a close frame for `s` and sets when it is dropped regardless.
    pub(crate) fn close_session(&self, s: &SessionInner, frame: CloseFrame) -> bool {
        if !s.outbox.close(frame) {
            return false;
        }
        let mut deadline = self.now_ms() + self.config.close_timeout.as_millis() as u64;
        if self.is_shutting_down() {
            deadline = self.shutdown_deadline_ms.load(Ordering::Acquire);
        }
        s.close_deadline.store(deadline, Ordering::Release);
        true
    }

    /// Starts the hub's heartbeat timer on first use (it needs a runtime).
    pub(crate) fn start_timer(self: &Arc<Self>) {
        self.timer.call_once(|| {
            tokio::spawn(crate::heartbeat::run(Arc::downgrade(self)));
        });
    }

    async fn tasks_finished(&self) {
        loop {
            let mut idle = pin!(self.tasks_idle.notified());
            idle.as_mut().enable();
            if self.tasks.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// Counts a live connection task, for [`Hub::shutdown`].
pub(crate) struct TaskGuard(Arc<Core>);

impl TaskGuard {
    pub(crate) fn new(core: &Arc<Core>) -> Self {
        core.tasks.fetch_add(1, Ordering::AcqRel);
        TaskGuard(core.clone())
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if self.0.tasks.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.tasks_idle.notify_waiters();
        }
    }
}
