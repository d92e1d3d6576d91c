//! RFC 6455 from a raw client's side: limits and invalid input close the session with the
//! right code (1009 too big, 1007 invalid UTF-8, 1002 protocol error), and `on_close` reports
//! it as a server close. The message before the offending one is still delivered.

mod support;

use support::*;
use wshub::SessionId;

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
