//! [`RedisBackplane`]: the cluster's envelopes over Redis pub/sub (feature `redis`).
//!
//! Three tasks per node, each with its own connection, so none waits on another:
//!
//! - the **publisher** drains a bounded queue of envelopes and writes them as pipelines of
//!   `PUBLISH` commands, many per round trip, in queue order (so one publisher's order holds);
//! - the **subscriber** holds the pub/sub connection: the broadcast channel, this node's own
//!   channel, and a channel per topic that has local subscribers; it delivers what arrives
//!   into the hub;
//! - the **heartbeat** renews this node's lease on its number and writes its counts.
//!
//! Each reconnects on its own with exponential backoff after any error.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ::redis as r;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use r::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use super::{Backplane, BackplaneError, ClusterCount, LocalNode, Remote, Route};
use crate::error::RemoteError;

/// Configuration of a [`RedisBackplane`]: names, liveness, queue and reconnection.
///
/// ```
/// use std::time::Duration;
/// let config = wshub::RedisConfig::default()
///     .prefix("chat-prod")
///     .heartbeat(Duration::from_millis(500))
///     .queue_capacity(100_000);
/// ```
#[derive(Debug, Clone)]
pub struct RedisConfig {
    prefix: String,
    heartbeat: Duration,
    liveness: Duration,
    queue_capacity: usize,
    max_batch: usize,
    connect_timeout: Duration,
    response_timeout: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            prefix: "wshub".into(),
            heartbeat: Duration::from_secs(1),
            liveness: Duration::from_secs(3),
            queue_capacity: 65_536,
            max_batch: 512,
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
        }
    }
}

impl RedisConfig {
    /// The prefix of every channel and key. Default: `wshub`.
    ///
    /// Nodes with the same prefix on the same Redis form one cluster; use another prefix for
    /// another application or environment sharing that Redis.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How often a node renews its liveness and writes its counts. Default: 1 s.
    ///
    /// Cluster counts of other nodes are at most this old. Shorter costs Redis a few more
    /// commands per node per second.
    #[must_use]
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every.max(Duration::from_millis(10));
        self
    }

    /// How long after its last heartbeat a node that stopped without leaving (a crash, a
    /// network partition) still counts, and holds its node number. Default: 3 s; at least
    /// twice the [heartbeat](Self::heartbeat).
    ///
    /// Shorter forgets crashed nodes sooner, but a node stalled for longer than this (a long
    /// pause, a partition) may find its number taken when it comes back, which it logs as an
    /// error.
    #[must_use]
    pub fn liveness_timeout(mut self, timeout: Duration) -> Self {
        self.liveness = timeout;
        self
    }

    /// Envelopes queued for the publisher at most. Default: 65,536.
    ///
    /// Bounds memory when Redis is slower than the application publishes; beyond it, messages
    /// are not sent to other nodes and the report says [`RemoteError::Full`].
    #[must_use]
    pub fn queue_capacity(mut self, envelopes: usize) -> Self {
        self.queue_capacity = envelopes.max(1);
        self
    }

    /// `PUBLISH` commands sent in one pipeline at most. Default: 512.
    ///
    /// Under load, everything queued during one round trip goes in the next, up to this.
    #[must_use]
    pub fn max_batch(mut self, commands: usize) -> Self {
        self.max_batch = commands.max(1);
        self
    }

    /// How long to wait for a connection to Redis. Default: 2 s.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long to wait for Redis to answer a command before the connection counts as broken
    /// and is replaced. Default: 2 s.
    #[must_use]
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// The first and the longest pause between reconnection attempts; the pause doubles after
    /// each failure, with ±25 % jitter. Default: 50 ms and 2 s.
    ///
    /// After Redis comes back, cross-node delivery resumes within about `max`.
    #[must_use]
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min.max(Duration::from_millis(1));
        self.backoff_max = max.max(self.backoff_min);
        self
    }

    fn liveness_ms(&self) -> u64 {
        self.liveness.max(self.heartbeat * 2).as_millis() as u64
    }
}

