//! Liveness: claiming a node number unique in the cluster, the lease that holds it, and the
//! heartbeat that renews the lease and writes this node's counts.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use ::redis as r;
use r::aio::MultiplexedConnection;

use super::keys::{Names, RELEASE_LEASE, RENEW_LEASE, WRITE_PRESENCE};
use super::{RedisConfig, Shared, connection_error, lock, random_u64};
use crate::backplane::{BackplaneError, LocalNode};

pub(super) async fn claim_node(
    conn: &mut MultiplexedConnection,
    config: &RedisConfig,
    token: &str,
) -> Result<u16, BackplaneError> {
    let names = Names::new(&config.prefix);
    for _ in 0..u16::MAX {
        let seq: u64 = r::cmd("INCR")
            .arg(names.node_seq())
            .query_async(conn)
            .await
            .map_err(connection_error)?;
        // The counter only spreads claims; forgotten, it starts again and skips held numbers.
        let _: r::RedisResult<i64> = r::cmd("PEXPIRE")
            .arg(names.node_seq())
            .arg(NODE_SEQ_TTL_MS)
            .query_async(conn)
            .await;
        let node = ((seq.wrapping_sub(1)) % u64::from(u16::MAX) + 1) as u16;
        let claimed: Option<String> = r::cmd("SET")
            .arg(names.lease(node))
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(config.liveness_ms())
            .query_async(conn)
            .await
            .map_err(connection_error)?;
        if claimed.is_none() {
            continue;
        }
        // A live node whose lease was lost (Redis restarted without persistence) is still
        // subscribed to its channel, or will be again within its reconnection backoff: leave
        // its number alone.
        let (_, listeners): (String, u64) = r::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(names.node(node))
            .query_async(conn)
            .await
            .map_err(connection_error)?;
        if listeners == 0 {
            return Ok(node);
        }
        let _: i64 = r::Script::new(RELEASE_LEASE)
            .key(names.lease(node))
            .key(names.counts(node))
            .arg(token)
            .invoke_async(conn)
            .await
            .map_err(connection_error)?;
    }
    Err(BackplaneError::NoNodeNumber)
}

/// The node counter expires a day after the last claim.
const NODE_SEQ_TTL_MS: u64 = 24 * 3600 * 1000;

pub(super) fn random_token() -> String {
    let a = random_u64();
    let b = random_u64();
    format!("{a:016x}{b:016x}")
}

pub(super) async fn run_heartbeat(shared: Arc<Shared>, mut beat: Heartbeat) {
    let mut stop = shared.stop_signal();
    let mut tick = tokio::time::interval(shared.config.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first beat was made by `connect`
    let mut failing = false;
    let mut refused = false;
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => {
                // Leaving: the sessions that left last (a shutdown) stop showing at once.
                let flushed = async {
                    let mut conn = shared.control_connection().await?;
                    beat.write_presence(&shared, &mut conn, false).await
                };
                let _ = tokio::time::timeout(shared.config.response_timeout, flushed).await;
                return;
            }
            _ = tick.tick() => {}
            _ = shared.beat_now.notified() => {}
            _ = shared.presence_wake.notified(), if !failing => {
                // Only this node's presence changed: write it now rather than at the beat.
                let written = async {
                    let mut conn = shared.control_connection().await?;
                    beat.write_presence(&shared, &mut conn, false).await
                };
                if let Err(error) = written.await {
                    tracing::debug!(%error, "presence write failed; written again at the next beat");
                    if !is_reply_error(&error) {
                        beat.presence = None;
                        shared.drop_control_connection().await;
                    }
                }
                continue;
            }
        }
        match beat.beat(&shared).await {
            Ok(()) if refused => {
                refused = false;
                tracing::info!(
                    node = shared.node(),
                    "Redis accepts the heartbeat's writes again"
                );
            }
            Ok(()) if failing => {
                failing = false;
                shared.stats.reconnects.fetch_add(1, Relaxed);
                tracing::info!(
                    node = shared.node(),
                    "heartbeat restored: this node counts again"
                );
            }
            Ok(()) => {}
            Err(error) if is_reply_error(&error) => {
                // Redis refuses writes (out of memory): the lease is renewed (PEXPIRE needs no
                // memory), counts and presence are retried from what was written, which stays.
                if !refused {
                    tracing::warn!(
                        node = shared.node(),
                        %error,
                        "Redis refused the heartbeat's writes: counts and presence not updated"
                    );
                }
                refused = true;
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(
                        node = shared.node(),
                        %error,
                        "heartbeat failed: other nodes stop counting this one if it lasts"
                    );
                }
                failing = true;
                beat.written = None;
                beat.presence = None;
                shared.drop_control_connection().await;
                shared.check.notify_one();
            }
        }
    }
}

