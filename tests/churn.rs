//! Churn: thousands of sessions that connect, subscribe, publish and leave, cleanly or
//! abruptly, while the application broadcasts and publishes to them. Afterwards nothing is
//! left: no session in the registry, no topic, `on_close` once per `open` (and each time with
//! the session already out of the registry and every topic), and the process's open file
//! descriptors back to what they were before the first client.
//!
//! One test in its own binary, so the descriptor count is not disturbed by other tests.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::*;
use wshub::CloseCode;

const WORKERS: usize = 8;
const CYCLES_PER_WORKER: usize = 500;
const CYCLES: usize = WORKERS * CYCLES_PER_WORKER;
/// The whole churn must finish within this, on a loaded 2-core machine.
const BOUND: Duration = Duration::from_secs(60);
/// Descriptors the runtime may still hold after the churn compared with before it. None:
/// every socket of the churn (client and server side) must be closed again.
const FD_SLACK: usize = 0;

/// The hub's side: every session joins `all` and a room; clients ask by message to subscribe
/// (`sub:T`), publish (`pub:T`) or be closed by the server (`close-me`).
fn behaviour() -> Behaviour {
    Behaviour::default()
        .on_open(|s| {
            s.subscribe("all").unwrap();
            s.subscribe(&format!("room-{}", s.id().as_u64() % 16))
                .unwrap();
        })
        .on_message(|s, m| {
            let text = m.as_text().unwrap_or("");
            if let Some(topic) = text.strip_prefix("sub:") {
                let _ = s.subscribe(topic);
            } else if let Some(topic) = text.strip_prefix("pub:") {
                s.hub().publish(topic, format!("from {}", s.id()));
            } else if text == "close-me" {
                let _ = s.close(CloseCode::NORMAL, "as you asked");
            }
        })
}

/// One cycle of worker `w`: its kind of client, topic and way out depend on `i`.
async fn cycle(addr: std::net::SocketAddr, w: usize, i: usize) {
    let topic = format!("t-{}", (w * 7 + i) % 23);
    match i % 5 {
        // A well-behaved client: subscribes, publishes, reads a little, closes cleanly.
        0 => {
            let mut c = connect(addr).await;
            send_text(&mut c, &format!("sub:{topic}")).await;
            send_text(&mut c, &format!("pub:{topic}")).await;
            let _ = recv_text(&mut c).await;
            client_close(&mut c, 1000, "done").await;
            finish(&mut c).await;
        }
        // The server closes at the client's request; the client answers.
        1 => {
            let mut c = connect(addr).await;
            send_text(&mut c, &format!("sub:{topic}")).await;
            send_text(&mut c, "close-me").await;
            finish(&mut c).await;
        }
        // Abrupt: a reset right after subscribing.
        2 => {
            let mut c = RawClient::upgrade(addr).await;
            c.send(true, OP_TEXT, format!("sub:{topic}").as_bytes())
                .await;
            reset(c.stream);
        }
        // Abrupt: a reset in the middle of a frame.
        3 => {
            let mut c = RawClient::upgrade(addr).await;
            c.send(true, OP_TEXT, b"pub:all").await;
            let frame = client_frame(true, OP_TEXT, b"sub:never-complete");
            c.write(&frame[..frame.len() / 2]).await;
            reset(c.stream);
        }
        // Abrupt: the socket just goes away (FIN), without a close frame.
        _ => {
            let mut c = RawClient::upgrade(addr).await;
            c.send(true, OP_TEXT, format!("sub:{topic}").as_bytes())
                .await;
            drop(c);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_churning_leave_no_trace() {
    let mut t = start(quiet_config(), behaviour()).await;
    let addr = t.addr;
    // The runtime, the listener and the hub exist; no client does yet.
    let fds_before = open_fds();

    let started = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    // The application pushes all along: broadcasts and publishes to the shared topics.
    let pusher = tokio::spawn({
        let (hub, done, sent) = (t.hub.clone(), done.clone(), sent.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            for n in 0..BOUND.as_millis() {
                if done.load(Ordering::Acquire) {
                    break;
                }
                tick.tick().await;
                if n % 2 == 0 {
                    hub.broadcast(format!("tick {n}"));
                } else {
                    hub.publish(&format!("room-{}", n % 16), "room news");
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            tokio::spawn(async move {
                for i in 0..CYCLES_PER_WORKER {
                    cycle(addr, w, i).await;
                }
            })
        })
        .collect();
    tokio::time::timeout(BOUND, futures_util::future::join_all(workers))
        .await
        .expect("the churn did not finish in time")
        .into_iter()
        .for_each(|w| w.expect("a worker failed"));
    done.store(true, Ordering::Release);
    within("the pusher", pusher).await.unwrap();

    // Every session has opened by now (each cycle upgraded); wait for every on_close.
    assert_eq!(t.hub.stats().sessions_opened, CYCLES as u64);
    wait_until("every on_close to run", || t.close_counts().len() == CYCLES).await;
    let churn_time = started.elapsed();
    assert!(
        t.close_counts().values().all(|n| *n == 1),
        "on_close ran more than once for a session"
    );
    assert_eq!(t.hub.session_count(), 0);
    assert!(
        t.hub.topics().is_empty(),
        "topics left: {:?}",
        t.hub.topics()
    );
    let stats = t.hub.stats();
    assert_eq!((stats.sessions, stats.topics), (0, 0));
    assert_eq!(stats.io_errors, 0, "resets are disconnects, not I/O errors");

    // Each on_close saw its session out of the registry and out of every topic.
    let (mut opens, mut closes) = (0, 0);
    while let Some(e) = t.events.try_next() {
        match e {
            Event::Open { .. } => opens += 1,
            Event::Close {
                id,
                still_registered,
                topics_left,
                ..
            } => {
                closes += 1;
                assert!(!still_registered, "{id} still registered in on_close");
                assert!(topics_left.is_empty(), "{id} still in {topics_left:?}");
            }
            Event::Message { .. } => {}
        }
    }
    assert_eq!((opens, closes), (CYCLES, CYCLES));

    let mut fds_after = None;
    if let Some(before) = fds_before {
        wait_until("the descriptors to return to the baseline", || {
            fds_after = open_fds();
            fds_after.is_some_and(|n| n <= before + FD_SLACK)
        })
        .await;
    }
    eprintln!(
        "{CYCLES} cycles by {WORKERS} workers in {churn_time:?}, {} pushes meanwhile; \
         descriptors {fds_before:?} before, {fds_after:?} after",
        sent.load(Ordering::Relaxed)
    );
    // The hub still works.
    let mut c = connect(addr).await;
    t.events.open().await;
    t.hub.broadcast("still here");
    assert_eq!(recv_text(&mut c).await, "still here");
}
