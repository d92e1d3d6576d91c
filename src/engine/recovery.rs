//! Topics with history, as the engine drives them: publishing (append + fan-out), a
//! numbered publication from a shared log arriving, joining with recovery (replay + join),
//! and reading history.
//!
//! **The seam.** On a single node, a topic's history lock is held while a publication is
//! appended *and* fanned out, and while a recovering session is replayed *and* joined to the
//! subscribers: a concurrent publication is therefore either in the replay or delivered live,
//! never both, never neither. With a backplane that keeps history
//! ([`Backplane::history_read`]), the log lives there and the seam is made by buffering live
//! publications during the read (see [`join_cluster`]). Hooks run after the lock is released.

use std::sync::Arc;
use std::time::Instant;

use super::history::{
    HistoryError, HistoryPolicy, Log, Position, Recovered, Recovering, Shard, state,
};
use super::{Delivery, Engine, Target};
use crate::backplane::{Backplane, BackplaneError, Confirm, Remote};
use crate::frame;
use crate::message::{CloseCode, CloseFrame, Message};
use crate::registry::Joined;
use crate::session::{Session, SessionId};

/// The backplane when it keeps the cluster's history.
fn cluster(engine: &Engine) -> Option<&Arc<dyn Backplane>> {
    engine.backplane.as_ref().filter(|bp| bp.keeps_history())
}

/// Whether a backplane keeps the topics' history (positions are assigned by it, later).
pub(super) fn shared_log(engine: &Engine) -> bool {
    cluster(engine).is_some()
}

/// `Hub::publish` for a topic with history. With a backplane that keeps the log, the
/// position it assigns is sent through `confirm` when given.
pub(super) fn publish(
    engine: &Engine,
    topic: &str,
    message: Message,
    policy: &HistoryPolicy,
    confirm: Option<Confirm>,
) -> Delivery {
    if crate::error::validate_topic(topic).is_err() {
        return Delivery::default();
    }
    if let Some(bp) = cluster(engine) {
        // The backplane numbers it and hands it back to every node with subscribers, this
        // one included, in the order of its log.
        return Delivery {
            remote: bp.publish_recorded(topic, &message, policy, confirm),
            ..Delivery::default()
        };
    }
    let now = Instant::now();
    let mut shard = engine.histories.lock(topic);
    let log = state(&mut shard, topic).log.get_or_insert_with(Log::new);
    log.last += 1;
    let position = log.current();
    let frame = engine.publication_frame(topic, Some(position), &message);
    log.entries.push_back(super::history::Entry {
        offset: position.offset,
        at: now,
        message,
    });
    log.trim(policy, now);
    // Fanned out under the topic's history lock: the seam with `join`.
    let target = Target::Topic {
        topic,
        except: None,
    };
    let mut report = engine.deliver(target, &frame);
    drop(shard);
    report.position = Some(position);
    report.remote = Remote::NotConfigured;
    report
}

/// A numbered publication from the cluster's history, arriving at this node (its own
/// included): delivered to the subscribers, kept for the sessions still recovering.
pub(crate) fn deliver_recorded(
    engine: &Engine,
    topic: &str,
    position: Position,
    message: &Message,
) -> Delivery {
    let frame = engine.publication_frame(topic, Some(position), message);
    let mut shard = engine.histories.lock(topic);
    let target = Target::Topic {
        topic,
        except: None,
    };
    let report = engine.deliver(target, &frame);
    if let Some(t) = shard.get_mut(topic) {
        let cap = engine.config.max_queue_messages;
        for r in &mut t.recovering {
            if r.buffer.len() >= cap {
                r.overflowed = true;
            } else if !r.overflowed {
                r.buffer.push((position, frame.clone()));
            }
        }
    }
    drop(shard);
    report
}

/// Subscribes `session` to `topic`, replaying what it missed since `since`.
pub(crate) async fn join(
    session: &Session,
    topic: &str,
    since: Option<Position>,
) -> Result<Recovered, HistoryError> {
    let engine = &*session.hub.engine;
    crate::error::validate_topic(topic).map_err(|_| HistoryError::InvalidName)?;
    let Some(policy) = engine.config.history_policy(topic) else {
        let outcome = match since {
            None => Recovered::Live { position: None },
            Some(_) => Recovered::Unrecoverable { current: None },
        };
        let joined = replay_and_subscribe(engine, session, topic, &outcome, Vec::new());
        return finish_join(session, topic, joined).map(|()| outcome);
    };
    if let Some(bp) = cluster(engine) {
        return join_cluster(session, bp, topic, since, policy).await;
    }
    let now = Instant::now();
    let mut shard = engine.histories.lock(topic);
    let log = state(&mut shard, topic).log.get_or_insert_with(Log::new);
    log.trim(policy, now);
    let current = log.current();
    let (outcome, replay) = match since.map(|p| log.since(p)) {
        None => (
            Recovered::Live {
                position: Some(current),
            },
            Vec::new(),
        ),
        Some(Some(replay)) => (
            Recovered::Replayed {
                messages: replay.len(),
                position: current,
            },
            replay,
        ),
        Some(None) => (
            Recovered::Unrecoverable {
                current: Some(current),
            },
            Vec::new(),
        ),
    };
    let frames = replay
        .iter()
        .map(|(p, m)| engine.publication_frame(topic, Some(*p), m))
        .collect();
    // Replayed and joined under the topic's history lock: the seam with `publish`.
    let joined = replay_and_subscribe(engine, session, topic, &outcome, frames);
    drop(shard);
    finish_join(session, topic, joined).map(|()| outcome)
}

