//! The one configuration struct: limits, timeouts and policies, each with a safe default.

use std::time::Duration;

use crate::engine::history::HistoryPolicy;

/// What a session's full outbound queue does with one more message.
///
/// A queue is full when it holds [`Config::max_queue_messages`] messages or one more message
/// would take it past [`Config::max_queue_bytes`]. Whatever the policy, the sender never waits:
/// the outcome is returned at once ([`SendError`](crate::SendError) for `send_to`, the counts of a
/// [`Delivery`](crate::Delivery) for `broadcast` and `publish`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlowConsumerPolicy {
    /// Close the session with 1008 ("slow consumer"), discarding what it had queued. The right
    /// default for push: a client that cannot keep up reconnects and reloads state, and memory
    /// stays bounded.
    #[default]
    Disconnect,
    /// Keep the queue as it is and discard the new message (for streams where old data matters
    /// more than new, e.g. an ordered log the client will re-fetch).
    DropNewest,
    /// Discard the oldest queued messages to make room (for "latest value wins" feeds such as
    /// prices or positions).
    DropOldest,
}

/// Configuration of a [`Hub`](crate::Hub): limits, timeouts and policies.
///
/// Every setter takes and returns the config by value and documents its default and the threat
/// or trade-off it addresses. Every limit is on by default with a value safe for a hub on the
/// open internet; `SECURITY.md` at the repository root gathers them in one threat model.
///
/// Timeouts longer than 100 years are taken as 100 years: that is "never" for a connection,
/// and keeps the deadlines the hub computes from them in range.
///
/// ```
/// use std::time::Duration;
/// use wshub::{Config, SlowConsumerPolicy};
///
/// let config = Config::default()
///     .max_message_size(256 * 1024)
///     .ping_interval(Some(Duration::from_secs(15)))
///     .slow_consumer_policy(SlowConsumerPolicy::DropOldest)
///     .allowed_origins(["https://app.example.com"]);
/// assert_eq!(config.get_max_message_size(), 256 * 1024);
/// ```
#[derive(Clone, Debug)]
pub struct Config {
    pub(crate) max_message_size: usize,
    pub(crate) max_queue_bytes: usize,
    pub(crate) max_queue_messages: usize,
    pub(crate) slow_consumer: SlowConsumerPolicy,
    pub(crate) write_batch_bytes: usize,
    pub(crate) ping_interval: Option<Duration>,
    pub(crate) ping_timeout: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) handshake_timeout: Duration,
    pub(crate) close_timeout: Duration,
    pub(crate) max_sessions: usize,
    pub(crate) max_sessions_per_ip: usize,
    pub(crate) max_handshake_bytes: usize,
    pub(crate) max_messages_per_second: Option<u32>,
    pub(crate) allowed_origins: Vec<String>,
    pub(crate) history: Vec<(String, HistoryPolicy)>,
    pub(crate) presence: Vec<String>,
    pub(crate) envelope: bool,
    pub(crate) max_topics_per_session: usize,
}

/// The longest timeout kept; see [`Config`].
const MAX_TIMEOUT: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

fn clamp(timeout: Duration) -> Duration {
    timeout.min(MAX_TIMEOUT)
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_message_size: 1024 * 1024,
            max_queue_bytes: 1024 * 1024,
            max_queue_messages: 4096,
            slow_consumer: SlowConsumerPolicy::Disconnect,
            write_batch_bytes: 64 * 1024,
            ping_interval: Some(Duration::from_secs(20)),
            ping_timeout: Duration::from_secs(20),
            idle_timeout: Some(Duration::from_secs(120)),
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            max_sessions: 100_000,
            max_sessions_per_ip: 1_000,
            max_handshake_bytes: 16 * 1024,
            max_messages_per_second: Some(10_000),
            allowed_origins: Vec::new(),
            history: Vec::new(),
            presence: Vec::new(),
            envelope: false,
            max_topics_per_session: 1024,
        }
    }
}