/// A snapshot of a [`RedisBackplane`]'s counters, from [`RedisBackplane::stats`].
///
/// Until [`close`](RedisBackplane::close), every message the hub handed over ends up in exactly
/// one of `published`, `failed_down`, `failed_full` or `lost`.
///
/// ```no_run
/// # fn f(backplane: &wshub::RedisBackplane) {
/// let s = backplane.stats();
/// if !s.connected {
///     eprintln!("Redis is down: {} messages not sent to other nodes", s.failed_down);
/// }
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStats {
    /// This node's number.
    pub node: u16,
    /// Whether the publishing connection is up (publishes are accepted).
    pub connected: bool,
    /// Whether the subscription connection is up (messages from other nodes arrive).
    pub subscribed: bool,
    /// Topic channels subscribed now (topics with local subscribers).
    pub topic_channels: usize,
    /// Envelopes Redis accepted.
    pub published: u64,
    /// Envelopes refused because Redis was down ([`RemoteError::Down`]).
    pub failed_down: u64,
    /// Envelopes refused because the queue was full ([`RemoteError::Full`]).
    pub failed_full: u64,
    /// Envelopes accepted into the queue but lost when the connection broke before Redis
    /// confirmed them.
    pub lost: u64,
    /// `send_to` and `close` envelopes that no node was listening for: the owning node has
    /// gone.
    pub undeliverable: u64,
    /// Envelopes received from other nodes and delivered.
    pub received: u64,
    /// Envelopes received that were not valid (another wshub version, or not wshub's).
    pub malformed: u64,
    /// Connections re-established after a failure (any of the three).
    pub reconnects: u64,
}

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
/// | key `wshub:node-seq` | counter handing out node numbers |
/// | key `wshub:lease:{n}` | node `n`'s lease on its number, renewed every heartbeat, expiring after the liveness timeout |
/// | key `wshub:counts:{n}` | hash of node `n`'s counts: `sessions`, and `topic:{topic}` per topic; expires with the lease |
/// | key `wshub:nodes` | set of node numbers that may be live, for the counts |
///
/// A message is published once, whatever the number of nodes, and Redis sends it only to the
/// nodes subscribed to its channel.
///
/// # Guarantees and failures
///
/// While Redis is up, a node receives each envelope of another node once, in the order that
/// node published it (one publishing connection per node, one subscription connection per
/// node). Its own envelopes come back on the broadcast channel and are skipped.
///
/// Redis pub/sub keeps nothing: a node gets only what is published while it is subscribed.
/// What is lost:
/// - **Redis down or unreachable**: publishes are not sent (the report says
///   [`RemoteError::Down`]; local delivery goes on), and nothing arrives from other nodes.
///   The backplane reconnects with backoff, resubscribes, and delivery resumes on its own.
///   Messages published by any node during the outage are not delivered later.
/// - **Envelopes already queued when the connection broke** were reported
///   [`Remote::Queued`]; they are discarded (never sent twice, never late), counted in
///   [`RedisStats::lost`] and logged.
/// - **A topic's first local subscriber** gets messages from other nodes only once the
///   subscription to the topic's channel is made, a round trip later.
/// - **A node that crashes** takes its sessions with it; `send_to` for them is counted in
///   [`RedisStats::undeliverable`]. Its sessions stop counting once its liveness lapses.
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
    node: u16,
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
    /// Barriers for the subscriber: answered once everything Redis sent before is delivered.
    barriers: Mutex<Vec<tokio::sync::oneshot::Sender<()>>>,
    barrier_wake: Notify,
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
    undeliverable: AtomicU64,
    received: AtomicU64,
    malformed: AtomicU64,
    reconnects: AtomicU64,
    topic_channels: AtomicUsize,
}

/// Channel and key names.
struct Names {
    prefix: String,
    all: String,
    own: String,
}

impl Names {
    fn new(prefix: &str, node: u16) -> Self {
        Names {
            prefix: prefix.to_owned(),
            all: format!("{prefix}:all"),
            own: format!("{prefix}:node:{node}"),
        }
    }
    fn topic(&self, topic: &str) -> String {
        format!("{}:topic:{topic}", self.prefix)
    }
    fn node(&self, node: u16) -> String {
        format!("{}:node:{node}", self.prefix)
    }
    fn lease(&self, node: u16) -> String {
        format!("{}:lease:{node}", self.prefix)
    }
    fn counts(&self, node: u16) -> String {
        format!("{}:counts:{node}", self.prefix)
    }
    fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }
    fn node_seq(&self) -> String {
        format!("{}:node-seq", self.prefix)
    }
    /// Epoch, sequence and stream of a topic's history.
    fn history(&self, topic: &str) -> [String; 3] {
        let p = &self.prefix;
        [
            format!("{p}:history:{topic}:epoch"),
            format!("{p}:history:{topic}:seq"),
            format!("{p}:history:{topic}:log"),
        ]
    }
    fn presence(&self, topic: &str) -> String {
        format!("{}:presence:{topic}", self.prefix)
    }
}

enum Channel {
    All,
    Node(u16),
    Topic(String),
    /// A publication to a topic with history: appended to its stream and published by
    /// [`RECORD`] in one step. The envelope is a publish envelope.
    Recorded {
        topic: String,
        max_messages: usize,
    },
    /// Presence of one session on a topic: `HSET` (with a value) or `HDEL` (without).
    Presence {
        topic: String,
        id: u64,
        info: Option<String>,
    },
}

struct Outgoing {
    channel: Channel,
    envelope: Bytes,
    /// For a recorded publication whose publisher waits for its position.
    confirm: Option<super::Confirm>,
}

/// Numbers a publication and appends it to the topic's stream, then publishes it, in one
/// atomic step, so that the order of the stream is the order of delivery on every node.
/// KEYS: epoch, sequence, stream. ARGV: channel, envelope, max length, a new epoch (8 bytes)
/// in case the history is gone. The published message is `R`, the epoch (8 bytes), the offset
/// (8 bytes, big-endian), then the envelope. Returns the number of receivers.
const RECORD: &str = r"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[4]
  redis.call('SET', KEYS[1], epoch)
  redis.call('DEL', KEYS[2], KEYS[3])
end
local offset = redis.call('INCR', KEYS[2])
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], offset .. '-0', 'e', ARGV[2], 't', ms)
local n, be = offset, ''
for i = 1, 8 do
  be = string.char(n % 256) .. be
  n = math.floor(n / 256)
end
return {redis.call('PUBLISH', ARGV[1], 'R' .. epoch .. be .. ARGV[2]), epoch, offset}
";

