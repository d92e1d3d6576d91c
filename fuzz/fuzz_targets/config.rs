//! `Config` setters with arbitrary values, in any order: none may panic, each getter must
//! return what its setter documents, and a hub built with the result must derive sane values
//! from it: a timer period within 5 ms..1 s, and a close deadline that is not in the past
//! and at least `close_timeout` (or ten years, whichever is shorter) ahead: a deadline that
//! wrapped around or was truncated would drop every closing session at once.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use wshub::__fuzz::derive;

fuzz_target!(|setters: Vec<common::Setter>| {
    let config = common::build(&setters);
    let last = |pick: fn(&common::Setter) -> Option<usize>| setters.iter().rev().find_map(pick);
    use common::Setter::*;
    let size = last(|s| {
        if let MaxMessageSize(n) = s {
            Some(*n)
        } else {
            None
        }
    });
    assert_eq!(config.get_max_message_size(), size.unwrap_or(1024 * 1024));
    let queue = last(|s| {
        if let MaxQueueBytes(n) = s {
            Some(*n)
        } else {
            None
        }
    });
    assert_eq!(config.get_max_queue_bytes(), queue.unwrap_or(1024 * 1024));
    let sessions = last(|s| {
        if let MaxSessions(n) = s {
            Some(*n)
        } else {
            None
        }
    });
    assert_eq!(config.get_max_sessions(), sessions.unwrap_or(100_000));

    let close = setters.iter().rev().find_map(|s| match s {
        CloseTimeout(d) => Some(u64::try_from(d.get().as_millis()).unwrap_or(u64::MAX)),
        _ => None,
    });
    let close_ms = close.unwrap_or(5_000);

    let d = derive(config);
    let tick = d.timer_tick.as_millis();
    assert!((5..=1000).contains(&tick), "timer tick {tick} ms");
    assert!(
        d.close_deadline_ms >= d.now_ms,
        "close deadline {} before now {}",
        d.close_deadline_ms,
        d.now_ms
    );
    const TEN_YEARS_MS: u64 = 10 * 365 * 24 * 3600 * 1000;
    let ahead = d.close_deadline_ms.saturating_sub(d.now_ms);
    assert!(
        ahead >= close_ms.min(TEN_YEARS_MS),
        "close_timeout of {close_ms} ms gave a deadline {ahead} ms ahead"
    );
});