impl Config {
    /// The largest inbound message, in bytes, summed over its fragments. Default: 1 MiB.
    ///
    /// A larger message is refused with close code 1009 as soon as its declared length says it
    /// would exceed the limit, before its payload is read or memory is reserved for it.
    /// Threat: a client that makes the server buffer huge messages.
    #[must_use]
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// The bytes one session may have queued for sending. Default: 1 MiB.
    ///
    /// With [`max_queue_messages`](Self::max_queue_messages), this bounds the memory a slow or
    /// stalled client can hold on the server (plus one write batch). A single message larger
    /// than the limit is still accepted into an empty queue.
    ///
    /// The limits apply to what a reader is really owed: once its socket has refused data
    /// (it is not keeping up), a push beyond them triggers the
    /// [`SlowConsumerPolicy`]. While the socket still takes everything written to it, a burst
    /// may queue up to 4 times the limits — the connection is about to write it, as the
    /// kernel's buffer absorbs a burst on a server that writes through — so a burst larger
    /// than the queue does not close a reader that keeps up. The worst case per session is
    /// therefore 4 × the limit, for the moment a burst lasts.
    ///
    /// Threat: a client that stops reading (or reads slowly on purpose) while the application
    /// keeps pushing, making the server hold everything it owes that client.
    #[must_use]
    pub fn max_queue_bytes(mut self, bytes: usize) -> Self {
        self.max_queue_bytes = bytes;
        self
    }

    /// The messages one session may have queued for sending. Default: 4096.
    ///
    /// Absorbs bursts (a publisher writing faster than the socket drains for a moment) while
    /// still bounding the per-message overhead of a stalled client. Values below 1 are taken
    /// as 1.
    #[must_use]
    pub fn max_queue_messages(mut self, messages: usize) -> Self {
        self.max_queue_messages = messages.max(1);
        self
    }

    /// The topics one session may be subscribed to at once. Default: 1,024.
    ///
    /// Each subscription costs memory on this node (and, with a backplane, a channel); without
    /// a limit one client subscribing to random names at the inbound rate limit would grow
    /// the node's memory for as long as it stays. A subscribe beyond it is refused with
    /// [`TopicError::TooManyTopics`](crate::TopicError::TooManyTopics) (an `error` message
    /// with code `too_many_topics` in the JSON protocol). Values below 1 are taken as 1.
    #[must_use]
    pub fn max_topics_per_session(mut self, topics: usize) -> Self {
        self.max_topics_per_session = topics.max(1);
        self
    }

    /// What a full outbound queue does. Default: [`SlowConsumerPolicy::Disconnect`].
    ///
    /// Whatever the policy, a slow client costs at most its queue budget; `Disconnect` also
    /// frees its socket and makes it reconnect and resynchronise.
    #[must_use]
    pub fn slow_consumer_policy(mut self, policy: SlowConsumerPolicy) -> Self {
        self.slow_consumer = policy;
        self
    }

    /// The most bytes the writer takes from the queue for one socket write. Default: 64 KiB.
    ///
    /// Larger batches mean fewer system calls under load; every message queued when the writer
    /// wakes goes out in one write up to this size. Values below 1 KiB are taken as 1 KiB.
    #[must_use]
    pub fn write_batch_bytes(mut self, bytes: usize) -> Self {
        self.write_batch_bytes = bytes.max(1024);
        self
    }

    /// How long a session may stay silent before the server pings it; `None` turns the
    /// heartbeat off. Default: 20 s (Tornado's `websocket_ping_interval`).
    ///
    /// Threat: dead peers (a laptop closed, a NAT entry dropped) that never send a FIN hold a
    /// session forever. Pings also keep proxies from timing out idle connections.
    #[must_use]
    pub fn ping_interval(mut self, interval: Option<Duration>) -> Self {
        self.ping_interval = interval.map(clamp);
        self
    }

    /// How long after a ping the session is closed if nothing at all arrived from the peer.
    /// Default: 20 s (Tornado's `websocket_ping_timeout`).
    ///
    /// Threat: half-open connections (the peer vanished, or a client that never reads nor
    /// answers) holding a session, its queue and a file descriptor. Any inbound frame counts,
    /// so a client busy sending is never taken for dead. Only applies while the heartbeat
    /// ([`ping_interval`](Self::ping_interval)) is on.
    #[must_use]
    pub fn ping_timeout(mut self, timeout: Duration) -> Self {
        self.ping_timeout = clamp(timeout);
        self
    }

