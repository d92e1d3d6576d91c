//! Who is subscribed to a topic: this node's presence entries, their mirror in a backplane
//! that keeps presence, and the `join`/`leave` events of the JSON protocol.
//!
//! Presence is opt-in per topic pattern ([`Config::presence`](crate::Config::presence)).
//! [`Handler::presence_info`](crate::Handler::presence_info) is called with no lock held;
//! the entry is then registered only if the session is still subscribed, under the presence
//! lock, so a leave that raced ahead of the join cannot leave a ghost behind.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Engine, Target, forward};
use crate::frame;
use crate::protocol::{self, PresenceEntry};
use crate::registry::Registry;
use crate::session::{Session, SessionId};

/// This node's sessions on each presence topic.
#[derive(Default)]
pub(crate) struct Presence {
    topics: Mutex<HashMap<Arc<str>, Vec<PresenceEntry>>>,
}

impl Presence {
    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Vec<PresenceEntry>>> {
        self.topics.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn local(&self, topic: &str) -> Vec<PresenceEntry> {
        self.lock().get(topic).cloned().unwrap_or_default()
    }
}

/// `session` joined `topic` (once per real subscription), no lock held.
pub(super) fn joined(engine: &Engine, session: &Session, topic: &str) {
    if !engine.config.presence_enabled(topic) {
        return;
    }
    let entry = PresenceEntry::new(session.id(), engine.handler.presence_info(session));
    {
        let mut topics = engine.presence.lock();
        if !Registry::is_subscribed(&session.inner, topic) {
            return; // left again meanwhile: its `left` ran or will find nothing
        }
        let list = topics.entry(Arc::from(topic)).or_default();
        list.retain(|e| e.id != entry.id);
        list.push(entry.clone());
        // Under the presence lock so that the backplane sees one session's joins and leaves
        // in order; `presence_changed` only queues (see `Backplane`).
        if let Some(bp) = &engine.backplane {
            bp.presence_changed(topic, entry.id, Some(entry.info.as_deref().unwrap_or("")));
        }
    }
    event(engine, topic, &protocol::event_join(topic, &entry));
}

/// Session `id` left `topic`, no lock held.
pub(super) fn left(engine: &Engine, id: SessionId, topic: &str) {
    if !engine.config.presence_enabled(topic) {
        return;
    }
    {
        let mut topics = engine.presence.lock();
        let Some(list) = topics.get_mut(topic) else {
            return;
        };
        let before = list.len();
        list.retain(|e| e.id != id);
        if list.len() == before {
            return;
        }
        if list.is_empty() {
            topics.remove(topic);
            crate::registry::release_spare(&mut topics);
        }
        if let Some(bp) = &engine.backplane {
            bp.presence_changed(topic, id, None);
        }
    }
    event(engine, topic, &protocol::event_leave(topic, id));
}

/// A `join` or `leave` event for the topic's subscribers on every node (JSON protocol only).
fn event(engine: &Engine, topic: &str, json: &str) {
    if !engine.config.envelope {
        return;
    }
    let target = Target::Topic {
        topic,
        except: None,
    };
    engine.deliver(target, &frame::encode_text(json));
    forward::event(engine, topic, json);
}

/// `Hub::presence`.
pub(crate) async fn read(
    engine: &Engine,
    topic: &str,
) -> Result<Vec<PresenceEntry>, crate::backplane::BackplaneError> {
    if let Some(bp) = &engine.backplane {
        match bp.cluster_presence(topic).await {
            Err(crate::backplane::BackplaneError::Unsupported) => {}
            other => return other,
        }
    }
    Ok(engine.presence.local(topic))
}