/// Reads a topic's history: creates the epoch when there is none (so that it is stable from
/// the first reader on), and returns epoch, sequence, Redis time (ms) and the stream entries
/// from ARGV[1] on. KEYS: epoch, sequence, stream. ARGV: first id, a new epoch.
const READ_HISTORY: &str = r"
redis.call('SET', KEYS[1], ARGV[2], 'NX')
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2]) or '0', ms,
        redis.call('XRANGE', KEYS[3], ARGV[1], '+')}
";

/// Renews this node's lease: 1 when it had lapsed and was taken again, 0 when renewed, -1 when
/// another node holds it.
const RENEW_LEASE: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
elseif v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 0
end
return -1
";

/// Gives the lease up, if it is still this node's.
const RELEASE_LEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1], KEYS[2])
end
return 0
";

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
        let names = Names::new(&config.prefix, node);
        let (sink, stream) = subscribe_base(&client, &config, &names)
            .await
            .map_err(connection_error)?;
        let publisher = connect(&client, &config).await.map_err(connection_error)?;
        let (queue, rx) = mpsc::channel(config.queue_capacity);
        let (stop, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            config,
            client,
            node,
            token,
            names,
            queue,
            up: AtomicBool::new(true),
            sub_up: AtomicBool::new(true),
            closed: AtomicBool::new(false),
            local: OnceLock::new(),
            ready: Mutex::default(),
            ready_changed: Notify::new(),
            barriers: Mutex::default(),
            barrier_wake: Notify::new(),
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
        self.shared.node
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
            node: s.node,
            connected: s.up.load(Relaxed),
            subscribed: s.sub_up.load(Relaxed),
            topic_channels: c.topic_channels.load(Relaxed),
            published: c.published.load(Relaxed),
            failed_down: c.failed_down.load(Relaxed),
            failed_full: c.failed_full.load(Relaxed),
            lost: c.lost.load(Relaxed),
            undeliverable: c.undeliverable.load(Relaxed),
            received: c.received.load(Relaxed),
            malformed: c.malformed.load(Relaxed),
            reconnects: c.reconnects.load(Relaxed),
        }
    }

    /// Leaves the cluster: sends what is queued, stops the tasks, and removes this node's
    /// lease and counts so its sessions stop counting at once. Publishes after this fail with
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
        let n = s.node;
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
            .field("node", &self.shared.node)
            .field("prefix", &self.shared.config.prefix)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Backplane for RedisBackplane {
    fn node_id(&self) -> u16 {
        self.shared.node
    }

    fn attach(&self, node: LocalNode) {
        if self.shared.local.set(node).is_err() {
            panic!("a RedisBackplane serves one hub: connect one per hub");
        }
    }

    fn publish(&self, route: Route<'_>, envelope: Bytes) -> Remote {
        let channel = match route {
            Route::All => Channel::All,
            Route::Node(n) => Channel::Node(n),
            Route::Topic(t) => Channel::Topic(self.shared.names.topic(t)),
        };
        self.publish_checked(Outgoing {
            channel,
            envelope,
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
        let envelope =
            super::encode_message(super::KIND_PUBLISH, self.shared.node, None, topic, message);
        let channel = Channel::Recorded {
            topic: topic.to_owned(),
            max_messages: policy.max_messages,
        };
        self.publish_checked(Outgoing {
            channel,
            envelope,
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
    ) -> Result<crate::HistoryRead, BackplaneError> {
        self.shared
            .history_read(topic, since, policy)
            .await
            .map_err(|e| match e {
                ReadError::Redis(e) => connection_error(e),
                ReadError::Malformed(what) => connection_error(std::io::Error::other(what)),
            })
    }

    fn presence_changed(&self, topic: &str, id: crate::SessionId, info: Option<&str>) {
        let channel = Channel::Presence {
            topic: topic.to_owned(),
            id: id.as_u64(),
            info: info.map(|i| format!("{}\n{i}", self.shared.token)),
        };
        let _ = self.publish_checked(Outgoing {
            channel,
            envelope: Bytes::new(),
            confirm: None,
        });
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

async fn claim_node(
    conn: &mut MultiplexedConnection,
    config: &RedisConfig,
    token: &str,
) -> Result<u16, BackplaneError> {
    let names = Names::new(&config.prefix, 0);
    for _ in 0..u16::MAX {
        let seq: u64 = r::cmd("INCR")
            .arg(names.node_seq())
            .query_async(conn)
            .await
            .map_err(connection_error)?;
        let node = ((seq.wrapping_sub(1)) % u64::from(u16::MAX) + 1) as u16;
        let claimed: Option<String> = r::cmd("SET")
            .arg(names.lease(node))
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(config.liveness_ms())
            .query_async(conn)
            .await
            .map_err(connection_error)?;
        if claimed.is_none() {
            continue;
        }
        // A live node whose lease was lost (Redis restarted without persistence) is still
        // subscribed to its channel, or will be again within its reconnection backoff: leave
        // its number alone.
        let (_, listeners): (String, u64) = r::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(names.node(node))
            .query_async(conn)
            .await
            .map_err(connection_error)?;
        if listeners == 0 {
            return Ok(node);
        }
        let _: i64 = r::Script::new(RELEASE_LEASE)
            .key(names.lease(node))
            .key(names.counts(node))
            .arg(token)
            .invoke_async(conn)
            .await
            .map_err(connection_error)?;
    }
    Err(BackplaneError::NoNodeNumber)
}

/// A pub/sub connection subscribed to the broadcast channel and this node's channel.
async fn subscribe_base(
    client: &r::Client,
    config: &RedisConfig,
    names: &Names,
) -> r::RedisResult<(PubSubSink, PubSubStream)> {
    let timeout = config.connect_timeout + config.response_timeout;
    let connecting = async {
        let (mut sink, stream) = client.get_async_pubsub().await?.split();
        sink.subscribe(&names.all).await?;
        sink.subscribe(&names.own).await?;
        Ok((sink, stream))
    };
    tokio::time::timeout(timeout, connecting)
        .await
        .unwrap_or_else(|_| Err(timed_out()))
}

fn timed_out() -> r::RedisError {
    r::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "Redis did not answer in time",
    ))
}

/// A random token identifying this process's claim on its node number.
fn random_token() -> String {
    let a = random_u64();
    let b = random_u64();
    format!("{a:016x}{b:016x}")
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

    async fn control_connection(&self) -> r::RedisResult<MultiplexedConnection> {
        let mut slot = self.control.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let conn = connect(&self.client, &self.config).await?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    async fn history_read(
        &self,
        topic: &str,
        since: Option<crate::Position>,
        policy: &crate::HistoryPolicy,
    ) -> Result<crate::HistoryRead, ReadError> {
        let mut conn = self.control_connection().await?;
        let [epoch_key, seq, log] = self.names.history(topic);
        let first = since.map_or("-".to_owned(), |p| format!("{}-0", p.offset + 1));
        let new_epoch = (random_u64() & ((1 << 53) - 1)).max(1);
        let answer: r::RedisResult<r::Value> = r::cmd("EVAL")
            .arg(READ_HISTORY)
            .arg(3)
            .arg(epoch_key)
            .arg(seq)
            .arg(log)
            .arg(first)
            .arg(&new_epoch.to_be_bytes()[..])
            .query_async(&mut conn)
            .await;
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                self.drop_control_connection().await;
                return Err(e.into());
            }
        };
        let (epoch, last, now_ms, entries): HistoryAnswer =
            r::from_redis_value(answer).map_err(|_| ReadError::Malformed("history answer"))?;
        let epoch = u64::from_be_bytes(
            epoch
                .as_slice()
                .try_into()
                .map_err(|_| ReadError::Malformed("epoch"))?,
        );
        let oldest_ms = policy
            .max_age
            .map_or(0, |age| now_ms.saturating_sub(age.as_millis() as u64));
        let mut out = Vec::with_capacity(entries.len());
        let mut first_offset = None;
        for (id, fields) in entries {
            let offset: u64 = id
                .split_once('-')
                .and_then(|(o, _)| o.parse().ok())
                .ok_or(ReadError::Malformed("stream id"))?;
            let at: u64 = fields
                .get("t")
                .and_then(|t| std::str::from_utf8(t).ok()?.parse().ok())
                .unwrap_or(0);
            // `MAXLEN ~` trims approximately; the policy's count is applied exactly here.
            let evicted = offset.saturating_add(policy.max_messages as u64) <= last;
            if at < oldest_ms || evicted {
                continue; // too old to be replayed
            }
            let envelope = fields.get("e").ok_or(ReadError::Malformed("entry"))?;
            let Ok(super::Envelope {
                action: super::Action::Publish { message, .. },
                ..
            }) = super::Envelope::decode(envelope)
            else {
                return Err(ReadError::Malformed("entry envelope"));
            };
            first_offset.get_or_insert(offset);
            out.push((crate::Position::new(epoch, offset), message));
        }
        let last = out.last().map_or(last, |(p, _)| p.offset.max(last));
        let current = crate::Position::new(epoch, last);
        let complete = match since {
            None => true,
            Some(p) if p.epoch != epoch || p.offset > last => false,
            Some(p) if p.offset == last => true,
            Some(p) => first_offset == Some(p.offset + 1),
        };
        Ok(crate::HistoryRead::new(current, out, complete))
    }

    /// The presence entries of `topic` whose node still holds the lease it wrote them under;
    /// the others (a crashed node's) are removed.
    async fn presence(&self, topic: &str) -> r::RedisResult<Vec<crate::PresenceEntry>> {
        let mut conn = self.control_connection().await?;
        let key = self.names.presence(topic);
        let all: HashMap<u64, String> = r::cmd("HGETALL").arg(&key).query_async(&mut conn).await?;
        let mut nodes: Vec<u16> = all.keys().map(|id| (id >> 48) as u16).collect();
        nodes.sort_unstable();
        nodes.dedup();
        let mut tokens = HashMap::new();
        if !nodes.is_empty() {
            let mut mget = r::cmd("MGET");
            for n in &nodes {
                mget.arg(self.names.lease(*n));
            }
            let leases: Vec<Option<String>> = mget.query_async(&mut conn).await?;
            tokens.extend(nodes.into_iter().zip(leases));
        }
        let mut present = Vec::new();
        let mut dead = Vec::new();
        for (id, value) in all {
            let (token, info) = value.split_once('\n').unwrap_or((&value, ""));
            let live = tokens.get(&((id >> 48) as u16)).and_then(Option::as_deref) == Some(token);
            if live {
                let info = (!info.is_empty()).then(|| info.to_owned());
                present.push(crate::PresenceEntry::new(
                    crate::SessionId::from_u64(id),
                    info,
                ));
            } else {
                dead.push(id);
            }
        }
        if !dead.is_empty() {
            let _: r::RedisResult<i64> = r::cmd("HDEL")
                .arg(&key)
                .arg(dead)
                .query_async(&mut conn)
                .await;
        }
        present.sort_by_key(|e| e.id);
        Ok(present)
    }

    async fn drop_control_connection(&self) {
        *self.control.lock().await = None;
    }

    /// Counts per live node: sessions (`topic` none) or subscribers of `topic`.
    async fn cluster_count(&self, topic: Option<&str>) -> r::RedisResult<ClusterCount> {
        let result = self.read_counts(topic).await;
        if result.is_err() {
            self.drop_control_connection().await;
        }
        result
    }

    async fn read_counts(&self, topic: Option<&str>) -> r::RedisResult<ClusterCount> {
        let mut conn = self.control_connection().await?;
        let members: Vec<u16> = r::cmd("SMEMBERS")
            .arg(self.names.nodes())
            .query_async(&mut conn)
            .await?;
        let field = topic.map(|t| format!("topic:{t}"));
        let others: Vec<u16> = members.into_iter().filter(|n| *n != self.node).collect();
        let mut pipe = r::pipe();
        for n in &others {
            let cmd = pipe.cmd("HMGET").arg(self.names.counts(*n)).arg("sessions");
            if let Some(f) = &field {
                cmd.arg(f);
            }
        }
        let rows: Vec<Vec<Option<u64>>> = if others.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut conn).await?
        };
        let mut count = ClusterCount::default();
        let mut dead = Vec::new();
        for (n, row) in others.iter().zip(rows) {
            match row.first() {
                Some(Some(sessions)) => {
                    let c = match field {
                        Some(_) => row.get(1).copied().flatten().unwrap_or(0),
                        None => *sessions,
                    };
                    count.nodes.push((*n, c as usize));
                }
                _ => dead.push(*n),
            }
        }
        if let Some(local) = self.local.get() {
            let own = match topic {
                Some(t) => local.subscriber_count(t),
                None => local.session_count(),
            };
            count.nodes.push((self.node, own));
        }
        count.nodes.sort_unstable();
        if !dead.is_empty() {
            // Nodes whose counts lapsed: forget them (a live one adds itself back next beat).
            let _: i64 = r::cmd("SREM")
                .arg(self.names.nodes())
                .arg(&dead)
                .query_async(&mut conn)
                .await?;
        }
        Ok(count)
    }
}

// The publisher.

async fn run_publisher(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Outgoing>,
    mut conn: MultiplexedConnection,
) {
    let max = shared.config.max_batch;
    let mut batch = Vec::with_capacity(max);
    let mut stop = shared.stop_signal();
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => {
                // Send what was queued before the stop, then end.
                rx.close();
                while rx.recv_many(&mut batch, max).await > 0 {
                    if shared.up.load(Relaxed) && send_batch(&shared, &mut conn, &mut batch).await.is_err() {
                        break;
                    }
                    batch.clear();
                }
                return;
            }
            n = rx.recv_many(&mut batch, max) => {
                if n == 0 {
                    return;
                }
            }
            _ = shared.check.notified() => {
                let ping = r::cmd("PING").query_async::<r::Value>(&mut conn).await;
                if let Err(e) = ping {
                    match reconnect_publisher(&shared, &mut rx, e).await {
                        Some(c) => conn = c,
                        None => return,
                    }
                }
                continue;
            }
        }
        if let Err(e) = send_batch(&shared, &mut conn, &mut batch).await {
            let lost = batch.len() as u64;
            shared.stats.lost.fetch_add(lost, Relaxed);
            tracing::warn!(
                lost,
                "{lost} message(s) for other nodes may not have reached Redis"
            );
            batch.clear();
            match reconnect_publisher(&shared, &mut rx, e).await {
                Some(c) => conn = c,
                None => return,
            }
        }
        batch.clear();
    }
}

