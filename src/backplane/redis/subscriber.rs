//! The subscriber: holds the pub/sub connection (the broadcast channel, this node's channel,
//! a channel per topic with local subscribers), delivers what arrives into the hub, answers
//! `topic_ready` barriers, and resubscribes after a reconnection.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use ::redis as r;
use futures_util::StreamExt;
use r::aio::{PubSubSink, PubSubStream};

use super::control::ReadError;
use super::keys::Names;
use super::{Backoff, RedisConfig, Shared, lock, timed_out};

pub(super) async fn subscribe_base(
    client: &r::Client,
    config: &RedisConfig,
    names: &Names,
    node: Option<u16>,
) -> r::RedisResult<(PubSubSink, PubSubStream)> {
    let timeout = config.connect_timeout + config.response_timeout;
    let connecting = async {
        let (mut sink, stream) = client.get_async_pubsub().await?.split();
        sink.subscribe(&names.all).await?;
        if let Some(node) = node {
            sink.subscribe(names.node(node)).await?;
        }
        Ok((sink, stream))
    };
    tokio::time::timeout(timeout, connecting)
        .await
        .unwrap_or_else(|_| Err(timed_out()))
}

/// A new subscription connection: the broadcast channel at once, this node's channel once the
/// heartbeat has checked that the node still holds its number (Redis may have restarted
/// without its data and another node claimed it meanwhile: listening on it first would take
/// that node's `send_to`). Returns the node channel's number.
async fn resubscribe(shared: &Shared) -> r::RedisResult<(PubSubSink, PubSubStream, u16)> {
    let mut checked = shared.lease_checked.subscribe();
    checked.borrow_and_update();
    let (mut sink, stream) =
        subscribe_base(&shared.client, &shared.config, &shared.names, None).await?;
    shared.beat_now.notify_one();
    let wait = shared.config.response_timeout * 2 + shared.config.heartbeat;
    match tokio::time::timeout(wait, checked.changed()).await {
        Ok(Ok(())) => {}
        _ => return Err(timed_out()),
    }
    let node = shared.node();
    tokio::time::timeout(
        shared.config.response_timeout,
        sink.subscribe(shared.names.node(node)),
    )
    .await
    .unwrap_or_else(|_| Err(timed_out()))?;
    Ok((sink, stream, node))
}

pub(super) enum Ended {
    Stopped,
    Lost(r::RedisError),
}

pub(super) async fn run_subscriber(
    shared: Arc<Shared>,
    mut sink: PubSubSink,
    mut stream: PubSubStream,
) {
    let mut topics = HashSet::new();
    // The node channel subscribed on the current connection.
    let mut own = shared.node();
    loop {
        let error = match subscribed(&shared, &mut sink, &mut stream, &mut topics, &mut own).await {
            Ended::Stopped => return,
            Ended::Lost(e) => e,
        };
        shared.sub_up.store(false, Relaxed);
        lock(&shared.ready).clear();
        shared.stats.topic_channels.store(0, Relaxed);
        tracing::error!(
            node = shared.node(),
            %error,
            "Redis subscription lost: broadcasts and plain publishes from other nodes until it \
             is back are lost (topics with history are caught up from their log)"
        );
        // The publisher's connection may be gone too; have it look now, not at its next send.
        shared.check.notify_one();
        let since = Instant::now();
        let mut backoff = Backoff::new(&shared.config);
        loop {
            if !shared.sleep(backoff.pause()).await {
                return;
            }
            match resubscribe(&shared).await {
                Ok((new_sink, new_stream, node)) => {
                    (sink, stream, own) = (new_sink, new_stream, node);
                    break;
                }
                Err(e) => tracing::debug!(error = %e, "Redis resubscription failed; retrying"),
            }
        }
        // A new connection has no subscriptions: look at every topic with local interest.
        topics.clear();
        if let Some(local) = shared.local.get() {
            lock(&shared.dirty).extend(local.topics());
        }
        shared.sub_up.store(true, Relaxed);
        shared.stats.reconnects.fetch_add(1, Relaxed);
        tracing::info!(
            node = shared.node(),
            down_ms = since.elapsed().as_millis() as u64,
            "Redis subscription back: receiving from other nodes again"
        );
    }
}

