//! The engine behind every [`Hub`](crate::Hub) handle: it owns the registry of sessions and
//! topics, topic history, presence, the counters and the hub's lifecycle, and it is the one
//! path by which anything reaches a session.
//!
//! ```text
//! Hub / Session / LocalNode (backplane inbound) / history replay
//!         │
//!         ▼
//! Engine::broadcast · publish · send_to · close      (frame once, then:)
//!         ├─ Engine::deliver(Target, frame)  → registry walk → Outbox::push (bounded, policy)
//!         │                                   → counted once, slow consumers logged once
//!         └─ forward::*                      → Backplane::publish (other nodes)
//! ```
//!
//! **Lock rule.** No application code — a [`Handler`] hook, or a [`Backplane`] method but
//! `presence_changed` (called under the presence lock so that one session's joins and leaves
//! reach the backplane in order; the trait requires it to only queue) — runs while the engine
//! holds one of its locks (registry shards, a topic's history, presence, an outbox). Operations that change membership collect what happened under the locks
//! ([`registry::Joined`](crate::registry::Joined), [`registry::Left`](crate::registry::Left))
//! and run the hooks after releasing them (`topics.rs`), so a hook may call back into the hub
//! (publish on the same topic, subscribe, `send_to`, `presence`, `stats`).

mod commands;
pub(crate) mod delivery;
mod forward;
pub(crate) mod history;
pub(crate) mod presence;
mod recovery;
pub(crate) mod topics;

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Notify, watch};

use crate::backplane::Backplane;
use crate::config::Config;
use crate::error::{FullOutcome, SendError};
use crate::frame;
use crate::handler::Handler;
use crate::message::{CloseCode, CloseFrame, Message};
use crate::outbox::{Abort, Pushed};
use crate::registry::Registry;
use crate::session::{SessionId, SessionInner};
use crate::stats::Counters;

pub(crate) use commands::apply;
pub(crate) use delivery::{Delivery, Target};
pub(crate) use recovery::{
    announce_unrecoverable, deliver_recorded, join, read_history, recovering,
};

/// How long [`Engine::publish_confirmed`] waits for a shared log to number a publication.
const CONFIRM_WAIT: Duration = Duration::from_secs(5);

/// State shared by every handle and connection of one hub.
pub(crate) struct Engine {
    pub(crate) config: Config,
    pub(crate) handler: Arc<dyn Handler>,
    pub(crate) registry: Registry,
    pub(crate) counters: Arc<Counters>,
    pub(crate) backplane: Option<Arc<dyn Backplane>>,
    histories: history::Histories,
    presence: presence::Presence,
    epoch: Instant,
    clock_ms: AtomicU64,
    stop: watch::Sender<bool>,
    shutting_down: AtomicBool,
    shutdown_deadline_ms: AtomicU64,
    tasks: AtomicUsize,
    tasks_idle: Notify,
    timer: Once,
}

impl Engine {
    pub(crate) fn new(
        config: Config,
        handler: Arc<dyn Handler>,
        node: u16,
        backplane: Option<Arc<dyn Backplane>>,
    ) -> Arc<Engine> {
        let (stop, _) = watch::channel(false);
        let engine = Arc::new(Engine {
            registry: Registry::new(node, config.max_topics_per_session),
            backplane,
            histories: Default::default(),
            presence: Default::default(),
            counters: Arc::default(),
            config,
            handler,
            epoch: Instant::now(),
            clock_ms: AtomicU64::new(1),
            stop,
            shutting_down: AtomicBool::new(false),
            shutdown_deadline_ms: AtomicU64::new(0),
            tasks: AtomicUsize::new(0),
            tasks_idle: Notify::new(),
            timer: Once::new(),
        });
        crate::backplane::attach(&engine);
        engine
    }

    // -----------------------------------------------------------------------------------
    // The delivery path.

    /// The one way a frame reaches this node's sessions: pushed into every recipient's
    /// bounded outbox under the slow-consumer policy (compressed once for all the sessions
    /// that negotiated the same permessage-deflate parameters), counted, slow consumers
    /// logged.
    pub(crate) fn deliver(&self, target: Target<'_>, frame: &Bytes) -> Delivery {
        let report = match target {
            Target::All { except } => self.registry.deliver_all(frame, except),
            Target::Topic { topic, except } => self.registry.deliver_topic(topic, frame, except),
        };
        self.account(&report, "");
        report
    }

    /// [`deliver`](Self::deliver) to one session (`send_to`, `Session::send`, and their
    /// twin from another node).
    pub(crate) fn deliver_to(&self, s: &Arc<SessionInner>, frame: Bytes) -> Pushed {
        let pushed = s
            .outbox
            .push(crate::deflate::for_one(s.deflate.as_ref(), frame), s);
        let mut report = Delivery::default();
        report.count(pushed);
        self.account(&report, "");
        pushed
    }

