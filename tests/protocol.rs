//! RFC 6455 from a raw client's side: limits and invalid input close the session with the
//! right code (1009 too big, 1007 invalid UTF-8, 1002 protocol error), and `on_close` reports
//! it as a server close. The message before the offending one is still delivered.

mod support;

use support::*;
use wshub::{CloseCode, SessionId};

const MAX: usize = 1024;

/// A hub with a 1 KiB message limit and a raw client upgraded to it.
async fn hub_and_raw() -> (TestHub, RawClient, SessionId) {
    let mut t = start(quiet_config().max_message_size(MAX), Behaviour::default()).await;
    let c = RawClient::upgrade(t.addr).await;
    let (id, _) = t.events.open().await;
    (t, c, id)
}

/// Expects the hub to close with `code`; checks `on_close` saw the same as a server close.
async fn expect_closed(t: &mut TestHub, c: &mut RawClient, id: SessionId, code: u16) {
    let (got, reason) = c.read_close().await;
    assert_eq!(got, code, "close code (reason {reason:?})");
    // The hub does not wait for an answer to a protocol failure: it closes the TCP connection.
    c.expect_eof().await;
    assert_eq!(t.events.close().await, (id, Closed::Server(code, reason)));
    assert_eq!(t.hub.session_count(), 0);
    t.events.assert_none_pending();
}

#[tokio::test]
async fn a_message_over_the_limit_closes_with_1009() {
    let (mut t, mut c, id) = hub_and_raw().await;
    // Exactly at the limit: delivered.
    c.send(true, OP_BINARY, &[0xAB; MAX]).await;
    let (from, m) = t.events.message().await;
    assert_eq!((from, m.len(), m.is_text()), (id, MAX, false));

    c.send(true, OP_TEXT, "x".repeat(MAX + 1).as_bytes()).await;
    expect_closed(&mut t, &mut c, id, 1009).await;
    assert_eq!(t.hub.stats().messages_in, 1);
}

#[tokio::test]
async fn fragments_adding_up_over_the_limit_close_with_1009() {
    let (mut t, mut c, id) = hub_and_raw().await;
    // Two fragments of 512: exactly the limit, delivered as one message.
    c.send(false, OP_TEXT, &[b'a'; MAX / 2]).await;
    c.send(true, OP_CONTINUATION, &[b'b'; MAX / 2]).await;
    let (_, m) = t.events.message().await;
    let expected = format!("{}{}", "a".repeat(MAX / 2), "b".repeat(MAX / 2));
    assert_eq!(m.as_text(), Some(expected.as_str()));

    c.send(false, OP_BINARY, &[1; 600]).await;
    c.send(true, OP_CONTINUATION, &[2; 600]).await;
    expect_closed(&mut t, &mut c, id, 1009).await;
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007() {
    let (mut t, mut c, id) = hub_and_raw().await;
    // A two-byte character split across fragments is valid.
    let e_acute = "é".as_bytes();
    c.send(false, OP_TEXT, &e_acute[..1]).await;
    c.send(true, OP_CONTINUATION, &e_acute[1..]).await;
    let (_, m) = t.events.message().await;
    assert_eq!(m.as_text(), Some("é"));

    c.send(true, OP_TEXT, &[b'o', b'k', 0xFF, 0xFE]).await;
    expect_closed(&mut t, &mut c, id, 1007).await;
}

#[tokio::test]
async fn a_truncated_character_at_the_end_closes_with_1007() {
    let (mut t, mut c, id) = hub_and_raw().await;
    c.send(true, OP_TEXT, &"é".as_bytes()[..1]).await;
    expect_closed(&mut t, &mut c, id, 1007).await;
}

#[tokio::test]
async fn an_unmasked_client_frame_closes_with_1002() {
    let (mut t, mut c, id) = hub_and_raw().await;
    c.write(&frame_with_mask(true, OP_TEXT, b"hi", None)).await;
    expect_closed(&mut t, &mut c, id, 1002).await;
    assert_eq!(t.hub.stats().messages_in, 0);
}

#[tokio::test]
async fn a_ping_is_answered_with_its_payload() {
    let (mut t, mut c, id) = hub_and_raw().await;
    c.send(true, OP_PING, b"are you there").await;
    let pong = c.read_frame().await.expect("a pong");
    assert_eq!((pong.fin, pong.opcode), (true, OP_PONG));
    assert_eq!(pong.payload, b"are you there");

    // A clean close from the raw client: answered with the same code, reported as a client close.
    c.send(true, OP_CLOSE, &close_payload(1000, "raw bye"))
        .await;
    assert_eq!(c.read_close().await.0, 1000);
    c.expect_eof().await;
    assert_eq!(
        t.events.close().await,
        (id, Closed::client(1000, "raw bye"))
    );
}

/// Frames RFC 6455 forbids: each closes the session with 1002 (or 1007 for a close reason that
/// is not UTF-8), and no message reaches the handler.
#[tokio::test]
async fn forbidden_frames_close_with_1002() {
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "reserved bit",
            {
                let mut f = client_frame(true, OP_TEXT, b"x");
                f[0] |= 0x40;
                f
            },
            1002,
        ),
        ("reserved opcode", client_frame(true, 0x3, b"x"), 1002),
        ("fragmented ping", client_frame(false, OP_PING, b"x"), 1002),
        (
            "ping over 125 bytes",
            client_frame(true, OP_PING, &[0; 126]),
            1002,
        ),
        (
            "continuation first",
            client_frame(true, OP_CONTINUATION, b"x"),
            1002,
        ),
        ("one-byte close", client_frame(true, OP_CLOSE, &[3]), 1002),
        (
            "close code 1005",
            client_frame(true, OP_CLOSE, &close_payload(1005, "")),
            1002,
        ),
        (
            "close code 999",
            client_frame(true, OP_CLOSE, &close_payload(999, "")),
            1002,
        ),
        (
            "close reason not UTF-8",
            {
                let mut p = close_payload(1000, "");
                p.push(0xFF);
                client_frame(true, OP_CLOSE, &p)
            },
            1007,
        ),
    ];
    for (what, frame, code) in cases {
        let (mut t, mut c, id) = hub_and_raw().await;
        c.write(&frame).await;
        let (got, reason) = c.read_close().await;
        assert_eq!(got, code, "{what}: {reason}");
        assert_eq!(
            t.events.close().await,
            (id, Closed::Server(code, reason)),
            "{what}"
        );
        assert_eq!(t.hub.stats().messages_in, 0, "{what}");
    }
}

