//! permessage-deflate (RFC 7692) end to end over real sockets: the negotiation, one compressed
//! frame shared by every subscriber that negotiated it (and the plain frame for the others),
//! inbound compressed messages whole and fragmented, the dedicated mode's context, the
//! per-session opt-out, and a third-party client (Python `websockets`, which offers compression
//! by default) exchanging compressed messages both ways.
//!
//! The Python test skips (saying so) when `python3` or its `websockets` package is missing,
//! unless `WSHUB_REQUIRE_PYTHON_WEBSOCKETS=1` (as in CI), which makes that a failure.

mod support;

use support::pmd::*;
use support::*;
use wshub::{Compression, Config, Message, NoCompression};

const OFFER: &str = "permessage-deflate; client_no_context_takeover; client_max_window_bits";

/// A dashboard-like JSON update of about 400 bytes.
fn update(seq: u32) -> String {
    format!(
        r#"{{"seq":{seq},"type":"parcel","id":"PX-{}","route":"Madrid → Göteborg","status":"at sorting hub","at":"Göteborg","eta":"18:26","counters":{{"scanned":{},"late":3}},"feed":"18:08 handed to courier at Warszawa city locker; 17:04 sorted at Leipzig hub; 15:40 left Madrid depot; 12:02 label created"}}"#,
        49_450 + seq,
        1_000 + seq * 7
    )
}

fn subscribing(topic: &'static str) -> Behaviour {
    Behaviour::default().on_open(move |s| {
        s.subscribe(topic).unwrap();
    })
}

#[tokio::test]
async fn a_publication_is_compressed_once_and_shared_by_the_subscribers_that_negotiated_it() {
    let config = quiet_config().compression(Compression::Shared);
    let mut t = start(config, subscribing("parcels")).await;
    let (mut a, answer_a) = upgrade_offering(t.addr, OFFER).await;
    let (mut b, answer_b) = upgrade_offering(t.addr, "permessage-deflate").await;
    let mut plain = RawClient::upgrade(t.addr).await;
    let ids: Vec<_> = t
        .events
        .opens(3)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        answer_a.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
    assert_eq!(answer_a, answer_b);

    let text = update(1);
    assert_eq!(t.hub.publish("parcels", text.as_str()).queued, 3);
    let fa = a.read_frame().await.unwrap();
    let fb = b.read_frame().await.unwrap();
    let fp = plain.read_frame().await.unwrap();
    assert!(fa.rsv1 && fb.rsv1 && !fp.rsv1);
    assert_eq!(fa.payload, fb.payload, "one compressed frame for both");
    assert!(
        fa.payload.len() * 10 < text.len() * 8,
        "{} of {}",
        fa.payload.len(),
        text.len()
    );
    assert_eq!(inflate(&fa.payload), text.as_bytes());
    assert_eq!(fp.payload, text.as_bytes());

    // Below the minimum size (64 bytes by default): plain for everyone.
    t.hub.broadcast("tiny");
    for c in [&mut a, &mut b, &mut plain] {
        let f = c.read_frame().await.unwrap();
        assert!(!f.rsv1);
        assert_eq!(f.payload, b"tiny");
    }
    // send_to compresses for its one recipient too.
    for id in ids {
        t.hub.send_to(id, update(2)).unwrap();
    }
    for c in [&mut a, &mut b] {
        let f = c.read_frame().await.unwrap();
        assert!(f.rsv1);
        assert_eq!(inflate(&f.payload), update(2).as_bytes());
    }
    assert!(!plain.read_frame().await.unwrap().rsv1);
}