/// Publishes one batch in one pipeline.
async fn send_batch(
    shared: &Shared,
    conn: &mut MultiplexedConnection,
    batch: &mut [Outgoing],
) -> r::RedisResult<()> {
    let mut pipe = r::pipe();
    for o in batch.iter() {
        match &o.channel {
            Channel::Recorded {
                topic,
                max_messages,
            } => {
                let [epoch, seq, log] = shared.names.history(topic);
                let new_epoch = (random_u64() & ((1 << 53) - 1)).max(1);
                pipe.cmd("EVAL")
                    .arg(RECORD)
                    .arg(3)
                    .arg(epoch)
                    .arg(seq)
                    .arg(log)
                    .arg(shared.names.topic(topic))
                    .arg(&o.envelope[..])
                    .arg(*max_messages)
                    .arg(&new_epoch.to_be_bytes()[..]);
                continue;
            }
            Channel::Presence { topic, id, info } => {
                let key = shared.names.presence(topic);
                match info {
                    Some(info) => pipe.cmd("HSET").arg(key).arg(*id).arg(info),
                    None => pipe.cmd("HDEL").arg(key).arg(*id),
                };
                continue;
            }
            _ => {}
        }
        let cmd = pipe.cmd("PUBLISH");
        match &o.channel {
            Channel::All => cmd.arg(&shared.names.all),
            Channel::Node(n) => cmd.arg(shared.names.node(*n)),
            Channel::Topic(name) => cmd.arg(name),
            Channel::Recorded { .. } | Channel::Presence { .. } => unreachable!("handled above"),
        }
        .arg(&o.envelope[..]);
    }
    let replies: Vec<r::Value> = pipe.query_async(conn).await?;
    shared
        .stats
        .published
        .fetch_add(batch.len() as u64, Relaxed);
    let mut undeliverable = 0;
    for (o, reply) in batch.iter_mut().zip(replies) {
        let n = match reply {
            r::Value::Int(n) => n,
            // A recorded publication: receivers, epoch (8 bytes, big-endian), offset.
            r::Value::Array(parts) => {
                if let [
                    r::Value::Int(n),
                    r::Value::BulkString(epoch),
                    r::Value::Int(offset),
                ] = parts.as_slice()
                {
                    let epoch = <[u8; 8]>::try_from(epoch.as_slice()).map(u64::from_be_bytes);
                    if let (Some(confirm), Ok(epoch)) = (o.confirm.take(), epoch) {
                        confirm.send(crate::Position::new(epoch, *offset as u64));
                    }
                    *n
                } else {
                    1
                }
            }
            _ => 1,
        };
        if n == 0 {
            if let Channel::Node(node) = o.channel {
                undeliverable += 1;
                tracing::debug!(node, "message for a session of a node that has gone");
            }
        }
    }
    if undeliverable > 0 {
        shared.stats.undeliverable.fetch_add(undeliverable, Relaxed);
    }
    if shared.full_warned.swap(false, Relaxed) {
        tracing::info!("backplane queue drained: sending to other nodes again");
    }
    Ok(())
}