/// What this node last wrote of its counts.
#[derive(Default)]
pub(super) struct Heartbeat {
    /// `None`: write everything at the next beat.
    pub(super) written: Option<Written>,
    /// This node's presence as last written; `None`: write everything at the next beat.
    pub(super) presence: Option<Presence>,
}

#[derive(Default, PartialEq)]
pub(super) struct Written {
    pub(super) sessions: usize,
    pub(super) topics: HashMap<String, usize>,
}

impl Heartbeat {
    /// Renews the lease and writes what changed in the counts.
    pub(super) async fn beat(&mut self, shared: &Shared) -> r::RedisResult<()> {
        let mut conn = shared.control_connection().await?;
        let n = shared.node();
        let renewed: i64 = r::Script::new(RENEW_LEASE)
            .key(shared.names.lease(n))
            .arg(&shared.token)
            .arg(shared.config.liveness_ms())
            .invoke_async(&mut conn)
            .await?;
        match renewed {
            -1 => {
                self.presence = None;
                // Another live node holds this number (it claimed it while Redis had lost the
                // lease, or while this node stalled past its liveness): serving on under it
                // would route that node's `send_to` here and drop its broadcasts as our own.
                let new = claim_node(&mut conn, &shared.config, &shared.token)
                    .await
                    .map_err(|e| r::RedisError::from(std::io::Error::other(e.to_string())))?;
                shared.node.store(new, Relaxed);
                shared.stats.renumbered.fetch_add(1, Relaxed);
                shared.renumbered.notify_one();
                let closed = shared.local.get().map_or(0, |local| local.renumber(new));
                tracing::error!(
                    old = n,
                    new,
                    closed,
                    "another node holds this node's number (Redis restarted without data, or \
                     this node stalled past its liveness timeout): took a new number and \
                     closed this node's sessions with 1012 so they reconnect under it"
                );
                self.written = None;
                shared.lease_checked.send_modify(|n| *n += 1);
                return Ok(());
            }
            1 => {
                if self.written.is_some() {
                    tracing::warn!(
                        node = n,
                        "node lease had lapsed (Redis restarted?); renewed"
                    );
                }
                self.written = None;
                self.presence = None;
            }
            _ => {}
        }
        shared.lease_checked.send_modify(|n| *n += 1);
        let now = Written {
            sessions: shared.local.get().map_or(0, LocalNode::session_count),
            topics: shared.local.get().map_or_else(HashMap::new, |local| {
                local
                    .topics()
                    .into_iter()
                    .map(|t| {
                        let c = local.subscriber_count(&t);
                        (t, c)
                    })
                    .filter(|(_, c)| *c > 0)
                    .collect()
            }),
        };
        let key = shared.names.counts(n);
        let ttl = shared.config.liveness_ms();
        // `HSET sessions` answers 1 when the field is new: the hash had lapsed, write it all.
        let mut pipe = r::pipe();
        if self.written.is_none() {
            pipe.cmd("DEL").arg(&key).ignore();
        }
        pipe.cmd("HSET").arg(&key).arg("sessions").arg(now.sessions);
        match &self.written {
            Some(before) => {
                for (t, c) in &now.topics {
                    if before.topics.get(t) != Some(c) {
                        pipe.cmd("HSET")
                            .arg(&key)
                            .arg(format!("topic:{t}"))
                            .arg(*c)
                            .ignore();
                    }
                }
                let gone: Vec<String> = before
                    .topics
                    .keys()
                    .filter(|t| !now.topics.contains_key(*t))
                    .map(|t| format!("topic:{t}"))
                    .collect();
                if !gone.is_empty() {
                    pipe.cmd("HDEL").arg(&key).arg(gone).ignore();
                }
            }
            None => {
                for (t, c) in &now.topics {
                    pipe.cmd("HSET")
                        .arg(&key)
                        .arg(format!("topic:{t}"))
                        .arg(*c)
                        .ignore();
                }
            }
        }
        pipe.cmd("PEXPIRE").arg(&key).arg(ttl).ignore();
        pipe.cmd("SADD").arg(shared.names.nodes()).arg(n).ignore();
        // The set outlives any one node by a liveness timeout, no more.
        pipe.cmd("PEXPIRE")
            .arg(shared.names.nodes())
            .arg(ttl)
            .ignore();
        let counts = match pipe.query_async::<(i64,)>(&mut conn).await {
            Ok((added,)) => {
                if added == 1 && self.written.is_some() {
                    // The hash had lapsed although the lease had not: write everything next
                    // beat.
                    self.written = None;
                    self.presence = None;
                } else {
                    self.written = Some(now);
                }
                Ok(())
            }
            // Refused (out of memory): presence's TTLs are still renewed below.
            Err(e) if is_reply_error(&e) => Err(e),
            Err(e) => return Err(e),
        };
        let presence = self.write_presence(shared, &mut conn, true).await;
        counts.and(presence)
    }

