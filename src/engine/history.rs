//! Topic history as data: [`Position`]s, the [`HistoryPolicy`] that bounds a log, the log of
//! one topic on a single node, and the per-topic state map. No delivery happens here; the
//! engine code that appends, replays and joins is in `recovery.rs`.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::backplane::BackplaneError;
use crate::message::Message;
use crate::session::SessionId;

/// Where a publication sits in its topic's history: an offset that grows by one per
/// publication, and the epoch of the history it belongs to.
///
/// The epoch changes whenever the history is lost or reset (a new process on a single node,
/// a Redis restart without persistence, the history keys deleted); a position of another
/// epoch can never be recovered from.
///
/// ```
/// let p = wshub::Position::new(42, 17);
/// assert_eq!(p.to_string(), "42:17");
/// assert_eq!("42:17".parse::<wshub::Position>().unwrap(), p);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Position {
    /// Identifies one incarnation of the topic's history; random.
    pub epoch: u64,
    /// The publication's number in that history: 1 for the first, 0 before any.
    pub offset: u64,
}

impl Position {
    /// A position.
    pub fn new(epoch: u64, offset: u64) -> Self {
        Position { epoch, offset }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

impl std::str::FromStr for Position {
    type Err = HistoryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (e, o) = s.split_once(':').ok_or(HistoryError::InvalidPosition)?;
        Ok(Position {
            epoch: e.parse().map_err(|_| HistoryError::InvalidPosition)?,
            offset: o.parse().map_err(|_| HistoryError::InvalidPosition)?,
        })
    }
}

/// How much history a topic keeps: the last `max_messages` publications that are younger
/// than `max_age`.
///
/// ```
/// use std::time::Duration;
/// let p = wshub::HistoryPolicy::new(1000, Some(Duration::from_secs(300)));
/// assert_eq!(p.max_messages, 1000);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HistoryPolicy {
    /// Publications kept at most. With Redis the trim is approximate (`MAXLEN ~`): a few more
    /// may be kept, never fewer.
    pub max_messages: usize,
    /// Publications older than this are not replayed; `None` keeps them until the count
    /// pushes them out.
    pub max_age: Option<Duration>,
}

impl HistoryPolicy {
    /// A policy.
    pub fn new(max_messages: usize, max_age: Option<Duration>) -> Self {
        HistoryPolicy {
            max_messages,
            max_age,
        }
    }
}

/// What [`Session::subscribe_from`](crate::Session::subscribe_from) did. In every case the
/// session is subscribed and receives live publications from then on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Recovered {
    /// Every publication after the given position was queued, in order, before any live one;
    /// `position` is the last of them (the given one when nothing was missed).
    Replayed {
        /// Publications replayed.
        messages: usize,
        /// The position the session is at now.
        position: Position,
    },
    /// No position was given: the session joined live at `position` (`None` for a topic
    /// without history).
    Live {
        /// The topic's position when the session joined.
        position: Option<Position>,
    },
    /// The position cannot be served: older than the history kept, of another epoch, or the
    /// topic keeps no history (`current` is `None`). Nothing was replayed; reload the full
    /// state, then follow live publications from `current`.
    Unrecoverable {
        /// The topic's position when the session joined.
        current: Option<Position>,
    },
}

/// Why history could not be read or a recovery could not be attempted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// The topic name is not valid ([`validate_topic`](crate::validate_topic)).
    #[error("invalid topic name")]
    InvalidName,
    /// The session is subscribed to
    /// [`Config::max_topics_per_session`](crate::Config::max_topics_per_session) topics
    /// already.
    #[error("subscribed to {limit} topics already")]
    TooManyTopics {
        /// The limit in force.
        limit: usize,
    },
    /// The topic has no history configured ([`Config::history`](crate::Config::history)).
    #[error("the topic keeps no history")]
    NotEnabled,
    /// The position is older than the history kept, or of another epoch: reload the full
    /// state and continue from `current`.
    #[error("position cannot be recovered; the topic is at {current}")]
    Unrecoverable {
        /// The topic's latest position.
        current: Position,
    },
    /// Not a position (`"epoch:offset"`).
    #[error("not a position")]
    InvalidPosition,
    /// The session is closing or has ended.
    #[error("session closing")]
    Closing,
    /// The backplane that keeps the history could not be reached. Retry later.
    #[error(transparent)]
    Backplane(#[from] BackplaneError),
}