    /// [`deliver`](Self::deliver) of several frames, in order, to one session (a replay).
    pub(crate) fn deliver_all_to(
        &self,
        s: &Arc<SessionInner>,
        frames: impl IntoIterator<Item = Bytes>,
    ) -> Delivery {
        let mut report = Delivery::default();
        for frame in frames {
            let frame = crate::deflate::for_one(s.deflate.as_ref(), frame);
            report.count(s.outbox.push(frame, s));
        }
        self.account(&report, " during a replay");
        report
    }

    /// Counts a delivery once and logs its slow consumers once.
    fn account(&self, report: &Delivery, during: &str) {
        self.counters.delivery(report);
        if report.disconnected > 0 {
            tracing::info!(
                sessions = report.disconnected,
                "slow consumer: queue full{during}, closing with 1008"
            );
        }
    }

    /// The frame a publication of `topic` goes out in: the JSON envelope when
    /// [`Config::envelope`] asks for it, else the message itself.
    pub(crate) fn publication_frame(
        &self,
        topic: &str,
        position: Option<history::Position>,
        message: &Message,
    ) -> Bytes {
        if self.config.envelope {
            frame::encode_text(&crate::protocol::publication(topic, position, message))
        } else {
            frame::encode_message(message)
        }
    }

    // -----------------------------------------------------------------------------------
    // What the handles ask for.

    /// Queues `message` for every session but `except` on every node.
    pub(crate) fn broadcast(&self, except: Option<SessionId>, message: &Message) -> Delivery {
        let frame = frame::encode_message(message);
        let mut report = self.deliver(Target::All { except }, &frame);
        report.remote = forward::broadcast(self, except, message);
        report
    }

    /// Queues `message` for every subscriber of `topic` on every node, through the topic's
    /// history when it keeps one.
    pub(crate) fn publish(&self, topic: &str, message: Message) -> Delivery {
        if !self.config.plain_publish() {
            if let Some(policy) = self.config.history_policy(topic) {
                return recovery::publish(self, topic, message, policy, None);
            }
        }
        let frame = self.publication_frame(topic, None, &message);
        let target = Target::Topic {
            topic,
            except: None,
        };
        let mut report = self.deliver(target, &frame);
        report.remote = forward::publish(self, topic, &message);
        report
    }

    /// [`publish`](Self::publish), then waits for the position a shared log assigns.
    pub(crate) async fn publish_confirmed(&self, topic: &str, message: Message) -> Delivery {
        let Some(policy) = self.config.history_policy(topic) else {
            return self.publish(topic, message);
        };
        if !recovery::shared_log(self) {
            return self.publish(topic, message);
        }
        let (confirm, position) = crate::backplane::Confirm::new();
        let mut report = recovery::publish(self, topic, message, policy, Some(confirm));
        match tokio::time::timeout(CONFIRM_WAIT, position).await {
            Ok(Ok(Ok(position))) => report.position = Some(position),
            Ok(Ok(Err(error))) => report.remote = crate::backplane::Remote::Failed(error),
            _ => {}
        }
        report
    }

    /// Queues `message` for session `id`, on this node or (forwarded) on its own.
    pub(crate) fn send_to(&self, id: SessionId, message: &Message) -> Result<(), SendError> {
        if let Some(forwarded) = forward::send_to(self, id, message) {
            return forwarded;
        }
        let frame = frame::encode_message(message);
        let pushed = self.registry.with(id, |s| self.deliver_to(s, frame));
        send_result(id, pushed.ok_or(SendError::NotFound(id))?)
    }

    /// Closes session `id`, on this node or (forwarded) on its own.
    pub(crate) fn close(
        &self,
        id: SessionId,
        code: CloseCode,
        reason: &str,
    ) -> Result<(), SendError> {
        if !code.is_sendable() {
            return Err(SendError::InvalidCloseCode(code));
        }
        let frame = CloseFrame::new(code, reason);
        if let Some(forwarded) = forward::close(self, id, &frame) {
            return forwarded;
        }
        let s = self.registry.get(id).ok_or(SendError::NotFound(id))?;
        self.close_by_app(&s, code, reason)
    }

    /// The backplane took a new node number: new sessions get ids of `node`, and every
    /// session connected now is closed with 1012 so that it reconnects under it. Returns the
    /// sessions closed.
    pub(crate) fn renumber(&self, node: u16) -> usize {
        self.registry.set_node(node);
        let mut closed = 0;
        self.registry.for_each(|s| {
            let frame = CloseFrame::new(CloseCode::RESTART, "node renumbered; reconnect");
            if self.close_session(s, frame) {
                closed += 1;
            }
        });
        closed
    }

    /// The periodic upkeep of topic state (the hub's timer): publications past their
    /// `max_age` expire even on topics nobody touches, and idle topics are freed.
    pub(crate) fn sweep_topics(&self) {
        self.histories.sweep(
            |topic| self.config.history_policy(topic).copied(),
            |topic| self.registry.topic_len(topic) > 0,
        );
    }

