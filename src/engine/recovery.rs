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
use bytes::Bytes;

use super::{Delivery, Engine, Target};
use crate::backplane::{Backplane, BackplaneError, Confirm, Remote};
use crate::frame;
use crate::message::{CloseCode, CloseFrame, Message};
use crate::outbox::Pushed;
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
    if log.last == u64::MAX {
        // 2^64 publications: the offsets cannot go on; a new epoch starts (subscribers that
        // recover from the old one are told unrecoverable).
        *log = Log::new();
    }
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

/// Tells the subscribers of `topic` on this node, unasked, that part of its stream is lost:
/// the `unrecoverable` message, with the position to follow from (envelope mode only).
pub(crate) fn announce_unrecoverable(engine: &Engine, topic: &str, position: Position) -> Delivery {
    if !engine.config.envelope {
        return Delivery::default();
    }
    let lost = Recovered::Unrecoverable {
        current: Some(position),
    };
    let frame = frame::encode_text(&crate::protocol::subscribed(topic, &lost));
    // Under the topic's history lock, as `deliver_recorded`, so it sits in order between
    // publications.
    let shard = engine.histories.lock(topic);
    let target = Target::Topic {
        topic,
        except: None,
    };
    let report = engine.deliver(target, &frame);
    drop(shard);
    report
}

/// Subscribes `session` to `topic`, replaying what it missed since `since`.
///
/// A replay that fits in half the session's queue is queued and joined at once, under the
/// topic's history lock. A longer one is **streamed**: queued as the queue drains, from the
/// log's own (reference-counted) messages, then the session joins live under the lock; what
/// was published meanwhile is taken from the log in order first. A replay that cannot be
/// completed (the log moved past it, the reader stalled under a drop policy) ends with an
/// `unrecoverable` message and a live subscription, never with a silent gap.
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
        let joined = replay_and_subscribe(engine, session, topic, Some(&outcome), Vec::new());
        return finish_join(session, topic, joined).map(|()| outcome);
    };
    if let Some(bp) = cluster(engine) {
        return join_cluster(session, bp, topic, since, policy).await;
    }
    let (outcome, replay) = {
        let mut shard = engine.histories.lock(topic);
        let log = state(&mut shard, topic).log.get_or_insert_with(Log::new);
        log.trim(policy, Instant::now());
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
        let replay = pending(replay);
        if fits(engine, &replay) {
            // Replayed and joined under the topic's history lock: the seam with `publish`.
            let frames = frames(engine, topic, replay);
            let joined = replay_and_subscribe(engine, session, topic, Some(&outcome), frames);
            drop(shard);
            return finish_join(session, topic, joined).map(|()| outcome);
        }
        answer(engine, session, topic, &outcome);
        (outcome, replay)
    };
    // Streamed: the answer is queued; the replay follows as the queue drains.
    let mut last = match stream(engine, session, topic, replay).await? {
        Streamed::Done(last) => last,
        Streamed::GaveUp(lost) => return Ok(lost),
    };
    loop {
        let rest = {
            let mut shard = engine.histories.lock(topic);
            let log = state(&mut shard, topic).log.get_or_insert_with(Log::new);
            log.trim(policy, Instant::now());
            let current = log.current();
            match last.and_then(|p| log.since(p)).map(pending) {
                Some(rest) if fits(engine, &rest) => {
                    let frames = frames(engine, topic, rest);
                    let joined = replay_and_subscribe(engine, session, topic, None, frames);
                    drop(shard);
                    return finish_join(session, topic, joined).map(|()| outcome);
                }
                Some(rest) => rest,
                None => {
                    // The log moved past what was sent (trimmed while the reader caught up).
                    let lost = Recovered::Unrecoverable {
                        current: Some(current),
                    };
                    let joined =
                        replay_and_subscribe(engine, session, topic, Some(&lost), Vec::new());
                    drop(shard);
                    tracing::info!(id = %session.id(), %topic, "replay overtaken by the log; sent unrecoverable");
                    return finish_join(session, topic, joined).map(|()| lost);
                }
            }
        };
        match stream(engine, session, topic, rest).await? {
            Streamed::Done(Some(p)) => last = Some(p),
            Streamed::Done(None) => {}
            Streamed::GaveUp(lost) => return Ok(lost),
        }
    }
}

/// A publication waiting to be queued for one session: a message from a log (framed when it
/// is queued, so a streamed replay holds the log's reference-counted messages, not frames),
/// or a frame already built for the topic's live subscribers.
enum Item {
    Message(Message),
    Framed(Bytes),
}

impl Item {
    fn len(&self) -> usize {
        match self {
            Item::Message(m) => m.len() + 64,
            Item::Framed(f) => f.len(),
        }
    }

    fn frame(self, engine: &Engine, topic: &str, position: Position) -> Bytes {
        match self {
            Item::Message(m) => engine.publication_frame(topic, Some(position), &m),
            Item::Framed(f) => f,
        }
    }
}

