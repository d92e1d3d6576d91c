//! Who is subscribed to a topic: per-topic presence, the join/leave hooks, and the
//! cluster-wide view through a backplane that keeps presence.
//!
//! Presence is opt-in per topic pattern ([`Config::presence`](crate::Config::presence)); the
//! hooks [`Handler::on_subscribe`](crate::Handler::on_subscribe) and
//! [`Handler::on_unsubscribe`](crate::Handler::on_unsubscribe) run for every topic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::hub::Core;
use crate::session::{Session, SessionId, SessionInner};

/// One session present on a topic, from [`Hub::presence`](crate::Hub::presence).
///
/// ```
/// # async fn f(hub: &wshub::Hub) -> Result<(), wshub::BackplaneError> {
/// for entry in hub.presence("room:7").await? {
///     println!("{} is here ({})", entry.id, entry.info.as_deref().unwrap_or("?"));
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PresenceEntry {
    /// The session (its node is in the top 16 bits).
    pub id: SessionId,
    /// What [`Handler::presence_info`](crate::Handler::presence_info) returned for it when it
    /// joined (a user name, a JSON object …).
    pub info: Option<String>,
}

impl PresenceEntry {
    /// An entry.
    pub fn new(id: SessionId, info: Option<String>) -> Self {
        PresenceEntry { id, info }
    }
}

/// This node's sessions on each presence topic.
#[derive(Default)]
pub(crate) struct Presence {
    topics: Mutex<HashMap<Arc<str>, Vec<PresenceEntry>>>,
}

impl Presence {
    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Vec<PresenceEntry>>> {
        self.topics.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn local(&self, topic: &str) -> Vec<PresenceEntry> {
        self.lock().get(topic).cloned().unwrap_or_default()
    }
}

/// `session` joined `topic` (called once per real subscription).
pub(crate) fn joined(session: &Session, topic: &str) {
    let core = &session.hub.core;
    if core.config.presence_enabled(topic) {
        let info = core.handler.presence_info(session);
        if let Some(bp) = &core.backplane {
            bp.presence_changed(topic, session.id(), Some(info.as_deref().unwrap_or("")));
        }
        core.presence
            .lock()
            .entry(Arc::from(topic))
            .or_default()
            .push(PresenceEntry::new(session.id(), info));
    }
    core.handler.on_subscribe(session, topic);
}

/// Session `id` left `topic`.
pub(crate) fn left(core: &Core, session: &Session, topic: &str) {
    if core.config.presence_enabled(topic) {
        let mut topics = core.presence.lock();
        if let Some(list) = topics.get_mut(topic) {
            list.retain(|e| e.id != session.id());
            if list.is_empty() {
                topics.remove(topic);
            }
        }
        drop(topics);
        if let Some(bp) = &core.backplane {
            bp.presence_changed(topic, session.id(), None);
        }
    }
    core.handler.on_unsubscribe(session, topic);
}

/// The session is ending: it leaves every topic it is in (before the registry drops it).
pub(crate) fn session_ending(session: &Session) {
    let inner: &SessionInner = &session.inner;
    for topic in crate::registry::Registry::session_topics(inner) {
        left(&session.hub.core, session, &topic);
    }
}

/// `Hub::presence`.
pub(crate) async fn read(
    core: &Core,
    topic: &str,
) -> Result<Vec<PresenceEntry>, crate::BackplaneError> {
    if let Some(bp) = &core.backplane {
        match bp.cluster_presence(topic).await {
            Err(crate::BackplaneError::Unsupported) => {}
            other => return other,
        }
    }
    Ok(core.presence.local(topic))
}
