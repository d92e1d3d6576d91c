//! A session's life: open, messages in order, and every way it can end (client close, server
//! close, abrupt disconnect, dead peer, panicking handler, shutdown), each followed by exactly
//! one `on_close` with the right reason and an empty registry.

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use support::*;
use tokio::sync::{Notify, watch};
use wshub::{CloseCode, Config, SendError};

/// Reads a client in its own task, answering pings; reports the texts it got and how many
/// pings, so a test can use the hub's own heartbeat as its clock.
fn spawn_pinged_reader(
    mut c: Client,
) -> (
    watch::Receiver<(usize, Vec<String>)>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = watch::channel((0, Vec::new()));
    let task = tokio::spawn(async move {
        while let Some(Ok(m)) = c.next().await {
            match m {
                WsMessage::Ping(_) => tx.send_modify(|(n, _)| *n += 1),
                WsMessage::Text(t) => tx.send_modify(|(_, v)| v.push(t.as_str().to_string())),
                _ => {}
            }
        }
    });
    (rx, task)
}

#[tokio::test]
async fn open_then_messages_then_close_run_in_order_once() {
    let mut t = start(
        quiet_config(),
        Behaviour::default().on_open(|s| {
            s.subscribe("news").unwrap();
        }),
    )
    .await;
    let mut c = connect(t.addr).await;
    let (id, peer) = t.events.open().await;
    assert_eq!(peer, local_addr(&c));
    assert_eq!(t.hub.session_count(), 1);
    assert_eq!(t.hub.subscriber_count("news"), 1);

    send_text(&mut c, "one").await;
    send_text(&mut c, "two").await;
    client_close(&mut c, 1000, "done").await;
    finish(&mut c).await;

    for expected in ["one", "two"] {
        let (from, m) = t.events.message().await;
        assert_eq!((from, m.as_text()), (id, Some(expected)));
    }
    // `close()` also checks the session had left the registry and its topic when on_close ran.
    assert_eq!(t.events.close().await, (id, Closed::client(1000, "done")));
    assert_eq!(t.hub.session_count(), 0);
    assert_eq!(t.hub.subscriber_count("news"), 0);
    assert!(t.hub.topics().is_empty());
    assert_eq!(t.close_count(id), 1);
    t.events.assert_none_pending();
}

#[tokio::test]
async fn client_close_reports_the_clients_code_and_is_echoed() {
    let mut t = start(quiet_config(), Behaviour::default()).await;
    let mut c = connect(t.addr).await;
    let (id, _) = t.events.open().await;

    client_close(&mut c, 4000, "bye").await;
    // The hub answers with the same code (RFC 6455 section 5.5.1).
    let echoed = within(
        "the hub's close answer",
        futures_util::StreamExt::next(&mut c),
    )
    .await;
    match echoed {
        Some(Ok(WsMessage::Close(Some(f)))) => assert_eq!(u16::from(f.code), 4000),
        other => panic!("expected the hub's close answer, got {other:?}"),
    }
    finish(&mut c).await;

    assert_eq!(t.events.close().await, (id, Closed::client(4000, "bye")));
    assert_eq!(t.hub.stats().closed_by_client, 1);
    assert_eq!(t.close_count(id), 1);
}

