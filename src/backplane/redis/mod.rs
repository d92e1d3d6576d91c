//! [`RedisBackplane`]: the cluster's packets over Redis pub/sub (feature `redis`).
//!
//! Three tasks per node, each with its own connection, so none waits on another:
//!
//! - the **publisher** drains a bounded queue of packets and writes them as pipelines of
//!   `PUBLISH` commands, many per round trip, in queue order (so one publisher's order holds);
//! - the **subscriber** holds the pub/sub connection: the broadcast channel, this node's own
//!   channel, and a channel per topic that has local subscribers; it delivers what arrives
//!   into the hub;
//! - the **heartbeat** renews this node's lease on its number and writes its counts and its
//!   sessions' presence.
//!
//! Each reconnects on its own with exponential backoff after any error.
//!
//! The module is split by job:
//!
//! - `config`: [`RedisConfig`] and [`RedisStats`];
//! - `keys`: channel and key names, and the Lua scripts that run in Redis;
//! - `control`: reads on the control connection (history, presence, cluster counts);
//! - `publisher`: the publishing task and its queue;
//! - `subscriber`: the pub/sub task, and delivery into the hub;
//! - `liveness`: the node number's claim, its lease, and the heartbeat.
//!
//! This file holds [`RedisBackplane`], the state its tasks share, and the [`Backplane`] impl.

mod config;
mod control;
mod keys;
mod liveness;
mod publisher;
mod subscriber;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ::redis as r;
use async_trait::async_trait;
use bytes::Bytes;
use r::aio::MultiplexedConnection;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use super::{Backplane, BackplaneError, ClusterCount, LocalNode, Remote, Route};
use crate::error::RemoteError;

pub use config::{RedisConfig, RedisStats};
use control::ReadError;
use keys::{Names, RELEASE_LEASE};
use liveness::Presence;
use liveness::{Heartbeat, claim_node, random_token, run_heartbeat};
use publisher::{Channel, Outgoing, run_publisher};
use subscriber::{run_subscriber, subscribe_base};