/// Marks the publisher down and reconnects with backoff; `None` when stopping.
async fn reconnect_publisher(
    shared: &Shared,
    rx: &mut mpsc::Receiver<Outgoing>,
    error: r::RedisError,
) -> Option<MultiplexedConnection> {
    shared.up.store(false, Relaxed);
    let since = Instant::now();
    let refused_before = shared.stats.failed_down.load(Relaxed);
    tracing::error!(
        node = shared.node,
        %error,
        "Redis connection lost: messages are delivered on this node only until it is back"
    );
    let mut backoff = Backoff::new(&shared.config);
    loop {
        // Whatever was queued before `up` went false will not be sent: late is worse than lost.
        let mut stale = 0u64;
        while rx.try_recv().is_ok() {
            stale += 1;
        }
        if stale > 0 {
            shared.stats.lost.fetch_add(stale, Relaxed);
            tracing::warn!(
                lost = stale,
                "dropped messages queued for other nodes before Redis went down"
            );
        }
        if !shared.sleep(backoff.pause()).await {
            return None;
        }
        let attempt = async {
            let mut conn = connect(&shared.client, &shared.config).await?;
            r::cmd("PING").query_async::<r::Value>(&mut conn).await?;
            Ok::<_, r::RedisError>(conn)
        };
        match attempt.await {
            Ok(conn) => {
                shared.up.store(true, Relaxed);
                shared.stats.reconnects.fetch_add(1, Relaxed);
                let refused = shared.stats.failed_down.load(Relaxed) - refused_before;
                tracing::info!(
                    node = shared.node,
                    down_ms = since.elapsed().as_millis() as u64,
                    not_sent = refused,
                    "Redis connection back: sending to other nodes again"
                );
                return Some(conn);
            }
            Err(e) => tracing::debug!(error = %e, "Redis reconnection failed; retrying"),
        }
    }
}