    /// Writes what changed in this node's presence since the last write (everything after a
    /// fault: a failed write, a lapsed lease, a new number), and with `renew` renews the TTL
    /// of every presence key of this node. Each node writes only its own keys, under its
    /// lease, so whatever a fault lost is written again here, within a beat.
    pub(super) async fn write_presence(
        &mut self,
        shared: &Shared,
        conn: &mut MultiplexedConnection,
        renew: bool,
    ) -> r::RedisResult<()> {
        let n = shared.node();
        // Taken before the mirror is read: a change after this is written next time.
        let dirty = std::mem::take(&mut *lock(&shared.presence_dirty));
        let mut ops: Vec<[String; 4]> = Vec::new();
        let op = |o: &str, key: String, id: String, info: String| [o.to_owned(), key, id, info];
        // What the written record held for the changed topics, to go back to if Redis refuses.
        let mut undo: Vec<(String, Option<HashMap<u64, String>>)> = Vec::new();
        let full = self.presence.is_none();
        let mut written = match self.presence.take() {
            Some(written) => {
                let mut written = written;
                for topic in dirty {
                    let now = lock(&shared.presence).get(&topic).cloned();
                    let was = written.remove(&topic);
                    let before = was.clone().unwrap_or_default();
                    undo.push((topic.clone(), was));
                    let key = shared.names.presence(&topic, n);
                    let now = now.unwrap_or_default();
                    if now.is_empty() {
                        if !before.is_empty() {
                            ops.push(op("X", key, String::new(), String::new()));
                        }
                        continue;
                    }
                    for (id, info) in &now {
                        if before.get(id) != Some(info) {
                            ops.push(op("S", key.clone(), id.to_string(), info.clone()));
                        }
                    }
                    for id in before.keys().filter(|id| !now.contains_key(id)) {
                        ops.push(op("D", key.clone(), id.to_string(), String::new()));
                    }
                    written.insert(topic, now);
                }
                written
            }
            None => {
                let now = lock(&shared.presence).clone();
                for (topic, entries) in &now {
                    let key = shared.names.presence(topic, n);
                    ops.push(op("X", key.clone(), String::new(), String::new()));
                    for (id, info) in entries {
                        ops.push(op("S", key.clone(), id.to_string(), info.clone()));
                    }
                }
                now
            }
        };
        if renew {
            // First, so that they are done even when Redis refuses a write after them.
            let renewals: Vec<[String; 4]> = written
                .keys()
                .map(|topic| {
                    let key = shared.names.presence(topic, n);
                    op("E", key, String::new(), String::new())
                })
                .collect();
            ops.splice(0..0, renewals);
        }
        if ops.is_empty() {
            self.presence = Some(written);
            return Ok(());
        }
        let script = r::Script::new(WRITE_PRESENCE);
        let mut script = script.prepare_invoke();
        script
            .key(shared.names.lease(n))
            .arg(&shared.token)
            .arg(shared.config.liveness_ms());
        for [o, key, id, info] in &ops {
            script.arg(o).arg(key).arg(id).arg(info);
        }
        let answer: r::RedisResult<i64> = script.invoke_async(conn).await;
        match answer {
            Ok(0) => {
                written.retain(|_, entries| !entries.is_empty());
                self.presence = Some(written);
                Ok(())
            }
            // A key to renew had gone (it lapsed during a stall, or was deleted): what Redis
            // holds is not what was written; write everything again now.
            Ok(gone) if gone > 0 => {
                shared.presence_wake.notify_one();
                Ok(())
            }
            // The lease is not this node's (any more): the next beat sorts it out, then
            // everything is written again.
            Ok(_) => Ok(()),
            Err(e) if is_reply_error(&e) && !full => {
                // Refused (out of memory): Redis holds what it held, but for the operations
                // before the refused one, which are idempotent. Retry the same changes.
                let mut dirty = lock(&shared.presence_dirty);
                for (topic, was) in undo {
                    match was {
                        Some(entries) => written.insert(topic.clone(), entries),
                        None => written.remove(&topic),
                    };
                    dirty.insert(topic);
                }
                drop(dirty);
                self.presence = Some(written);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }
}

/// Whether Redis answered with an error (out of memory, a script error), as opposed to the
/// connection failing: the connection is fine and is kept.
pub(super) fn is_reply_error(e: &r::RedisError) -> bool {
    !(e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_unrecoverable_error())
}

/// This node's sessions present per topic: session id to presence info.
pub(super) type Presence = HashMap<String, HashMap<u64, String>>;
