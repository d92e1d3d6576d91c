//! Who is connected and who listens to which topic.
//!
//! Sessions and topic members live in sharded maps of dense vectors: a broadcast walks
//! contiguous memory under a shard's read lock, pushing into each session's outbox (which
//! never awaits), so publishing does not contend with connects on other shards and no lock is
//! held across an `.await`.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;

use crate::deflate::OutFrame;
use crate::engine::Delivery;
use crate::error::TopicError;
#[cfg(feature = "deflate")]
use crate::outbox::Pushed;
use crate::session::{SessionId, SessionInner};

const SHARDS: usize = 16;

/// A multiplicative hasher for session ids (sequential integers; no untrusted keys).
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type IdMap<V> = HashMap<SessionId, V, BuildHasherDefault<IdHasher>>;

/// Capacity a map keeps however empty it gets: below this, shrinking saves too little to pay
/// for the rehash.
const KEPT_CAPACITY: usize = 32;

/// Gives a map's spare capacity back once it is less than a quarter full, down to twice its
/// length. A `HashMap` otherwise keeps the capacity of its largest moment for ever, so 50,000
/// topics that came and went left 15 MB behind (29 MB once removals' tombstones forced a
/// rehash into a table twice the size). Between growing when full and shrinking at a quarter
/// the map never thrashes, and a shrink moves fewer entries than the removals that led to it,
/// so the cost per removal stays constant. (`capacity()` counts the tombstones some removals
/// leave as used, so such a table shrinks somewhat later; an insert's rehash clears them.)
pub(crate) fn release_spare<K: Eq + Hash, V, S: BuildHasher>(map: &mut HashMap<K, V, S>) {
    if sparse(map.len(), map.capacity()) {
        map.shrink_to(map.len() * 2);
    }
}

/// Whether a collection of `len` items in `capacity` should give its spare room back (see
/// [`release_spare`]).
fn sparse(len: usize, capacity: usize) -> bool {
    capacity > KEPT_CAPACITY && len < capacity / 4
}

/// A set of sessions that iterates as a dense vector.
#[derive(Default)]
pub(crate) struct Members {
    list: Vec<Arc<SessionInner>>,
    index: IdMap<usize>,
    /// A member negotiated the topic compression mode: publications go through `stream`.
    #[cfg(feature = "deflate")]
    streamed: bool,
    #[cfg(feature = "deflate")]
    stream: Mutex<Option<Box<crate::deflate::TopicStream>>>,
}

impl Members {
    fn insert(&mut self, s: Arc<SessionInner>) -> bool {
        if self.index.contains_key(&s.id) {
            return false;
        }
        #[cfg(feature = "deflate")]
        if s.deflate.is_some_and(|n| n.stream) {
            self.streamed = true;
        }
        self.index.insert(s.id, self.list.len());
        self.list.push(s);
        true
    }

    fn remove(&mut self, id: SessionId) -> bool {
        let Some(i) = self.index.remove(&id) else {
            return false;
        };
        let _gone = self.list.swap_remove(i);
        #[cfg(feature = "deflate")]
        if let Some(stream) = lock(&self.stream).as_ref() {
            // It stops following this topic's stream (and may enter another one).
            let (epoch, following) = (stream.epoch(), &_gone.following);
            let _ = following.compare_exchange(epoch, 0, Ordering::AcqRel, Ordering::Acquire);
        }
        if let Some(moved) = self.list.get(i) {
            self.index.insert(moved.id, i);
        }
        release_spare(&mut self.index);
        if sparse(self.list.len(), self.list.capacity()) {
            self.list.shrink_to(self.list.len() * 2);
        }
        true
    }

    fn get(&self, id: SessionId) -> Option<&Arc<SessionInner>> {
        self.index.get(&id).map(|&i| &self.list[i])
    }

    fn len(&self) -> usize {
        self.list.len()
    }

    /// Pushes the frame into every member's outbox: the plain frame, or the compressed one
    /// (computed at most once for all of them) to those that negotiated compression.
    fn deliver(&self, frame: &OutFrame, except: Option<SessionId>, report: &mut Delivery) {
        for s in &self.list {
            if Some(s.id) != except {
                report.count(s.outbox.push(frame.for_session(s.deflate.as_ref()), s));
            }
        }
    }
}