/// Broadcasts, topic publishes, `send_to` and `close` across nodes through Redis pub/sub.
///
/// Connect one per hub, then give it to [`HubBuilder::backplane`](crate::HubBuilder::backplane),
/// which takes the node number it obtained for the session ids:
///
/// ```no_run
/// use std::sync::Arc;
/// use wshub::{Handler, Hub, RedisBackplane, Session};
///
/// struct Chat;
/// #[wshub::async_trait]
/// impl Handler for Chat {
///     async fn on_message(&self, s: &Session, m: wshub::Message) {
///         s.hub().broadcast(m); // reaches every session on every node
///     }
/// }
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let backplane = Arc::new(RedisBackplane::connect("redis://127.0.0.1:6379/").await?);
/// let hub = Hub::builder(Chat).backplane(backplane.clone()).build();
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:9001").await?;
/// tokio::spawn(hub.clone().serve(listener));
/// # Ok(()) }
/// ```
///
/// # Channels and keys
///
/// With the default prefix `wshub`:
///
/// | name | what |
/// |------|------|
/// | channel `wshub:all` | broadcasts; every node subscribes |
/// | channel `wshub:topic:{topic}` | publishes to `{topic}`; a node subscribes only while it has local subscribers |
/// | channel `wshub:node:{n}` | `send_to` and `close` for sessions of node `n`; only node `n` subscribes |
/// | key `wshub:node-seq` | counter handing out node numbers; expires a day after the last claim |
/// | key `wshub:lease:{n}` | node `n`'s lease on its number, renewed every heartbeat, expiring after the liveness timeout |
/// | key `wshub:counts:{n}` | hash of node `n`'s counts: `sessions`, and `topic:{topic}` per topic; expires with the lease |
/// | key `wshub:nodes` | set of node numbers that may be live, for the counts and presence; expires a liveness timeout after the last beat |
/// | key `wshub:presence:{topic}:{n}` | hash of node `n`'s sessions present on `{topic}` (id to info), written only by node `n`; expires with its lease |
/// | keys `wshub:history:{topic}:epoch`, `…:seq`, `…:log` | a topic's history (epoch, last offset, stream); expire together [`history_ttl`](RedisConfig::history_ttl) after the last publication |
///
/// Every key expires or is deleted when unused.
///
/// A message is published once, whatever the number of nodes, and Redis sends it only to the
/// nodes subscribed to its channel.
///
/// # Guarantees and failures
///
/// While Redis is up, a node receives each packet of another node once, in the order that
/// node published it (one publishing connection per node, one subscription connection per
/// node). Its own packets come back on the broadcast channel and are skipped.
///
/// Redis pub/sub keeps nothing: a node gets only what is published while it is subscribed.
/// What is lost:
/// - **Redis down or unreachable**: publishes are not sent (the report says
///   [`RemoteError::Down`]; local delivery goes on), and nothing arrives from other nodes.
///   The backplane reconnects with backoff, resubscribes, and delivery resumes on its own.
///   Messages published by any node during the outage are not delivered later.
/// - **Packets already queued when the connection broke** were reported
///   [`Remote::Queued`]; they are discarded (never sent twice, never late), counted in
///   [`RedisStats::lost`] and logged.
/// - **A topic's first local subscriber** gets messages from other nodes only once the
///   subscription to the topic's channel is made, a round trip later.
/// - **A node that crashes** takes its sessions with it; `send_to` for them is counted in
///   [`RedisStats::undeliverable`]. Its sessions stop counting once its liveness lapses.
///
/// What is not lost:
/// - **Publications of topics with history** missed while the subscription was down are read
///   from the log and delivered, in order, before live delivery resumes; when the log no
///   longer has them (Redis restarted without its data, or trimmed them), the topic's
///   subscribers are told `unrecoverable` ([`LocalNode::unrecoverable`]).
/// - **A command Redis refuses** (out of memory, a script error) fails alone
///   ([`RedisStats::refused`]); the rest of its pipeline goes out.
/// - **A node number** is never kept by two live nodes: the one that finds its number held by
///   another renumbers ([`LocalNode::renumber`], [`RedisStats::renumbered`]).
/// - **Presence** is written again by each node after any fault, within a heartbeat.
///
/// The full list, with what a user sees and how long each takes to heal, is in
/// `docs/history.md`.
///
/// Every state change (connection lost, reconnected, queue full, losses) is logged with
/// `tracing`; see also [`stats`](Self::stats).
///
/// # Panics
/// Giving one `RedisBackplane` to two hubs panics in the second
/// [`build`](crate::HubBuilder::build): each node needs its own number.
pub struct RedisBackplane {
    shared: Arc<Shared>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

struct Shared {
    config: RedisConfig,
    client: r::Client,
    /// This node's number; changes only when another live node turns out to hold it.
    node: AtomicU16,
    token: String,
    names: Names,
    queue: mpsc::Sender<Outgoing>,
    /// The publisher's connection is up.
    up: AtomicBool,
    /// The subscriber's connection is up.
    sub_up: AtomicBool,
    closed: AtomicBool,
    local: OnceLock<LocalNode>,
    /// Topic channels the subscription connection has confirmed (for `topic_ready`).
    ready: Mutex<HashSet<String>>,
    ready_changed: Notify,
    /// Tells the subscriber that the node number changed (its node channel with it).
    renumbered: Notify,
    /// Asks the heartbeat to renew the lease now (the subscription was re-established).
    beat_now: Notify,
    /// Counts the heartbeat's confirmations that this node holds its number (after a renewal
    /// or a renumbering): a new subscription listens on the node channel only after one.
    lease_checked: watch::Sender<u64>,
    /// Barriers for the subscriber: answered once everything Redis sent before is delivered.
    barriers: Mutex<Vec<tokio::sync::oneshot::Sender<()>>>,
    barrier_wake: Notify,
    /// The last position delivered into the hub, per topic with history whose channel is
    /// subscribed: what a resubscription catches up from, and what live duplicates are
    /// compared with. Only the subscriber task delivers; it alone advances these.
    delivered: Mutex<HashMap<String, crate::Position>>,
    /// This node's sessions present per topic (id to info), as the hub reported them.
    presence: Mutex<Presence>,
    /// Topics whose presence changed since the heartbeat last wrote them.
    presence_dirty: Mutex<HashSet<String>>,
    presence_wake: Notify,
    /// Topics whose local interest may have changed since the subscriber last looked.
    dirty: Mutex<HashSet<String>>,
    dirty_wake: Notify,
    /// Asks the publisher to check its connection now (another connection failed).
    check: Notify,
    stop: watch::Sender<bool>,
    /// The connection for heartbeats and count queries.
    control: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    full_warned: AtomicBool,
    stats: Counters,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    failed_down: AtomicU64,
    failed_full: AtomicU64,
    lost: AtomicU64,
    refused: AtomicU64,
    undeliverable: AtomicU64,
    received: AtomicU64,
    malformed: AtomicU64,
    reconnects: AtomicU64,
    renumbered: AtomicU64,
    caught_up: AtomicU64,
    unrecoverable: AtomicU64,
    topic_channels: AtomicUsize,
}

fn connection_error(e: impl std::error::Error + Send + Sync + 'static) -> BackplaneError {
    BackplaneError::Connection(Box::new(e))
}

impl RedisBackplane {
    /// Connects to Redis at `url` (`redis://[:password@]host[:port][/db]`) with the default
    /// [`RedisConfig`].
    ///
    /// See [`connect_with`](Self::connect_with).
    ///
    /// # Errors
    /// As [`connect_with`](Self::connect_with).
    pub async fn connect(url: &str) -> Result<RedisBackplane, BackplaneError> {
        Self::connect_with(url, RedisConfig::default()).await
    }

