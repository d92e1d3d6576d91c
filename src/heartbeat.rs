//! The hub's one timer task: heartbeat pings, ping and idle timeouts, close deadlines.
//!
//! One task for the whole hub walks the sessions every tick instead of one timer per
//! connection, which keeps an idle connection's memory small and the timer wheel short.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use crate::engine::Engine;
use crate::message::{CloseCode, CloseFrame};
use crate::outbox::Abort;

pub(crate) async fn run(core: Weak<Engine>) {
    let Some(tick) = core.upgrade().map(|c| c.config.timer_tick()) else {
        return;
    };
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(core) = core.upgrade() else { return };
        sweep(&core);
    }
}

fn sweep(core: &Arc<Engine>) {
    let cfg = &core.config;
    let now = core.tick();
    core.sweep_topics();
    let ping_interval = cfg.ping_interval.map(|d| d.as_millis() as u64);
    let ping_timeout = cfg.ping_timeout.as_millis() as u64;
    let idle = cfg.idle_timeout.map(|d| d.as_millis() as u64);
    let close_timeout = cfg.close_timeout.as_millis() as u64;
    core.registry.for_each(|s| {
        let deadline = s.close_deadline.load(Ordering::Acquire);
        if deadline != 0 {
            if now >= deadline {
                s.outbox.abort(Abort::CloseTimeout);
            }
            return;
        }
        if !s.outbox.is_open() {
            // Closing without a deadline yet (the peer closed first, or the slow-consumer
            // policy closed it from a sender's thread): `close_timeout` starts now.
            s.close_deadline
                .store(now + close_timeout, Ordering::Release);
            return;
        }
        if s.in_handler.load(Ordering::Acquire) {
            // The connection reads nothing while its handler runs (messages are handled in
            // order), so silence is not evidence of a dead peer. Timing restarts after.
            return;
        }
        let seen = s.last_seen.load(Ordering::Acquire);
        if let Some(idle) = idle {
            if now.saturating_sub(seen) >= idle {
                core.close_session(s, CloseFrame::new(CloseCode::GOING_AWAY, "idle timeout"));
                return;
            }
        }
        let Some(interval) = ping_interval else {
            return;
        };
        let pinged = s.ping_sent.load(Ordering::Acquire);
        if pinged != 0 && seen < pinged {
            if now - pinged >= ping_timeout {
                s.outbox.abort(Abort::PingTimeout);
            }
        } else if now.saturating_sub(seen.max(pinged)) >= interval {
            s.ping_sent.store(now, Ordering::Release);
            s.outbox.ping();
        }
    });
}