#[tokio::test]
async fn compressed_messages_arrive_inflated_whole_and_fragmented() {
    let config = quiet_config().compression(Compression::Shared);
    let mut t = start(config, Behaviour::default()).await;
    let (mut c, answer) = upgrade_offering(t.addr, OFFER).await;
    assert!(answer.is_some());
    let (id, _) = t.events.open().await;
    let text = update(3);
    let body = compress(text.as_bytes());
    c.write(&compressed_frame(true, OP_TEXT, &body)).await;
    assert_eq!(t.events.message().await, (id, Message::from(text.as_str())));
    // RSV1 on the first frame only; a ping between the fragments.
    let (x, y) = body.split_at(body.len() / 3);
    c.write(&compressed_frame(false, OP_TEXT, x)).await;
    c.send(true, OP_PING, b"p").await;
    c.send(true, OP_CONTINUATION, y).await;
    assert_eq!(t.events.message().await, (id, Message::from(text.as_str())));
    // An uncompressed message on the same connection is fine too (RSV1 clear).
    c.send(true, OP_BINARY, &[1, 2, 3]).await;
    assert_eq!(
        t.events.message().await,
        (id, Message::from(vec![1u8, 2, 3]))
    );
}

#[tokio::test]
async fn the_dedicated_mode_keeps_its_context_per_connection() {
    let config = quiet_config().compression(Compression::Dedicated { window_bits: 12 });
    let mut t = start(config, subscribing("parcels")).await;
    let (mut c, answer) = upgrade_offering(t.addr, OFFER).await;
    t.events.open().await;
    assert_eq!(
        answer.as_deref(),
        Some("permessage-deflate; client_no_context_takeover")
    );
    let mut inf = new_inflate();
    let mut sizes = Vec::new();
    for seq in 0..20 {
        t.hub.publish("parcels", update(seq));
        let f = c.read_frame().await.unwrap();
        assert!(f.rsv1);
        assert_eq!(inflate_with(&mut inf, &f.payload), update(seq).as_bytes());
        sizes.push(f.payload.len());
    }
    let (first, later) = (sizes[0], sizes[19]);
    assert!(later * 3 < first, "the context did not help: {sizes:?}");
    // A client asking for an 8-bit window gets the shared behaviour (zlib cannot keep one).
    let (_c8, answer) =
        upgrade_offering(t.addr, "permessage-deflate; server_max_window_bits=8").await;
    assert_eq!(
        answer.as_deref(),
        Some(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=8"
        )
    );
}

#[tokio::test]
async fn offers_that_cannot_be_honoured_are_declined_and_sessions_may_opt_out() {
    let config = quiet_config().compression(Compression::Shared);
    let behaviour = Behaviour::default().authorize(|r| {
        if r.header("x-no-compression").is_some() {
            r.extensions_mut().insert(NoCompression);
        }
        Ok(())
    });
    let t = start(config, behaviour).await;
    let (_c, answer) =
        upgrade_offering(t.addr, "permessage-deflate; server_max_window_bits=7").await;
    assert_eq!(answer, None, "a window outside 8..15 is declined");
    let (_c, answer) = upgrade_offering(
        t.addr,
        "permessage-deflate; server_max_window_bits=7, permessage-deflate; server_max_window_bits=9",
    )
    .await;
    assert!(
        answer.unwrap().ends_with("server_max_window_bits=9"),
        "the next offer is taken"
    );
    let mut c = RawClient::connect(t.addr).await;
    let r = c
        .request(&upgrade_request(
            t.addr,
            "/",
            &[
                ("Sec-WebSocket-Extensions", OFFER),
                ("x-no-compression", "1"),
            ],
        ))
        .await;
    assert_eq!(
        (r.status, r.header("sec-websocket-extensions")),
        (101, None)
    );
    // Off by default.
    let t = start(quiet_config(), Behaviour::default()).await;
    let (_c, answer) = upgrade_offering(t.addr, OFFER).await;
    assert_eq!(answer, None);
    assert_eq!(
        Config::default()
            .compression(Compression::Off)
            .get_max_message_size(),
        1 << 20
    );
}

