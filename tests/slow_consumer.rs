//! A client that never reads: it must neither block the others nor hold more than its queue
//! budget, and each [`SlowConsumerPolicy`] must be applied and reported exactly — through the
//! [`Delivery`] of `broadcast`, the [`SendError`] of `send_to`, `Hub::stats`, and what the slow
//! client finally reads.
//!
//! The slow client is a raw TCP client with a small receive buffer that completes the upgrade
//! and then reads nothing; three well-behaved clients read everything. The hub broadcasts
//! numbered 4 KiB messages in rounds of 8 (32 KiB, half the 64 KiB budget), and waits for the
//! good clients to have read each round before the next, so only the slow client's queue can
//! ever fill.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use support::*;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use wshub::{CloseCode, Delivery, FullOutcome, SendError, SessionId, SlowConsumerPolicy};

/// The per-session queue budget.
const BUDGET: usize = 64 * 1024;
/// Payload bytes of each message; its frame has a 4-byte header.
const PAYLOAD: usize = 4096;
const FRAME: usize = PAYLOAD + 4;
/// The most frames that fit in the budget: the high-water mark once the queue was full.
const FULL_QUEUE: usize = BUDGET / FRAME * FRAME;
const PER_ROUND: usize = 8;
/// Bounds a flood at 32 MiB per client, far more than loopback buffers absorb.
const MAX_ROUNDS: usize = 1024;
const GOOD: usize = 3;

/// Message `seq`: its number in 8 digits, padded to [`PAYLOAD`] bytes.
fn numbered(seq: u64) -> String {
    let mut s = format!("{seq:08}");
    s.extend(std::iter::repeat_n('.', PAYLOAD - s.len()));
    s
}

fn seq_of(payload: &[u8]) -> u64 {
    assert_eq!(payload.len(), PAYLOAD, "a numbered message");
    std::str::from_utf8(&payload[..8]).unwrap().parse().unwrap()
}

/// A well-behaved client reading in its own task: the sequence numbers it got, so far
/// (`progress`) and in full when the hub closes it (`task`).
struct Reader {
    progress: watch::Receiver<usize>,
    task: JoinHandle<Vec<u64>>,
}

fn spawn_reader(mut c: Client) -> Reader {
    let (tx, progress) = watch::channel(0);
    let task = tokio::spawn(async move {
        let mut seqs = Vec::new();
        // Until the connection ends (the close is answered on the way).
        while let Some(Ok(m)) = c.next().await {
            if let WsMessage::Text(t) = m {
                seqs.push(seq_of(t.as_bytes()));
                let _ = tx.send(seqs.len());
            }
        }
        seqs
    });
    Reader { progress, task }
}

/// Sums of the [`Delivery`] reports of a flood.
#[derive(Debug, Default)]
struct Totals {
    queued: usize,
    dropped: usize,
    disconnected: usize,
}

struct Flood {
    t: TestHub,
    policy: SlowConsumerPolicy,
    goods: Vec<(SessionId, Reader)>,
    slow: RawClient,
    slow_id: SessionId,
    sent: u64,
    totals: Totals,
}

impl Flood {
    async fn start(policy: SlowConsumerPolicy) -> Flood {
        let mut t = start(budget_config(policy), Default::default()).await;
        let mut goods = Vec::new();
        for _ in 0..GOOD {
            let c = connect(t.addr).await;
            let (id, _) = t.events.open().await;
            goods.push((id, spawn_reader(c)));
        }
        let (slow, slow_id) = slow_session(&mut t).await;
        Flood {
            t,
            policy,
            goods,
            slow,
            slow_id,
            sent: 0,
            totals: Totals::default(),
        }
    }

    /// Checks one broadcast's report against the policy.
    fn check(&mut self, d: Delivery) {
        let all = GOOD + 1;
        let report = (d.queued, d.dropped, d.disconnected);
        match self.policy {
            SlowConsumerPolicy::Disconnect if self.totals.disconnected == 0 => assert!(
                report == (all, 0, 0) || report == (GOOD, 0, 1),
                "message {}: {d:?}",
                self.sent
            ),
            // Closing: the slow session refuses more, and the refusal is counted as dropped.
            SlowConsumerPolicy::Disconnect => {
                assert_eq!(report, (GOOD, 1, 0), "message {}", self.sent)
            }
            SlowConsumerPolicy::DropNewest => assert!(
                report == (all, 0, 0) || report == (GOOD, 1, 0),
                "message {}: {d:?}",
                self.sent
            ),
            // Equal-sized messages: making room for one drops exactly one.
            SlowConsumerPolicy::DropOldest => assert!(
                report == (all, 0, 0) || report == (all, 1, 0),
                "message {}: {d:?}",
                self.sent
            ),
            other => panic!("untested policy {other:?}"),
        }
        self.totals.queued += d.queued;
        self.totals.dropped += d.dropped;
        self.totals.disconnected += d.disconnected;
    }