/// Runs one subscription connection until it fails or the backplane stops.
pub(super) async fn subscribed(
    shared: &Shared,
    sink: &mut PubSubSink,
    stream: &mut PubSubStream,
    topics: &mut HashSet<String>,
    own: &mut u16,
) -> Ended {
    let mut stop = shared.stop_signal();
    let mut ping = tokio::time::interval(shared.config.heartbeat);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    shared.dirty_wake.notify_one();
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return Ended::Stopped,
            msg = stream.next() => match msg {
                Some(msg) => {
                    if let Err(e) = handle(shared, &msg).await {
                        return Ended::Lost(e);
                    }
                }
                None => return Ended::Lost(r::RedisError::from(std::io::Error::from(
                    std::io::ErrorKind::ConnectionReset,
                ))),
            },
            _ = shared.barrier_wake.notified() => {
                let waiting = std::mem::take(&mut *lock(&shared.barriers));
                if let Err(e) = reconcile(shared, sink, topics).await {
                    return Ended::Lost(e);
                }
                if let Err(e) = ping_redis(shared, sink).await {
                    return Ended::Lost(e);
                }
                // Messages Redis sent before the pong are in the stream already.
                while let Some(Some(msg)) = futures_util::FutureExt::now_or_never(stream.next()) {
                    if let Err(e) = handle(shared, &msg).await {
                        return Ended::Lost(e);
                    }
                }
                for tx in waiting {
                    let _ = tx.send(());
                }
            }
            _ = shared.renumbered.notified() => {
                let now = shared.node();
                if now != *own {
                    let switched = tokio::time::timeout(shared.config.response_timeout, async {
                        sink.subscribe(shared.names.node(now)).await?;
                        sink.unsubscribe(shared.names.node(*own)).await
                    });
                    match switched.await {
                        Ok(Ok(())) => *own = now,
                        Ok(Err(e)) => return Ended::Lost(e),
                        Err(_) => return Ended::Lost(timed_out()),
                    }
                }
            }
            _ = shared.dirty_wake.notified() => {
                if let Err(e) = reconcile(shared, sink, topics).await {
                    return Ended::Lost(e);
                }
            }
            _ = ping.tick() => {
                // Finds a connection that is silently dead (a Redis that stopped answering).
                if let Err(e) = ping_redis(shared, sink).await {
                    return Ended::Lost(e);
                }
            }
        }
    }
}

/// Delivers one message from the subscription; a gap in a topic's history is filled from
/// the log first. An error is the control connection's: the subscription is re-established
/// and the gap filled then.
async fn handle(shared: &Shared, msg: &r::Msg) -> r::RedisResult<()> {
    if let Some(topic) = receive(shared, msg.get_payload_bytes(), msg.get_channel_name()) {
        // This publication is in the log already: the read covers it.
        catch_up(shared, &topic).await?;
    }
    Ok(())
}

/// Where a recorded publication stands against the last one delivered of its topic.
enum Track {
    Next,
    Duplicate,
    Gap,
}

fn track(shared: &Shared, topic: &str, position: crate::Position) -> Track {
    let mut delivered = lock(&shared.delivered);
    match delivered.get_mut(topic) {
        None => {
            delivered.insert(topic.to_owned(), position);
            Track::Next
        }
        Some(last) if last.epoch == position.epoch && position.offset <= last.offset => {
            Track::Duplicate
        }
        Some(last) if last.epoch == position.epoch && position.offset == last.offset + 1 => {
            *last = position;
            Track::Next
        }
        Some(_) => Track::Gap,
    }
}

