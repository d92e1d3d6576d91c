//! The outbound half of scale-out: what this node hands its backplane after delivering to
//! its own sessions, encoded once into a [`Packet`](crate::backplane::Packet).

use super::Engine;
use crate::backplane::{
    KIND_BROADCAST, KIND_PUBLISH, KIND_SEND, Remote, Route, encode_close, encode_event,
    encode_message, node_of,
};
use crate::error::SendError;
use crate::message::{CloseFrame, Message};
use crate::session::SessionId;

/// A broadcast (`except`: the session left out), for every other node.
pub(super) fn broadcast(engine: &Engine, except: Option<SessionId>, message: &Message) -> Remote {
    let Some(bp) = &engine.backplane else {
        return Remote::NotConfigured;
    };
    let packet = encode_message(KIND_BROADCAST, bp.node_id(), except, "", message);
    bp.publish(Route::All, packet)
}

/// A topic publication, for the nodes with subscribers.
pub(super) fn publish(engine: &Engine, topic: &str, message: &Message) -> Remote {
    let Some(bp) = &engine.backplane else {
        return Remote::NotConfigured;
    };
    if crate::error::validate_topic(topic).is_err() {
        // No session on any node can be subscribed to it.
        return Remote::NotConfigured;
    }
    let packet = encode_message(KIND_PUBLISH, bp.node_id(), None, topic, message);
    bp.publish(Route::Topic(topic), packet)
}

/// A JSON-protocol event (`join`, `leave`) for the topic's subscribers on other nodes.
pub(super) fn event(engine: &Engine, topic: &str, text: &str) -> Remote {
    let Some(bp) = &engine.backplane else {
        return Remote::NotConfigured;
    };
    bp.publish(Route::Topic(topic), encode_event(bp.node_id(), topic, text))
}

/// `send_to` when `to` belongs to another node; `None` when it is this node's.
pub(super) fn send_to(
    engine: &Engine,
    to: SessionId,
    message: &Message,
) -> Option<Result<(), SendError>> {
    let bp = engine.backplane.as_ref()?;
    let node = node_of(to);
    if node == bp.node_id() {
        return None;
    }
    let packet = encode_message(KIND_SEND, bp.node_id(), Some(to), "", message);
    Some(forwarded(to, bp.publish(Route::Node(node), packet)))
}

/// `close` when `to` belongs to another node; `None` when it is this node's.
pub(super) fn close(
    engine: &Engine,
    to: SessionId,
    frame: &CloseFrame,
) -> Option<Result<(), SendError>> {
    let bp = engine.backplane.as_ref()?;
    let node = node_of(to);
    if node == bp.node_id() {
        return None;
    }
    let packet = encode_close(bp.node_id(), to, frame);
    Some(forwarded(to, bp.publish(Route::Node(node), packet)))
}

fn forwarded(id: SessionId, remote: Remote) -> Result<(), SendError> {
    match remote {
        Remote::Failed(error) => Err(SendError::Remote { id, error }),
        _ => Ok(()),
    }
}
