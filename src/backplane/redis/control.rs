//! Reads on the control connection: a topic's history, its presence, and the cluster's
//! counts. The connection is shared with the heartbeat and replaced after an error.

use std::collections::HashMap;

use ::redis as r;
use r::aio::MultiplexedConnection;

use super::keys::READ_HISTORY;
use super::{Shared, connect, lock, random_u64};
use crate::backplane::ClusterCount;
/// Epoch, sequence, Redis time (ms) and stream entries, as `READ_HISTORY` returns them.
pub(super) type HistoryAnswer = (Vec<u8>, u64, u64, Vec<(String, HashMap<String, Vec<u8>>)>);

pub(super) enum ReadError {
    Redis(r::RedisError),
    Malformed(&'static str),
}

/// Where a history read starts.
#[derive(Debug, Clone, Copy)]
pub(super) enum ReadFrom {
    /// Every publication kept.
    Start,
    /// The publications after a position.
    After(crate::Position),
    /// None: only the current position.
    End,
}

impl From<r::RedisError> for ReadError {
    fn from(e: r::RedisError) -> Self {
        ReadError::Redis(e)
    }
}

impl Shared {
    pub(super) async fn control_connection(&self) -> r::RedisResult<MultiplexedConnection> {
        let mut slot = self.control.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let conn = connect(&self.client, &self.config).await?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    pub(super) async fn history_read(
        &self,
        topic: &str,
        from: ReadFrom,
        policy: &crate::HistoryPolicy,
    ) -> Result<crate::backplane::HistoryRead, ReadError> {
        let mut conn = self.control_connection().await?;
        let [epoch_key, seq, log] = self.names.history(topic);
        let since = match from {
            ReadFrom::After(p) => Some(p),
            ReadFrom::Start | ReadFrom::End => None,
        };
        let first = match from {
            ReadFrom::Start => "-".to_owned(),
            // `+` to `+`: no entry, only the epoch and the position.
            ReadFrom::End => "+".to_owned(),
            ReadFrom::After(p) => match p.offset.checked_add(1) {
                Some(next) => format!("{next}-0"),
                None => "+".to_owned(),
            },
        };
        let new_epoch = (random_u64() & ((1 << 53) - 1)).max(1);
        let answer: r::RedisResult<r::Value> = r::cmd("EVAL")
            .arg(READ_HISTORY)
            .arg(3)
            .arg(epoch_key)
            .arg(seq)
            .arg(log)
            .arg(first)
            .arg(&new_epoch.to_be_bytes()[..])
            .arg(self.config.history_ttl_ms(policy))
            .query_async(&mut conn)
            .await;
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                self.drop_control_connection().await;
                return Err(e.into());
            }
        };
        let (epoch, last, now_ms, entries): HistoryAnswer =
            r::from_redis_value(answer).map_err(|_| ReadError::Malformed("history answer"))?;
        let epoch = u64::from_be_bytes(
            epoch
                .as_slice()
                .try_into()
                .map_err(|_| ReadError::Malformed("epoch"))?,
        );
        let oldest_ms = policy
            .max_age
            .map_or(0, |age| now_ms.saturating_sub(age.as_millis() as u64));
        let mut out = Vec::with_capacity(entries.len());
        let mut first_offset = None;
        for (id, fields) in entries {
            let offset: u64 = id
                .split_once('-')
                .and_then(|(o, _)| o.parse().ok())
                .ok_or(ReadError::Malformed("stream id"))?;
            let at: u64 = fields
                .get("t")
                .and_then(|t| std::str::from_utf8(t).ok()?.parse().ok())
                .unwrap_or(0);
            // `MAXLEN ~` trims approximately; the policy's count is applied exactly here.
            let evicted = offset.saturating_add(policy.max_messages as u64) <= last;
            if at < oldest_ms || evicted {
                continue; // too old to be replayed
            }
            let packet = fields.get("e").ok_or(ReadError::Malformed("entry"))?;
            let Ok(crate::backplane::Packet {
                action: crate::backplane::Action::Publish { message, .. },
                ..
            }) = crate::backplane::Packet::decode(packet)
            else {
                return Err(ReadError::Malformed("entry packet"));
            };
            first_offset.get_or_insert(offset);
            out.push((crate::Position::new(epoch, offset), message));
        }
        let last = out.last().map_or(last, |(p, _)| p.offset.max(last));
        let current = crate::Position::new(epoch, last);
        let complete = match since {
            None => true,
            Some(p) if p.epoch != epoch || p.offset > last => false,
            Some(p) if p.offset == last => true,
            Some(p) => first_offset == Some(p.offset + 1),
        };
        Ok(crate::backplane::HistoryRead::new(current, out, complete))
    }