    /// How long a session may receive no frame at all (data, ping or pong) before it is closed
    /// with 1001; `None` turns it off. Default: 120 s.
    ///
    /// With the heartbeat on, a live client answers pings and is never idle; this limit is what
    /// reaps silent connections if you turn the heartbeat off or lengthen it. Threat: clients
    /// that connect and then hold the session open doing nothing, to exhaust
    /// [`max_sessions`](Self::max_sessions).
    #[must_use]
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout.map(clamp);
        self
    }

    /// How long a client has to complete the HTTP upgrade, authorization included. Default: 10 s.
    ///
    /// Threat: slowloris clients that open sockets and send headers a byte at a time. The
    /// timeout bounds the whole request, not the gap between bytes, so trickling does not
    /// extend it. With [`Hub::serve_tls`](crate::Hub) the TLS handshake gets the same time
    /// again before the HTTP upgrade starts.
    #[must_use]
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = clamp(timeout);
        self
    }

    /// How long a closing session may take to flush its queue and receive the peer's close
    /// frame before the connection is dropped. Default: 5 s.
    ///
    /// Threat: clients that never answer a close frame, or stop reading once it is queued (a
    /// slow consumer being disconnected, say), keeping a closing session forever.
    #[must_use]
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = clamp(timeout);
        self
    }

    /// The most sessions the hub holds; further upgrades get HTTP 503. Default: 100,000.
    ///
    /// Threat: connection floods exhausting file descriptors and memory.
    #[must_use]
    pub fn max_sessions(mut self, sessions: usize) -> Self {
        self.max_sessions = sessions;
        self
    }

    /// The most sessions from one client IP address; further upgrades get HTTP 429.
    /// Default: 1,000.
    ///
    /// Loopback peers (`127.0.0.0/8`, `::1`, and `::ffff:127.0.0.1` as an IPv4 peer of a `[::]`
    /// listener appears) are not limited: they are a reverse proxy on the same host (behind
    /// which every client shares the proxy's address, so limit per client at the proxy) or a
    /// local test. An address is counted whole: an IPv6 host that controls a /64 has many, so
    /// limit per prefix at the edge if that matters. Threat: one host exhausting
    /// [`max_sessions`](Self::max_sessions) for everyone.
    #[must_use]
    pub fn max_sessions_per_ip(mut self, sessions: usize) -> Self {
        self.max_sessions_per_ip = sessions;
        self
    }

    /// The inbound message rate one session may sustain, with a burst of the same size (a
    /// token bucket); a client that exceeds it is closed with 1008. `None` turns it off.
    /// Default: 10,000 messages per second.
    ///
    /// Generous on purpose: it is there to stop a single client from monopolising the
    /// handler, not to shape normal traffic. Threat: message floods.
    #[must_use]
    pub fn max_messages_per_second(mut self, rate: Option<u32>) -> Self {
        self.max_messages_per_second = rate.filter(|r| *r > 0);
        self
    }

    /// The largest upgrade request (request line and headers). Default: 16 KiB; larger requests
    /// (or more than 64 header lines) get HTTP 431. Values below 256 bytes are taken as 256.
    ///
    /// Threat: huge or endless request heads making the server buffer memory for a client
    /// that has not even been admitted yet.
    #[must_use]
    pub fn max_handshake_bytes(mut self, bytes: usize) -> Self {
        self.max_handshake_bytes = bytes.max(256);
        self
    }

    /// Origins accepted besides the same origin, e.g. `"https://app.example.com"` (scheme, host
    /// and port exactly as browsers send them); `"*"` accepts any origin. Default: none.
    ///
    /// Requests without an `Origin` header (non-browser clients) are always accepted. A browser
    /// request whose origin is neither listed nor accepted by
    /// [`Handler::check_origin`](crate::Handler::check_origin) (same-origin by default) gets
    /// HTTP 403. Threat: cross-site WebSocket hijacking, where a page on another site opens a
    /// socket with the user's cookies.
    #[must_use]
    pub fn allowed_origins<I, S>(mut self, origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.allowed_origins = origins.into_iter().map(Into::into).collect();
        self
    }

    /// Keeps history for the topics that match `pattern`: an exact topic name, or a prefix
    /// followed by `*` (`"orders/*"`, or `"*"` for every topic). Default: no topic has history.
    ///
    /// Every publication to such a topic gets a [`Position`](crate::Position), returned in
    /// [`Delivery::position`](crate::Delivery::position), and the last publications (within
    /// `policy`) are kept so that a session can
    /// [recover what it missed](crate::Session::subscribe_from). The first matching pattern,
    /// in the order they were added, applies. Cost: one copy of each message reference in the
    /// log, and each publish to such a topic takes the topic's history lock; topics without
    /// history are published as before. With a backplane that keeps history (Redis), the log
    /// lives there and is shared by every node.
    ///
    /// ```
    /// use std::time::Duration;
    /// let config = wshub::Config::default()
    ///     .history("board", wshub::HistoryPolicy::new(1000, Some(Duration::from_secs(600))));
    /// ```
    #[must_use]
    pub fn history(mut self, pattern: impl Into<String>, policy: HistoryPolicy) -> Self {
        self.history.push((pattern.into(), policy));
        self
    }

    /// Tracks presence (who is subscribed, see [`Hub::presence`](crate::Hub::presence)) on the
    /// topics that match `pattern` (exact, or a prefix followed by `*`). Default: none.
    ///
    /// Cost: one entry per session and topic on this node, and with a backplane one write to
    /// the shared state per subscribe and unsubscribe.
    #[must_use]
    pub fn presence(mut self, pattern: impl Into<String>) -> Self {
        self.presence.push(pattern.into());
        self
    }

    /// Sends topic publications in the JSON envelope of `PROTOCOL.md`
    /// (`{"type":"pub","topic":…,"epoch":…,"offset":…,"data":…}`) instead of the raw message,
    /// and answers [`Session::apply`](crate::Session::apply) and
    /// [`Session::subscribe_from`](crate::Session::subscribe_from) with a `subscribed` or
    /// `unrecoverable` message. Default: `false` (raw messages).
    ///
    /// Turn it on when clients should recover after reconnecting: they need the position of
    /// the last publication they saw. Broadcasts and `send_to` stay raw.
    #[must_use]
    pub fn envelope(mut self, on: bool) -> Self {
        self.envelope = on;
        self
    }

    /// The history policy of `topic`, if it has history.
    pub fn history_policy(&self, topic: &str) -> Option<&HistoryPolicy> {
        if self.history.is_empty() {
            return None;
        }
        self.history
            .iter()
            .find(|(p, _)| matches(p, topic))
            .map(|(_, policy)| policy)
    }

    pub(crate) fn presence_enabled(&self, topic: &str) -> bool {
        !self.presence.is_empty() && self.presence.iter().any(|p| matches(p, topic))
    }

    /// Whether a publish is a raw frame to the subscribers and nothing more.
    pub(crate) fn plain_publish(&self) -> bool {
        self.history.is_empty() && !self.envelope
    }

    /// The configured maximum inbound message size.
    pub fn get_max_message_size(&self) -> usize {
        self.max_message_size
    }

    /// The configured per-session queue limit in bytes.
    pub fn get_max_queue_bytes(&self) -> usize {
        self.max_queue_bytes
    }

    /// The configured maximum number of sessions.
    pub fn get_max_sessions(&self) -> usize {
        self.max_sessions
    }

    /// The smallest of the configured timeouts: how often the hub's timer must look.
    pub(crate) fn timer_tick(&self) -> Duration {
        let mut shortest = self.close_timeout;
        for d in [
            self.ping_interval,
            Some(self.ping_timeout),
            self.idle_timeout,
        ]
        .into_iter()
        .flatten()
        {
            shortest = shortest.min(d);
        }
        (shortest / 4).clamp(Duration::from_millis(5), Duration::from_secs(1))
    }

    pub(crate) fn origin_listed(&self, origin: &str) -> bool {
        self.allowed_origins
            .iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
    }
}

