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

use super::keys::Names;
use super::{Backoff, RedisConfig, Shared, lock, timed_out};

pub(super) async fn subscribe_base(
    client: &r::Client,
    config: &RedisConfig,
    names: &Names,
    node: u16,
) -> r::RedisResult<(PubSubSink, PubSubStream)> {
    let timeout = config.connect_timeout + config.response_timeout;
    let connecting = async {
        let (mut sink, stream) = client.get_async_pubsub().await?.split();
        sink.subscribe(&names.all).await?;
        sink.subscribe(names.node(node)).await?;
        Ok((sink, stream))
    };
    tokio::time::timeout(timeout, connecting)
        .await
        .unwrap_or_else(|_| Err(timed_out()))
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
    loop {
        let error = match subscribed(&shared, &mut sink, &mut stream, &mut topics).await {
            Ended::Stopped => return,
            Ended::Lost(e) => e,
        };
        shared.sub_up.store(false, Relaxed);
        lock(&shared.ready).clear();
        shared.stats.topic_channels.store(0, Relaxed);
        tracing::error!(
            node = shared.node(),
            %error,
            "Redis subscription lost: messages other nodes publish until it is back are lost"
        );
        // The publisher's connection may be gone too; have it look now, not at its next send.
        shared.check.notify_one();
        let since = Instant::now();
        let mut backoff = Backoff::new(&shared.config);
        loop {
            if !shared.sleep(backoff.pause()).await {
                return;
            }
            match subscribe_base(&shared.client, &shared.config, &shared.names, shared.node()).await
            {
                Ok((new_sink, new_stream)) => {
                    (sink, stream) = (new_sink, new_stream);
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
        // Redis may have restarted without its data, and another node taken this one's number
        // meanwhile: have the heartbeat check the lease now rather than at its next beat.
        shared.beat_now.notify_one();
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
) -> Ended {
    let mut stop = shared.stop_signal();
    // The node channel subscribed on this connection.
    let mut own = shared.node();
    let mut ping = tokio::time::interval(shared.config.heartbeat);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    shared.dirty_wake.notify_one();
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return Ended::Stopped,
            msg = stream.next() => match msg {
                Some(msg) => receive(shared, msg.get_payload_bytes(), msg.get_channel_name()),
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
                    receive(shared, msg.get_payload_bytes(), msg.get_channel_name());
                }
                for tx in waiting {
                    let _ = tx.send(());
                }
            }
            _ = shared.renumbered.notified() => {
                let now = shared.node();
                if now != own {
                    let switched = tokio::time::timeout(shared.config.response_timeout, async {
                        sink.subscribe(shared.names.node(now)).await?;
                        sink.unsubscribe(shared.names.node(own)).await
                    });
                    match switched.await {
                        Ok(Ok(())) => own = now,
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

pub(super) fn receive(shared: &Shared, envelope: &[u8], channel: &str) {
    if let Some(recorded) = envelope.strip_prefix(b"R") {
        // A publication from a topic's history: every node delivers it, the publisher's too.
        let Some(local) = shared.local.get() else {
            return;
        };
        let decoded = (recorded.len() > 16)
            .then(|| crate::backplane::Envelope::decode(&recorded[16..]).ok())
            .flatten();
        match decoded.map(|e| e.action) {
            Some(crate::backplane::Action::Publish { topic, message, .. }) => {
                let epoch = u64::from_be_bytes(recorded[..8].try_into().expect("8 bytes"));
                let offset = u64::from_be_bytes(recorded[8..16].try_into().expect("8 bytes"));
                let position = crate::Position::new(epoch, offset);
                local.deliver_recorded(&topic, position, &message);
                shared.stats.received.fetch_add(1, Relaxed);
            }
            _ => {
                shared.stats.malformed.fetch_add(1, Relaxed);
                tracing::warn!(channel, "ignored a malformed history publication");
            }
        }
        return;
    }
    let own = envelope.first() == Some(&crate::backplane::VERSION)
        && envelope.get(3..5) == Some(&shared.node().to_be_bytes()[..]);
    if own {
        return; // our own, back from the broadcast or a topic channel
    }
    let Some(local) = shared.local.get() else {
        return; // no hub yet, so no session to deliver to
    };
    match local.deliver(envelope) {
        Ok(_) => {
            shared.stats.received.fetch_add(1, Relaxed);
        }
        Err(error) => {
            shared.stats.malformed.fetch_add(1, Relaxed);
            tracing::warn!(channel, %error, "ignored a message from another node");
        }
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
        let Some(subscribe) = change else { continue };
        let channel = shared.names.topic(&topic);
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