    /// The sessions present on `topic`: this node's from its own record, the other live
    /// nodes' from their presence hashes (which expire with their liveness).
    pub(super) async fn presence(&self, topic: &str) -> r::RedisResult<Vec<crate::PresenceEntry>> {
        let result = self.read_presence(topic).await;
        if result.is_err() {
            self.drop_control_connection().await;
        }
        result
    }

    async fn read_presence(&self, topic: &str) -> r::RedisResult<Vec<crate::PresenceEntry>> {
        let mut conn = self.control_connection().await?;
        let me = self.node();
        let members: Vec<u16> = r::cmd("SMEMBERS")
            .arg(self.names.nodes())
            .query_async(&mut conn)
            .await?;
        let others: Vec<u16> = members.into_iter().filter(|n| *n != me).collect();
        let mut pipe = r::pipe();
        for n in &others {
            pipe.cmd("HGETALL").arg(self.names.presence(topic, *n));
        }
        let hashes: Vec<HashMap<u64, String>> = if others.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut conn).await?
        };
        let own = lock(&self.presence).get(topic).cloned().unwrap_or_default();
        let mut present: Vec<crate::PresenceEntry> = hashes
            .into_iter()
            .flatten()
            .chain(own)
            .map(|(id, info)| {
                let info = (!info.is_empty()).then_some(info);
                crate::PresenceEntry::new(crate::SessionId::from_u64(id), info)
            })
            .collect();
        present.sort_by_key(|e| e.id);
        Ok(present)
    }

    pub(super) async fn drop_control_connection(&self) {
        *self.control.lock().await = None;
    }

    /// Counts per live node: sessions (`topic` none) or subscribers of `topic`.
    pub(super) async fn cluster_count(&self, topic: Option<&str>) -> r::RedisResult<ClusterCount> {
        let result = self.read_counts(topic).await;
        if result.is_err() {
            self.drop_control_connection().await;
        }
        result
    }

    pub(super) async fn read_counts(&self, topic: Option<&str>) -> r::RedisResult<ClusterCount> {
        let mut conn = self.control_connection().await?;
        let members: Vec<u16> = r::cmd("SMEMBERS")
            .arg(self.names.nodes())
            .query_async(&mut conn)
            .await?;
        let field = topic.map(|t| format!("topic:{t}"));
        let others: Vec<u16> = members.into_iter().filter(|n| *n != self.node()).collect();
        let mut pipe = r::pipe();
        for n in &others {
            let cmd = pipe.cmd("HMGET").arg(self.names.counts(*n)).arg("sessions");
            if let Some(f) = &field {
                cmd.arg(f);
            }
        }
        let rows: Vec<Vec<Option<u64>>> = if others.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut conn).await?
        };
        let mut count = ClusterCount::default();
        let mut dead = Vec::new();
        for (n, row) in others.iter().zip(rows) {
            match row.first() {
                Some(Some(sessions)) => {
                    let c = match field {
                        Some(_) => row.get(1).copied().flatten().unwrap_or(0),
                        None => *sessions,
                    };
                    count.nodes.push((*n, c as usize));
                }
                _ => dead.push(*n),
            }
        }
        if let Some(local) = self.local.get() {
            let own = match topic {
                Some(t) => local.subscriber_count(t),
                None => local.session_count(),
            };
            count.nodes.push((self.node(), own));
        }
        count.nodes.sort_unstable();
        if !dead.is_empty() {
            // Nodes whose counts lapsed: forget them (a live one adds itself back next beat).
            let _: i64 = r::cmd("SREM")
                .arg(self.names.nodes())
                .arg(&dead)
                .query_async(&mut conn)
                .await?;
        }
        Ok(count)
    }
}