#[tokio::test]
async fn hub_close_sends_code_and_reason_and_reports_server() {
    let mut t = start(quiet_config(), Behaviour::default()).await;
    let mut c = connect(t.addr).await;
    let (id, _) = t.events.open().await;

    t.hub.close(id, CloseCode::from(4001), "kicked").unwrap();
    assert_eq!(recv_close(&mut c).await, (4001, "kicked".to_string()));

    assert_eq!(t.events.close().await, (id, Closed::server(4001, "kicked")));
    assert_eq!(t.hub.stats().closed_by_server, 1);
    assert_eq!(t.hub.session_count(), 0);
    assert_eq!(
        t.hub.close(id, CloseCode::NORMAL, ""),
        Err(SendError::NotFound(id))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_message_runs_in_arrival_order() {
    const N: usize = 1000;
    let mut t = start(quiet_config(), Behaviour::default()).await;
    let mut c = connect(t.addr).await;
    let (id, _) = t.events.open().await;

    within("sending 1000 messages", async {
        for i in 0..N {
            futures_util::SinkExt::feed(&mut c, WsMessage::text(i.to_string()))
                .await
                .unwrap();
        }
        futures_util::SinkExt::flush(&mut c).await.unwrap();
    })
    .await;

    for i in 0..N {
        let (from, m) = t.events.message().await;
        assert_eq!(from, id);
        assert_eq!(
            m.as_text(),
            Some(i.to_string().as_str()),
            "message {i} out of order"
        );
    }
    assert_eq!(t.hub.stats().messages_in, N as u64);
    t.events.assert_none_pending();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_in_on_message_closes_with_1011_and_spares_others() {
    let mut t = start(
        quiet_config(),
        Behaviour::default().on_message(|s, m| {
            if m.as_text() == Some("panic") {
                panic!("test handler panics on purpose");
            }
            s.send(m.clone()).unwrap();
        }),
    )
    .await;
    let mut a = connect(t.addr).await;
    let (a_id, _) = t.events.open().await;
    let mut b = connect(t.addr).await;
    let (b_id, _) = t.events.open().await;

    send_text(&mut a, "panic").await;
    assert_eq!(t.events.message().await.0, a_id);
    assert_eq!(
        recv_close(&mut a).await,
        (1011, "internal error".to_string())
    );
    assert_eq!(
        t.events.close().await,
        (a_id, Closed::server(1011, "internal error"))
    );

    // The other session still works: its message reaches the handler and is echoed.
    send_text(&mut b, "still here").await;
    let (from, m) = t.events.message().await;
    assert_eq!((from, m.as_text()), (b_id, Some("still here")));
    assert_eq!(recv_text(&mut b).await, "still here");
    assert_eq!(t.hub.session_count(), 1);

    client_close(&mut b, 1000, "").await;
    finish(&mut b).await;
    assert_eq!(t.events.close().await, (b_id, Closed::client(1000, "")));
    assert_eq!(t.close_count(a_id), 1, "on_close ran more than once");
    assert_eq!(t.close_count(b_id), 1);
    t.events.assert_none_pending();
}

/// Clients that vanish without a close handshake, three ways: a client that just drops its
/// socket (FIN), a raw client that drops after the upgrade, and one whose socket is reset
/// (dropped with unread data, so the kernel sends RST).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abrupt_disconnects_leave_the_registry_empty() {
    const EACH: usize = 5;
    let mut t = start(
        quiet_config(),
        Behaviour::default().on_open(|s| {
            s.subscribe("all").unwrap();
            s.subscribe(&format!("own-{}", s.id())).unwrap();
        }),
    )
    .await;

    let clients = connect_many(t.addr, EACH, EACH).await;
    let mut raws = Vec::new();
    for _ in 0..2 * EACH {
        raws.push(RawClient::upgrade(t.addr).await);
    }
    t.events.opens(3 * EACH).await;
    assert_eq!(t.hub.session_count(), 3 * EACH);
    assert_eq!(t.hub.subscriber_count("all"), 3 * EACH);
    assert_eq!(t.hub.topics().len(), 1 + 3 * EACH);

    // Resets: make the hub send a pong, read one byte of it and drop the rest unread.
    let resets = raws.split_off(EACH);
    for mut r in resets {
        r.send(true, OP_PING, &[7; 100]).await;
        let mut one = [0u8; 1];
        within(
            "the first byte of a pong",
            tokio::io::AsyncReadExt::read_exact(&mut r.stream, &mut one),
        )
        .await
        .unwrap();
        drop(r);
    }
    drop(raws);
    drop(clients);

    let closes = t.events.closes(3 * EACH).await;
    for (id, why) in &closes {
        assert_eq!(why, &Closed::Disconnected, "session {id}");
        assert_eq!(t.close_count(*id), 1);
    }
    assert_eq!(t.hub.session_count(), 0);
    assert_eq!(t.hub.subscriber_count("all"), 0);
    assert!(
        t.hub.topics().is_empty(),
        "topics left: {:?}",
        t.hub.topics()
    );
    let stats = t.hub.stats();
    assert_eq!(stats.sessions, 0);
    assert_eq!(stats.topics, 0);
    assert_eq!(stats.disconnected, 3 * EACH as u64);
    assert_eq!(stats.io_errors, 0);
}

/// A raw client completes the handshake and then never reads nor answers a ping; a
/// well-behaved client next to it answers every ping and must survive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_peer_is_closed_by_the_heartbeat() {
    let config = Config::default()
        .ping_interval(Some(Duration::from_millis(100)))
        .ping_timeout(Duration::from_millis(200))
        .idle_timeout(None);
    let mut t = start(config, Behaviour::default()).await;

    let mut dead = RawClient::upgrade(t.addr).await;
    let (dead_id, _) = t.events.open().await;
    let live = connect(t.addr).await;
    let (live_id, _) = t.events.open().await;

    // The live client reads (which makes tungstenite answer pings) and counts pings.
    let (mut pings, live_task) = spawn_pinged_reader(live);

    assert_eq!(t.events.close().await, (dead_id, Closed::PingTimeout));
    assert_eq!(t.close_count(dead_id), 1);
    // The dead peer got a ping, then the connection was dropped without a close frame.
    assert_eq!(dead.read_frame().await.map(|f| f.opcode), Some(OP_PING));
    dead.expect_eof().await;

    // Three more pings answered take longer than ping_interval + ping_timeout: the live
    // session would have been dropped by now if its pongs were not counted.
    let seen = pings.borrow().0;
    within("three more pings", pings.wait_for(|(n, _)| *n >= seen + 3))
        .await
        .unwrap();
    assert!(
        t.hub.session(live_id).is_some(),
        "the live client was dropped"
    );
    assert_eq!(t.hub.session_count(), 1);
    let stats = t.hub.stats();
    assert_eq!(stats.ping_timeouts, 1);
    t.events.assert_none_pending();
    live_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_everyone_with_1001_and_runs_on_close_once_each() {
    const N: usize = 10;
    let mut t = start(quiet_config(), Behaviour::default()).await;
    let clients = connect_many(t.addr, N, N).await;
    // One client that never reads: shutdown must not wait for it past its deadline.
    let _silent = RawClient::upgrade(t.addr).await;
    t.events.opens(N + 1).await;

    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let first = recv_text(&mut c).await;
                (first, recv_close(&mut c).await)
            })
        })
        .collect();

    // The close goes out behind what is already queued.
    assert_eq!(t.hub.broadcast("last words").queued, N + 1);

    within("shutdown", t.hub.shutdown(Duration::from_millis(500))).await;
    assert!(t.hub.is_shutting_down());

    // Every on_close has run by the time shutdown returns: the events are already there.
    let mut closed = 0;
    while let Some(e) = t.events.try_next() {
        match e {
            Event::Close {
                id,
                reason,
                still_registered,
                ..
            } => {
                assert_eq!(reason, Closed::server(1001, "server shutting down"), "{id}");
                assert!(!still_registered);
                closed += 1;
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert_eq!(closed, N + 1, "on_close had not run for every session");
    assert!(
        t.close_counts().values().all(|&n| n == 1),
        "{:?}",
        t.close_counts()
    );
    assert_eq!(t.hub.session_count(), 0);

    for r in readers {
        let (first, close) = within("a client's close", r).await.unwrap();
        assert_eq!(first, "last words");
        assert_eq!(close, (1001, "server shutting down".to_string()));
    }
    let served = within("the serve loop to end", &mut t.serve).await.unwrap();
    assert!(served.is_ok(), "serve returned {served:?}");
    assert_eq!(t.hub.stats().closed_by_server, N as u64 + 1);
}

#[tokio::test]
async fn messages_sent_in_open_arrive_first() {
    let mut t = start(
        quiet_config(),
        Behaviour::default().on_open(|s| s.send(format!("welcome {}", s.id())).unwrap()),
    )
    .await;
    let mut c = connect(t.addr).await;
    let (id, _) = t.events.open().await;
    t.hub.send_to(id, "second").unwrap();
    assert_eq!(recv_text(&mut c).await, format!("welcome {id}"));
    assert_eq!(recv_text(&mut c).await, "second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_in_open_closes_with_1011_and_on_close_runs_once() {
    let mut t = start(
        quiet_config(),
        Behaviour::default().on_open(|_| panic!("test open hook panics on purpose")),
    )
    .await;
    let mut c = connect(t.addr).await;
    assert_eq!(
        recv_close(&mut c).await,
        (1011, "internal error".to_string())
    );
    let (id, why) = t.events.close().await;
    assert_eq!(why, Closed::server(1011, "internal error"));
    assert_eq!(t.close_count(id), 1);
    assert_eq!(t.hub.session_count(), 0);
    t.events.assert_none_pending();
}

/// A client that never answers the hub's close is dropped after `close_timeout`, and
/// `on_close` still reports the close the hub sent.
#[tokio::test]
async fn close_timeout_drops_a_client_that_never_answers() {
    let config = quiet_config().close_timeout(Duration::from_millis(200));
    let mut t = start(config, Behaviour::default()).await;
    let mut raw = RawClient::upgrade(t.addr).await;
    let (id, _) = t.events.open().await;

    t.hub.close(id, CloseCode::from(4002), "go away").unwrap();
    assert_eq!(
        t.events.close().await,
        (id, Closed::server(4002, "go away"))
    );
    assert_eq!(raw.read_close().await, (4002, "go away".to_string()));
    raw.expect_eof().await;
}

/// With the heartbeat off, a session that sends nothing for `idle_timeout` is closed with 1001.
#[tokio::test]
async fn idle_sessions_are_closed_with_1001() {
    let config = quiet_config().idle_timeout(Some(Duration::from_millis(150)));
    let mut t = start(config, Behaviour::default()).await;
    let mut raw = RawClient::upgrade(t.addr).await;
    let (id, _) = t.events.open().await;

    assert_eq!(raw.read_close().await, (1001, "idle timeout".to_string()));
    raw.send(true, OP_CLOSE, &close_payload(1001, "")).await;
    assert_eq!(
        t.events.close().await,
        (id, Closed::server(1001, "idle timeout"))
    );
    raw.expect_eof().await;
}

/// `Hub::shutdown` "refuses new upgrades with 503": a client whose upgrade request is still
/// arriving when shutdown starts gets that 503, and no session opens.
#[tokio::test]
async fn a_handshake_in_progress_at_shutdown_gets_503() {
    let t = start(quiet_config(), Behaviour::default()).await;
    // Hand the connection to the hub directly, so it is surely the hub's before shutdown.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut raw = RawClient::connect(addr).await;
    let (stream, peer) = within("accept", listener.accept()).await.unwrap();
    let task = tokio::spawn(t.hub.accept(stream, peer));
    let request = upgrade_request(addr, "/", &[]);
    let (head, rest) = request.split_at(16);
    raw.write(head.as_bytes()).await;

    within("shutdown", t.hub.shutdown(Duration::from_millis(100))).await;
    // The rest of the request may meet a closed socket; what matters is the answer.
    let _ = tokio::io::AsyncWriteExt::write_all(&mut raw.stream, rest.as_bytes()).await;
    let status = raw.read_status_or_eof().await;
    assert_eq!(
        status,
        Some(503),
        "None: the connection was dropped without an answer"
    );
    within("the connection task", task).await.unwrap();
    assert_eq!(t.hub.stats().sessions_opened, 0);
}

/// A handler's broadcast reaches the other sessions while the handler still waits, and a
/// handler that panics after broadcasting still delivers what it sent: the wake-ups that a
/// session's task holds back until the end of its poll are never lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handlers_broadcast_is_delivered_while_it_waits_or_after_it_panics() {
    let gate = Arc::new(Notify::new());
    let handler_gate = gate.clone();
    let mut t = start(
        Config::default(),
        Behaviour::default().on_message_async(move |s, m| {
            let gate = handler_gate.clone();
            async move {
                match m.as_text() {
                    Some("wait") => {
                        s.hub().broadcast("sent before waiting");
                        gate.notified().await;
                        s.hub().broadcast("sent after waiting");
                    }
                    Some("panic") => {
                        s.hub().broadcast("sent before panicking");
                        panic!("a handler panics after broadcasting");
                    }
                    _ => {}
                }
            }
        }),
    )
    .await;
    let mut sender = connect(t.addr).await;
    t.events.open().await;
    let mut others = Vec::new();
    for _ in 0..8 {
        others.push(connect(t.addr).await);
        t.events.open().await;
    }

    send_text(&mut sender, "wait").await;
    t.events.message().await;
    for other in &mut others {
        assert_eq!(recv_text(other).await, "sent before waiting");
    }
    gate.notify_one();
    for other in &mut others {
        assert_eq!(recv_text(other).await, "sent after waiting");
    }

    let mut panicking = connect(t.addr).await;
    t.events.open().await;
    send_text(&mut panicking, "panic").await;
    for other in &mut others {
        assert_eq!(recv_text(other).await, "sent before panicking");
    }
}

/// While one session's handler is busy (awaiting), the hub keeps writing to that session (what
/// the handler queued before it waited, and what others send), other
/// sessions run, and the heartbeat does not take the busy session for a dead peer: its client
/// answers every ping, the hub just is not reading them yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_handler_keeps_its_session_alive_and_written() {
    let gate = Arc::new(Notify::new());
    let config = Config::default()
        .ping_interval(Some(Duration::from_millis(50)))
        .ping_timeout(Duration::from_millis(100))
        .idle_timeout(None);
    let handler_gate = gate.clone();
    let mut t = start(
        config,
        Behaviour::default().on_message_async(move |s, m| {
            let gate = handler_gate.clone();
            async move {
                if m.as_text() == Some("block") {
                    // Queued during the handler's first poll, which does not wake the
                    // session's own task: it must still go out while the handler waits.
                    s.send("before waiting").unwrap();
                    gate.notified().await;
                    s.send("unblocked").unwrap();
                }
            }
        }),
    )
    .await;
    let mut busy = connect(t.addr).await;
    let (busy_id, _) = t.events.open().await;
    let clock = connect(t.addr).await;
    let (clock_id, _) = t.events.open().await;

    send_text(&mut busy, "block").await;
    assert_eq!(t.events.message().await.0, busy_id);
    let (mut busy_rx, busy_task) = spawn_pinged_reader(busy);
    let (mut ticks, clock_task) = spawn_pinged_reader(clock);

    // Written while the handler is blocked: its own send, and one from elsewhere.
    within(
        "the handler's own send before it waits",
        busy_rx.wait_for(|(_, texts)| texts.iter().any(|s| s == "before waiting")),
    )
    .await
    .unwrap();
    t.hub.send_to(busy_id, "while blocked").unwrap();
    within(
        "a message to the busy session",
        busy_rx.wait_for(|(_, texts)| texts.iter().any(|s| s == "while blocked")),
    )
    .await
    .unwrap();

    // Four pings to the other client span more than ping_interval + ping_timeout.
    within("four heartbeat ticks", ticks.wait_for(|(n, _)| *n >= 4))
        .await
        .unwrap();
    if let Some(e) = t.events.try_next() {
        panic!("the busy session ended while its client was answering pings: {e:?}");
    }
    assert!(t.hub.session(busy_id).is_some());

    gate.notify_one();
    within(
        "the handler to finish",
        busy_rx.wait_for(|(_, texts)| texts.iter().any(|s| s == "unblocked")),
    )
    .await
    .unwrap();
    assert!(t.hub.session(clock_id).is_some());
    busy_task.abort();
    clock_task.abort();
}