/// Python `websockets` (compression on by default) against the echo of a shared-mode hub:
/// it negotiates, sends compressed messages, and checks the compressed echoes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_websockets_exchanges_compressed_messages_both_ways() {
    let required = std::env::var("WSHUB_REQUIRE_PYTHON_WEBSOCKETS").as_deref() == Ok("1");
    let python = std::process::Command::new("python3")
        .args(["-c", "import websockets.asyncio.client"])
        .output();
    match python {
        Ok(o) if o.status.success() => {}
        other => {
            assert!(
                !required,
                "WSHUB_REQUIRE_PYTHON_WEBSOCKETS=1 but python3 with websockets is missing: {other:?}"
            );
            eprintln!(
                "SKIPPED: python3 with the websockets package (pip install websockets) is missing"
            );
            return;
        }
    }
    for mode in [
        Compression::Shared,
        Compression::Dedicated { window_bits: 12 },
    ] {
        let config = quiet_config().compression(mode);
        let echo = Behaviour::default().on_message(|s, m| {
            let _ = s.send(m.clone());
        });
        let t = start(config, echo).await;
        let script = r#"
import asyncio, sys
from websockets.asyncio.client import connect
async def main():
    async with connect(sys.argv[1]) as ws:
        ext = ws.response.headers.get("Sec-WebSocket-Extensions") or ""
        assert ext.startswith("permessage-deflate"), ext
        for i in range(50):
            msg = '{"seq": %d, "status": "at sorting hub", "feed": "%s"}' % (i, "handed to courier; " * 20)
            await ws.send(msg)
            assert await ws.recv() == msg
        blob = bytes(range(256)) * 400
        await ws.send(blob)
        assert await ws.recv() == blob
    print("ok", ext)
asyncio.run(main())
"#;
        let out = within(
            "the Python client",
            tokio::process::Command::new("python3")
                .args(["-c", script, &t.url("/")])
                .output(),
        )
        .await
        .expect("python3 runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.starts_with("ok permessage-deflate"),
            "{mode:?}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stats = t.hub.stats();
        assert_eq!(stats.messages_in, 51);
        // Compressed both ways: far fewer bytes went out than the messages held.
        assert!(stats.bytes_out < stats.bytes_in / 2, "{mode:?}: {stats:?}");
    }
}

/// Reads one data frame and returns its message: inflated in `inf`'s context when RSV1 is
/// set (as a client that keeps its context does), as it is otherwise.
async fn read_message(c: &mut RawClient, inf: &mut zlib_rs::Inflate) -> (bool, Vec<u8>) {
    let f = c.read_frame().await.expect("a frame");
    if f.rsv1 {
        (true, inflate_with(inf, &f.payload))
    } else {
        (false, f.payload)
    }
}

