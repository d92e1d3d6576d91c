//! Who is connected and who listens to which topic.
//!
//! Sessions and topic members live in sharded maps of dense vectors: a broadcast walks
//! contiguous memory under a shard's read lock, pushing into each session's outbox (which
//! never awaits), so publishing does not contend with connects on other shards and no lock is
//! held across an `.await`.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;

use crate::deflate::OutFrame;
use crate::error::TopicError;
use crate::hub::Delivery;
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
                let pushed = s.outbox.push(frame.for_session(s.deflate.as_ref()));
                if pushed == Pushed::Disconnected {
                    tracing::info!(id = %s.id, "slow consumer: queue full, closing with 1008");
                }
                report.count(pushed);
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
                        let pushed = s.outbox.push(c.clone());
                        if pushed != Pushed::Queued {
                            // It missed a frame of the stream: out until the next restart.
                            let (acq, rel) = (Ordering::Acquire, Ordering::AcqRel);
                            let _ = s.following.compare_exchange(*epoch, 0, rel, acq);
                        }
                        pushed
                    } else {
                        waiting |= f == 0;
                        s.outbox.push(plain.clone())
                    }
                }
                _ => s.outbox.push(frame.for_session(s.deflate.as_ref())),
            };
            if pushed == Pushed::Disconnected {
                tracing::info!(id = %s.id, "slow consumer: queue full, closing with 1008");
            }
            report.count(pushed);
        }
        stream.set_waiting(waiting);
    }
}

/// The topics one session is in; `removed` once the session left the registry.
#[derive(Default)]
pub(crate) struct SessionTopics {
    removed: bool,
    list: Vec<Arc<str>>,
}

/// One shard of the topic map: topic name → its subscribers.
type TopicShard = HashMap<Arc<str>, Members>;

/// Why [`Registry::admit`] refused a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Full,
    PerIp,
}

/// Called with a topic that gained its first subscriber or lost its last (the backplane's
/// interest routing). It runs under the topic's shard lock, so it must only note the topic.
pub(crate) type InterestHook = Box<dyn Fn(&str) + Send + Sync>;

pub(crate) struct Registry {
    node: u64,
    interest: Option<InterestHook>,
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
    pub(crate) fn new(node: u16) -> Self {
        Registry {
            node: u64::from(node) << 48,
            interest: None,
            next_seq: AtomicU64::new(1),
            sessions: (0..SHARDS).map(|_| RwLock::default()).collect(),
            topics: (0..SHARDS).map(|_| RwLock::default()).collect(),
            admitted: AtomicUsize::new(0),
            per_ip: Mutex::default(),
            len: AtomicUsize::new(0),
        }
    }

    pub(crate) fn with_interest_hook(mut self, hook: Option<InterestHook>) -> Self {
        self.interest = hook;
        self
    }

    fn interest_changed(&self, topic: &str) {
        if let Some(hook) = &self.interest {
            hook(topic);
        }
    }

    pub(crate) fn next_id(&self) -> SessionId {
        SessionId(self.node | self.next_seq.fetch_add(1, Ordering::Relaxed))
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
                }
            }
        }
        self.admitted.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn insert(&self, s: Arc<SessionInner>) {
        write(self.shard(s.id)).insert(s);
        self.len.fetch_add(1, Ordering::AcqRel);
    }

    /// Removes the session from every topic and from the registry; true the first time.
    pub(crate) fn remove(&self, s: &SessionInner) -> bool {
        let topics = {
            let mut t = lock(&s.topics);
            if t.removed {
                return false;
            }
            t.removed = true;
            std::mem::take(&mut t.list)
        };
        for topic in topics {
            self.remove_member(&topic, s.id);
        }
        if write(self.shard(s.id)).remove(s.id) {
            self.len.fetch_sub(1, Ordering::AcqRel);
        }
        true
    }

    pub(crate) fn get(&self, id: SessionId) -> Option<Arc<SessionInner>> {
        read(self.shard(id)).get(id).cloned()
    }

    /// Runs `f` on one session under its shard's read lock (no clone of the handle).
    pub(crate) fn with<R>(&self, id: SessionId, f: impl FnOnce(&SessionInner) -> R) -> Option<R> {
        read(self.shard(id)).get(id).map(|s| f(s))
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

    /// Adds the session to `topic`; Ok(false) when it was already subscribed or is leaving.
    pub(crate) fn subscribe(&self, s: &Arc<SessionInner>, topic: &str) -> Result<bool, TopicError> {
        crate::error::validate_topic(topic)?;
        // Lock order: the session's topic list, then the topic shard. `remove` takes the list
        // first too, so a session that is leaving can never be added back to a topic.
        let mut mine = lock(&s.topics);
        if mine.removed || mine.list.iter().any(|t| &**t == topic) {
            return Ok(false);
        }
        let mut shard = write(&self.topics[topic_shard(topic)]);
        let key = match shard.get_key_value(topic) {
            Some((k, _)) => k.clone(),
            None => {
                self.interest_changed(topic);
                Arc::from(topic)
            }
        };
        shard.entry(key.clone()).or_default().insert(s.clone());
        mine.list.push(key);
        Ok(true)
    }

    /// Removes the session from `topic`; false when it was not subscribed.
    pub(crate) fn unsubscribe(&self, s: &SessionInner, topic: &str) -> bool {
        let mut mine = lock(&s.topics);
        let Some(i) = mine.list.iter().position(|t| &**t == topic) else {
            return false;
        };
        mine.list.swap_remove(i);
        self.remove_member(topic, s.id);
        true
    }

    fn remove_member(&self, topic: &str, id: SessionId) {
        let mut shard = write(&self.topics[topic_shard(topic)]);
        if let Some(members) = shard.get_mut(topic) {
            members.remove(id);
            if members.len() == 0 {
                shard.remove(topic);
                self.interest_changed(topic);
            }
        }
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

    pub(crate) fn session_topics(s: &SessionInner) -> Vec<String> {
        lock(&s.topics).list.iter().map(|t| t.to_string()).collect()
    }
}

impl Delivery {
    pub(crate) fn count(&mut self, pushed: Pushed) {
        match pushed {
            Pushed::Queued => self.queued += 1,
            Pushed::QueuedDroppingOldest(n) => {
                self.queued += 1;
                self.dropped += n;
            }
            Pushed::DroppedNewest | Pushed::Closed => self.dropped += 1,
            Pushed::Disconnected => self.disconnected += 1,
        }
    }
}
