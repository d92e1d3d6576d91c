//! The publisher: drains the bounded queue of packets (and recorded publications)
//! into pipelines on its own connection, in queue order, and reconnects after an error.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use ::redis as r;
use bytes::Bytes;
use r::aio::MultiplexedConnection;
use tokio::sync::mpsc;

use super::keys::RECORD;
use super::{Backoff, Shared, connect, random_u64};

pub(super) enum Channel {
    All,
    Node(u16),
    Topic(String),
    /// A publication to a topic with history: appended to its stream and published by
    /// [`RECORD`] in one step. The packet is a publish packet.
    Recorded {
        topic: String,
        max_messages: usize,
        /// The TTL of the history's keys.
        ttl_ms: u64,
    },
}

impl Channel {
    /// What the command is, for the logs.
    fn kind(&self) -> &'static str {
        match self {
            Channel::All => "broadcast",
            Channel::Node(_) => "send_to/close",
            Channel::Topic(_) => "publish",
            Channel::Recorded { .. } => "recorded publish",
        }
    }
}

pub(super) struct Outgoing {
    pub(super) channel: Channel,
    pub(super) packet: Bytes,
    /// For a recorded publication whose publisher waits for its position.
    pub(super) confirm: Option<crate::backplane::Confirm>,
}

pub(super) async fn run_publisher(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Outgoing>,
    mut conn: MultiplexedConnection,
) {
    let max = shared.config.max_batch;
    let mut batch = Vec::with_capacity(max);
    let mut stop = shared.stop_signal();
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => {
                // Send what was queued before the stop, then end.
                rx.close();
                while rx.recv_many(&mut batch, max).await > 0 {
                    if shared.up.load(Relaxed) && send_batch(&shared, &mut conn, &mut batch).await.is_err() {
                        break;
                    }
                    batch.clear();
                }
                return;
            }
            n = rx.recv_many(&mut batch, max) => {
                if n == 0 {
                    return;
                }
            }
            _ = shared.check.notified() => {
                let ping = r::cmd("PING").query_async::<r::Value>(&mut conn).await;
                if let Err(e) = ping {
                    match reconnect_publisher(&shared, &mut rx, e).await {
                        Some(c) => conn = c,
                        None => return,
                    }
                }
                continue;
            }
        }
        if let Err(e) = send_batch(&shared, &mut conn, &mut batch).await {
            let lost = batch.len() as u64;
            shared.stats.lost.fetch_add(lost, Relaxed);
            tracing::warn!(
                lost,
                "{lost} message(s) for other nodes may not have reached Redis"
            );
            batch.clear();
            match reconnect_publisher(&shared, &mut rx, e).await {
                Some(c) => conn = c,
                None => return,
            }
        }
        batch.clear();
    }
}