/// Delivers what arrived; returns the topic when a recorded publication does not follow the
/// last one delivered (a gap, or another epoch), undelivered.
fn receive(shared: &Shared, packet: &[u8], channel: &str) -> Option<String> {
    if let Some(recorded) = packet.strip_prefix(b"R") {
        // A publication from a topic's history: every node delivers it, the publisher's too.
        let local = shared.local.get()?;
        let decoded = (recorded.len() > 16)
            .then(|| crate::backplane::Packet::decode(&recorded[16..]).ok())
            .flatten();
        match decoded.map(|e| e.action) {
            Some(crate::backplane::Action::Publish { topic, message, .. }) => {
                let epoch = u64::from_be_bytes(recorded[..8].try_into().expect("8 bytes"));
                let offset = u64::from_be_bytes(recorded[8..16].try_into().expect("8 bytes"));
                let position = crate::Position::new(epoch, offset);
                match track(shared, &topic, position) {
                    Track::Next => {
                        local.deliver_recorded(&topic, position, &message);
                        shared.stats.received.fetch_add(1, Relaxed);
                    }
                    Track::Duplicate => {} // delivered by a catch-up already
                    Track::Gap => return Some(topic),
                }
            }
            _ => {
                shared.stats.malformed.fetch_add(1, Relaxed);
                tracing::warn!(channel, "ignored a malformed history publication");
            }
        }
        return None;
    }
    let own = crate::backplane::origin(packet) == Some(shared.node());
    if own {
        return None; // our own, back from the broadcast or a topic channel
    }
    // No hub yet: no session to deliver to.
    let local = shared.local.get()?;
    match local.deliver(packet) {
        Ok(_) => {
            shared.stats.received.fetch_add(1, Relaxed);
        }
        Err(error) => {
            shared.stats.malformed.fetch_add(1, Relaxed);
            tracing::warn!(channel, %error, "ignored a message from another node");
        }
    }
    None
}

/// Delivers, in order, the publications of `topic` after the last one delivered, read from
/// its log; when they are no longer all there (another epoch: Redis lost its data; or
/// trimmed), tells the topic's subscribers `unrecoverable` at the log's current position
/// instead, and goes on from there.
async fn catch_up(shared: &Shared, topic: &str) -> r::RedisResult<()> {
    let (Some(local), Some(last)) = (
        shared.local.get(),
        lock(&shared.delivered).get(topic).copied(),
    ) else {
        return Ok(());
    };
    // Every entry after `last`, whatever the topic's policy: these were published live.
    let everything = crate::HistoryPolicy::new(usize::MAX, None);
    let read = match shared
        .history_read(topic, super::control::ReadFrom::After(last), &everything)
        .await
    {
        Ok(read) => read,
        Err(ReadError::Redis(e)) => return Err(e),
        Err(ReadError::Malformed(what)) => {
            tracing::error!(
                topic,
                what,
                "cannot read the log to fill a gap: not wshub's?"
            );
            lock(&shared.delivered).remove(topic);
            return Ok(());
        }
    };
    if read.complete && read.current.epoch == last.epoch {
        let mut n = 0u64;
        for (position, message) in &read.entries {
            if position.offset > last.offset {
                local.deliver_recorded(topic, *position, message);
                n += 1;
            }
        }
        lock(&shared.delivered).insert(topic.to_owned(), read.current);
        if n > 0 {
            shared.stats.caught_up.fetch_add(n, Relaxed);
            shared.stats.received.fetch_add(n, Relaxed);
            tracing::info!(
                topic,
                from = %last,
                delivered = n,
                "filled a gap in the subscription from the topic's log"
            );
        }
    } else {
        let told = local.unrecoverable(topic, read.current);
        lock(&shared.delivered).insert(topic.to_owned(), read.current);
        shared.stats.unrecoverable.fetch_add(1, Relaxed);
        tracing::warn!(
            topic,
            from = %last,
            now = %read.current,
            sessions = told.queued,
            "publications missed by the subscription are not in the log any more (Redis \
             lost its data, or trimmed them): subscribers told unrecoverable"
        );
    }
    Ok(())
}