    /// Connects to Redis at `url`, obtains a node number unique in the cluster, subscribes to
    /// the broadcast channel and this node's channel, and starts the publisher, subscriber and
    /// heartbeat tasks. When it returns, the node is live and sessions may be accepted.
    ///
    /// Node numbers come from `INCR` on the `node-seq` key (taken modulo 65,535, from 1), and
    /// are claimed with `SET NX` on the number's lease key, so a number held by a live node is
    /// skipped; so is a number whose node channel still has a subscriber (a live node whose
    /// lease was lost when Redis restarted without persistence).
    ///
    /// # Errors
    /// [`BackplaneError::Connection`] when Redis cannot be reached or refuses;
    /// [`BackplaneError::NoNodeNumber`] when all 65,535 numbers are held by live nodes.
    pub async fn connect_with(
        url: &str,
        config: RedisConfig,
    ) -> Result<RedisBackplane, BackplaneError> {
        let client = r::Client::open(url).map_err(connection_error)?;
        let mut control = connect(&client, &config).await.map_err(connection_error)?;
        let token = random_token();
        let node = claim_node(&mut control, &config, &token).await?;
        let names = Names::new(&config.prefix);
        let (sink, stream) = subscribe_base(&client, &config, &names, Some(node))
            .await
            .map_err(connection_error)?;
        let publisher = connect(&client, &config).await.map_err(connection_error)?;
        let (queue, rx) = mpsc::channel(config.queue_capacity);
        let (stop, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            config,
            client,
            node: AtomicU16::new(node),
            token,
            names,
            queue,
            up: AtomicBool::new(true),
            sub_up: AtomicBool::new(true),
            closed: AtomicBool::new(false),
            local: OnceLock::new(),
            ready: Mutex::default(),
            ready_changed: Notify::new(),
            renumbered: Notify::new(),
            beat_now: Notify::new(),
            lease_checked: watch::Sender::new(0),
            barriers: Mutex::default(),
            barrier_wake: Notify::new(),
            delivered: Mutex::default(),
            presence: Mutex::default(),
            presence_dirty: Mutex::default(),
            presence_wake: Notify::new(),
            dirty: Mutex::default(),
            dirty_wake: Notify::new(),
            check: Notify::new(),
            stop,
            control: tokio::sync::Mutex::new(Some(control)),
            full_warned: AtomicBool::new(false),
            stats: Counters::default(),
        });
        let mut beat = Heartbeat::default();
        beat.beat(&shared).await.map_err(connection_error)?;
        tracing::info!(node, prefix = %shared.config.prefix, "joined the cluster through Redis");
        let tasks = vec![
            tokio::spawn(run_publisher(shared.clone(), rx, publisher)),
            tokio::spawn(run_subscriber(shared.clone(), sink, stream)),
            tokio::spawn(run_heartbeat(shared.clone(), beat)),
        ];
        Ok(RedisBackplane {
            shared,
            tasks: Mutex::new(tasks),
        })
    }