    /// Broadcasts rounds until `done` holds after a round, then `extra` rounds more; waits
    /// for the good clients to read each round. Fails if `done` never holds.
    async fn run(&mut self, done: impl Fn(&Totals) -> bool, extra: usize) {
        let mut rounds_left = None;
        for _ in 0..MAX_ROUNDS {
            for _ in 0..PER_ROUND {
                let d = self.t.hub.broadcast(numbered(self.sent));
                self.check(d);
                self.sent += 1;
            }
            let sent = self.sent as usize;
            for (_, r) in &mut self.goods {
                within(
                    "a good client to keep up",
                    r.progress.wait_for(|n| *n >= sent),
                )
                .await
                .expect("a good client ended early");
            }
            if rounds_left.is_none() && done(&self.totals) {
                rounds_left = Some(extra);
            }
            match &mut rounds_left {
                Some(0) => return,
                Some(n) => *n -= 1,
                None => {}
            }
        }
        panic!(
            "the slow client's queue never filled after {} messages: {:?}",
            self.sent, self.totals
        );
    }

    /// Closes the good clients and checks each got every message, in order.
    async fn check_goods(&mut self) {
        for (id, r) in self.goods.drain(..) {
            self.t.hub.close(id, CloseCode::NORMAL, "done").unwrap();
            let seqs = within("a good client to finish", r.task).await.unwrap();
            assert!(
                seqs.iter().copied().eq(0..self.sent),
                "good client {id} got {} of {} messages, or out of order",
                seqs.len(),
                self.sent
            );
        }
        for _ in 0..GOOD {
            let (_, why) = self.t.events.close().await;
            assert_eq!(why, Closed::server(1000, "done"));
        }
    }