/// The position of `topic`'s history now, read before its channel is subscribed, so that
/// whatever is published in between shows as a gap and is read from the log. Nothing for a
/// topic without history (or not published to yet).
async fn seed(shared: &Shared, topic: &str) {
    if lock(&shared.delivered).contains_key(topic) {
        return;
    }
    let [epoch, seq, _] = shared.names.history(topic);
    let read = async {
        let mut conn = shared.control_connection().await?;
        r::pipe()
            .cmd("GET")
            .arg(epoch)
            .cmd("GET")
            .arg(seq)
            .query_async::<(Option<Vec<u8>>, Option<u64>)>(&mut conn)
            .await
    };
    match read.await {
        Ok((Some(epoch), Some(offset))) => {
            if let Ok(epoch) = <[u8; 8]>::try_from(epoch.as_slice()) {
                let position = crate::Position::new(u64::from_be_bytes(epoch), offset);
                lock(&shared.delivered)
                    .entry(topic.to_owned())
                    .or_insert(position);
            }
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(topic, error = %e, "could not read a topic's position"),
    }
}

/// Subscribes to the channels of topics that gained local interest and unsubscribes from
/// those that lost it, one command at a time (each answer is awaited).
pub(super) async fn reconcile(
    shared: &Shared,
    sink: &mut PubSubSink,
    topics: &mut HashSet<String>,
) -> r::RedisResult<()> {
    let Some(local) = shared.local.get() else {
        return Ok(());
    };
    let dirty = std::mem::take(&mut *lock(&shared.dirty));
    let mut pending = dirty.into_iter();
    while let Some(topic) = pending.next() {
        let wanted = local.subscriber_count(&topic) > 0;
        let change = if wanted && !topics.contains(&topic) {
            Some(true)
        } else if !wanted && topics.contains(&topic) {
            Some(false)
        } else {
            None
        };
        if !wanted {
            lock(&shared.delivered).remove(&topic);
        }
        let Some(subscribe) = change else { continue };
        let channel = shared.names.topic(&topic);
        // A first subscription reads where the topic's history is; a resubscription (after a
        // reconnection) knows what it delivered last and catches up below.
        if subscribe {
            seed(shared, &topic).await;
        }
        let answered = tokio::time::timeout(shared.config.response_timeout, async {
            if subscribe {
                sink.subscribe(&channel).await
            } else {
                sink.unsubscribe(&channel).await
            }
        })
        .await
        .unwrap_or_else(|_| Err(timed_out()));
        if let Err(e) = answered {
            // Looked at again after reconnecting.
            let mut dirty = lock(&shared.dirty);
            dirty.insert(topic);
            dirty.extend(pending);
            return Err(e);
        }
        if subscribe {
            // Before live delivery resumes: fill what was missed while not subscribed.
            if let Err(e) = catch_up(shared, &topic).await {
                let mut dirty = lock(&shared.dirty);
                dirty.insert(topic);
                dirty.extend(pending);
                return Err(e);
            }
            lock(&shared.ready).insert(channel);
            topics.insert(topic);
        } else {
            lock(&shared.ready).remove(&channel);
            topics.remove(&topic);
        }
        shared.ready_changed.notify_waiters();
        shared.stats.topic_channels.store(topics.len(), Relaxed);
    }
    Ok(())
}

/// Pings Redis on the subscription connection within `response_timeout`.
pub(super) async fn ping_redis(
    shared: &Shared,
    sink: &mut PubSubSink,
) -> Result<(), r::RedisError> {
    let answered = tokio::time::timeout(shared.config.response_timeout, sink.ping::<r::Value>());
    match answered.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(timed_out()),
    }
}