    /// This node's number in the cluster.
    pub fn node_id(&self) -> u16 {
        self.shared.node()
    }

    /// Whether publishes are accepted now (the publishing connection is up).
    pub fn is_connected(&self) -> bool {
        self.shared.up.load(Relaxed)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> RedisStats {
        let s = &self.shared;
        let c = &s.stats;
        RedisStats {
            node: s.node(),
            connected: s.up.load(Relaxed),
            subscribed: s.sub_up.load(Relaxed),
            topic_channels: c.topic_channels.load(Relaxed),
            published: c.published.load(Relaxed),
            failed_down: c.failed_down.load(Relaxed),
            failed_full: c.failed_full.load(Relaxed),
            lost: c.lost.load(Relaxed),
            refused: c.refused.load(Relaxed),
            undeliverable: c.undeliverable.load(Relaxed),
            received: c.received.load(Relaxed),
            malformed: c.malformed.load(Relaxed),
            reconnects: c.reconnects.load(Relaxed),
            renumbered: c.renumbered.load(Relaxed),
            caught_up: c.caught_up.load(Relaxed),
            unrecoverable: c.unrecoverable.load(Relaxed),
        }
    }

    /// Leaves the cluster: sends what is queued, stops the tasks, and removes this node's
    /// lease, counts and presence so its sessions stop counting at once. Publishes after this fail with
    /// [`RemoteError::Closed`]. Call it after [`Hub::shutdown`](crate::Hub::shutdown).
    ///
    /// Dropping the backplane without `close` stops the tasks too, but the node keeps counting
    /// until its liveness lapses.
    ///
    /// # Errors
    /// [`BackplaneError::Connection`] when the lease and counts could not be removed (they
    /// lapse by themselves).
    pub async fn close(&self) -> Result<(), BackplaneError> {
        let s = &self.shared;
        s.closed.store(true, Relaxed);
        s.stop.send_replace(true);
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        for task in tasks {
            let _ = task.await;
        }
        let mut conn = s.control_connection().await.map_err(connection_error)?;
        let n = s.node();
        r::Script::new(RELEASE_LEASE)
            .key(s.names.lease(n))
            .key(s.names.counts(n))
            .arg(&s.token)
            .invoke_async::<i64>(&mut conn)
            .await
            .map_err(connection_error)?;
        let _: i64 = r::cmd("SREM")
            .arg(s.names.nodes())
            .arg(n)
            .query_async(&mut conn)
            .await
            .map_err(connection_error)?;
        // Sessions still present (closed without a hub shutdown) stop showing at once too.
        let present: Vec<String> = lock(&s.presence)
            .keys()
            .map(|topic| s.names.presence(topic, n))
            .collect();
        if !present.is_empty() {
            let _: i64 = r::cmd("DEL")
                .arg(present)
                .query_async(&mut conn)
                .await
                .map_err(connection_error)?;
        }
        tracing::info!(node = n, "left the cluster");
        Ok(())
    }
}

impl Drop for RedisBackplane {
    fn drop(&mut self) {
        self.shared.stop.send_replace(true);
    }
}

impl fmt::Debug for RedisBackplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackplane")
            .field("node", &self.shared.node())
            .field("prefix", &self.shared.config.prefix)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Backplane for RedisBackplane {
    fn node_id(&self) -> u16 {
        self.shared.node()
    }

    fn attach(&self, node: LocalNode) {
        if self.shared.local.set(node).is_err() {
            panic!("a RedisBackplane serves one hub: connect one per hub");
        }
    }

    fn publish(&self, route: Route<'_>, packet: Bytes) -> Remote {
        let channel = match route {
            Route::All => Channel::All,
            Route::Node(n) => Channel::Node(n),
            Route::Topic(t) => Channel::Topic(self.shared.names.topic(t)),
        };
        self.publish_checked(Outgoing {
            channel,
            packet,
            confirm: None,
        })
    }

    fn interest_changed(&self, topic: &str) {
        let s = &self.shared;
        lock(&s.dirty).insert(topic.to_owned());
        s.dirty_wake.notify_one();
    }

    fn keeps_history(&self) -> bool {
        true
    }

    fn publish_recorded(
        &self,
        topic: &str,
        message: &crate::Message,
        policy: &crate::HistoryPolicy,
        confirm: Option<super::Confirm>,
    ) -> Remote {
        let packet = super::encode_message(
            super::KIND_PUBLISH,
            self.shared.node(),
            None,
            topic,
            message,
        );
        let channel = Channel::Recorded {
            topic: topic.to_owned(),
            max_messages: policy.max_messages,
            ttl_ms: self.shared.config.history_ttl_ms(policy),
        };
        self.publish_checked(Outgoing {
            channel,
            packet,
            confirm,
        })
    }

    async fn topic_ready(&self, topic: &str) -> Result<(), BackplaneError> {
        let s = &self.shared;
        let channel = s.names.topic(topic);
        let wait = || async {
            loop {
                let changed = s.ready_changed.notified();
                let mut changed = std::pin::pin!(changed);
                changed.as_mut().enable();
                if lock(&s.ready).contains(&channel) {
                    return;
                }
                changed.await;
            }
        };
        let barrier = async {
            loop {
                wait().await;
                // Then pending (un)subscriptions are done and everything Redis published to us
                // before now is delivered: a publication read from the log may still be on its
                // way over the subscription otherwise.
                let (tx, rx) = tokio::sync::oneshot::channel();
                lock(&s.barriers).push(tx);
                s.barrier_wake.notify_one();
                rx.await?;
                if lock(&s.ready).contains(&channel) {
                    return Ok::<(), tokio::sync::oneshot::error::RecvError>(());
                }
            }
        };
        match tokio::time::timeout(s.config.response_timeout * 2, barrier).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(connection_error(timed_out())),
        }
    }

