//! Errors: one small type per operation, each variant saying what the caller should do.

use crate::session::SessionId;

/// Why [`Hub::send_to`](crate::Hub::send_to) or [`Session::send`](crate::Session::send) did
/// not queue a message as asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// No session with this id is connected to this hub (it never existed or has ended). Drop
    /// whatever you keep for it.
    #[error("no session {0}")]
    NotFound(SessionId),
    /// The session is closing: it accepts no more messages. Treat it as gone.
    #[error("session {0} is closing")]
    Closing(SessionId),
    /// This close code may not be sent on the wire (1005, 1006, 1015, and codes outside
    /// 1000–1014 and 3000–4999). Use [`CloseCode::NORMAL`](crate::CloseCode::NORMAL) or an
    /// application code in 4000–4999.
    #[error("close code {0} may not be sent")]
    InvalidCloseCode(crate::CloseCode),
    /// The session's outbound queue was full; the configured
    /// [`SlowConsumerPolicy`](crate::SlowConsumerPolicy) applied, with this outcome.
    #[error("session {id} is not keeping up: {outcome}")]
    Full {
        /// The session.
        id: SessionId,
        /// What the policy did.
        outcome: FullOutcome,
    },
    /// The session belongs to another node of the cluster and the message could not be handed
    /// to the [`Backplane`](crate::backplane::Backplane) for it: see [`RemoteError`] for why. Nothing was
    /// sent. Retry later, or tell the caller the message was not delivered.
    #[error("session {id} is on another node, which could not be reached: {error}")]
    Remote {
        /// The session.
        id: SessionId,
        /// Why the backplane did not take the message.
        error: RemoteError,
    },
}

/// Why a message for other nodes was not handed to the [`Backplane`](crate::backplane::Backplane).
///
/// Found in [`Remote::Failed`](crate::Remote::Failed) (the `remote` field of a
/// [`Delivery`](crate::Delivery)) and in [`SendError::Remote`]. The sessions of this node got
/// the message all the same; the other nodes did not.
///
/// ```
/// # fn f(hub: &wshub::Hub) {
/// if let wshub::Remote::Failed(why) = hub.broadcast("tick").remote {
///     eprintln!("other nodes missed a tick: {why}");
/// }
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The backplane has lost its connection (Redis is down or unreachable) and is
    /// reconnecting. Messages are not queued while it is down: they would arrive late, if at
    /// all.
    #[error("backplane down")]
    Down,
    /// The backplane's outbound queue is full: it cannot publish as fast as the application
    /// sends. Send less, or give the backplane a larger queue.
    #[error("backplane queue full")]
    Full,
    /// The backplane was closed.
    #[error("backplane closed")]
    Closed,
    /// The backplane's server answered this message's command with an error (Redis out of
    /// memory, a script error): this message was not sent; the connection is fine and other
    /// messages go on. Reported by [`Hub::publish_confirmed`](crate::Hub::publish_confirmed)
    /// and counted in the backplane's statistics.
    #[error("refused by the backplane's server")]
    Refused,
}

/// What the slow-consumer policy did when a session's queue was full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FullOutcome {
    /// The session was closed with 1008; this message and its queue were discarded.
    Disconnected,
    /// This message was discarded; the queue is unchanged.
    DroppedNewest,
    /// This message was queued after discarding this many older messages.
    DroppedOldest(usize),
}

impl std::fmt::Display for FullOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FullOutcome::Disconnected => f.write_str("disconnected"),
            FullOutcome::DroppedNewest => f.write_str("message dropped"),
            FullOutcome::DroppedOldest(n) => write!(f, "{n} older message(s) dropped"),
        }
    }
}

/// Why a topic operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// The topic name is empty, longer than 255 bytes, or contains control characters. Choose
    /// another name.
    #[error("invalid topic name")]
    InvalidName,
    /// No session with this id is connected to this hub.
    #[error("no session {0}")]
    NotFound(SessionId),
    /// The session is already subscribed to
    /// [`Config::max_topics_per_session`](crate::Config::max_topics_per_session) topics.
    /// Unsubscribe from one first, or raise the limit.
    #[error("subscribed to {limit} topics already")]
    TooManyTopics {
        /// The limit in force.
        limit: usize,
    },
}

/// Checks a topic name: 1 to 255 bytes, no control characters.
///
/// ```
/// assert!(wshub::validate_topic("orders/eu-west").is_ok());
/// assert!(wshub::validate_topic("").is_err());
/// assert!(wshub::validate_topic("a\nb").is_err());
/// ```
pub fn validate_topic(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() || topic.len() > 255 || topic.chars().any(char::is_control) {
        return Err(TopicError::InvalidName);
    }
    Ok(())
}