/// What a backplane read of a topic's history returned.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct HistoryRead {
    /// The topic's latest position (offset 0 before the first publication).
    pub current: Position,
    /// Publications after the asked offset, in order, when `complete`.
    pub entries: Vec<(Position, Message)>,
    /// Whether `entries` hold every publication after the asked offset up to `current` (false
    /// when some were trimmed or the epoch differs).
    pub complete: bool,
}

impl From<crate::error::TopicError> for HistoryError {
    fn from(e: crate::error::TopicError) -> Self {
        match e {
            crate::error::TopicError::TooManyTopics { limit } => {
                HistoryError::TooManyTopics { limit }
            }
            // A session that is not found is one that ended.
            crate::error::TopicError::NotFound(_) => HistoryError::Closing,
            _ => HistoryError::InvalidName,
        }
    }
}

impl HistoryRead {
    /// A read result.
    pub fn new(current: Position, entries: Vec<(Position, Message)>, complete: bool) -> Self {
        HistoryRead {
            current,
            entries,
            complete,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Per-topic state on this node.

pub(super) struct Entry {
    pub(super) offset: u64,
    pub(super) at: Instant,
    pub(super) message: Message,
}

/// The log of one topic on a single node.
pub(super) struct Log {
    pub(super) epoch: u64,
    pub(super) last: u64,
    pub(super) entries: VecDeque<Entry>,
}

impl Log {
    pub(super) fn new() -> Self {
        Log {
            epoch: random_epoch(),
            last: 0,
            entries: VecDeque::new(),
        }
    }

    pub(super) fn current(&self) -> Position {
        Position::new(self.epoch, self.last)
    }

    pub(super) fn trim(&mut self, policy: &HistoryPolicy, now: Instant) {
        while self.entries.len() > policy.max_messages {
            self.entries.pop_front();
        }
        if let Some(age) = policy.max_age {
            while self
                .entries
                .front()
                .is_some_and(|e| now.saturating_duration_since(e.at) > age)
            {
                self.entries.pop_front();
            }
        }
    }

    /// Every publication kept, in order.
    pub(super) fn entries_after(&self, offset: u64) -> Vec<(Position, Message)> {
        self.entries
            .iter()
            .filter(|e| e.offset > offset)
            .map(|e| (Position::new(self.epoch, e.offset), e.message.clone()))
            .collect()
    }

    /// The publications after `since`, or `None` when they are not all kept.
    pub(super) fn since(&self, since: Position) -> Option<Vec<(Position, Message)>> {
        if since.epoch != self.epoch || since.offset > self.last {
            return None;
        }
        if since.offset == self.last {
            return Some(Vec::new());
        }
        let first = self.entries.front()?.offset;
        if first > since.offset + 1 {
            return None;
        }
        let skip = (since.offset + 1 - first) as usize;
        Some(
            self.entries
                .iter()
                .skip(skip)
                .map(|e| (Position::new(self.epoch, e.offset), e.message.clone()))
                .collect(),
        )
    }
}

/// A session joining a topic of a cluster history: live publications that arrive while its
/// replay is read are kept here, then queued after the replay.
pub(super) struct Recovering {
    pub(super) id: SessionId,
    pub(super) buffer: Vec<(Position, Bytes)>,
    pub(super) overflowed: bool,
}

#[derive(Default)]
pub(super) struct TopicState {
    pub(super) log: Option<Log>,
    pub(super) recovering: Vec<Recovering>,
}

impl TopicState {
    /// Nothing kept and nobody recovering.
    fn is_idle(&self) -> bool {
        self.recovering.is_empty() && self.log.as_ref().is_none_or(|l| l.entries.is_empty())
    }
}

const SHARDS: usize = 16;

/// The history state of every topic on this node, sharded by topic name.
pub(crate) struct Histories {
    shards: Box<[Mutex<TopicMap>]>,
}

impl Default for Histories {
    fn default() -> Self {
        Histories {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

type TopicMap = HashMap<Arc<str>, TopicState>;
pub(super) type Shard<'a> = MutexGuard<'a, TopicMap>;

impl Histories {
    pub(super) fn lock(&self, topic: &str) -> Shard<'_> {
        let mut h = std::hash::DefaultHasher::new();
        h.write(topic.as_bytes());
        // A panic never leaves a topic's state half-updated; a poisoned lock is consistent.
        self.shards[h.finish() as usize % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Drops the state of `topic` when it holds nothing: no publication kept, no session
    /// recovering. The caller checked that no session of this node subscribes to it (under
    /// the same lock, which every join takes). Its epoch is forgotten with it: a later
    /// subscriber starts a new one, and a `since` of the old one is answered `unrecoverable`
    /// — there was nothing to replay.
    pub(super) fn forget_if_idle(&self, shard: &mut Shard<'_>, topic: &str) {
        if shard.get(topic).is_some_and(TopicState::is_idle) {
            shard.remove(topic);
            crate::registry::release_spare(shard);
        }
    }

    /// Applies `max_age` to every log (publications expire even on topics nobody touches)
    /// and drops idle topics that `subscribed` says have no subscriber here.
    pub(super) fn sweep(
        &self,
        policy: impl Fn(&str) -> Option<HistoryPolicy>,
        subscribed: impl Fn(&str) -> bool,
    ) {
        let now = Instant::now();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            shard.retain(|topic, t| {
                if let (Some(log), Some(policy)) = (&mut t.log, policy(topic)) {
                    log.trim(&policy, now);
                }
                !t.is_idle() || subscribed(topic)
            });
            crate::registry::release_spare(&mut shard);
        }
    }

    /// Topics whose state this node holds.
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Sessions of `topic` between starting and finishing a cluster recovery.
    pub(crate) fn recovering(&self, topic: &str) -> usize {
        self.lock(topic)
            .get(topic)
            .map_or(0, |t| t.recovering.len())
    }
}

pub(super) fn state<'a>(shard: &'a mut Shard<'_>, topic: &str) -> &'a mut TopicState {
    if !shard.contains_key(topic) {
        shard.insert(Arc::from(topic), TopicState::default());
    }
    shard.get_mut(topic).expect("inserted above")
}

fn random_epoch() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    // Kept below 2^53 so that a JavaScript client may even hold it as a number.
    (h.finish() & ((1 << 53) - 1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_with(n: u64) -> Log {
        let mut log = Log::new();
        let now = Instant::now();
        for i in 1..=n {
            log.last = i;
            log.entries.push_back(Entry {
                offset: i,
                at: now,
                message: Message::from(i.to_string()),
            });
        }
        log
    }

    #[test]
    fn since_serves_exactly_the_missing_tail() {
        let mut log = log_with(10);
        let e = log.epoch;
        assert_eq!(log.since(Position::new(e, 10)).unwrap().len(), 0);
        let tail = log.since(Position::new(e, 7)).unwrap();
        let offsets: Vec<u64> = tail.iter().map(|(p, _)| p.offset).collect();
        assert_eq!(offsets, [8, 9, 10]);
        assert!(log.since(Position::new(e ^ 1, 7)).is_none(), "other epoch");
        assert!(log.since(Position::new(e, 11)).is_none(), "from the future");
        log.trim(&HistoryPolicy::new(3, None), Instant::now());
        assert!(log.since(Position::new(e, 6)).is_none(), "evicted");
        assert_eq!(log.since(Position::new(e, 7)).unwrap().len(), 3);
        log.trim(&HistoryPolicy::new(0, None), Instant::now());
        assert!(log.since(Position::new(e, 9)).is_none(), "nothing kept");
        assert_eq!(log.since(Position::new(e, 10)).unwrap().len(), 0);
    }
}
