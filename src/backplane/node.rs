//! [`LocalNode`]: the narrow handle through which a backplane delivers what other nodes send
//! into this node's engine. It reaches the engine only through its delivery operations.

use std::sync::{Arc, Weak};

use super::PacketError;
use super::packet::{self, KIND_BROADCAST, KIND_EVENT, KIND_PUBLISH, KIND_SEND, Raw};
use crate::engine::{Delivery, Engine, Target};
use crate::frame;
use crate::message::Message;

/// The hub a backplane delivers into: given to [`Backplane::attach`](super::Backplane::attach).
///
/// It holds the hub weakly, so a backplane does not keep a dropped hub alive; once the hub is
/// gone, [`deliver`](Self::deliver) does nothing and the counts are 0.
#[derive(Clone)]
pub struct LocalNode {
    engine: Weak<Engine>,
    node: u16,
}

/// Attaches the hub's backplane, if any, once its engine exists.
pub(crate) fn attach(engine: &Arc<Engine>) {
    if let Some(bp) = &engine.backplane {
        bp.attach(LocalNode {
            engine: Arc::downgrade(engine),
            node: bp.node_id(),
        });
    }
}

impl LocalNode {
    /// This node's number (the one it was attached with, or the last
    /// [`renumber`](Self::renumber)).
    pub fn node_id(&self) -> u16 {
        self.engine
            .upgrade()
            .map_or(self.node, |e| e.registry.node())
    }

    /// This node lost its number to another live node (the backplane found the number held by
    /// someone else, e.g. after Redis restarted without its data): new sessions get ids of
    /// `node` from now on, packets from `node` count as this node's own, and every session
    /// connected now is closed with 1012 (service restart), so that its client reconnects (and
    /// recovers its topics) under the new number instead of sharing ids with the other node.
    ///
    /// The backplane must report the new number from
    /// [`Backplane::node_id`](super::Backplane::node_id) before calling this. Returns the
    /// sessions closed.
    pub fn renumber(&self, node: u16) -> usize {
        self.engine.upgrade().map_or(0, |e| e.renumber(node))
    }

    /// Tells this node's subscribers of `topic`, unasked, that publications they should have
    /// received are lost and cannot be replayed (e.g. Redis restarted without its data): with
    /// the [envelope](crate::Config::envelope) on, each gets
    /// `{"type":"unrecoverable","topic":…,"position":…}` (PROTOCOL.md), reloads the topic's
    /// state, and follows live publications after `position`. Without the envelope nothing is
    /// sent (the application's messages carry no positions to lose).
    pub fn unrecoverable(&self, topic: &str, position: crate::Position) -> Delivery {
        match self.engine.upgrade() {
            Some(engine) => crate::engine::announce_unrecoverable(&engine, topic, position),
            None => Delivery::default(),
        }
    }

    /// Delivers a packet from another node to this node's sessions, through the same
    /// bounded queues and slow-consumer policy as a local broadcast: the message is framed
    /// once, then queued for each matching session.
    ///
    /// A packet this node published itself is skipped (its sessions already have it), as
    /// is one for a session that is not (or no longer) here.
    ///
    /// # Return
    /// The per-recipient counts, as [`Hub::broadcast`](crate::Hub::broadcast) returns them
    /// (its `remote` field is [`Remote::NotConfigured`](super::Remote::NotConfigured)).
    ///
    /// # Errors
    /// [`PacketError`] when the bytes are not a valid packet; nothing is delivered.
    pub fn deliver(&self, packet: &[u8]) -> Result<Delivery, PacketError> {
        let raw = Raw::parse(packet)?;
        let Some(engine) = self.engine.upgrade() else {
            return Ok(Delivery::default());
        };
        if raw.origin == engine.registry.node() {
            return Ok(Delivery::default());
        }
        let plain = || frame::encode(raw.opcode, raw.payload);
        let report = match raw.kind {
            KIND_BROADCAST => engine.deliver(Target::All { except: raw.id }, &plain()),
            KIND_PUBLISH | KIND_EVENT => {
                let frame = if raw.kind == KIND_PUBLISH {
                    let message = packet::message_of(raw.opcode, raw.payload);
                    engine.publication_frame(raw.topic, None, &message)
                } else {
                    plain()
                };
                let target = Target::Topic {
                    topic: raw.topic,
                    except: raw.id,
                };
                engine.deliver(target, &frame)
            }
            KIND_SEND => {
                let to = raw.target()?;
                let mut report = Delivery::default();
                match engine.registry.get(to) {
                    Some(s) => report.count(engine.deliver_to(&s, plain())),
                    None => tracing::debug!(id = %to, "send_to from another node: no such session"),
                }
                report
            }
            _ => {
                let (to, close) = (raw.target()?, raw.close_frame()?);
                if let Some(s) = engine.registry.get(to) {
                    engine.close_session(&s, close);
                }
                Delivery::default()
            }
        };
        Ok(report)
    }

    /// Delivers a numbered publication of a topic with history, from the shared log (see
    /// [`Backplane::publish_recorded`](super::Backplane::publish_recorded)), to this node's subscribers, including the ones this
    /// node published itself. Sessions recovering the topic get it after their replay.
    pub fn deliver_recorded(
        &self,
        topic: &str,
        position: crate::Position,
        message: &Message,
    ) -> Delivery {
        match self.engine.upgrade() {
            Some(engine) => crate::engine::deliver_recorded(&engine, topic, position, message),
            None => Delivery::default(),
        }
    }

    /// Sessions connected to this node now.
    pub fn session_count(&self) -> usize {
        self.engine.upgrade().map_or(0, |e| e.registry.len())
    }

    /// Subscribers of `topic` on this node now, including sessions still recovering it.
    pub fn subscriber_count(&self, topic: &str) -> usize {
        self.engine.upgrade().map_or(0, |e| {
            e.registry.topic_len(topic) + crate::engine::recovering(&e, topic)
        })
    }

    /// The topics with at least one subscriber on this node, sorted.
    pub fn topics(&self) -> Vec<String> {
        self.engine
            .upgrade()
            .map_or_else(Vec::new, |e| e.registry.topic_names())
    }

    /// Whether the hub still exists.
    pub fn is_alive(&self) -> bool {
        self.engine.strong_count() > 0
    }
}

impl std::fmt::Debug for LocalNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalNode")
            .field("node", &self.node_id())
            .field("alive", &self.is_alive())
            .finish()
    }
}