// The subscriber.

/// Epoch, sequence, Redis time (ms) and stream entries, as `READ_HISTORY` returns them.
type HistoryAnswer = (Vec<u8>, u64, u64, Vec<(String, HashMap<String, Vec<u8>>)>);

enum ReadError {
    Redis(r::RedisError),
    Malformed(&'static str),
}

impl From<r::RedisError> for ReadError {
    fn from(e: r::RedisError) -> Self {
        ReadError::Redis(e)
    }
}

enum Ended {
    Stopped,
    Lost(r::RedisError),
}

async fn run_subscriber(shared: Arc<Shared>, mut sink: PubSubSink, mut stream: PubSubStream) {
    let mut topics = HashSet::new();
    loop {
        let error = match subscribed(&shared, &mut sink, &mut stream, &mut topics).await {
            Ended::Stopped => return,
            Ended::Lost(e) => e,
        };
        shared.sub_up.store(false, Relaxed);
        lock(&shared.ready).clear();
        shared.stats.topic_channels.store(0, Relaxed);
        tracing::error!(
            node = shared.node,
            %error,
            "Redis subscription lost: messages other nodes publish until it is back are lost"
        );
        // The publisher's connection may be gone too; have it look now, not at its next send.
        shared.check.notify_one();
        let since = Instant::now();
        let mut backoff = Backoff::new(&shared.config);
        loop {
            if !shared.sleep(backoff.pause()).await {
                return;
            }
            match subscribe_base(&shared.client, &shared.config, &shared.names).await {
                Ok((new_sink, new_stream)) => {
                    (sink, stream) = (new_sink, new_stream);
                    break;
                }
                Err(e) => tracing::debug!(error = %e, "Redis resubscription failed; retrying"),
            }
        }
        // A new connection has no subscriptions: look at every topic with local interest.
        topics.clear();
        if let Some(local) = shared.local.get() {
            lock(&shared.dirty).extend(local.topics());
        }
        shared.sub_up.store(true, Relaxed);
        shared.stats.reconnects.fetch_add(1, Relaxed);
        tracing::info!(
            node = shared.node,
            down_ms = since.elapsed().as_millis() as u64,
            "Redis subscription back: receiving from other nodes again"
        );
    }
}

/// Runs one subscription connection until it fails or the backplane stops.
async fn subscribed(
    shared: &Shared,
    sink: &mut PubSubSink,
    stream: &mut PubSubStream,
    topics: &mut HashSet<String>,
) -> Ended {
    let mut stop = shared.stop_signal();
    let mut ping = tokio::time::interval(shared.config.heartbeat);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    shared.dirty_wake.notify_one();
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return Ended::Stopped,
            msg = stream.next() => match msg {
                Some(msg) => receive(shared, msg.get_payload_bytes(), msg.get_channel_name()),
                None => return Ended::Lost(r::RedisError::from(std::io::Error::from(
                    std::io::ErrorKind::ConnectionReset,
                ))),
            },
            _ = shared.barrier_wake.notified() => {
                let waiting = std::mem::take(&mut *lock(&shared.barriers));
                if let Err(e) = reconcile(shared, sink, topics).await {
                    return Ended::Lost(e);
                }
                if let Err(e) = ping_redis(shared, sink).await {
                    return Ended::Lost(e);
                }
                // Messages Redis sent before the pong are in the stream already.
                while let Some(Some(msg)) = futures_util::FutureExt::now_or_never(stream.next()) {
                    receive(shared, msg.get_payload_bytes(), msg.get_channel_name());
                }
                for tx in waiting {
                    let _ = tx.send(());
                }
            }
            _ = shared.dirty_wake.notified() => {
                if let Err(e) = reconcile(shared, sink, topics).await {
                    return Ended::Lost(e);
                }
            }
            _ = ping.tick() => {
                // Finds a connection that is silently dead (a Redis that stopped answering).
                if let Err(e) = ping_redis(shared, sink).await {
                    return Ended::Lost(e);
                }
            }
        }
    }
}