    /// Reads what the slow client was sent, up to the close frame; answers it.
    async fn drain_slow(&mut self) -> (Vec<u64>, (u16, String)) {
        let (frames, close) =
            within("the slow client to drain", self.slow.read_until_close()).await;
        let seqs: Vec<u64> = frames
            .iter()
            .map(|f| {
                assert_eq!((f.fin, f.opcode), (true, OP_TEXT));
                seq_of(&f.payload)
            })
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "the slow client's messages are out of order"
        );
        self.slow
            .send(true, OP_CLOSE, &close_payload(close.0, ""))
            .await;
        (seqs, close)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_policy_closes_the_slow_client_with_1008() {
    let mut f = Flood::start(SlowConsumerPolicy::Disconnect).await;
    f.run(|t| t.disconnected > 0, 2).await;
    assert_eq!(f.totals.disconnected, 1);
    assert!(f.t.hub.session(f.slow_id).is_some_and(|s| !s.is_open()));
    assert_eq!(
        f.t.hub.send_to(f.slow_id, "more"),
        Err(SendError::Closing(f.slow_id))
    );

    // Its queue was discarded: it reads a prefix of the messages, then the 1008 close.
    let (seqs, close) = f.drain_slow().await;
    assert_eq!(close, (1008, "slow consumer".to_string()));
    assert!(seqs.iter().copied().eq(0..seqs.len() as u64), "a prefix");
    assert!((seqs.len() as u64) < f.sent);
    assert_eq!(
        f.t.events.close().await,
        (f.slow_id, Closed::server(1008, "slow consumer"))
    );

    f.check_goods().await;
    let s = f.t.hub.stats();
    assert_eq!(s.slow_consumer_disconnects, 1);
    assert_eq!(s.messages_queued, f.totals.queued as u64);
    // The broadcasts' refusals after the disconnect, and the `send_to` above.
    assert_eq!(s.messages_dropped, f.totals.dropped as u64 + 1);
    assert_queue_bounded(s.queue_high_water_bytes);
    assert_eq!(f.t.close_count(f.slow_id), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_newest_policy_discards_new_messages_and_counts_them() {
    let mut f = Flood::start(SlowConsumerPolicy::DropNewest).await;
    f.run(|t| t.dropped > 0, 8).await;
    assert_eq!(f.totals.disconnected, 0);
    assert!(f.t.hub.session(f.slow_id).is_some_and(|s| s.is_open()));

    f.t.hub.close(f.slow_id, CloseCode::NORMAL, "done").unwrap();
    let (seqs, close) = f.drain_slow().await;
    assert_eq!(close, (1000, "done".to_string()));
    assert_eq!(
        seqs.len() as u64,
        f.sent - f.totals.dropped as u64,
        "every message is either delivered or counted as dropped"
    );
    assert_eq!(
        f.t.events.close().await,
        (f.slow_id, Closed::server(1000, "done"))
    );

    f.check_goods().await;
    let s = f.t.hub.stats();
    assert_eq!(s.slow_consumer_disconnects, 0);
    assert_eq!(s.messages_queued, f.totals.queued as u64);
    assert_eq!(s.messages_dropped, f.totals.dropped as u64);
    assert_queue_bounded(s.queue_high_water_bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_policy_keeps_the_latest_and_counts_what_it_drops() {
    let mut f = Flood::start(SlowConsumerPolicy::DropOldest).await;
    f.run(|t| t.dropped > 0, 8).await;
    assert_eq!(f.totals.disconnected, 0);
    assert_eq!(f.totals.queued as u64, f.sent * (GOOD as u64 + 1));
    assert!(f.t.hub.session(f.slow_id).is_some_and(|s| s.is_open()));

    f.t.hub.close(f.slow_id, CloseCode::NORMAL, "done").unwrap();
    let (seqs, close) = f.drain_slow().await;
    assert_eq!(close, (1000, "done".to_string()));
    assert_eq!(
        seqs.len() as u64,
        f.sent - f.totals.dropped as u64,
        "every message is either delivered or counted as dropped"
    );
    assert_eq!(
        seqs.last(),
        Some(&(f.sent - 1)),
        "the latest message is kept"
    );
    assert_eq!(
        f.t.events.close().await,
        (f.slow_id, Closed::server(1000, "done"))
    );

    f.check_goods().await;
    let s = f.t.hub.stats();
    assert_eq!(s.slow_consumer_disconnects, 0);
    assert_eq!(s.messages_queued, f.totals.queued as u64);
    assert_eq!(s.messages_dropped, f.totals.dropped as u64);
    assert_queue_bounded(s.queue_high_water_bytes);
}

/// A raw client with a small receive buffer that never reads unless told to, and its session.
async fn slow_session(t: &mut TestHub) -> (RawClient, SessionId) {
    let slow = RawClient::upgrade_small_rcvbuf(t.addr, 4096).await;
    let (id, peer) = t.events.open().await;
    assert_eq!(peer, slow.local_addr());
    (slow, id)
}

/// A 64 KiB budget under `policy`.
fn budget_config(policy: SlowConsumerPolicy) -> wshub::Config {
    quiet_config()
        .max_queue_bytes(BUDGET)
        .slow_consumer_policy(policy)
}

/// `send_to` a client that never reads until its queue is full; returns the error, how many
/// sends succeeded before, and the hub and client.
async fn send_to_until_full(
    config: wshub::Config,
) -> (TestHub, RawClient, SessionId, SendError, u64) {
    let mut t = start(config, Default::default()).await;
    let (slow, id) = slow_session(&mut t).await;
    for seq in 0..(MAX_ROUNDS * PER_ROUND) as u64 {
        match t.hub.send_to(id, numbered(seq)) {
            Ok(()) => {}
            Err(e) => return (t, slow, id, e, seq),
        }
        if seq % PER_ROUND as u64 == 0 {
            // Let the connection write what it can, so the socket fills up for real.
            tokio::task::yield_now().await;
        }
    }
    panic!("the queue never filled");
}

/// The queue reached its limit, and no more than the burst allowance (4 × the limit) that a
/// socket still taking data is granted before the policy applies.
fn assert_queue_bounded(high_water: u64) {
    let full = FULL_QUEUE as u64;
    let burst = (4 * BUDGET / FRAME * FRAME) as u64;
    assert!(
        (full..=burst).contains(&high_water),
        "high water {high_water} outside {full}..={burst}: over the budget"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_to_a_full_queue_reports_each_policy() {
    // Disconnect: the session closes with 1008, later sends see it closing.
    let (mut t, mut slow, id, err, ok) =
        send_to_until_full(budget_config(SlowConsumerPolicy::Disconnect)).await;
    assert_eq!(
        err,
        SendError::Full {
            id,
            outcome: FullOutcome::Disconnected
        }
    );
    assert_eq!(t.hub.send_to(id, "more"), Err(SendError::Closing(id)));
    let (frames, close) = slow.read_until_close().await;
    assert_eq!(close, (1008, "slow consumer".to_string()));
    assert!((frames.len() as u64) < ok, "the queue was discarded");
    slow.send(true, OP_CLOSE, &close_payload(1008, "")).await;
    assert_eq!(
        t.events.close().await,
        (id, Closed::server(1008, "slow consumer"))
    );
    let s = t.hub.stats();
    assert_eq!((s.messages_queued, s.slow_consumer_disconnects), (ok, 1));
    assert_eq!(s.messages_dropped, 1, "the send to the closing session");
    assert_queue_bounded(s.queue_high_water_bytes);

    // DropNewest: this message is discarded, the session stays.
    let (t, _slow, id, err, ok) =
        send_to_until_full(budget_config(SlowConsumerPolicy::DropNewest)).await;
    assert_eq!(
        err,
        SendError::Full {
            id,
            outcome: FullOutcome::DroppedNewest
        }
    );
    assert!(t.hub.session(id).is_some_and(|s| s.is_open()));
    let s = t.hub.stats();
    assert_eq!((s.messages_queued, s.messages_dropped), (ok, 1));
    assert_eq!(s.slow_consumer_disconnects, 0);
    assert_queue_bounded(s.queue_high_water_bytes);

    // DropOldest: this message is queued after discarding one older message.
    let (t, _slow, id, err, ok) =
        send_to_until_full(budget_config(SlowConsumerPolicy::DropOldest)).await;
    assert_eq!(
        err,
        SendError::Full {
            id,
            outcome: FullOutcome::DroppedOldest(1)
        }
    );
    assert!(t.hub.session(id).is_some_and(|s| s.is_open()));
    let s = t.hub.stats();
    assert_eq!((s.messages_queued, s.messages_dropped), (ok + 1, 1));
    assert_eq!(s.slow_consumer_disconnects, 0);
    assert_queue_bounded(s.queue_high_water_bytes);
}

/// `close_timeout` bounds every close: "how long a closing session may take to flush its queue
/// and receive the peer's close frame before the connection is dropped". A slow consumer
/// closed by the Disconnect policy that never reads again must be dropped by then, and
/// `on_close` must report the 1008 close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_slow_consumer_that_never_reads_is_dropped_after_close_timeout() {
    let config =
        budget_config(SlowConsumerPolicy::Disconnect).close_timeout(Duration::from_millis(200));
    let (mut t, slow, id, err, _) = send_to_until_full(config).await;
    assert_eq!(
        err,
        SendError::Full {
            id,
            outcome: FullOutcome::Disconnected
        }
    );
    // The client reads nothing more; the hub gives up on it after close_timeout.
    assert_eq!(
        t.events.close().await,
        (id, Closed::server(1008, "slow consumer"))
    );
    assert_eq!(t.hub.session_count(), 0);
    // Held open, unread, until here: closing it would end the session by a reset instead.
    drop(slow);
}

/// The same bound for a close the client starts: a client that sends its close frame but
/// never reads the hub's answer (its socket full) is dropped after `close_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_close_whose_answer_cannot_be_written_ends_after_close_timeout() {
    let config =
        budget_config(SlowConsumerPolicy::DropNewest).close_timeout(Duration::from_millis(200));
    let mut t = start(config, Default::default()).await;
    let (mut slow, id) = slow_session(&mut t).await;
    // Fill the queue and the socket under it: pushes are refused, and the hub writes no more
    // bytes over ten polls.
    let (mut seq, mut last_out, mut still) = (0, u64::MAX, 0);
    wait_until("the slow client's socket to fill", || {
        for _ in 0..1_000 {
            if t.hub.send_to(id, numbered(seq)).is_err() {
                break;
            }
            seq += 1;
        }
        let out = t.hub.stats().bytes_out;
        (still, last_out) = if out == last_out {
            (still + 1, out)
        } else {
            (0, out)
        };
        still >= 10
    })
    .await;

    slow.send(true, OP_CLOSE, &close_payload(1000, "leaving"))
        .await;
    assert_eq!(
        t.events.close().await,
        (id, Closed::client(1000, "leaving"))
    );
    assert_eq!(t.hub.session_count(), 0);
}