/// Publishes one batch in one pipeline.
pub(super) async fn send_batch(
    shared: &Shared,
    conn: &mut MultiplexedConnection,
    batch: &mut [Outgoing],
) -> r::RedisResult<()> {
    let mut pipe = r::pipe();
    for o in batch.iter() {
        let channel = match &o.channel {
            Channel::Recorded {
                topic,
                max_messages,
                ttl_ms,
            } => {
                let [epoch, seq, log] = shared.names.history(topic);
                let new_epoch = (random_u64() & ((1 << 53) - 1)).max(1);
                pipe.cmd("EVAL")
                    .arg(RECORD)
                    .arg(3)
                    .arg(epoch)
                    .arg(seq)
                    .arg(log)
                    .arg(shared.names.topic(topic))
                    .arg(&o.packet[..])
                    .arg(*max_messages)
                    .arg(&new_epoch.to_be_bytes()[..])
                    .arg(*ttl_ms);
                continue;
            }
            Channel::All => &shared.names.all,
            Channel::Node(n) => &shared.names.node(*n),
            Channel::Topic(name) => name,
        };
        pipe.cmd("PUBLISH").arg(channel).arg(&o.packet[..]);
    }
    // An error reply fails its own command only: Redis ran the others, and the connection
    // is fine. Only a connection error fails the batch.
    let replies: Vec<r::Value> = pipe.ignore_errors().query_async(conn).await?;
    let (mut published, mut refused, mut undeliverable) = (0u64, 0u64, 0u64);
    let mut first_error = None;
    for (o, reply) in batch.iter_mut().zip(replies) {
        let n = match reply {
            r::Value::ServerError(error) => {
                refused += 1;
                if let Some(confirm) = o.confirm.take() {
                    confirm.refuse(crate::error::RemoteError::Refused);
                }
                first_error.get_or_insert((error, o.channel.kind()));
                continue;
            }
            r::Value::Int(n) => n,
            // A recorded publication: receivers, epoch (8 bytes, big-endian), offset.
            r::Value::Array(parts) => {
                if let [
                    r::Value::Int(n),
                    r::Value::BulkString(epoch),
                    r::Value::Int(offset),
                ] = parts.as_slice()
                {
                    let epoch = <[u8; 8]>::try_from(epoch.as_slice()).map(u64::from_be_bytes);
                    if let (Some(confirm), Ok(epoch)) = (o.confirm.take(), epoch) {
                        confirm.send(crate::Position::new(epoch, *offset as u64));
                    }
                    *n
                } else {
                    1
                }
            }
            _ => 1,
        };
        published += 1;
        if n == 0 {
            if let Channel::Node(node) = o.channel {
                undeliverable += 1;
                tracing::debug!(node, "message for a session of a node that has gone");
            }
        }
    }
    shared.stats.published.fetch_add(published, Relaxed);
    if let Some((error, kind)) = first_error {
        shared.stats.refused.fetch_add(refused, Relaxed);
        tracing::warn!(
            node = shared.node(),
            refused,
            first = kind,
            %error,
            "Redis refused {refused} command(s) of a pipeline; the others were sent"
        );
    }
    if undeliverable > 0 {
        shared.stats.undeliverable.fetch_add(undeliverable, Relaxed);
    }
    if shared.full_warned.swap(false, Relaxed) {
        tracing::info!("backplane queue drained: sending to other nodes again");
    }
    Ok(())
}

/// Marks the publisher down and reconnects with backoff; `None` when stopping.
pub(super) async fn reconnect_publisher(
    shared: &Shared,
    rx: &mut mpsc::Receiver<Outgoing>,
    error: r::RedisError,
) -> Option<MultiplexedConnection> {
    shared.up.store(false, Relaxed);
    let since = Instant::now();
    let refused_before = shared.stats.failed_down.load(Relaxed);
    tracing::error!(
        node = shared.node(),
        %error,
        "Redis connection lost: messages are delivered on this node only until it is back"
    );
    let mut backoff = Backoff::new(&shared.config);
    loop {
        // Whatever was queued before `up` went false will not be sent: late is worse than lost.
        let mut stale = 0u64;
        while rx.try_recv().is_ok() {
            stale += 1;
        }
        if stale > 0 {
            shared.stats.lost.fetch_add(stale, Relaxed);
            tracing::warn!(
                lost = stale,
                "dropped messages queued for other nodes before Redis went down"
            );
        }
        if !shared.sleep(backoff.pause()).await {
            return None;
        }
        let attempt = async {
            let mut conn = connect(&shared.client, &shared.config).await?;
            r::cmd("PING").query_async::<r::Value>(&mut conn).await?;
            Ok::<_, r::RedisError>(conn)
        };
        match attempt.await {
            Ok(conn) => {
                shared.up.store(true, Relaxed);
                shared.stats.reconnects.fetch_add(1, Relaxed);
                // As after a resubscription: check the lease now (Redis may have lost it).
                shared.beat_now.notify_one();
                let refused = shared.stats.failed_down.load(Relaxed) - refused_before;
                tracing::info!(
                    node = shared.node(),
                    down_ms = since.elapsed().as_millis() as u64,
                    not_sent = refused,
                    "Redis connection back: sending to other nodes again"
                );
                return Some(conn);
            }
            Err(e) => tracing::debug!(error = %e, "Redis reconnection failed; retrying"),
        }
    }
}
