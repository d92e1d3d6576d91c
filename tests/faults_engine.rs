//! Guarantees on one node under stress: each test names the guarantee it tries to break.
//! (The Redis faults are in `tests/faults.rs`.)

mod support;

use serde_json::Value;
use support::{Client, connect, recv_text, send_text};
use tokio::net::TcpListener;
use wshub::protocol::ClientCommand;
use wshub::{Config, Handler, HistoryPolicy, Hub, Message, Position, Session, SlowConsumerPolicy};

/// Applies the JSON protocol's commands.
struct App;

#[wshub::async_trait]
impl Handler for App {
    async fn on_message(&self, s: &Session, m: Message) {
        if let Some(command) = ClientCommand::parse(&m) {
            let _ = s.apply(&command).await;
        }
    }
}

async fn serve(config: Config) -> (Hub, std::net::SocketAddr) {
    let hub = Hub::builder(App)
        .config(config.ping_interval(None).idle_timeout(None))
        .build();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(hub.clone().serve(listener));
    (hub, addr)
}

async fn recv_json(c: &mut Client) -> Value {
    serde_json::from_str(&recv_text(c).await).expect("a JSON envelope")
}

fn subscribe_since(topic: &str, p: Position) -> String {
    format!(
        r#"{{"type":"subscribe","topic":"{topic}","since":{{"epoch":"{}","offset":{}}}}}"#,
        p.epoch, p.offset
    )
}

