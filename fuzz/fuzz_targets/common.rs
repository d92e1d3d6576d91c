//! What the targets share: a `Config` built by an arbitrary sequence of its setters.
#![allow(dead_code)]

use std::time::Duration;

use arbitrary::Arbitrary;
use wshub::{Config, SlowConsumerPolicy};

/// A `Duration` from any seconds and nanoseconds (the nanoseconds folded below one second).
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct AnyDuration(u64, u32);

impl AnyDuration {
    pub fn get(self) -> Duration {
        Duration::new(self.0, self.1 % 1_000_000_000)
    }
}

/// One setter call with its argument.
#[derive(Arbitrary, Debug, Clone)]
pub enum Setter {
    MaxMessageSize(usize),
    MaxQueueBytes(usize),
    MaxQueueMessages(usize),
    SlowConsumerPolicy(u8),
    WriteBatchBytes(usize),
    PingInterval(Option<AnyDuration>),
    PingTimeout(AnyDuration),
    IdleTimeout(Option<AnyDuration>),
    HandshakeTimeout(AnyDuration),
    CloseTimeout(AnyDuration),
    MaxSessions(usize),
    MaxSessionsPerIp(usize),
    MaxHandshakeBytes(usize),
    MaxMessagesPerSecond(Option<u32>),
    AllowedOrigins(Vec<String>),
}

impl Setter {
    pub fn apply(self, c: Config) -> Config {
        match self {
            Setter::MaxMessageSize(n) => c.max_message_size(n),
            Setter::MaxQueueBytes(n) => c.max_queue_bytes(n),
            Setter::MaxQueueMessages(n) => c.max_queue_messages(n),
            Setter::SlowConsumerPolicy(p) => c.slow_consumer_policy(match p % 3 {
                0 => SlowConsumerPolicy::Disconnect,
                1 => SlowConsumerPolicy::DropNewest,
                _ => SlowConsumerPolicy::DropOldest,
            }),
            Setter::WriteBatchBytes(n) => c.write_batch_bytes(n),
            Setter::PingInterval(d) => c.ping_interval(d.map(AnyDuration::get)),
            Setter::PingTimeout(d) => c.ping_timeout(d.get()),
            Setter::IdleTimeout(d) => c.idle_timeout(d.map(AnyDuration::get)),
            Setter::HandshakeTimeout(d) => c.handshake_timeout(d.get()),
            Setter::CloseTimeout(d) => c.close_timeout(d.get()),
            Setter::MaxSessions(n) => c.max_sessions(n),
            Setter::MaxSessionsPerIp(n) => c.max_sessions_per_ip(n),
            Setter::MaxHandshakeBytes(n) => c.max_handshake_bytes(n),
            Setter::MaxMessagesPerSecond(r) => c.max_messages_per_second(r),
            Setter::AllowedOrigins(o) => c.allowed_origins(o),
        }
    }
}

/// `Config::default()` with the setters applied in order.
pub fn build(setters: &[Setter]) -> Config {
    setters
        .iter()
        .cloned()
        .fold(Config::default(), |c, s| s.apply(c))
}