#[cfg(feature = "deflate")]
impl Members {
    /// [`deliver`](Self::deliver) for a topic whose members follow its compression stream: the
    /// publication is compressed once in the stream's context, under the stream's lock so that
    /// every follower queues the stream's frames in the order they were compressed. Followers
    /// get the compressed frame; subscribers waiting to enter get it at a restart; the others
    /// get the plain frame (or the shared one, for sessions in the shared mode).
    fn deliver_stream(&self, plain: &Bytes, except: Option<SessionId>, report: &mut Delivery) {
        let frame = OutFrame::new(plain.clone());
        let mut guard = lock(&self.stream);
        if guard.is_none() {
            let first = self
                .list
                .iter()
                .find_map(|s| s.deflate.filter(|n| n.stream));
            *guard = first.map(|n| Box::new(crate::deflate::TopicStream::new(&n)));
        }
        let Some(stream) = guard.as_mut() else {
            return self.deliver(&frame, except, report);
        };
        let compressed = stream.compress(plain);
        let mut waiting = false;
        for s in &self.list {
            if Some(s.id) == except {
                continue;
            }
            let pushed = match (s.deflate, &compressed) {
                (Some(n), Some((c, epoch, previous))) if n.stream => {
                    let f = s.following.load(Ordering::Acquire);
                    let enters = previous.is_some_and(|p| f == 0 || f == p)
                        && (s.following)
                            .compare_exchange(f, *epoch, Ordering::AcqRel, Ordering::Acquire)
                            .is_ok();
                    if f == *epoch || enters {
                        let pushed = s.outbox.push(c.clone(), s);
                        if pushed != Pushed::Queued {
                            // It missed a frame of the stream: out until the next restart.
                            let (acq, rel) = (Ordering::Acquire, Ordering::AcqRel);
                            let _ = s.following.compare_exchange(*epoch, 0, rel, acq);
                        }
                        pushed
                    } else {
                        waiting |= f == 0;
                        s.outbox.push(plain.clone(), s)
                    }
                }
                _ => s.outbox.push(frame.for_session(s.deflate.as_ref()), s),
            };
            report.count(pushed);
        }
        stream.set_waiting(waiting);
    }
}

/// The topics one session is in; `removed` once the session left the registry.
#[derive(Default)]
pub(crate) struct SessionTopics {
    removed: bool,
    /// Allocated on the first subscribe and freed with the last unsubscribe: a session in no
    /// topic holds one pointer for it, not an empty set's 48 bytes.
    #[allow(
        clippy::box_collection,
        reason = "the box is what keeps an idle session small"
    )]
    set: Option<Box<HashSet<Arc<str>>>>,
}

impl SessionTopics {
    fn contains(&self, topic: &str) -> bool {
        self.set.as_ref().is_some_and(|set| set.contains(topic))
    }

    fn len(&self) -> usize {
        self.set.as_ref().map_or(0, |set| set.len())
    }

    fn insert(&mut self, topic: Arc<str>) {
        self.set.get_or_insert_with(Box::default).insert(topic);
    }

    fn remove(&mut self, topic: &str) -> bool {
        let Some(set) = self.set.as_mut() else {
            return false;
        };
        let removed = set.remove(topic);
        if set.is_empty() {
            self.set = None;
        }
        removed
    }

    fn iter(&self) -> impl Iterator<Item = &Arc<str>> {
        self.set.iter().flat_map(|set| set.iter())
    }
}

/// What a subscribe changed, for the hooks that run after the registry's locks are released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub(crate) struct Joined {
    /// The session was not subscribed before.
    pub(crate) added: bool,
    /// The topic had no subscriber on this node before (the backplane's interest changed).
    pub(crate) first: bool,
}

/// What an unsubscribe changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub(crate) struct Left {
    /// The session was subscribed.
    pub(crate) removed: bool,
    /// It was the topic's last subscriber on this node.
    pub(crate) last: bool,
}

/// One shard of the topic map: topic name → its subscribers.
type TopicShard = HashMap<Arc<str>, Members>;

/// Why [`Registry::admit`] refused a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Full,
    PerIp,
}

pub(crate) struct Registry {
    /// The node number, shifted into the top 16 bits of a session id.
    node: AtomicU64,
    max_topics: usize,
    next_seq: AtomicU64,
    sessions: Box<[RwLock<Members>]>,
    topics: Box<[RwLock<TopicShard>]>,
    /// Sessions admitted (including those between the capacity check and registration).
    admitted: AtomicUsize,
    /// Sessions admitted per client IP (loopback peers are not counted).
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    len: AtomicUsize,
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // Critical sections never panic half-way; a poisoned lock is still consistent.
    lock.read().unwrap_or_else(|e| e.into_inner())
}
fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn topic_shard(topic: &str) -> usize {
    let mut h = IdHasher::default();
    h.write(topic.as_bytes());
    (h.finish() >> 32) as usize % SHARDS
}