    async fn history_read(
        &self,
        topic: &str,
        since: Option<crate::Position>,
        policy: &crate::HistoryPolicy,
    ) -> Result<crate::backplane::HistoryRead, BackplaneError> {
        let from = since.map_or(control::ReadFrom::Start, control::ReadFrom::After);
        self.shared
            .history_read(topic, from, policy)
            .await
            .map_err(read_error)
    }

    async fn history_position(
        &self,
        topic: &str,
        policy: &crate::HistoryPolicy,
    ) -> Result<crate::Position, BackplaneError> {
        let read = self
            .shared
            .history_read(topic, control::ReadFrom::End, policy);
        Ok(read.await.map_err(read_error)?.current)
    }

    fn presence_changed(&self, topic: &str, id: crate::SessionId, info: Option<&str>) {
        // The heartbeat task writes it (it alone writes this node's presence, so a write lost
        // to a fault is written again from this mirror).
        let s = &self.shared;
        {
            let mut mirror = lock(&s.presence);
            match info {
                Some(info) => {
                    mirror
                        .entry(topic.to_owned())
                        .or_default()
                        .insert(id.as_u64(), info.to_owned());
                }
                None => {
                    if let Some(entries) = mirror.get_mut(topic) {
                        entries.remove(&id.as_u64());
                        if entries.is_empty() {
                            mirror.remove(topic);
                        }
                    }
                }
            }
        }
        lock(&s.presence_dirty).insert(topic.to_owned());
        s.presence_wake.notify_one();
    }

