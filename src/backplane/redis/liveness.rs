//! Liveness: claiming a node number unique in the cluster, the lease that holds it, and the
//! heartbeat that renews the lease and writes this node's counts.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use ::redis as r;
use r::aio::MultiplexedConnection;

use super::keys::{Names, RELEASE_LEASE, RENEW_LEASE};
use super::{RedisConfig, Shared, connection_error, random_u64};
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
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            _ = tick.tick() => {}
            _ = shared.beat_now.notified() => {}
        }
        match beat.beat(&shared).await {
            Ok(()) if failing => {
                failing = false;
                shared.stats.reconnects.fetch_add(1, Relaxed);
                tracing::info!(
                    node = shared.node(),
                    "heartbeat restored: this node counts again"
                );
            }
            Ok(()) => {}
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
            }
            _ => {}
        }
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
        let (added,): (i64,) = pipe.query_async(&mut conn).await?;
        if added == 1 && self.written.is_some() {
            // The hash had lapsed although the lease had not: write everything next beat.
            self.written = None;
        } else {
            self.written = Some(now);
        }
        Ok(())
    }
}