type Pending = Vec<(Position, Item)>;

fn pending(replay: Vec<(Position, Message)>) -> Pending {
    replay
        .into_iter()
        .map(|(p, m)| (p, Item::Message(m)))
        .collect()
}

/// Whether a replay is small enough to queue at once: at most half the session's queue.
fn fits(engine: &Engine, replay: &Pending) -> bool {
    let config = &engine.config;
    let bytes: usize = replay.iter().map(|(_, m)| m.len()).sum();
    replay.len() <= config.max_queue_messages / 2 && bytes <= config.max_queue_bytes / 2
}

fn frames(engine: &Engine, topic: &str, replay: Pending) -> Vec<Bytes> {
    replay
        .into_iter()
        .map(|(p, item)| item.frame(engine, topic, p))
        .collect()
}

/// Queues the answer to a subscribe (with the envelope).
fn answer(engine: &Engine, session: &Session, topic: &str, outcome: &Recovered) {
    if engine.config.envelope {
        let frame = frame::encode_text(&crate::protocol::subscribed(topic, outcome));
        let _ = engine.deliver_to(&session.inner, frame);
    }
}

/// How a streamed replay ended.
enum Streamed {
    /// Everything was queued; the position of the last one, if any.
    Done(Option<Position>),
    /// It could not be completed (the reader stalled, or a replayed message was dropped,
    /// under a drop policy): the session was told `unrecoverable` and joined live.
    GaveUp(Recovered),
}

/// Queues `replay` as the session's queue drains, each publication when the queue is at
/// most half full, so a replay of any length never overflows it.
///
/// # Errors
/// [`HistoryError::Closing`] when the session closed meanwhile (or the slow-consumer policy
/// closed it because it stopped reading).
async fn stream(
    engine: &Engine,
    session: &Session,
    topic: &str,
    replay: Pending,
) -> Result<Streamed, HistoryError> {
    let s = &session.inner;
    let stall = engine.config.ping_timeout;
    let mut last = None;
    let mut broken = false;
    for (position, item) in replay {
        let room = std::future::poll_fn(|cx| s.outbox.poll_room(cx));
        match tokio::time::timeout(stall, room).await {
            Ok(true) => {}
            Ok(false) => return Err(HistoryError::Closing),
            Err(_) => {
                tracing::info!(id = %s.id, %topic, "slow consumer: stalled during a replay");
                let mut report = Delivery::default();
                if engine.config.slow_consumer == crate::SlowConsumerPolicy::Disconnect {
                    engine.close_session(s, CloseFrame::new(CloseCode::POLICY, "slow consumer"));
                    report.disconnected = 1;
                    engine.counters.delivery(&report);
                    return Err(HistoryError::Closing);
                }
                report.dropped = 1;
                engine.counters.delivery(&report);
                broken = true;
                break;
            }
        }
        match engine.deliver_to(s, item.frame(engine, topic, position)) {
            Pushed::Queued => last = Some(position),
            Pushed::Closed | Pushed::Disconnected => return Err(HistoryError::Closing),
            Pushed::DroppedNewest | Pushed::QueuedDroppingOldest(_) => {
                broken = true;
                break;
            }
        }
    }
    if !broken {
        return Ok(Streamed::Done(last));
    }
    // Under a drop policy the session stays: tell it what it lost, then go live.
    let shard = engine.histories.lock(topic);
    let current = shard
        .get(topic)
        .and_then(|t| t.log.as_ref().map(Log::current));
    let lost = Recovered::Unrecoverable { current };
    let joined = replay_and_subscribe(engine, session, topic, Some(&lost), Vec::new());
    drop(shard);
    finish_join(session, topic, joined)?;
    Ok(Streamed::GaveUp(lost))
}

/// Queues the answer (with the envelope) and the replay, then subscribes; the caller holds
/// the topic's history lock, so no hook runs here.
fn replay_and_subscribe(
    engine: &Engine,
    session: &Session,
    topic: &str,
    outcome: Option<&Recovered>,
    frames: Vec<Bytes>,
) -> Result<Joined, HistoryError> {
    let s = &session.inner;
    let answer = outcome
        .filter(|_| engine.config.envelope)
        .map(|outcome| frame::encode_text(&crate::protocol::subscribed(topic, outcome)));
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

    /// Empties the entry's buffer (it keeps collecting), returning what it held.
    fn drain(&self, shard: &mut Shard<'_>) -> Option<Recovering> {
        let t = shard.get_mut(self.topic)?;
        let r = t.recovering.iter_mut().find(|r| r.id == self.id)?;
        Some(Recovering {
            id: r.id,
            buffer: std::mem::take(&mut r.buffer),
            overflowed: std::mem::take(&mut r.overflowed),
        })
    }
}

