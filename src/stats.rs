//! Counters behind [`Hub::stats`](crate::Hub::stats): plain atomics, bumped once per
//! broadcast, write batch or session event (never once per recipient), so reading them every
//! second costs nothing measurable.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::engine::Delivery;
use crate::handler::CloseReason;

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) opened: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) messages_in: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) queued: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) slow_disconnects: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) writes: AtomicU64,
    pub(crate) queue_high_water: AtomicU64,
    pub(crate) closed_by_client: AtomicU64,
    pub(crate) closed_by_server: AtomicU64,
    pub(crate) ping_timeouts: AtomicU64,
    pub(crate) disconnected: AtomicU64,
    pub(crate) io_errors: AtomicU64,
}

impl Counters {
    pub(crate) fn delivery(&self, d: &Delivery) {
        if d.queued > 0 {
            self.queued.fetch_add(d.queued as u64, Relaxed);
        }
        if d.dropped > 0 {
            self.dropped.fetch_add(d.dropped as u64, Relaxed);
        }
        if d.disconnected > 0 {
            self.slow_disconnects
                .fetch_add(d.disconnected as u64, Relaxed);
        }
    }

    pub(crate) fn closed(&self, reason: &CloseReason) {
        let counter = match reason {
            CloseReason::Client(_) => &self.closed_by_client,
            CloseReason::Server(_) => &self.closed_by_server,
            CloseReason::PingTimeout => &self.ping_timeouts,
            CloseReason::Disconnected => &self.disconnected,
            CloseReason::Io(_) => &self.io_errors,
        };
        counter.fetch_add(1, Relaxed);
    }

    pub(crate) fn high_water(&self, bytes: usize) {
        self.queue_high_water.fetch_max(bytes as u64, Relaxed);
    }
}

/// A snapshot of a hub's activity since it was built, from [`Hub::stats`](crate::Hub::stats).
///
/// Counters only grow; take differences between two snapshots for rates.
///
/// ```
/// # struct App;
/// # impl wshub::Handler for App {}
/// let hub = wshub::Hub::new(App);
/// let s = hub.stats();
/// assert_eq!(s.sessions, 0);
/// println!("{} messages in, {} bytes out", s.messages_in, s.bytes_out);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Sessions connected now.
    pub sessions: usize,
    /// Topics with at least one subscriber now.
    pub topics: usize,
    /// Topics with history whose state (epoch, kept publications) this node holds now: those
    /// with subscribers or with publications still kept. Idle ones are freed.
    pub history_topics: usize,
    /// Sessions opened since the hub started.
    pub sessions_opened: u64,
    /// Upgrade requests answered with an HTTP error status (origin, auth, capacity, malformed).
    pub handshakes_refused: u64,
    /// Complete messages received from clients.
    pub messages_in: u64,
    /// Payload bytes of those messages.
    pub bytes_in: u64,
    /// Messages queued for sessions (one per recipient).
    pub messages_queued: u64,
    /// Messages discarded by a drop policy, or addressed to a session already closing.
    pub messages_dropped: u64,
    /// Sessions closed with 1008 because their queue was full.
    pub slow_consumer_disconnects: u64,
    /// Bytes written to sockets (frames, headers included).
    pub bytes_out: u64,
    /// Socket write batches: `bytes_out / writes` is the mean batch size.
    pub write_batches: u64,
    /// The most bytes any one session ever had queued.
    pub queue_high_water_bytes: u64,
    /// Sessions that ended with a close handshake the client started.
    pub closed_by_client: u64,
    /// Sessions that ended with a close frame wshub sent first (application, shutdown,
    /// timeouts, policies, protocol errors).
    pub closed_by_server: u64,
    /// Sessions dropped because a ping went unanswered.
    pub ping_timeouts: u64,
    /// Sessions whose client went away without a close handshake.
    pub disconnected: u64,
    /// Sessions ended by another I/O error.
    pub io_errors: u64,
}

impl Counters {
    pub(crate) fn snapshot(&self, sessions: usize, topics: usize) -> Stats {
        Stats {
            sessions,
            topics,
            history_topics: 0,
            sessions_opened: self.opened.load(Relaxed),
            handshakes_refused: self.refused.load(Relaxed),
            messages_in: self.messages_in.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            messages_queued: self.queued.load(Relaxed),
            messages_dropped: self.dropped.load(Relaxed),
            slow_consumer_disconnects: self.slow_disconnects.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            write_batches: self.writes.load(Relaxed),
            queue_high_water_bytes: self.queue_high_water.load(Relaxed),
            closed_by_client: self.closed_by_client.load(Relaxed),
            closed_by_server: self.closed_by_server.load(Relaxed),
            ping_timeouts: self.ping_timeouts.load(Relaxed),
            disconnected: self.disconnected.load(Relaxed),
            io_errors: self.io_errors.load(Relaxed),
        }
    }
}
