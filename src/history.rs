//! Topic history and loss-free recovery: positions, the per-topic log of a single node, the
//! seam between replay and live delivery, and the optional JSON envelope (PROTOCOL.md).
//!
//! A topic with history (see [`Config::history`](crate::Config::history)) gives every
//! publication a [`Position`]. On a single node the log is a ring buffer per topic, and the
//! topic's history lock is held while a publication is appended *and* fanned out, and while a
//! recovering session is replayed *and* joined to the subscribers: a concurrent publication is
//! therefore either in the replay or delivered live, never both, never neither. With a
//! backplane that keeps history ([`Backplane::history_read`]), the log lives there and the
//! seam is made by buffering live publications during the read (see `join_cluster`).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::backplane::{Backplane, BackplaneError};
use crate::frame;
use crate::hub::{Core, Delivery};
use crate::json;
use crate::message::{CloseCode, CloseFrame, Message};
use crate::session::{Session, SessionId};

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

/// A control message a client sends in the JSON protocol (PROTOCOL.md).
///
/// Parse one in [`Handler::on_message`](crate::Handler::on_message) and apply it with
/// [`Session::apply`](crate::Session::apply), after any authorization the application does.
///
/// ```
/// use wshub::{ClientCommand, Message, Position};
/// let m = Message::from(r#"{"type":"subscribe","topic":"orders","since":{"epoch":"7","offset":3}}"#);
/// assert_eq!(
///     ClientCommand::parse(&m),
///     Some(ClientCommand::Subscribe { topic: "orders".into(), since: Some(Position::new(7, 3)) })
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientCommand {
    /// `{"type":"subscribe","topic":…,"since":{"epoch":"…","offset":…}}`, `since` optional.
    Subscribe {
        /// The topic.
        topic: String,
        /// The last position the client saw.
        since: Option<Position>,
    },
    /// `{"type":"unsubscribe","topic":…}`.
    Unsubscribe {
        /// The topic.
        topic: String,
    },
}