fn receive(shared: &Shared, envelope: &[u8], channel: &str) {
    if let Some(recorded) = envelope.strip_prefix(b"R") {
        // A publication from a topic's history: every node delivers it, the publisher's too.
        let Some(local) = shared.local.get() else {
            return;
        };
        let decoded = (recorded.len() > 16)
            .then(|| super::Envelope::decode(&recorded[16..]).ok())
            .flatten();
        match decoded.map(|e| e.action) {
            Some(super::Action::Publish { topic, message, .. }) => {
                let epoch = u64::from_be_bytes(recorded[..8].try_into().expect("8 bytes"));
                let offset = u64::from_be_bytes(recorded[8..16].try_into().expect("8 bytes"));
                let position = crate::Position::new(epoch, offset);
                local.deliver_recorded(&topic, position, &message);
                shared.stats.received.fetch_add(1, Relaxed);
            }
            _ => {
                shared.stats.malformed.fetch_add(1, Relaxed);
                tracing::warn!(channel, "ignored a malformed history publication");
            }
        }
        return;
    }
    let own = envelope.first() == Some(&super::VERSION)
        && envelope.get(3..5) == Some(&shared.node.to_be_bytes()[..]);
    if own {
        return; // our own, back from the broadcast or a topic channel
    }
    let Some(local) = shared.local.get() else {
        return; // no hub yet, so no session to deliver to
    };
    match local.deliver(envelope) {
        Ok(_) => {
            shared.stats.received.fetch_add(1, Relaxed);
        }
        Err(error) => {
            shared.stats.malformed.fetch_add(1, Relaxed);
            tracing::warn!(channel, %error, "ignored a message from another node");
        }
    }
}

/// Subscribes to the channels of topics that gained local interest and unsubscribes from
/// those that lost it, one command at a time (each answer is awaited).
async fn reconcile(
    shared: &Shared,
    sink: &mut PubSubSink,
    topics: &mut HashSet<String>,
) -> r::RedisResult<()> {
    let Some(local) = shared.local.get() else {
        return Ok(());
    };
    let dirty = std::mem::take(&mut *lock(&shared.dirty));
    let mut pending = dirty.into_iter();
    while let Some(topic) = pending.next() {
        let wanted = local.subscriber_count(&topic) > 0;
        let change = if wanted && !topics.contains(&topic) {
            Some(true)
        } else if !wanted && topics.contains(&topic) {
            Some(false)
        } else {
            None
        };
        let Some(subscribe) = change else { continue };
        let channel = shared.names.topic(&topic);
        let answered = tokio::time::timeout(shared.config.response_timeout, async {
            if subscribe {
                sink.subscribe(&channel).await
            } else {
                sink.unsubscribe(&channel).await
            }
        })
        .await
        .unwrap_or_else(|_| Err(timed_out()));
        if let Err(e) = answered {
            // Looked at again after reconnecting.
            let mut dirty = lock(&shared.dirty);
            dirty.insert(topic);
            dirty.extend(pending);
            return Err(e);
        }
        if subscribe {
            lock(&shared.ready).insert(channel);
            topics.insert(topic);
        } else {
            lock(&shared.ready).remove(&channel);
            topics.remove(&topic);
        }
        shared.ready_changed.notify_waiters();
        shared.stats.topic_channels.store(topics.len(), Relaxed);
    }
    Ok(())
}

