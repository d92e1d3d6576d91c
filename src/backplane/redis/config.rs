//! [`RedisConfig`], the settings of a `RedisBackplane`, and [`RedisStats`], the snapshot of
//! its counters.

use std::time::Duration;

/// Configuration of a [`RedisBackplane`](super::RedisBackplane): names, liveness, queue and
/// reconnection.
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
    pub(super) prefix: String,
    pub(super) heartbeat: Duration,
    pub(super) liveness: Duration,
    pub(super) queue_capacity: usize,
    pub(super) max_batch: usize,
    pub(super) connect_timeout: Duration,
    pub(super) response_timeout: Duration,
    pub(super) backoff_min: Duration,
    pub(super) backoff_max: Duration,
    pub(super) history_ttl: Duration,
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
            history_ttl: Duration::from_secs(24 * 3600),
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
    /// pause, a partition) may find its number taken when it comes back: it then takes a new
    /// number and closes its sessions with 1012 so that their clients reconnect
    /// ([`RedisStats::renumbered`]).
    #[must_use]
    pub fn liveness_timeout(mut self, timeout: Duration) -> Self {
        self.liveness = timeout;
        self
    }

    /// Packets queued for the publisher at most. Default: 65,536.
    ///
    /// Bounds memory when Redis is slower than the application publishes; beyond it, messages
    /// are not sent to other nodes and the report says
    /// [`RemoteError::Full`](crate::RemoteError::Full).
    #[must_use]
    pub fn queue_capacity(mut self, packets: usize) -> Self {
        self.queue_capacity = packets.max(1);
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

    /// How long a topic's history (its epoch, sequence and log keys) stays in Redis after its
    /// last publication. Default: 24 hours; never less than the topic's
    /// [`max_age`](crate::HistoryPolicy::max_age).
    ///
    /// Once it has expired, the next publication starts a new epoch: a client recovering from
    /// a position of the old one is answered `unrecoverable`, and a subscriber kept across is
    /// told so. Every key wshub writes expires: the others with the liveness timeout, the node
    /// counter a day after the last claim.
    #[must_use]
    pub fn history_ttl(mut self, ttl: Duration) -> Self {
        self.history_ttl = ttl.max(Duration::from_millis(1));
        self
    }

    /// The TTL of a topic's history keys, in ms.
    pub(super) fn history_ttl_ms(&self, policy: &crate::HistoryPolicy) -> u64 {
        let ttl = policy
            .max_age
            .map_or(self.history_ttl, |age| age.max(self.history_ttl));
        ttl.as_millis().min(u128::from(u64::MAX)) as u64
    }

    pub(super) fn liveness_ms(&self) -> u64 {
        self.liveness.max(self.heartbeat * 2).as_millis() as u64
    }
}

/// A snapshot of a [`RedisBackplane`](super::RedisBackplane)'s counters, from
/// [`RedisBackplane::stats`](super::RedisBackplane::stats).
///
/// Until [`close`](super::RedisBackplane::close), every message the hub handed over ends up in
/// exactly one of `published`, `failed_down`, `failed_full`, `lost` or `refused`.
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
    /// Packets Redis accepted.
    pub published: u64,
    /// Packets refused because Redis was down
    /// ([`RemoteError::Down`](crate::RemoteError::Down)).
    pub failed_down: u64,
    /// Packets refused because the queue was full
    /// ([`RemoteError::Full`](crate::RemoteError::Full)).
    pub failed_full: u64,
    /// Packets accepted into the queue but lost when the connection broke before Redis
    /// confirmed them.
    pub lost: u64,
    /// Packets (and recorded publications) Redis answered with an error: out of memory
    /// (`maxmemory` with `noeviction`), a script error. Each is logged; the other commands of
    /// the same pipeline are not affected, and a recorded publication's
    /// [`publish_confirmed`](crate::Hub::publish_confirmed) reports
    /// [`RemoteError::Refused`](crate::RemoteError::Refused).
    pub refused: u64,
    /// `send_to` and `close` packets that no node was listening for: the owning node has
    /// gone.
    pub undeliverable: u64,
    /// Packets received from other nodes and delivered.
    pub received: u64,
    /// Packets received that were not valid (another wshub version, or not wshub's).
    pub malformed: u64,
    /// Connections re-established after a failure (any of the three).
    pub reconnects: u64,
    /// Times this node found its number held by another live node (after a Redis restart
    /// without data, or a stall past the liveness timeout) and took a new one, closing its
    /// sessions with 1012 so their clients reconnect under the new number.
    pub renumbered: u64,
    /// Publications of topics with history that the subscription missed (it was lost and
    /// re-established, or a gap showed in the live stream) and that were read from the log
    /// and delivered in order before live delivery went on.
    pub caught_up: u64,
    /// Times the subscribers of a topic were told `unrecoverable` unasked, because what the
    /// subscription missed is no longer in the log (Redis restarted without its data: a new
    /// epoch; or trimmed).
    pub unrecoverable: u64,
}