impl ClientCommand {
    /// Reads a control message; `None` for anything else (other text, binary, malformed
    /// JSON, an unknown `type`, a malformed `since`).
    pub fn parse(message: &Message) -> Option<ClientCommand> {
        let v = json::parse(message.as_text()?)?;
        let topic = v.get("topic")?.as_str()?.to_owned();
        match v.get("type")?.as_str()? {
            "subscribe" => {
                let since = match v.get("since") {
                    None | Some(json::Value::Null) => None,
                    Some(s) => Some(Position {
                        epoch: s.get("epoch")?.as_u64()?,
                        offset: s.get("offset")?.as_u64()?,
                    }),
                };
                Some(ClientCommand::Subscribe { topic, since })
            }
            "unsubscribe" => Some(ClientCommand::Unsubscribe { topic }),
            _ => None,
        }
    }
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
// The envelope (text frames, PROTOCOL.md).

/// `{"type":"pub","topic":…,["epoch":"…","offset":…,]"data":…}` framed once.
pub(crate) fn pub_frame(topic: &str, position: Option<Position>, message: &Message) -> Bytes {
    let mut s = String::with_capacity(64 + topic.len() + message.len() * 11 / 10);
    s.push_str(r#"{"type":"pub","topic":"#);
    json::write_str(&mut s, topic);
    if let Some(p) = position {
        push_position_fields(&mut s, p);
    }
    match message.as_text() {
        Some(text) => {
            s.push_str(r#","data":"#);
            json::write_str(&mut s, text);
        }
        None => {
            s.push_str(r#","data_base64":""#);
            json::write_base64(&mut s, message.as_bytes());
            s.push('"');
        }
    }
    s.push('}');
    frame::encode(frame::OP_TEXT, s.as_bytes())
}

fn push_position_fields(s: &mut String, p: Position) {
    use fmt::Write as _;
    let _ = write!(s, r#","epoch":"{}","offset":{}"#, p.epoch, p.offset);
}

fn position_object(s: &mut String, p: Option<Position>) {
    use fmt::Write as _;
    match p {
        Some(p) => {
            let _ = write!(
                s,
                r#","position":{{"epoch":"{}","offset":{}}}"#,
                p.epoch, p.offset
            );
        }
        None => s.push_str(r#","position":null"#),
    }
}

/// The reply to a subscribe, sent before any replayed publication.
fn reply_frame(topic: &str, outcome: &Recovered) -> Bytes {
    use fmt::Write as _;
    let mut s = String::with_capacity(128 + topic.len());
    match *outcome {
        Recovered::Replayed { messages, position } => {
            s.push_str(r#"{"type":"subscribed","topic":"#);
            json::write_str(&mut s, topic);
            let _ = write!(s, r#","recovered":true,"replayed":{messages}"#);
            position_object(&mut s, Some(position));
        }
        Recovered::Live { position } => {
            s.push_str(r#"{"type":"subscribed","topic":"#);
            json::write_str(&mut s, topic);
            s.push_str(r#","recovered":false,"replayed":0"#);
            position_object(&mut s, position);
        }
        Recovered::Unrecoverable { current } => {
            s.push_str(r#"{"type":"unrecoverable","topic":"#);
            json::write_str(&mut s, topic);
            position_object(&mut s, current);
        }
    }
    s.push('}');
    frame::encode(frame::OP_TEXT, s.as_bytes())
}

/// The frame a publication goes out in: the envelope, or the raw message.
pub(crate) fn frame_for(
    core: &Core,
    topic: &str,
    position: Option<Position>,
    message: &Message,
) -> Bytes {
    if core.config.envelope {
        pub_frame(topic, position, message)
    } else {
        frame::encode_message(message)
    }
}

// ---------------------------------------------------------------------------------------
// Per-topic state on this node.

struct Entry {
    offset: u64,
    at: Instant,
    message: Message,
}

/// The log of one topic on a single node.
struct Log {
    epoch: u64,
    last: u64,
    entries: VecDeque<Entry>,
}

impl Log {
    fn new() -> Self {
        Log {
            epoch: random_epoch(),
            last: 0,
            entries: VecDeque::new(),
        }
    }

    fn current(&self) -> Position {
        Position::new(self.epoch, self.last)
    }

    fn trim(&mut self, policy: &HistoryPolicy, now: Instant) {
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

    /// The publications after `since`, or `None` when they are not all kept.
    fn since(&self, since: Position) -> Option<Vec<(Position, Message)>> {
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
struct Recovering {
    id: SessionId,
    buffer: Vec<(Position, Bytes)>,
    overflowed: bool,
}

#[derive(Default)]
struct TopicState {
    log: Option<Log>,
    recovering: Vec<Recovering>,
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
type Shard<'a> = MutexGuard<'a, TopicMap>;

impl Histories {
    fn lock(&self, topic: &str) -> Shard<'_> {
        let mut h = std::hash::DefaultHasher::new();
        h.write(topic.as_bytes());
        // A panic never leaves a topic's state half-updated; a poisoned lock is consistent.
        self.shards[h.finish() as usize % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Sessions of `topic` between starting and finishing a cluster recovery.
    pub(crate) fn recovering(&self, topic: &str) -> usize {
        self.lock(topic)
            .get(topic)
            .map_or(0, |t| t.recovering.len())
    }
}

fn state<'a>(shard: &'a mut Shard<'_>, topic: &str) -> &'a mut TopicState {
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

/// The backplane when it keeps the cluster's history.
fn cluster(core: &Core) -> Option<&Arc<dyn Backplane>> {
    core.backplane.as_ref().filter(|bp| bp.keeps_history())
}

/// Whether a backplane keeps the topics' history (positions are assigned by it, later).
pub(crate) fn shared_log(core: &Core) -> bool {
    cluster(core).is_some()
}

// ---------------------------------------------------------------------------------------
// Publishing.

/// `Hub::publish` for a topic with history. With a backplane that keeps the log, the
/// position it assigns is sent through `confirm` when given.
pub(crate) fn publish(
    core: &Core,
    topic: &str,
    message: Message,
    policy: &HistoryPolicy,
    confirm: Option<crate::backplane::Confirm>,
) -> Delivery {
    if crate::error::validate_topic(topic).is_err() {
        return Delivery::default();
    }
    if let Some(bp) = cluster(core) {
        // The backplane numbers it and hands it back to every node with subscribers, this
        // one included, in the order of its log.
        return Delivery {
            remote: bp.publish_recorded(topic, &message, policy, confirm),
            ..Delivery::default()
        };
    }
    let now = Instant::now();
    let mut shard = core.histories.lock(topic);
    let log = state(&mut shard, topic).log.get_or_insert_with(Log::new);
    log.last += 1;
    let position = log.current();
    let frame = frame_for(core, topic, Some(position), &message);
    log.entries.push_back(Entry {
        offset: position.offset,
        at: now,
        message,
    });
    log.trim(policy, now);
    // Fanned out under the topic's history lock: the seam with `join`.
    let mut report = core.registry.deliver_topic(topic, &frame, None);
    drop(shard);
    core.counters.delivery(&report);
    report.position = Some(position);
    report.remote = crate::backplane::Remote::NotConfigured;
    report
}

/// A numbered publication from the cluster's history, arriving at this node (its own
/// included): delivered to the subscribers, kept for the sessions still recovering.
pub(crate) fn deliver_recorded(
    core: &Core,
    topic: &str,
    position: Position,
    message: &Message,
) -> Delivery {
    let frame = frame_for(core, topic, Some(position), message);
    let mut shard = core.histories.lock(topic);
    let report = core.registry.deliver_topic(topic, &frame, None);
    if let Some(t) = shard.get_mut(topic) {
        let cap = core.config.max_queue_messages;
        for r in &mut t.recovering {
            if r.buffer.len() >= cap {
                r.overflowed = true;
            } else if !r.overflowed {
                r.buffer.push((position, frame.clone()));
            }
        }
    }
    drop(shard);
    core.counters.delivery(&report);
    report
}

// ---------------------------------------------------------------------------------------
// Joining with recovery.

/// Subscribes `s` to `topic`, replaying what it missed since `since`.
pub(crate) async fn join(
    session: &Session,
    topic: &str,
    since: Option<Position>,
) -> Result<Recovered, HistoryError> {
    let (core, s) = (&*session.hub.core, &session.inner);
    crate::error::validate_topic(topic).map_err(|_| HistoryError::InvalidName)?;
    let Some(policy) = core.config.history_policy(topic) else {
        let outcome = match since {
            None => Recovered::Live { position: None },
            Some(_) => Recovered::Unrecoverable { current: None },
        };
        if core.config.envelope {
            let _ = s.outbox.push(reply_frame(topic, &outcome));
        }
        return subscribe(session, topic).map(|()| outcome);
    };
    if let Some(bp) = cluster(core) {
        return join_cluster(session, bp, topic, since, policy).await;
    }
    let now = Instant::now();
    let mut shard = core.histories.lock(topic);
    let log = state(&mut shard, topic).log.get_or_insert_with(Log::new);
    log.trim(policy, now);
    let current = log.current();
    let (outcome, replay) = match since.map(|p| (p, log.since(p))) {
        None => (
            Recovered::Live {
                position: Some(current),
            },
            Vec::new(),
        ),
        Some((_, Some(replay))) => (
            Recovered::Replayed {
                messages: replay.len(),
                position: current,
            },
            replay,
        ),
        Some((_, None)) => (
            Recovered::Unrecoverable {
                current: Some(current),
            },
            Vec::new(),
        ),
    };
    let frames = replay
        .iter()
        .map(|(p, m)| frame_for(core, topic, Some(*p), m));
    // Replayed and joined under the topic's history lock: the seam with `publish`.
    let result = queue_and_subscribe(session, topic, &outcome, frames);
    drop(shard);
    result.map(|()| outcome)
}

fn subscribe(session: &Session, topic: &str) -> Result<(), HistoryError> {
    let added = (session.hub.core.registry)
        .subscribe(&session.inner, topic)
        .map_err(|_| HistoryError::InvalidName)?;
    if added {
        crate::presence::joined(session, topic);
    }
    if session.inner.outbox.is_open() {
        Ok(())
    } else {
        Err(HistoryError::Closing)
    }
}

fn queue_and_subscribe(
    session: &Session,
    topic: &str,
    outcome: &Recovered,
    frames: impl Iterator<Item = Bytes>,
) -> Result<(), HistoryError> {
    let (core, s) = (&*session.hub.core, &session.inner);
    if core.config.envelope {
        let _ = s.outbox.push(reply_frame(topic, outcome));
    }
    let mut report = Delivery::default();
    for frame in frames {
        let frame = crate::deflate::for_one(s.deflate.as_ref(), frame);
        report.count(s.outbox.push(frame));
    }
    core.counters.delivery(&report);
    if report.disconnected > 0 {
        tracing::info!(id = %s.id, "slow consumer: queue full during a replay, closing with 1008");
    }
    subscribe(session, topic)
}

async fn join_cluster(
    session: &Session,
    bp: &Arc<dyn Backplane>,
    topic: &str,
    since: Option<Position>,
    policy: &HistoryPolicy,
) -> Result<Recovered, HistoryError> {
    let (core, s) = (&*session.hub.core, &session.inner);
    // 1. Buffer live publications for this session from now on. A session already subscribed
    //    leaves first, so it does not get them twice (live and from the buffer).
    {
        let mut shard = core.histories.lock(topic);
        state(&mut shard, topic).recovering.push(Recovering {
            id: s.id,
            buffer: Vec::new(),
            overflowed: false,
        });
    }
    if core.registry.unsubscribe(s, topic) {
        crate::presence::left(core, session, topic);
    }
    // 2. Make sure the backplane delivers the topic's publications here, then read the log:
    //    whatever the read misses arrives live into the buffer.
    bp.interest_changed(topic);
    let read = async {
        bp.topic_ready(topic).await?;
        let read = bp.history_read(topic, since, policy).await?;
        // Publications the read saw may still be on their way here: wait until they are in
        // the buffer, where the offset filter below drops them.
        bp.topic_ready(topic).await?;
        Ok::<_, BackplaneError>(read)
    }
    .await;
    // 3. Replay, then the buffered publications that follow it, then join, all under the
    //    topic's lock so that no live publication slips in between.
    let mut shard = core.histories.lock(topic);
    let t = state(&mut shard, topic);
    let i = t.recovering.iter().position(|r| r.id == s.id);
    let mine = i.map(|i| t.recovering.swap_remove(i));
    let read = match read {
        Ok(read) => read,
        Err(e) => {
            drop(shard);
            bp.interest_changed(topic);
            return Err(e.into());
        }
    };
    let mine = mine.unwrap_or(Recovering {
        id: s.id,
        buffer: Vec::new(),
        overflowed: false,
    });
    if mine.overflowed {
        drop(shard);
        core.close_session(s, CloseFrame::new(CloseCode::POLICY, "slow consumer"));
        return Err(HistoryError::Closing);
    }
    let current = read.current;
    let (outcome, replay) = match since {
        None => (
            Recovered::Live {
                position: Some(current),
            },
            Vec::new(),
        ),
        Some(_) if read.complete => (
            Recovered::Replayed {
                messages: read.entries.len(),
                position: current,
            },
            read.entries,
        ),
        Some(_) => (
            Recovered::Unrecoverable {
                current: Some(current),
            },
            Vec::new(),
        ),
    };
    let replayed = replay
        .into_iter()
        .map(|(p, m)| frame_for(core, topic, Some(p), &m));
    // Live ones the read already covered are dropped (dedupe by offset); those of another
    // epoch (the history was reset during the read) are not comparable and are kept.
    let live = mine
        .buffer
        .into_iter()
        .filter(|(p, _)| p.epoch != current.epoch || p.offset > current.offset)
        .map(|(_, f)| f);
    let result = queue_and_subscribe(session, topic, &outcome, replayed.chain(live));
    drop(shard);
    result.map(|()| outcome)
}

/// `Hub::history`: the publications after `since` (all kept ones when `None`).
pub(crate) async fn read(
    core: &Core,
    topic: &str,
    since: Option<Position>,
) -> Result<Vec<(Position, Message)>, HistoryError> {
    crate::error::validate_topic(topic).map_err(|_| HistoryError::InvalidName)?;
    let policy = core
        .config
        .history_policy(topic)
        .ok_or(HistoryError::NotEnabled)?;
    if let Some(bp) = cluster(core) {
        let read = bp.history_read(topic, since, policy).await?;
        return match since {
            Some(_) if !read.complete => Err(HistoryError::Unrecoverable {
                current: read.current,
            }),
            _ => Ok(read.entries),
        };
    }
    let mut shard = core.histories.lock(topic);
    let log = state(&mut shard, topic).log.get_or_insert_with(Log::new);
    log.trim(policy, Instant::now());
    match since {
        Some(p) => log.since(p).ok_or(HistoryError::Unrecoverable {
            current: log.current(),
        }),
        None => Ok(log
            .entries
            .iter()
            .map(|e| (Position::new(log.epoch, e.offset), e.message.clone()))
            .collect()),
    }
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

    #[test]
    fn envelope_frames_are_json() {
        let f = pub_frame("a\"b", Some(Position::new(5, 6)), &Message::from("x\ny"));
        assert_eq!(
            &f[2..],
            br#"{"type":"pub","topic":"a\"b","epoch":"5","offset":6,"data":"x\ny"}"#
        );
        let f = pub_frame("t", None, &Message::binary(&b"foo"[..]));
        assert_eq!(
            &f[2..],
            br#"{"type":"pub","topic":"t","data_base64":"Zm9v"}"#
        );
        let f = reply_frame(
            "t",
            &Recovered::Unrecoverable {
                current: Some(Position::new(1, 2)),
            },
        );
        assert_eq!(
            &f[2..],
            br#"{"type":"unrecoverable","topic":"t","position":{"epoch":"1","offset":2}}"#
        );
    }
}