/// Queues the answer (with the envelope) and the replay, then subscribes; the caller holds
/// the topic's history lock, so no hook runs here.
fn replay_and_subscribe(
    engine: &Engine,
    session: &Session,
    topic: &str,
    outcome: &Recovered,
    frames: Vec<bytes::Bytes>,
) -> Result<Joined, HistoryError> {
    let s = &session.inner;
    let answer = engine
        .config
        .envelope
        .then(|| frame::encode_text(&crate::protocol::subscribed(topic, outcome)));
    engine.deliver_all_to(s, answer.into_iter().chain(frames));
    engine
        .registry
        .subscribe(s, topic)
        .map_err(HistoryError::from)
}

/// After the locks: the hooks of a join, and whether the session is still open.
fn finish_join(
    session: &Session,
    topic: &str,
    joined: Result<Joined, HistoryError>,
) -> Result<(), HistoryError> {
    session.hub.engine.after_join(session, topic, joined?);
    if session.inner.outbox.is_open() {
        Ok(())
    } else {
        Err(HistoryError::Closing)
    }
}

/// Takes a session's entry out of the topic's recovering list when dropped, so a join whose
/// future is dropped mid-read leaves nothing behind.
struct RecoveringGuard<'a> {
    engine: &'a Engine,
    topic: &'a str,
    id: SessionId,
}

impl RecoveringGuard<'_> {
    /// Removes and returns the entry, under the topic's lock the caller holds.
    fn take(&self, shard: &mut Shard<'_>) -> Option<Recovering> {
        let t = shard.get_mut(self.topic)?;
        let i = t.recovering.iter().position(|r| r.id == self.id)?;
        Some(t.recovering.swap_remove(i))
    }
}

impl Drop for RecoveringGuard<'_> {
    fn drop(&mut self) {
        let mut shard = self.engine.histories.lock(self.topic);
        let _ = self.take(&mut shard);
        self.engine.histories.forget_if_idle(&mut shard, self.topic);
    }
}

async fn join_cluster(
    session: &Session,
    bp: &Arc<dyn Backplane>,
    topic: &str,
    since: Option<Position>,
    policy: &HistoryPolicy,
) -> Result<Recovered, HistoryError> {
    let (engine, s) = (&*session.hub.engine, &session.inner);
    // 1. Buffer live publications for this session from now on. A session already subscribed
    //    leaves first, so it does not get them twice (live and from the buffer).
    {
        let mut shard = engine.histories.lock(topic);
        state(&mut shard, topic).recovering.push(Recovering {
            id: s.id,
            buffer: Vec::new(),
            overflowed: false,
        });
    }
    let guard = RecoveringGuard {
        engine,
        topic,
        id: s.id,
    };
    engine.unsubscribe(session, topic);
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
    let mut shard = engine.histories.lock(topic);
    let mine = guard.take(&mut shard);
    let read = match read {
        Ok(read) => read,
        Err(e) => {
            drop(shard);
            drop(guard);
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
        engine.close_session(s, CloseFrame::new(CloseCode::POLICY, "slow consumer"));
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
        .map(|(p, m)| engine.publication_frame(topic, Some(p), &m));
    // Live ones the read already covered are dropped (dedupe by offset); those of another
    // epoch (the history was reset during the read) are not comparable and are kept.
    let live = mine
        .buffer
        .into_iter()
        .filter(|(p, _)| p.epoch != current.epoch || p.offset > current.offset)
        .map(|(_, f)| f);
    let joined = replay_and_subscribe(
        engine,
        session,
        topic,
        &outcome,
        replayed.chain(live).collect(),
    );
    drop(shard);
    drop(guard);
    finish_join(session, topic, joined).map(|()| outcome)
}

/// `Hub::history`: the publications after `since` (all kept ones when `None`).
pub(crate) async fn read_history(
    engine: &Engine,
    topic: &str,
    since: Option<Position>,
) -> Result<Vec<(Position, Message)>, HistoryError> {
    crate::error::validate_topic(topic).map_err(|_| HistoryError::InvalidName)?;
    let policy = engine
        .config
        .history_policy(topic)
        .ok_or(HistoryError::NotEnabled)?;
    if let Some(bp) = cluster(engine) {
        let read = bp.history_read(topic, since, policy).await?;
        return match since {
            Some(_) if !read.complete => Err(HistoryError::Unrecoverable {
                current: read.current,
            }),
            _ => Ok(read.entries),
        };
    }
    let mut shard = engine.histories.lock(topic);
    let log = state(&mut shard, topic).log.get_or_insert_with(Log::new);
    log.trim(policy, Instant::now());
    match since {
        Some(p) => log.since(p).ok_or(HistoryError::Unrecoverable {
            current: log.current(),
        }),
        None => Ok(log.entries_after(0)),
    }
}

/// Sessions of `topic` between starting and finishing a cluster recovery.
pub(crate) fn recovering(engine: &Engine, topic: &str) -> usize {
    engine.histories.recovering(topic)
}
