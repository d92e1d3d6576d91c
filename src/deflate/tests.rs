//! The codec's unit tests: negotiation, round trips, bombs, streams.

use http::HeaderMap;
use http::header::SEC_WEBSOCKET_EXTENSIONS;

use super::compress::*;
use super::inflate::*;
use super::negotiate::*;
use super::*;
use crate::config::{Config, SlowConsumerPolicy};
use crate::message::CloseCode;
use http::HeaderValue;

fn offer(v: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.append(SEC_WEBSOCKET_EXTENSIONS, HeaderValue::from_str(v).unwrap());
    h
}

fn config(mode: Compression) -> Config {
    Config::default().compression(mode).compression_min_size(0)
}

fn answer_of(mode: Compression, v: &str) -> Option<String> {
    negotiate(&config(mode), &offer(v)).map(|(_, a)| a)
}

#[test]
fn negotiation_follows_rfc_7692() {
    let shared = Compression::Shared;
    assert_eq!(
        answer_of(shared, "permessage-deflate; client_max_window_bits").as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
    assert_eq!(
        answer_of(shared, "permessage-deflate; server_max_window_bits=10").as_deref(),
        Some(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10"
        )
    );
    // Declined: a window outside 8..=15, a repeated or unknown parameter, a value where
    // none is allowed, leading zeros; the next offer is taken.
    for bad in [
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; client_max_window_bits=0",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_max_window_bits=010",
        "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
        "permessage-deflate; x_unknown",
        "permessage-deflate; server_no_context_takeover=1",
        "x-webkit-deflate-frame",
    ] {
        assert_eq!(answer_of(shared, bad), None, "{bad}");
        let next = format!("{bad}, permessage-deflate");
        assert!(answer_of(shared, &next).is_some(), "{next}");
    }
    assert!(answer_of(shared, "permessage-deflate; client_max_window_bits=\"12\"").is_some());
    assert_eq!(answer_of(Compression::Off, "permessage-deflate"), None);
    let dedicated = Compression::Dedicated { window_bits: 12 };
    let (n, a) = negotiate(
        &config(dedicated),
        &offer("permessage-deflate; server_max_window_bits=14"),
    )
    .unwrap();
    assert!(n.takeover);
    assert_eq!(n.server_window, 12);
    assert_eq!(
        a,
        "permessage-deflate; client_no_context_takeover; server_max_window_bits=12"
    );
    let (n, _) = negotiate(
        &config(dedicated),
        &offer("permessage-deflate; server_max_window_bits=8"),
    )
    .unwrap();
    assert!(
        !n.takeover,
        "a window of 8 cannot be kept by zlib: shared behaviour"
    );
    let (n, _) = negotiate(
        &config(dedicated),
        &offer("permessage-deflate; server_no_context_takeover"),
    )
    .unwrap();
    assert!(!n.takeover);
    // The topic mode: no server_no_context_takeover, and a client whose window is
    // smaller than the streams' gets the shared behaviour.
    let topic = config(Compression::Topic { window_bits: 12 });
    let (n, a) = negotiate(&topic, &offer("permessage-deflate")).unwrap();
    assert!(n.stream && !n.takeover);
    assert_eq!(a, "permessage-deflate; client_no_context_takeover");
    let (n, a) = negotiate(
        &topic,
        &offer("permessage-deflate; server_max_window_bits=10"),
    )
    .unwrap();
    assert!(!n.stream);
    assert!(a.contains("server_no_context_takeover"), "{a}");
    let drop_oldest = topic.slow_consumer_policy(SlowConsumerPolicy::DropOldest);
    let (n, _) = negotiate(&drop_oldest, &offer("permessage-deflate")).unwrap();
    assert!(!n.stream, "a dropped frame would corrupt the stream");
}

#[test]
fn a_topic_stream_restarts_only_for_newcomers() {
    let n = Negotiated {
        server_window: 12,
        takeover: false,
        stream: true,
        min_size: 16,
    };
    let mut st = TopicStream::new(&n);
    let msg = crate::frame::encode(
        crate::frame::OP_TEXT,
        br#"{"type":"metrics","host":"web-1","cpu":0.42,"mem":0.77}"#,
    );
    let (first, e1, prev) = st.compress(&msg).unwrap();
    assert_eq!(prev, Some(0), "the first publication starts the stream");
    let (second, e2, prev) = st.compress(&msg).unwrap();
    assert_eq!((e2, prev), (e1, None));
    assert!(second.len() < first.len() / 2, "the context helps");
    // Someone waits: the stream restarts after RESTART_EVERY publications, not before.
    st.set_waiting(true);
    for _ in 2..RESTART_EVERY {
        assert_eq!(st.compress(&msg).unwrap().2, None);
    }
    let (_, e3, prev) = st.compress(&msg).unwrap();
    assert_eq!(prev, Some(e1));
    assert_ne!(e3, e1);
    // Below the minimum size: plain for everyone, the stream untouched.
    assert!(
        st.compress(&crate::frame::encode(crate::frame::OP_TEXT, b"tiny"))
            .is_none()
    );
}

#[test]
fn round_trips_and_bounds_inflation() {
    let payload = br#"{"cpu":0.42,"mem":0.77,"host":"web-1","ts":1700000000}"#.repeat(20);
    let plain = crate::frame::encode(crate::frame::OP_TEXT, &payload);
    let c = compress_shared(&plain).unwrap();
    assert_eq!(c[0], 0xC1);
    let (_, body) = split_frame(&c);
    assert!(body.len() < payload.len() / 4);
    assert_eq!(&inflate(body, 1 << 20).unwrap()[..], &payload[..]);
    assert_eq!(
        inflate(body, payload.len() - 1).unwrap_err().code,
        CloseCode::TOO_BIG
    );
    assert_eq!(
        inflate(&[0xFF, 0xFF, 0xFF], 1 << 20).unwrap_err().code,
        CloseCode::INVALID_PAYLOAD
    );
    // A bomb: 10 MB of zeros in ~10 KB, refused at the limit.
    let mut d = new_deflate(SHARED_LEVEL, 15, 8);
    let mut bomb = Vec::new();
    assert!(deflate_message(&mut d, &vec![0; 10 << 20], &mut bomb));
    assert!(bomb.len() < 20_000);
    assert_eq!(
        inflate(&bomb, 1 << 20).unwrap_err().code,
        CloseCode::TOO_BIG
    );
    // An empty message.
    let mut e = Vec::new();
    d.reset();
    assert!(deflate_message(&mut d, b"", &mut e));
    assert_eq!(&inflate(&e, 10).unwrap()[..], b"");
    // Incompressible data is sent plain.
    let noise: Vec<u8> = (0..64u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    assert!(compress_shared(&crate::frame::encode(crate::frame::OP_BINARY, &noise)).is_none());
}

#[test]
fn dedicated_keeps_its_context() {
    let n = Negotiated {
        server_window: 12,
        takeover: true,
        stream: false,
        min_size: 0,
    };
    let mut d = Dedicated::new(&n).unwrap();
    let msg = br#"{"type":"metrics","host":"web-1","cpu":0.42,"mem":0.77}"#;
    let (mut first, mut second) = (Vec::new(), Vec::new());
    d.write(
        &crate::frame::encode(crate::frame::OP_TEXT, msg),
        &mut first,
    );
    d.write(
        &crate::frame::encode(crate::frame::OP_TEXT, msg),
        &mut second,
    );
    assert!(
        second.len() < first.len() / 2,
        "{} vs {}",
        second.len(),
        first.len()
    );
    // A control frame passes through untouched.
    let mut ping = Vec::new();
    d.write(
        &crate::frame::encode(crate::frame::OP_PING, b"x"),
        &mut ping,
    );
    assert_eq!(ping, [0x89, 1, b'x']);
}