/// A new data message in the middle of a fragmented one is a protocol error; the first
/// fragment is never delivered.
#[tokio::test]
async fn interleaved_messages_close_with_1002() {
    let (mut t, mut c, id) = hub_and_raw().await;
    c.send(false, OP_TEXT, b"first half").await;
    // A control frame in between is allowed (and answered).
    c.send(true, OP_PING, b"p").await;
    assert_eq!(c.read_frame().await.map(|f| f.opcode), Some(OP_PONG));
    c.send(true, OP_TEXT, b"another message").await;
    expect_closed(&mut t, &mut c, id, 1002).await;
    assert_eq!(t.hub.stats().messages_in, 0);
}

/// A client over `max_messages_per_second` (burst of the same size) is closed with 1008;
/// the messages within the budget reach the handler.
#[tokio::test]
async fn the_inbound_rate_limit_closes_with_1008() {
    const RATE: u32 = 5;
    let config = quiet_config().max_messages_per_second(Some(RATE));
    let mut t = start(config, Behaviour::default()).await;
    let mut c = RawClient::upgrade(t.addr).await;
    let (id, _) = t.events.open().await;
    let mut burst = Vec::new();
    for i in 0..50 {
        burst.extend(client_frame(true, OP_TEXT, format!("{i}").as_bytes()));
    }
    c.write(&burst).await;
    assert_eq!(
        c.read_close().await,
        (1008, "rate limit exceeded".to_string())
    );
    c.send(true, OP_CLOSE, &close_payload(1008, "")).await;

    let mut delivered = 0;
    loop {
        match t.events.next().await {
            Event::Message { message, .. } => {
                assert_eq!(message.as_text(), Some(delivered.to_string().as_str()));
                delivered += 1;
            }
            Event::Close {
                id: closed, reason, ..
            } => {
                assert_eq!(
                    (closed, reason),
                    (id, Closed::server(1008, "rate limit exceeded"))
                );
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // The burst, plus what refilled while the first messages were handled (milliseconds
    // normally; up to one second allowed on a loaded machine).
    assert!(
        (RATE as usize..=2 * RATE as usize).contains(&delivered),
        "{delivered} messages delivered"
    );
}

/// A message far larger than one write batch (64 KiB) and than the whole queue budget (1 MiB)
/// is accepted into an empty queue, as `Config::max_queue_bytes` documents, and goes out
/// intact across many partial socket writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_message_is_written_whole_and_in_order() {
    let mut t = start(quiet_config(), Behaviour::default()).await;
    let mut c = connect(t.addr).await;
    let (id, _) = t.events.open().await;
    let big: String = (0..3 * 1024 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    assert!(big.len() > t.hub.config().get_max_queue_bytes());

    t.hub.send_to(id, "before").unwrap();
    // Once the client has it, the queue is empty.
    assert_eq!(recv_text(&mut c).await, "before");
    t.hub.send_to(id, big.clone()).unwrap();
    assert!(
        recv_text(&mut c).await == big,
        "the large message arrived altered"
    );
    t.hub.send_to(id, "after").unwrap();
    assert_eq!(recv_text(&mut c).await, "after");
    assert_eq!(t.hub.stats().queue_high_water_bytes, big.len() as u64 + 10);
}

/// A close reason longer than a control frame allows is cut to 123 bytes at a character
/// boundary, so the client still gets valid UTF-8.
#[tokio::test]
async fn a_long_close_reason_is_cut_at_a_character_boundary() {
    let (mut t, mut c, id) = hub_and_raw().await;
    let reason = "é".repeat(100); // 200 bytes
    t.hub.close(id, CloseCode::from(4000), &reason).unwrap();
    let (code, got) = c.read_close().await;
    assert_eq!((code, got), (4000, "é".repeat(61)));
    c.send(true, OP_CLOSE, &close_payload(4000, "")).await;
    // (on_close reports the reason as given, uncut.)
    assert_eq!(t.events.close().await, (id, Closed::server(4000, &reason)));
}

/// RFC 6455 section 7.4.1: 1005 and 1006 must never be sent in a close frame. `Hub::close`
/// takes any `CloseCode`; what reaches the wire must still be a sendable code.
#[tokio::test]
async fn an_unsendable_close_code_never_reaches_the_wire() {
    for code in [
        CloseCode::NO_STATUS,
        CloseCode::ABNORMAL,
        CloseCode::from(999),
    ] {
        let (t, _c, id) = hub_and_raw().await;
        assert_eq!(
            t.hub.close(id, code, ""),
            Err(wshub::SendError::InvalidCloseCode(code)),
            "Hub::close({code}) must be refused"
        );
        assert!(t.hub.session(id).is_some_and(|s| s.is_open()));
    }
}