/// A topic pattern: exact, or a prefix followed by `*`.
fn matches(pattern: &str, topic: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => topic.starts_with(prefix),
        None => pattern == topic,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `config` fuzz target: `close_timeout(Duration::MAX)` gave a close deadline
    /// of `now + (u64::MAX as truncated milliseconds)`, which wrapped to a moment already past,
    /// so a closing session was dropped at the next tick instead of waiting.
    #[test]
    fn huge_timeouts_are_clamped_so_deadlines_stay_in_range() {
        for huge in [
            Duration::MAX,
            Duration::from_secs(u64::MAX / 1000 + 1),
            Duration::from_secs(1 << 60),
        ] {
            let c = Config::default()
                .close_timeout(huge)
                .ping_timeout(huge)
                .handshake_timeout(huge)
                .idle_timeout(Some(huge))
                .ping_interval(Some(huge));
            for d in [
                c.close_timeout,
                c.ping_timeout,
                c.handshake_timeout,
                c.idle_timeout.unwrap(),
                c.ping_interval.unwrap(),
            ] {
                assert_eq!(d, MAX_TIMEOUT);
                // The hub adds timeouts to its millisecond clock as u64.
                let ms = u64::try_from(d.as_millis()).unwrap();
                assert!(ms.checked_add(u64::MAX / 2).is_some());
            }
        }
        let short = Duration::from_millis(1500);
        assert_eq!(Config::default().close_timeout(short).close_timeout, short);
    }
}
