//! Joining and leaving topics. The registry changes under its locks; then, with every lock
//! released, the backplane hears of a topic's first or last subscriber here, presence is
//! updated, and the [`Handler`](crate::Handler)'s hooks run — so a hook may call back into
//! the hub.

use std::panic::{AssertUnwindSafe, catch_unwind};

use super::{Engine, presence};
use crate::error::TopicError;
use crate::registry::{Joined, Left};
use crate::session::Session;

impl Engine {
    /// Subscribes `session` to `topic`; `Ok(false)` when already subscribed or closing.
    pub(crate) fn subscribe(&self, session: &Session, topic: &str) -> Result<bool, TopicError> {
        let joined = self.registry.subscribe(&session.inner, topic)?;
        self.after_join(session, topic, joined);
        Ok(joined.added)
    }

    /// Unsubscribes `session` from `topic`; false when it was not subscribed.
    pub(crate) fn unsubscribe(&self, session: &Session, topic: &str) -> bool {
        let left = self.registry.unsubscribe(&session.inner, topic);
        self.after_leave(session, topic, left);
        left.removed
    }

    /// What follows a change of membership, outside every lock.
    pub(crate) fn after_join(&self, session: &Session, topic: &str, joined: Joined) {
        if joined.first {
            self.interest_changed(topic);
        }
        if joined.added {
            presence::joined(self, session, topic);
            self.handler.on_subscribe(session, topic);
        }
    }

    fn after_leave(&self, session: &Session, topic: &str, left: Left) {
        if left.last {
            self.interest_changed(topic);
            super::recovery::release(self, topic);
        }
        if left.removed {
            presence::left(self, session.id(), topic);
            self.handler.on_unsubscribe(session, topic);
        }
    }

    /// The session ended: it leaves the registry and every topic at once (no subscribe can
    /// add it back), then presence and `on_unsubscribe` follow for each topic. A panicking
    /// hook is logged and skips nothing else. Runs once; later calls do nothing.
    pub(crate) fn session_ended(&self, session: &Session) {
        let Some(topics) = self.registry.remove(&session.inner) else {
            return;
        };
        self.registry
            .release(session.inner.request.peer_addr().ip());
        for (topic, last) in topics {
            let left = Left {
                removed: true,
                last,
            };
            let hooks = AssertUnwindSafe(|| self.after_leave(session, &topic, left));
            if catch_unwind(hooks).is_err() {
                tracing::error!(id = %session.id(), %topic, "on_unsubscribe panicked");
            }
        }
    }

    fn interest_changed(&self, topic: &str) {
        if let Some(bp) = &self.backplane {
            bp.interest_changed(topic);
        }
    }
}