impl Registry {
    pub(crate) fn new(node: u16, max_topics: usize) -> Self {
        Registry {
            node: AtomicU64::new(u64::from(node) << 48),
            max_topics,
            next_seq: AtomicU64::new(1),
            sessions: (0..SHARDS).map(|_| RwLock::default()).collect(),
            topics: (0..SHARDS).map(|_| RwLock::default()).collect(),
            admitted: AtomicUsize::new(0),
            per_ip: Mutex::default(),
            len: AtomicUsize::new(0),
        }
    }

    pub(crate) fn next_id(&self) -> SessionId {
        SessionId(self.node.load(Ordering::Relaxed) | self.next_seq.fetch_add(1, Ordering::Relaxed))
    }

    /// The node number in the ids handed out now.
    pub(crate) fn node(&self) -> u16 {
        (self.node.load(Ordering::Relaxed) >> 48) as u16
    }

    /// Hands out ids of node `node` from now on (the backplane's number changed).
    pub(crate) fn set_node(&self, node: u16) {
        self.node.store(u64::from(node) << 48, Ordering::Relaxed);
    }

    fn shard(&self, id: SessionId) -> &RwLock<Members> {
        &self.sessions[(id.0 as usize) % SHARDS]
    }

    /// Reserves a place for one more session from `ip`.
    pub(crate) fn admit(&self, ip: IpAddr, max: usize, max_per_ip: usize) -> Result<(), Refusal> {
        // `::ffff:127.0.0.1` (an IPv4 peer of a `[::]` listener) is loopback and the same client
        // as `127.0.0.1`.
        let ip = ip.to_canonical();
        let before = self.admitted.fetch_add(1, Ordering::AcqRel);
        if before >= max {
            self.admitted.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Full);
        }
        if !ip.is_loopback() {
            let mut per_ip = lock(&self.per_ip);
            let n = per_ip.entry(ip).or_insert(0);
            if *n >= max_per_ip {
                if *n == 0 {
                    per_ip.remove(&ip);
                }
                drop(per_ip);
                self.admitted.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::PerIp);
            }
            *n += 1;
        }
        Ok(())
    }

    /// Gives back a place reserved by [`admit`](Self::admit).
    pub(crate) fn release(&self, ip: IpAddr) {
        let ip = ip.to_canonical();
        if !ip.is_loopback() {
            let mut per_ip = lock(&self.per_ip);
            if let Some(n) = per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(&ip);
                    release_spare(&mut per_ip);
                }
            }
        }
        self.admitted.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn insert(&self, s: Arc<SessionInner>) {
        write(self.shard(s.id)).insert(s);
        self.len.fetch_add(1, Ordering::AcqRel);
    }

    /// Removes the session from every topic and from the registry, at once: from then on no
    /// subscribe can add it back. `None` when it was removed already; else the topics it was
    /// in, each with whether it was their last subscriber here.
    pub(crate) fn remove(&self, s: &SessionInner) -> Option<Vec<(Arc<str>, bool)>> {
        let topics = {
            let mut t = lock(&s.topics);
            if t.removed {
                return None;
            }
            t.removed = true;
            t.set.take().map(|set| *set).unwrap_or_default()
        };
        let left = topics
            .into_iter()
            .map(|topic| {
                let last = self.remove_member(&topic, s.id);
                (topic, last)
            })
            .collect();
        if write(self.shard(s.id)).remove(s.id) {
            self.len.fetch_sub(1, Ordering::AcqRel);
        }
        Some(left)
    }

    pub(crate) fn get(&self, id: SessionId) -> Option<Arc<SessionInner>> {
        read(self.shard(id)).get(id).cloned()
    }

    /// Runs `f` on one session under its shard's read lock (no clone of the handle).
    pub(crate) fn with<R>(
        &self,
        id: SessionId,
        f: impl FnOnce(&Arc<SessionInner>) -> R,
    ) -> Option<R> {
        read(self.shard(id)).get(id).map(f)
    }

    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub(crate) fn deliver_all(&self, frame: &Bytes, except: Option<SessionId>) -> Delivery {
        let mut report = Delivery::default();
        let frame = OutFrame::new(frame.clone());
        for shard in self.sessions.iter() {
            read(shard).deliver(&frame, except, &mut report);
        }
        report
    }

    pub(crate) fn deliver_topic(
        &self,
        topic: &str,
        frame: &Bytes,
        except: Option<SessionId>,
    ) -> Delivery {
        let mut report = Delivery::default();
        if let Some(members) = read(&self.topics[topic_shard(topic)]).get(topic) {
            #[cfg(feature = "deflate")]
            if members.streamed {
                members.deliver_stream(frame, except, &mut report);
                return report;
            }
            members.deliver(&OutFrame::new(frame.clone()), except, &mut report);
        }
        report
    }

    /// Calls `f` for every session, one shard at a time under its read lock.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&Arc<SessionInner>)) {
        for shard in self.sessions.iter() {
            for s in &read(shard).list {
                f(s);
            }
        }
    }

    /// Adds the session to `topic` (nothing changes when it is already subscribed or is
    /// leaving). Refused beyond the per-session topic limit.
    pub(crate) fn subscribe(
        &self,
        s: &Arc<SessionInner>,
        topic: &str,
    ) -> Result<Joined, TopicError> {
        crate::error::validate_topic(topic)?;
        let unchanged = Joined {
            added: false,
            first: false,
        };
        // Lock order: the session's topic set, then the topic shard. `remove` takes the set
        // first too, so a session that is leaving can never be added back to a topic.
        let mut mine = lock(&s.topics);
        if mine.removed || mine.contains(topic) {
            return Ok(unchanged);
        }
        if mine.len() >= self.max_topics {
            return Err(TopicError::TooManyTopics {
                limit: self.max_topics,
            });
        }
        let mut shard = write(&self.topics[topic_shard(topic)]);
        let (key, first) = match shard.get_key_value(topic) {
            Some((k, _)) => (k.clone(), false),
            None => (Arc::from(topic), true),
        };
        shard.entry(key.clone()).or_default().insert(s.clone());
        mine.insert(key);
        Ok(Joined { added: true, first })
    }

    /// Removes the session from `topic`.
    pub(crate) fn unsubscribe(&self, s: &SessionInner, topic: &str) -> Left {
        let mut mine = lock(&s.topics);
        if !mine.remove(topic) {
            return Left {
                removed: false,
                last: false,
            };
        }
        let last = self.remove_member(topic, s.id);
        Left {
            removed: true,
            last,
        }
    }

    /// Whether the session is subscribed to `topic` now.
    pub(crate) fn is_subscribed(s: &SessionInner, topic: &str) -> bool {
        lock(&s.topics).contains(topic)
    }

    /// Takes `id` out of `topic`'s members; true when that left the topic empty here.
    fn remove_member(&self, topic: &str, id: SessionId) -> bool {
        let mut shard = write(&self.topics[topic_shard(topic)]);
        if let Some(members) = shard.get_mut(topic) {
            members.remove(id);
            if members.len() == 0 {
                shard.remove(topic);
                release_spare(&mut shard);
                return true;
            }
        }
        false
    }

    pub(crate) fn topic_len(&self, topic: &str) -> usize {
        read(&self.topics[topic_shard(topic)])
            .get(topic)
            .map_or(0, Members::len)
    }

    pub(crate) fn topic_count(&self) -> usize {
        self.topics.iter().map(|shard| read(shard).len()).sum()
    }

    pub(crate) fn topic_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for shard in self.topics.iter() {
            names.extend(read(shard).keys().map(|k| k.to_string()));
        }
        names.sort();
        names
    }

    /// The topics the session is in, sorted.
    pub(crate) fn session_topics(s: &SessionInner) -> Vec<String> {
        let mut topics: Vec<String> = lock(&s.topics).iter().map(|t| t.to_string()).collect();
        topics.sort();
        topics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table emptied after a burst ends no larger than [`KEPT_CAPACITY`], and it shrinks a
    /// few times on the way (each shrink at least halves it), not once per removal.
    #[test]
    fn a_map_emptied_after_a_burst_gives_its_capacity_back_a_few_times() {
        let mut map: HashMap<u64, u64> = (0..50_000).map(|i| (i, i)).collect();
        let full = map.capacity();
        let (mut shrinks, mut last) = (0, full);
        for i in 0..50_000 {
            map.remove(&i);
            release_spare(&mut map);
            // A removal that leaves a tombstone lowers `capacity()` by one; a shrink, by
            // half or more.
            if map.capacity() + 1 < last {
                shrinks += 1;
            }
            last = map.capacity();
        }
        assert!(map.capacity() <= KEPT_CAPACITY, "{} left", map.capacity());
        assert!(
            shrinks <= full.ilog2() as usize,
            "{shrinks} shrinks from {full}"
        );
    }
}
