//! Getting messages to clients: `send_to`, `broadcast` (to hundreds of clients, with exact
//! counts), `broadcast_except`, topic `publish`, and the counters of `Hub::stats`.
//!
//! "Nothing else arrived" is checked with a final marker message: messages to one session are
//! written in order, so if the next message a client reads is the marker, nothing unexpected
//! was queued for it before.

mod support;

use support::*;
use wshub::{CloseCode, SendError, SessionId, TopicError};

/// Each client's next `n` messages, read concurrently.
async fn read_each(clients: Vec<Client>, n: usize) -> Vec<(Client, Vec<String>)> {
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let mut got = Vec::with_capacity(n);
                for _ in 0..n {
                    got.push(recv_text(&mut c).await);
                }
                (c, got)
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(within("a client's messages", t).await.unwrap());
    }
    out
}

/// Reads from each client concurrently the messages it must receive, ending with the marker
/// "end", after which nothing more may have been queued. Gives the clients back.
async fn expect_exactly(clients: Vec<Client>, expected: &[&[&str]]) -> Vec<Client> {
    assert_eq!(clients.len(), expected.len());
    let tasks: Vec<_> = clients
        .into_iter()
        .zip(expected)
        .map(|(c, want)| {
            let n = want.len();
            (
                tokio::spawn(async move { read_each(vec![c], n).await }),
                *want,
            )
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for (i, (task, want)) in tasks.into_iter().enumerate() {
        let (c, got) = within("a client's messages", task)
            .await
            .unwrap()
            .pop()
            .unwrap();
        assert_eq!(got, want, "client {i}");
        out.push(c);
    }
    out
}

#[tokio::test]
async fn send_to_an_unknown_id_is_not_found() {
    let t = start_default().await;
    let ghost = SessionId::from_u64(987_654);
    assert_eq!(
        t.hub.send_to(ghost, "hello"),
        Err(SendError::NotFound(ghost))
    );
    assert_eq!(
        t.hub.close(ghost, CloseCode::NORMAL, "bye"),
        Err(SendError::NotFound(ghost))
    );
    assert_eq!(
        t.hub.subscribe(ghost, "t"),
        Err(TopicError::NotFound(ghost))
    );
    assert_eq!(
        t.hub.unsubscribe(ghost, "t"),
        Err(TopicError::NotFound(ghost))
    );
    assert!(t.hub.session(ghost).is_none());
    let stats = t.hub.stats();
    assert_eq!((stats.messages_queued, stats.messages_dropped), (0, 0));
}

/// While a session is closing (its close frame queued, the client's answer not yet read),
/// `send_to` says `Closing`; once it has ended, `NotFound`.
#[tokio::test]
async fn send_to_a_closing_then_closed_session() {
    let mut t = start(quiet_config(), Behaviour::default()).await;
    let mut c = connect(t.addr).await;
    let (id, _) = t.events.open().await;

    assert_eq!(t.hub.send_to(id, "before"), Ok(()));
    t.hub.close(id, CloseCode::NORMAL, "closing").unwrap();
    // The client has not read anything yet, so the session cannot have finished closing.
    assert_eq!(t.hub.send_to(id, "during"), Err(SendError::Closing(id)));
    assert_eq!(
        t.hub.close(id, CloseCode::NORMAL, "again"),
        Err(SendError::Closing(id))
    );

    assert_eq!(recv_text(&mut c).await, "before");
    assert_eq!(recv_close(&mut c).await, (1000, "closing".to_string()));
    assert_eq!(
        t.events.close().await,
        (id, Closed::server(1000, "closing"))
    );

    assert_eq!(t.hub.send_to(id, "after"), Err(SendError::NotFound(id)));
    let stats = t.hub.stats();
    assert_eq!(stats.messages_queued, 1);
    assert_eq!(
        stats.messages_dropped, 1,
        "the send to a closing session is counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_to_reaches_only_its_session() {
    let mut t = start(quiet_config(), Behaviour::default()).await;
    let (clients, ids) = connect_each(&mut t, 3).await;

    t.hub.send_to(ids[1], "for b").unwrap();
    t.hub.send_to(ids[1], "for b again").unwrap();
    assert_eq!(t.hub.broadcast("end").queued, 3);

    expect_exactly(
        clients,
        &[&["end"], &["for b", "for b again", "end"], &["end"]],
    )
    .await;
}

/// 250 clients, connected concurrently (32 handshakes in flight), each receive every broadcast
/// exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_250_clients_exactly_once() {
    const N: usize = 250;
    const ROUNDS: usize = 5;
    let mut t = start(quiet_config(), Behaviour::default()).await;
    let clients = within("250 clients to connect", connect_many(t.addr, N, 32)).await;
    let opened = t.events.opens(N).await;
    let mut peers: Vec<_> = opened.iter().map(|(_, p)| *p).collect();
    let mut locals: Vec<_> = clients.iter().map(local_addr).collect();
    peers.sort();
    locals.sort();
    assert_eq!(peers, locals, "every client has its own session");
    let ids: std::collections::HashSet<_> = opened.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), N, "session ids are unique");
    assert_eq!(t.hub.session_count(), N);

    for i in 0..ROUNDS {
        let d = t.hub.broadcast(format!("m{i}"));
        assert_eq!(
            (d.queued, d.dropped, d.disconnected),
            (N, 0, 0),
            "round {i}"
        );
    }
    assert_eq!(t.hub.broadcast("end").queued, N);

    let expected: Vec<String> = (0..ROUNDS)
        .map(|i| format!("m{i}"))
        .chain(["end".to_string()])
        .collect();
    for (c, got) in read_each(clients, ROUNDS + 1).await {
        assert_eq!(got, expected, "client {}", local_addr(&c));
    }
    let stats = t.hub.stats();
    assert_eq!(stats.sessions_opened, N as u64);
    assert_eq!(stats.messages_queued, (N * (ROUNDS + 1)) as u64);
    assert_eq!(stats.messages_dropped, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_except_skips_the_sender() {
    let mut t = start(
        quiet_config(),
        Behaviour::default().on_message(|s, m| {
            let d = s.hub().broadcast_except(s.id(), m.clone());
            s.send(format!("queued for {}", d.queued)).unwrap();
        }),
    )
    .await;
    let (mut clients, ids) = connect_each(&mut t, 5).await;

    send_text(&mut clients[0], "from 0").await;
    assert_eq!(t.events.message().await.0, ids[0]);
    assert_eq!(recv_text(&mut clients[0]).await, "queued for 4");
    // From the hub too, skipping client 2.
    assert_eq!(t.hub.broadcast_except(ids[2], "not for 2").queued, 4);
    assert_eq!(t.hub.broadcast("end").queued, 5);

    expect_exactly(
        clients,
        &[
            &["not for 2", "end"],
            &["from 0", "not for 2", "end"],
            &["from 0", "end"],
            &["from 0", "not for 2", "end"],
            &["from 0", "not for 2", "end"],
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_reaches_exactly_the_subscribers() {
    let mut t = start(quiet_config(), Behaviour::default()).await;
    let (clients, ids) = connect_each(&mut t, 6).await;
    // a: clients 0, 1, 2; b: clients 2, 3, 4; client 5: nothing.
    for &i in &[0, 1, 2] {
        assert_eq!(t.hub.subscribe(ids[i], "a"), Ok(true));
    }
    for &i in &[2, 3, 4] {
        assert_eq!(t.hub.subscribe(ids[i], "b"), Ok(true));
    }
    assert_eq!(
        t.hub.subscribe(ids[0], "a"),
        Ok(false),
        "already subscribed"
    );
    assert_eq!(t.hub.subscribe(ids[0], ""), Err(TopicError::InvalidName));
    assert_eq!(t.hub.subscriber_count("a"), 3);
    assert_eq!(t.hub.subscriber_count("b"), 3);
    assert_eq!(t.hub.topics(), ["a", "b"]);
    assert_eq!(t.hub.session(ids[2]).unwrap().topics().len(), 2);

    let d = t.hub.publish("a", "to a");
    assert_eq!((d.queued, d.dropped, d.disconnected), (3, 0, 0));
    assert_eq!(t.hub.publish("b", "to b").queued, 3);
    assert_eq!(t.hub.publish("nobody", "lost").queued, 0);
    assert_eq!(t.hub.unsubscribe(ids[0], "a"), Ok(true));
    assert_eq!(t.hub.unsubscribe(ids[0], "a"), Ok(false));
    assert_eq!(t.hub.publish("a", "to a again").queued, 2);
    assert_eq!(t.hub.broadcast("end").queued, 6);

    let mut clients = expect_exactly(
        clients,
        &[
            &["to a", "end"],
            &["to a", "to a again", "end"],
            &["to a", "to b", "to a again", "end"],
            &["to b", "end"],
            &["to b", "end"],
            &["end"],
        ],
    )
    .await;

    // A subscriber that leaves leaves its topics.
    t.hub.close(ids[3], CloseCode::NORMAL, "").unwrap();
    assert_eq!(recv_close(&mut clients[3]).await.0, 1000);
    assert_eq!(t.events.close().await, (ids[3], Closed::server(1000, "")));
    assert_eq!(t.hub.subscriber_count("b"), 2);
    assert_eq!(t.hub.publish("b", "to b again").queued, 2);
}

/// `Hub::stats` counts what the test did, no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_what_happened() {
    const CLIENTS: usize = 3;
    const EACH: usize = 10;
    let mut t = start(quiet_config(), Behaviour::default()).await;
    let before = t.hub.stats();
    assert_eq!(before, wshub::Stats::default());

    let (mut clients, ids) = connect_each(&mut t, CLIENTS).await;
    let mut bytes_in = 0;
    for (i, c) in clients.iter_mut().enumerate() {
        for j in 0..EACH {
            let text = format!("client {i} message {j}");
            bytes_in += text.len() as u64;
            send_text(c, &text).await;
        }
    }
    for _ in 0..CLIENTS * EACH {
        t.events.message().await;
    }
    assert_eq!(t.hub.broadcast("all").queued, CLIENTS);
    t.hub.send_to(ids[0], "one").unwrap();
    t.hub.send_to(ids[1], "two").unwrap();
    assert_eq!(t.hub.subscribe(ids[2], "topic"), Ok(true));
    assert_eq!(t.hub.publish("topic", "three").queued, 1);

    let s = t.hub.stats();
    assert_eq!(s.sessions, CLIENTS);
    assert_eq!(s.topics, 1);
    assert_eq!(s.sessions_opened, CLIENTS as u64);
    assert_eq!(s.handshakes_refused, 0);
    assert_eq!(s.messages_in, (CLIENTS * EACH) as u64);
    assert_eq!(s.bytes_in, bytes_in);
    assert_eq!(s.messages_queued, CLIENTS as u64 + 3);
    assert_eq!(s.messages_dropped, 0);
    assert_eq!(s.slow_consumer_disconnects, 0);

    for c in &mut clients {
        client_close(c, 1000, "").await;
        finish(c).await;
    }
    t.events.closes(CLIENTS).await;
    let s = t.hub.stats();
    assert_eq!((s.sessions, s.topics), (0, 0));
    assert_eq!(s.closed_by_client, CLIENTS as u64);
    assert_eq!(
        (
            s.closed_by_server,
            s.disconnected,
            s.ping_timeouts,
            s.io_errors
        ),
        (0, 0, 0, 0)
    );
    // Every byte written: "all" three times, "one", "two", "three" (2-byte headers) and the
    // three 4-byte close answers.
    assert_eq!(s.bytes_out, 3 * 5 + 5 + 5 + 7 + 3 * 4);
    assert!(
        s.write_batches >= CLIENTS as u64,
        "one write per session at least"
    );
}

/// Message `seq` of a handler's fan-out: its number, then bytes that depend on it, so a frame
/// cut short, spliced or written twice cannot pass for another.
fn fan_out_payload(seq: u64) -> String {
    const LEN: usize = 9_000;
    let mut s = format!("{seq:08}:");
    let fill = char::from(b'a' + (seq % 26) as u8);
    s.extend(std::iter::repeat_n(fill, LEN - s.len()));
    s
}

/// What a raw reader of the fan-out got so far.
#[derive(Default)]
struct FanOutReader {
    texts: u64,
    last_pong: Option<u32>,
}

impl FanOutReader {
    /// Reads frames until `texts` messages arrived, checking each.
    async fn read_until(&mut self, c: &mut RawClient, texts: u64, last_pong: Option<u32>) {
        while self.texts < texts || self.last_pong < last_pong {
            let f = within("the reader's frames", c.read_frame())
                .await
                .expect("EOF before every frame arrived");
            assert!(f.fin, "a fragmented frame: {:?}", f.opcode);
            match f.opcode {
                OP_TEXT => {
                    let got = String::from_utf8(f.payload).expect("UTF-8 text");
                    let seq = self.texts;
                    assert!(
                        got == fan_out_payload(seq),
                        "message {seq} arrived as {got:.12}…"
                    );
                    self.texts += 1;
                }
                OP_PONG => {
                    // Pongs owed beyond 16 replace the newest: increasing, ending with the last.
                    let n = u32::from_be_bytes(f.payload.try_into().expect("a 4-byte pong"));
                    assert!(
                        self.last_pong < Some(n),
                        "pong {n} after {:?}",
                        self.last_pong
                    );
                    self.last_pong = Some(n);
                }
                op => panic!("unexpected opcode {op}"),
            }
        }
    }
}

/// What a handler broadcasts is written into each recipient's socket when the handler's
/// poll ends (one call per recipient), and a socket that takes only part of it leaves the
/// rest to the session's connection. A reader with small socket buffers that stops reading
/// for a few rounds at a time, and pings meanwhile, must still get every frame whole and in
/// order, and each pong between two frames, never inside one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handlers_fan_out_into_a_socket_that_fills_arrives_whole_and_in_order() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    const ROUNDS: usize = 64;
    const PER_ROUND: usize = 6;
    let next = Arc::new(AtomicU64::new(0));
    let counter = next.clone();
    let behaviour = Behaviour::default().on_message(move |s, _| {
        for _ in 0..PER_ROUND {
            let seq = counter.fetch_add(1, Ordering::Relaxed);
            let report = s.hub().broadcast(fan_out_payload(seq));
            assert_eq!(
                report.queued, 2,
                "a queue filled: the test bounds no longer hold"
            );
        }
    });
    // Queues far larger than everything sent: nothing may be dropped. Socket buffers of a few
    // kilobytes: each round's 54 KB fills the reader's socket.
    let config = quiet_config().max_queue_bytes(64 << 20);
    let mut t = start_on(listen_with_send_buffer(4096), config, behaviour).await;
    let mut slow = RawClient::upgrade_small_rcvbuf(t.addr, 4096).await;
    t.events.open().await;
    let mut publisher = connect(t.addr).await;
    t.events.open().await;

    let mut reader = FanOutReader::default();
    for round in 0..ROUNDS {
        send_text(&mut publisher, "go").await;
        for i in 0..PER_ROUND {
            let seq = (round * PER_ROUND + i) as u64;
            assert_eq!(recv_text(&mut publisher).await, fan_out_payload(seq));
        }
        slow.send(true, OP_PING, &(round as u32).to_be_bytes())
            .await;
        if round % 4 == 3 {
            // Catch up, so that the next round finds the connection idle and its socket
            // empty, and fills it again.
            let sent = ((round + 1) * PER_ROUND) as u64;
            reader.read_until(&mut slow, sent, None).await;
        }
    }
    let all = (ROUNDS * PER_ROUND) as u64;
    reader
        .read_until(&mut slow, all, Some(ROUNDS as u32 - 1))
        .await;
    assert_eq!(next.load(Ordering::Relaxed), all);
}