impl Drop for RecoveringGuard<'_> {
    fn drop(&mut self) {
        let mut shard = self.engine.histories.lock(self.topic);
        let _ = self.take(&mut shard);
        drop(shard);
        release(self.engine, self.topic);
    }
}

/// Frees `topic`'s history state when it is idle and has no subscriber on this node (after
/// its last subscriber left, a read, a cancelled join).
pub(super) fn release(engine: &Engine, topic: &str) {
    let mut shard = engine.histories.lock(topic);
    if engine.registry.topic_len(topic) == 0 {
        engine.histories.forget_if_idle(&mut shard, topic);
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
    let read = read_cluster(bp, topic, since, policy).await;
    let read = match read {
        Ok(read) => read,
        Err(e) => {
            drop(guard);
            bp.interest_changed(topic);
            return Err(e.into());
        }
    };
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
    // 3. Replay, then the buffered publications that follow it, then join: at once under the
    //    topic's lock when it fits (no live publication slips in between), else streamed as
    //    the queue drains, with the buffer — or, when it overflowed, the log — followed
    //    until what is left fits.
    let mut queue = pending(replay);
    let mut answered = false;
    // Everything up to `last` is queued or in `queue`; the buffer's older entries are dropped.
    let mut last = current;
    loop {
        let overflowed = {
            let mut shard = engine.histories.lock(topic);
            let Some(mine) = guard.drain(&mut shard) else {
                return Err(HistoryError::Closing);
            };
            // Live ones the read already covered are dropped (dedupe by offset); those of
            // another epoch (the history was reset during the read) are not comparable and
            // are kept.
            if !mine.overflowed {
                queue.extend(
                    mine.buffer
                        .into_iter()
                        .filter(|(p, _)| newer(last, p))
                        .map(|(p, f)| (p, Item::Framed(f))),
                );
            }
            if !mine.overflowed && fits(engine, &queue) {
                let _ = guard.take(&mut shard);
                let frames = frames(engine, topic, std::mem::take(&mut queue));
                let outcome_once = (!answered).then_some(&outcome);
                let joined = replay_and_subscribe(engine, session, topic, outcome_once, frames);
                drop(shard);
                drop(guard);
                return finish_join(session, topic, joined).map(|()| outcome);
            }
            mine.overflowed
        };
        if !answered {
            answer(engine, session, topic, &outcome);
            answered = true;
        }
        let newest = queue.last().map(|(p, _)| *p).filter(|p| newer(last, p));
        match stream(engine, session, topic, std::mem::take(&mut queue)).await? {
            Streamed::Done(_) => last = newest.unwrap_or(last),
            Streamed::GaveUp(lost) => return Ok(lost),
        }
        if overflowed {
            // The buffer lost publications: read them back from the shared log.
            let again = read_cluster(bp, topic, Some(last), policy).await?;
            if !again.complete {
                let lost = Recovered::Unrecoverable {
                    current: Some(again.current),
                };
                let joined = {
                    let mut shard = engine.histories.lock(topic);
                    let _ = guard.take(&mut shard);
                    replay_and_subscribe(engine, session, topic, Some(&lost), Vec::new())
                };
                drop(guard);
                return finish_join(session, topic, joined).map(|()| lost);
            }
            queue = pending(again.entries);
        }
    }
}

/// Whether `p` comes after `last` (or belongs to another epoch, so cannot be compared).
fn newer(last: Position, p: &Position) -> bool {
    p.epoch != last.epoch || p.offset > last.offset
}

/// Reads the shared log after `since` once the backplane delivers the topic here, then waits
/// until what the read saw has arrived (so the buffer's offset filter can drop it).
async fn read_cluster(
    bp: &Arc<dyn Backplane>,
    topic: &str,
    since: Option<Position>,
    policy: &HistoryPolicy,
) -> Result<crate::backplane::HistoryRead, BackplaneError> {
    bp.topic_ready(topic).await?;
    let read = match since {
        Some(_) => bp.history_read(topic, since, policy).await?,
        // A live subscribe needs the position only, not the log.
        None => {
            let current = bp.history_position(topic, policy).await?;
            crate::backplane::HistoryRead::new(current, Vec::new(), true)
        }
    };
    bp.topic_ready(topic).await?;
    Ok(read)
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
    let read = {
        let mut shard = engine.histories.lock(topic);
        let log = state(&mut shard, topic).log.get_or_insert_with(Log::new);
        log.trim(policy, Instant::now());
        match since {
            Some(p) => log.since(p).ok_or(HistoryError::Unrecoverable {
                current: log.current(),
            }),
            None => Ok(log.entries_after(0)),
        }
    };
    // A read of a topic nobody uses leaves nothing behind.
    release(engine, topic);
    read
}

/// Sessions of `topic` between starting and finishing a cluster recovery.
pub(crate) fn recovering(engine: &Engine, topic: &str) -> usize {
    engine.histories.recovering(topic)
}