/// Pings Redis on the subscription connection within `response_timeout`.
async fn ping_redis(shared: &Shared, sink: &mut PubSubSink) -> Result<(), r::RedisError> {
    let answered = tokio::time::timeout(shared.config.response_timeout, sink.ping::<r::Value>());
    match answered.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(timed_out()),
    }
}

// The heartbeat.

async fn run_heartbeat(shared: Arc<Shared>, mut beat: Heartbeat) {
    let mut stop = shared.stop_signal();
    let mut tick = tokio::time::interval(shared.config.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first beat was made by `connect`
    let mut failing = false;
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        match beat.beat(&shared).await {
            Ok(()) if failing => {
                failing = false;
                shared.stats.reconnects.fetch_add(1, Relaxed);
                tracing::info!(
                    node = shared.node,
                    "heartbeat restored: this node counts again"
                );
            }
            Ok(()) => {}
            Err(error) => {
                if !failing {
                    tracing::warn!(
                        node = shared.node,
                        %error,
                        "heartbeat failed: other nodes stop counting this one if it lasts"
                    );
                }
                failing = true;
                beat.written = None;
                shared.drop_control_connection().await;
                shared.check.notify_one();
            }
        }
    }
}

/// What this node last wrote of its counts.
#[derive(Default)]
struct Heartbeat {
    /// `None`: write everything at the next beat.
    written: Option<Written>,
    conflict_logged: bool,
}

#[derive(Default, PartialEq)]
struct Written {
    sessions: usize,
    topics: HashMap<String, usize>,
}

impl Heartbeat {
    /// Renews the lease and writes what changed in the counts.
    async fn beat(&mut self, shared: &Shared) -> r::RedisResult<()> {
        let mut conn = shared.control_connection().await?;
        let n = shared.node;
        let renewed: i64 = r::Script::new(RENEW_LEASE)
            .key(shared.names.lease(n))
            .arg(&shared.token)
            .arg(shared.config.liveness_ms())
            .invoke_async(&mut conn)
            .await?;
        match renewed {
            -1 => {
                if !self.conflict_logged {
                    tracing::error!(
                        node = n,
                        "another node holds this node's number (this one stalled past its \
                         liveness timeout): session ids may collide; restart this node"
                    );
                    self.conflict_logged = true;
                }
                return Ok(());
            }
            1 => {
                if self.written.is_some() {
                    tracing::warn!(
                        node = n,
                        "node lease had lapsed (Redis restarted?); renewed"
                    );
                }
                self.written = None;
            }
            _ => {}
        }
        self.conflict_logged = false;
        let now = Written {
            sessions: shared.local.get().map_or(0, LocalNode::session_count),
            topics: shared.local.get().map_or_else(HashMap::new, |local| {
                local
                    .topics()
                    .into_iter()
                    .map(|t| {
                        let c = local.subscriber_count(&t);
                        (t, c)
                    })
                    .filter(|(_, c)| *c > 0)
                    .collect()
            }),
        };
        let key = shared.names.counts(n);
        let ttl = shared.config.liveness_ms();
        // `HSET sessions` answers 1 when the field is new: the hash had lapsed, write it all.
        let mut pipe = r::pipe();
        if self.written.is_none() {
            pipe.cmd("DEL").arg(&key).ignore();
        }
        pipe.cmd("HSET").arg(&key).arg("sessions").arg(now.sessions);
        match &self.written {
            Some(before) => {
                for (t, c) in &now.topics {
                    if before.topics.get(t) != Some(c) {
                        pipe.cmd("HSET")
                            .arg(&key)
                            .arg(format!("topic:{t}"))
                            .arg(*c)
                            .ignore();
                    }
                }
                let gone: Vec<String> = before
                    .topics
                    .keys()
                    .filter(|t| !now.topics.contains_key(*t))
                    .map(|t| format!("topic:{t}"))
                    .collect();
                if !gone.is_empty() {
                    pipe.cmd("HDEL").arg(&key).arg(gone).ignore();
                }
            }
            None => {
                for (t, c) in &now.topics {
                    pipe.cmd("HSET")
                        .arg(&key)
                        .arg(format!("topic:{t}"))
                        .arg(*c)
                        .ignore();
                }
            }
        }
        pipe.cmd("PEXPIRE").arg(&key).arg(ttl).ignore();
        pipe.cmd("SADD").arg(shared.names.nodes()).arg(n).ignore();
        let (added,): (i64,) = pipe.query_async(&mut conn).await?;
        if added == 1 && self.written.is_some() {
            // The hash had lapsed although the lease had not: write everything next beat.
            self.written = None;
        } else {
            self.written = Some(now);
        }
        Ok(())
    }
}