/// Guarantee: a replay of any length the history holds is delivered completely, streamed as
/// the queue drains, with the live publications after it in order — whatever the
/// slow-consumer policy. Before: the whole replay was pushed into the 4,096-message queue at
/// once, so 10,000 missed publications got the client closed with 1008 (Disconnect) or
/// silently lost most of them while `subscribed` announced them all (drop policies).
async fn replay_longer_than_the_queue(policy: SlowConsumerPolicy) {
    const MISSED: u64 = 10_000;
    const LIVE: u64 = 2_000;
    let config = Config::default()
        .history("feed", HistoryPolicy::new(100_000, None))
        .envelope(true)
        .slow_consumer_policy(policy);
    let (hub, addr) = serve(config).await;
    // The topic's epoch, from a first publication.
    let first = hub.publish("feed", "0").position.expect("a position");
    for i in 1..MISSED {
        hub.publish("feed", format!("{i:0>200}"));
    }
    let mut c = connect(addr).await;
    send_text(
        &mut c,
        &subscribe_since("feed", Position::new(first.epoch, 0)),
    )
    .await;
    let reply = recv_json(&mut c).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(reply["replayed"], MISSED);
    // Publishing goes on during the replay.
    let publisher = {
        let hub = hub.clone();
        tokio::spawn(async move {
            for i in 0..LIVE {
                hub.publish("feed", format!("live {i}"));
                if i % 100 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let mut expected = 1;
    support::within("every publication, in order", async {
        while expected <= MISSED + LIVE {
            let m = recv_json(&mut c).await;
            assert_eq!(m["type"], "pub", "{m}");
            assert_eq!(m["offset"], expected, "a gap or a repeat at {expected}");
            expected += 1;
        }
    })
    .await;
    publisher.await.unwrap();
    assert_eq!(
        hub.subscriber_count("feed"),
        1,
        "joined live after the replay"
    );
    let stats = hub.stats();
    assert_eq!(
        stats.messages_dropped + stats.slow_consumer_disconnects,
        0,
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_longer_than_the_queue_arrives_whole_under_disconnect() {
    replay_longer_than_the_queue(SlowConsumerPolicy::Disconnect).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_longer_than_the_queue_arrives_whole_under_drop_newest() {
    replay_longer_than_the_queue(SlowConsumerPolicy::DropNewest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_longer_than_the_queue_arrives_whole_under_drop_oldest() {
    replay_longer_than_the_queue(SlowConsumerPolicy::DropOldest).await;
}

/// Guarantee: a replay that the log overtakes (trimmed while the client reads slowly) ends
/// with `unrecoverable`, never with a silent gap; the session then follows live, contiguous
/// from the announced position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_overtaken_by_the_log_is_announced_unrecoverable() {
    const KEPT: u64 = 6_000;
    let config = Config::default()
        .history("feed", HistoryPolicy::new(KEPT as usize, None))
        .envelope(true)
        .max_queue_messages(64);
    let (hub, addr) = serve(config).await;
    // 4 KiB each: the replay (24 MiB) is far more than the socket buffers absorb, so the
    // replay waits for the reader while the log moves on.
    let body = "z".repeat(4096);
    let first = hub.publish("feed", body.as_str()).position.unwrap();
    for _ in 1..KEPT {
        hub.publish("feed", body.as_str());
    }
    let mut c = connect(addr).await;
    send_text(
        &mut c,
        &subscribe_since("feed", Position::new(first.epoch, 0)),
    )
    .await;
    assert_eq!(recv_json(&mut c).await["type"], "subscribed");
    let mut last = 0;
    for _ in 0..10 {
        let m = recv_json(&mut c).await;
        last = m["offset"].as_u64().unwrap();
    }
    // The reader pauses; the log moves past everything the replay has not sent yet.
    for _ in 0..3 * KEPT {
        hub.publish("feed", body.as_str());
    }
    let told = support::within("an unrecoverable message", async {
        loop {
            let m = recv_json(&mut c).await;
            match m["type"].as_str() {
                Some("pub") => {
                    let offset = m["offset"].as_u64().unwrap();
                    assert_eq!(offset, last + 1, "a silent gap");
                    last = offset;
                }
                Some("unrecoverable") => return m,
                other => panic!("unexpected {other:?}: {m}"),
            }
        }
    })
    .await;
    // It names the newest position; live publications follow it.
    let at = told["position"]["offset"].as_u64().unwrap();
    assert_eq!(at, 4 * KEPT, "{told}");
    let next = hub.publish("feed", "after").position.unwrap();
    let m = recv_json(&mut c).await;
    assert_eq!(
        (m["offset"].as_u64(), m["data"].as_str()),
        (Some(next.offset), Some("after"))
    );
    assert_eq!(next.offset, at + 1);
}

/// Guarantee: the queue limit bounds what is owed to a reader that does not keep up, not
/// the size of one burst to readers that do. A publisher sends bursts of 20 × 64 KiB
/// (1.3 MiB, over the 1 MiB default) every 100 ms; two readers that read at once must get
/// every message and never be closed. Before: each burst was queued whole before the
/// connection task wrote any of it, and the readers got 1008.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_larger_than_the_queue_reach_readers_that_keep_up() {
    const ROUNDS: usize = 10;
    const BURST: usize = 20;
    let (hub, addr) = serve(Config::default()).await;
    let mut readers = Vec::new();
    for _ in 0..2 {
        let mut c = connect(addr).await;
        readers.push(tokio::spawn(async move {
            let mut got = 0;
            while got < ROUNDS * BURST {
                let m = recv_text(&mut c).await;
                assert_eq!(m.len(), 64 * 1024);
                got += 1;
            }
            got
        }));
    }
    support::wait_until("both readers", || hub.session_count() == 2).await;
    let payload = "x".repeat(64 * 1024);
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    for _ in 0..ROUNDS {
        tick.tick().await;
        for _ in 0..BURST {
            let d = hub.broadcast(payload.as_str());
            assert_eq!(
                d.disconnected + d.dropped,
                0,
                "a reader that keeps up lost a burst"
            );
        }
    }
    for r in readers {
        assert_eq!(
            support::within("a reader", r).await.unwrap(),
            ROUNDS * BURST
        );
    }
    assert_eq!(hub.stats().slow_consumer_disconnects, 0);
}

/// Guarantee: a reader that stops is still closed with 1008, and what it is owed stays
/// bounded: the queue's high-water mark stays within the burst allowance (4 × the limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_is_still_closed_with_bounded_memory() {
    let (hub, addr) = serve(Config::default()).await;
    let _stalled = connect(addr).await; // never reads
    support::wait_until("the reader", || hub.session_count() == 1).await;
    let payload = "y".repeat(64 * 1024);
    support::within("the slow consumer's disconnection", async {
        while hub.stats().slow_consumer_disconnects == 0 {
            hub.broadcast(payload.as_str());
            tokio::task::yield_now().await;
        }
    })
    .await;
    let high = hub.stats().queue_high_water_bytes as usize;
    let limit = Config::default().get_max_queue_bytes();
    assert!(high <= 4 * limit + payload.len() + 16, "high water {high}");
}

/// A handler whose `on_unsubscribe` panics; `on_close` reports on a channel.
struct Panicky {
    closed: tokio::sync::mpsc::UnboundedSender<wshub::SessionId>,
}

#[wshub::async_trait]
impl Handler for Panicky {
    async fn on_message(&self, s: &Session, _m: Message) {
        for topic in ["a", "b", "c"] {
            s.subscribe(topic).unwrap();
        }
        s.send("ok").unwrap();
    }
    fn on_unsubscribe(&self, _s: &Session, _topic: &str) {
        panic!("a bug in the application's on_unsubscribe");
    }
    async fn on_close(&self, s: &Session, _why: wshub::CloseReason) {
        let _ = self.closed.send(s.id());
    }
}

/// Guarantee: a session's end removes it from the registry and every topic and runs
/// `on_close` once, even when `on_unsubscribe` panics. Before: the hooks ran before the
/// registry removal, inside the connection's drop guard, so the panic skipped the removal
/// (a ghost session and subscriptions) and `on_close`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_on_unsubscribe_skips_nothing_at_session_end() {
    let (tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
    let hub = Hub::builder(Panicky { closed: tx })
        .config(Config::default().ping_interval(None).idle_timeout(None))
        .build();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(hub.clone().serve(listener));
    let mut c = connect(addr).await;
    send_text(&mut c, "go").await;
    assert_eq!(recv_text(&mut c).await, "ok");
    assert_eq!(hub.subscriber_count("a"), 1);
    drop(c);
    support::within("on_close", closed.recv()).await.unwrap();
    assert_eq!(hub.session_count(), 0);
    assert_eq!(hub.topics(), Vec::<String>::new());
}

/// Guarantee: presence converges to the truth when subscribes race sessions' ends. The
/// application subscribes every session to a presence topic, over and over, while the
/// clients disconnect; once all have ended, nobody is present. Before: presence listed a
/// session's topics before the registry removed it, so a subscribe in between left a ghost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribes_racing_session_ends_leave_no_ghost_in_presence() {
    const CLIENTS: usize = 200;
    let config = Config::default().presence("room");
    let (hub, addr) = serve(config).await;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(connect(addr).await);
    }
    support::wait_until("every session", || hub.session_count() == CLIENTS).await;
    let ids: Vec<_> = (1..=CLIENTS as u64)
        .map(wshub::SessionId::from_u64)
        .collect();
    let racer = {
        let hub = hub.clone();
        tokio::spawn(async move {
            while hub.session_count() > 0 {
                for id in &ids {
                    let _ = hub.subscribe(*id, "room");
                }
                tokio::task::yield_now().await;
            }
        })
    };
    for c in clients {
        drop(c);
        tokio::task::yield_now().await;
    }
    support::within("the racing subscriber", racer)
        .await
        .unwrap();
    support::wait_until("presence to empty", || hub.subscriber_count("room") == 0).await;
    // Every session's end has run; nobody may be left present.
    support::wait_until("every session to end", || {
        let s = hub.stats();
        s.closed_by_client + s.closed_by_server + s.disconnected + s.io_errors == CLIENTS as u64
    })
    .await;
    assert_eq!(hub.presence("room").await.unwrap(), Vec::new());
}

/// Guarantee: a client dropped in the middle of a streamed replay ends its session promptly
/// (no task waits for room that will never come) and leaves nothing behind; a client that
/// then recovers from the same position gets every publication exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_dropped_mid_replay_ends_at_once_and_another_recovers_exactly() {
    const MISSED: u64 = 10_000;
    let config = Config::default()
        .history("feed", HistoryPolicy::new(100_000, None))
        .envelope(true);
    let (hub, addr) = serve(config).await;
    let first = hub.publish("feed", "0").position.unwrap();
    let body = "w".repeat(1024);
    for _ in 1..MISSED {
        hub.publish("feed", body.as_str());
    }
    let since = Position::new(first.epoch, 0);
    let mut c = connect(addr).await;
    send_text(&mut c, &subscribe_since("feed", since)).await;
    assert_eq!(recv_json(&mut c).await["type"], "subscribed");
    for _ in 0..100 {
        assert_eq!(recv_json(&mut c).await["type"], "pub");
    }
    drop(c); // mid-replay
    // Well before `ping_timeout` (20 s), the session has ended.
    support::wait_until("the dropped session to end", || {
        let s = hub.stats();
        s.sessions == 0
            && s.closed_by_client + s.closed_by_server + s.disconnected + s.io_errors == 1
    })
    .await;
    let mut c = connect(addr).await;
    send_text(&mut c, &subscribe_since("feed", since)).await;
    assert_eq!(recv_json(&mut c).await["replayed"], MISSED);
    for offset in 1..=MISSED {
        assert_eq!(recv_json(&mut c).await["offset"], offset);
    }
}