#[tokio::test]
async fn a_topic_stream_is_compressed_once_for_its_followers_and_keeps_its_context() {
    let config = quiet_config().compression(Compression::Topic { window_bits: 12 });
    let mut t = start(config, subscribing("parcels")).await;
    let (mut a, answer) = upgrade_offering(t.addr, "permessage-deflate").await;
    assert_eq!(
        answer.as_deref(),
        Some("permessage-deflate; client_no_context_takeover")
    );
    let (mut b, _) = upgrade_offering(t.addr, OFFER).await;
    let mut plain = RawClient::upgrade(t.addr).await;
    let ids: Vec<_> = t
        .events
        .opens(3)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let (mut ia, mut ib) = (new_inflate(), new_inflate());
    let mut sizes = Vec::new();
    for seq in 0..20 {
        t.hub.publish("parcels", update(seq));
        let fa = a.read_frame().await.unwrap();
        let fb = b.read_frame().await.unwrap();
        assert!(fa.rsv1 && fb.rsv1, "{seq}");
        assert_eq!(fa.payload, fb.payload, "one compressed frame for both");
        assert_eq!(inflate_with(&mut ia, &fa.payload), update(seq).as_bytes());
        assert_eq!(inflate_with(&mut ib, &fb.payload), update(seq).as_bytes());
        assert_eq!(
            plain.read_frame().await.unwrap().payload,
            update(seq).as_bytes()
        );
        sizes.push(fa.payload.len());
        // Anything else goes to followers uncompressed: it must not enter their windows.
        if seq % 5 == 0 {
            t.hub.broadcast(update(100 + seq));
            t.hub.send_to(ids[0], update(200 + seq)).unwrap();
            assert_eq!(
                read_message(&mut a, &mut ia).await,
                (false, update(100 + seq).into_bytes())
            );
            assert_eq!(
                read_message(&mut a, &mut ia).await,
                (false, update(200 + seq).into_bytes())
            );
            assert_eq!(
                read_message(&mut b, &mut ib).await,
                (false, update(100 + seq).into_bytes())
            );
            plain.read_frame().await.unwrap();
        }
    }
    assert!(
        sizes[19] * 3 < sizes[0],
        "the context did not help: {sizes:?}"
    );

    // A newcomer gets plain frames until the stream restarts for it (within 32
    // publications), then follows it like the others, who go on without a hitch.
    let (mut late, _) = upgrade_offering(t.addr, OFFER).await;
    t.events.open().await;
    let mut il = new_inflate();
    let mut entered = None;
    for seq in 20..60 {
        t.hub.publish("parcels", update(seq));
        for (c, inf) in [(&mut a, &mut ia), (&mut b, &mut ib)] {
            assert_eq!(read_message(c, inf).await, (true, update(seq).into_bytes()));
        }
        plain.read_frame().await.unwrap();
        let (compressed, m) = read_message(&mut late, &mut il).await;
        assert_eq!(m, update(seq).as_bytes());
        match (entered, compressed) {
            (None, true) => entered = Some(seq),
            (Some(_), false) => panic!("left the stream at {seq}"),
            _ => {}
        }
    }
    let entered = entered.expect("the newcomer never entered the stream");
    assert!(entered <= 20 + 32, "entered at {entered}");
}

/// A follower whose queue refuses a frame of the stream (`DropNewest`) leaves it, gets plain
/// frames, and enters again at the next restart: every message it gets inflates correctly.
#[tokio::test]
async fn a_follower_that_misses_a_frame_leaves_the_stream_until_it_restarts() {
    let config = quiet_config()
        .compression(Compression::Topic { window_bits: 12 })
        .slow_consumer_policy(wshub::SlowConsumerPolicy::DropNewest)
        .max_queue_messages(4);
    let mut t = start(config, subscribing("parcels")).await;
    let (mut c, _) = upgrade_offering(t.addr, OFFER).await;
    t.events.open().await;
    let mut inf = new_inflate();
    t.hub.publish("parcels", update(0));
    assert_eq!(
        read_message(&mut c, &mut inf).await,
        (true, update(0).into_bytes())
    );
    // On this single-threaded runtime the connection cannot drain while the test publishes:
    // the queue takes 4 × 4 (the burst allowance of a socket that still takes data), the
    // rest are dropped.
    let dropped: usize = (1..30)
        .map(|seq| t.hub.publish("parcels", update(seq)).dropped)
        .sum();
    assert_eq!(dropped, 29 - 16);
    for seq in 1..17 {
        assert_eq!(
            read_message(&mut c, &mut inf).await,
            (true, update(seq).into_bytes())
        );
    }
    let mut back = None;
    for seq in 30..80 {
        t.hub.publish("parcels", update(seq));
        let (compressed, m) = read_message(&mut c, &mut inf).await;
        assert_eq!(m, update(seq).as_bytes(), "{seq}");
        match (back, compressed) {
            (None, true) => back = Some(seq),
            (Some(_), false) => panic!("left the stream again at {seq}"),
            _ => {}
        }
    }
    let back = back.expect("never entered the stream again");
    assert!(
        back > 30,
        "it must not follow a stream it has a gap in (back at {back})"
    );
}