    async fn cluster_presence(
        &self,
        topic: &str,
    ) -> Result<Vec<crate::PresenceEntry>, BackplaneError> {
        self.shared.presence(topic).await.map_err(connection_error)
    }

    async fn cluster_sessions(&self) -> Result<ClusterCount, BackplaneError> {
        self.shared
            .cluster_count(None)
            .await
            .map_err(connection_error)
    }

    async fn cluster_subscribers(&self, topic: &str) -> Result<ClusterCount, BackplaneError> {
        self.shared
            .cluster_count(Some(topic))
            .await
            .map_err(connection_error)
    }
}

impl RedisBackplane {
    fn publish_checked(&self, o: Outgoing) -> Remote {
        let s = &self.shared;
        if s.closed.load(Relaxed) {
            return Remote::Failed(RemoteError::Closed);
        }
        if !s.up.load(Relaxed) {
            s.stats.failed_down.fetch_add(1, Relaxed);
            return Remote::Failed(RemoteError::Down);
        }
        self.enqueue(o)
    }

    fn enqueue(&self, o: Outgoing) -> Remote {
        let s = &self.shared;
        match s.queue.try_send(o) {
            Ok(()) => Remote::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => {
                s.stats.failed_full.fetch_add(1, Relaxed);
                if !s.full_warned.swap(true, Relaxed) {
                    tracing::warn!(
                        capacity = s.config.queue_capacity,
                        "backplane queue full: messages are not sent to other nodes until \
                         Redis catches up"
                    );
                }
                Remote::Failed(RemoteError::Full)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Remote::Failed(RemoteError::Closed),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Critical sections are single insertions or takes; a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn connect(
    client: &r::Client,
    config: &RedisConfig,
) -> r::RedisResult<MultiplexedConnection> {
    let cfg = r::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.response_timeout));
    client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
}

fn timed_out() -> r::RedisError {
    r::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "Redis did not answer in time",
    ))
}

fn random_u64() -> u64 {
    // `RandomState` is seeded from the OS once per thread and varied per instance.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// Exponential backoff with ±25 % jitter.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(config: &RedisConfig) -> Self {
        Backoff {
            next: config.backoff_min,
            max: config.backoff_max,
        }
    }

    fn pause(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let quarter = base.as_micros() as u64 / 4;
        let jitter = if quarter == 0 {
            0
        } else {
            random_u64() % (2 * quarter + 1)
        };
        Duration::from_micros(base.as_micros() as u64 - quarter + jitter)
    }
}

impl Shared {
    /// This node's number now.
    fn node(&self) -> u16 {
        self.node.load(Relaxed)
    }

    /// A receiver whose `changed()` resolves once the backplane is stopping, even when it
    /// already was.
    fn stop_signal(&self) -> watch::Receiver<bool> {
        let mut stop = self.stop.subscribe();
        if *stop.borrow() {
            stop.mark_changed();
        }
        stop
    }

    /// Sleeps for `pause`; false when the backplane is stopping.
    async fn sleep(&self, pause: Duration) -> bool {
        let mut stop = self.stop_signal();
        tokio::select! {
            biased;
            _ = stop.changed() => false,
            _ = tokio::time::sleep(pause) => true,
        }
    }
}

fn read_error(e: ReadError) -> BackplaneError {
    match e {
        ReadError::Redis(e) => connection_error(e),
        ReadError::Malformed(what) => connection_error(std::io::Error::other(what)),
    }
}