    /// A snapshot of the counters.
    pub(crate) fn stats(&self) -> crate::stats::Stats {
        let mut stats = self
            .counters
            .snapshot(self.registry.len(), self.registry.topic_count());
        stats.history_topics = self.histories.len();
        stats
    }

    /// The sessions present on `topic` (every node with a backplane that keeps presence).
    pub(crate) async fn presence(
        &self,
        topic: &str,
    ) -> Result<Vec<crate::protocol::PresenceEntry>, crate::backplane::BackplaneError> {
        presence::read(self, topic).await
    }

    // -----------------------------------------------------------------------------------
    // Clock and lifecycle.

    /// Milliseconds since the hub was built, plus one (0 means "never").
    pub(crate) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// [`now_ms`](Self::now_ms) as of the heartbeat timer's last tick (a quarter of the
    /// shortest timeout, at most a second, behind): free to read on every message, and
    /// precise enough for liveness and the inbound rate limit.
    pub(crate) fn coarse_ms(&self) -> u64 {
        self.clock_ms.load(Ordering::Relaxed)
    }

    /// Advances the coarse clock (the heartbeat timer, on every tick).
    pub(crate) fn tick(&self) -> u64 {
        let now = self.now_ms();
        self.clock_ms.store(now, Ordering::Relaxed);
        now
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Resolves once shutdown has started.
    pub(crate) fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stop = self.stop.subscribe();
        async move {
            // The guard `wait_for` returns is dropped here, not held by the caller.
            let _ = stop.wait_for(|stopped| *stopped).await.map(|_| ());
        }
    }

    /// An application's close: the code must be sendable.
    pub(crate) fn close_by_app(
        &self,
        s: &SessionInner,
        code: CloseCode,
        reason: &str,
    ) -> Result<(), SendError> {
        if !code.is_sendable() {
            return Err(SendError::InvalidCloseCode(code));
        }
        if self.close_session(s, CloseFrame::new(code, reason)) {
            Ok(())
        } else {
            Err(SendError::Closing(s.id))
        }
    }

    /// Queues a close frame for `s` and sets when it is dropped regardless.
    pub(crate) fn close_session(&self, s: &SessionInner, frame: CloseFrame) -> bool {
        if !s.outbox.close(frame) {
            return false;
        }
        let mut deadline = self.now_ms() + self.config.close_timeout.as_millis() as u64;
        if self.is_shutting_down() {
            deadline = self.shutdown_deadline_ms.load(Ordering::Acquire);
        }
        s.close_deadline.store(deadline, Ordering::Release);
        true
    }

    /// Starts the hub's heartbeat timer on first use (it needs a runtime).
    pub(crate) fn start_timer(self: &Arc<Self>) {
        self.timer.call_once(|| {
            tokio::spawn(crate::heartbeat::run(Arc::downgrade(self)));
        });
    }

    /// `Hub::shutdown`: close every session with 1001, wait for them until `deadline`, then
    /// drop the rest.
    pub(crate) async fn shutdown(&self, deadline: Duration) {
        // Saturating: `Duration::MAX` ("wait as long as it takes") must not wrap into the past.
        let until = self
            .now_ms()
            .saturating_add(deadline.as_millis().try_into().unwrap_or(u64::MAX));
        self.shutdown_deadline_ms.store(until, Ordering::Release);
        self.shutting_down.store(true, Ordering::Release);
        self.stop.send_replace(true);
        tracing::info!(sessions = self.registry.len(), "shutting down");
        let going_away = CloseFrame::new(CloseCode::GOING_AWAY, "server shutting down");
        self.registry.for_each(|s| {
            self.close_session(s, going_away.clone());
        });
        if tokio::time::timeout(deadline, self.tasks_finished())
            .await
            .is_err()
        {
            let left = self.registry.len();
            tracing::warn!(
                sessions = left,
                "shutdown deadline passed; dropping the rest"
            );
            self.registry
                .for_each(|s| s.outbox.abort(Abort::CloseTimeout));
            self.tasks_finished().await;
        }
        tracing::info!("shutdown complete");
    }

    async fn tasks_finished(&self) {
        loop {
            let mut idle = pin!(self.tasks_idle.notified());
            idle.as_mut().enable();
            if self.tasks.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// What one push to one session means for `send_to`'s caller.
pub(crate) fn send_result(id: SessionId, pushed: Pushed) -> Result<(), SendError> {
    match pushed {
        Pushed::Queued => Ok(()),
        Pushed::Closed => Err(SendError::Closing(id)),
        other => Err(SendError::Full {
            id,
            outcome: other.full_outcome().unwrap_or(FullOutcome::Disconnected),
        }),
    }
}

/// Counts a live connection task, for `Hub::shutdown`.
pub(crate) struct TaskGuard(Arc<Engine>);

impl TaskGuard {
    pub(crate) fn new(engine: &Arc<Engine>) -> Self {
        engine.tasks.fetch_add(1, Ordering::AcqRel);
        TaskGuard(engine.clone())
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if self.0.tasks.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.tasks_idle.notify_waiters();
        }
    }
}
