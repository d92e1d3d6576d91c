//! The HTTP upgrade on arbitrary requests, split arbitrarily across reads, under an arbitrary
//! configuration: `read_head` and the handshake policy must never panic, every answer must be
//! a well-formed HTTP response with a status from the documented set, and an accepted request
//! must really be a valid RFC 6455 upgrade.
#![no_main]

#[path = "common.rs"]
mod common;

use std::net::SocketAddr;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use wshub::__fuzz::{Handshake, handshake};

const NAMES: [&str; 9] = [
    "Host",
    "Upgrade",
    "Connection",
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "Origin",
    "Sec-WebSocket-Protocol",
    "Sec-WebSocket-Extensions",
    "Content-Length",
];
const VALUES: [&str; 10] = [
    "127.0.0.1:9001",
    "websocket",
    "Upgrade",
    "dGhlIHNhbXBsZSBub25jZQ==",
    "13",
    "http://127.0.0.1:9001",
    "keep-alive, Upgrade",
    "chat, superchat",
    "https://app.example.com",
    "*",
];

#[derive(Arbitrary, Debug)]
enum Value {
    Known(u8),
    Any(String),
}

#[derive(Arbitrary, Debug)]
enum Request {
    Raw(Vec<u8>),
    /// A request built from likely parts, to get past the parser into the policy.
    Built {
        method: u8,
        target: String,
        http11: bool,
        headers: Vec<(u8, Value)>,
        after: Vec<u8>,
    },
}

impl Request {
    fn bytes(self) -> Vec<u8> {
        match self {
            Request::Raw(b) => b,
            Request::Built {
                method,
                target,
                http11,
                headers,
                after,
            } => {
                let method = ["GET", "POST", "HEAD", "get"][usize::from(method % 4)];
                let version = if http11 { "HTTP/1.1" } else { "HTTP/1.0" };
                let mut out = format!("{method} /{target} {version}\r\n");
                for (name, value) in headers {
                    let name = NAMES[usize::from(name) % NAMES.len()];
                    let value = match value {
                        Value::Known(i) => VALUES[usize::from(i) % VALUES.len()].to_string(),
                        Value::Any(s) => s,
                    };
                    out.push_str(&format!("{name}: {value}\r\n"));
                }
                out.push_str("\r\n");
                let mut out = out.into_bytes();
                out.extend(after);
                out
            }
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    config: Vec<common::Setter>,
    peer: ([u8; 4], u16),
    splits: Vec<u16>,
    request: Request,
}

/// Parses a complete response: its status, and checks its framing.
fn parse_response(bytes: &[u8]) -> u16 {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(len) = r.parse(bytes).expect("a well-formed response") else {
        panic!(
            "an incomplete response: {:?}",
            String::from_utf8_lossy(bytes)
        );
    };
    let status = r.code.expect("a status");
    let lengths: Vec<&[u8]> = r
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| h.value)
        .collect();
    if status == 101 {
        assert!(lengths.is_empty());
        assert_eq!(len, bytes.len());
    } else {
        assert_eq!(lengths.len(), 1, "one content-length");
        let n: usize = std::str::from_utf8(lengths[0]).unwrap().parse().unwrap();
        assert_eq!(len + n, bytes.len(), "content-length matches the body");
    }
    status
}

fuzz_target!(|input: Input| {
    let config = common::build(&input.config);
    let max = config_max_head(&input.config);
    let bytes = input.request.bytes();
    let mut chunks = Vec::new();
    let mut rest = &bytes[..];
    let mut sizes = input.splits.iter().copied();
    while !rest.is_empty() {
        let n = usize::from(sizes.next().unwrap_or(u16::MAX).max(1)).min(rest.len());
        chunks.push(&rest[..n]);
        rest = &rest[n..];
    }
    let peer = SocketAddr::from(input.peer);
    match handshake(config, &chunks, peer) {
        Handshake::Gone => {}
        Handshake::Answered { status, response } => {
            assert_eq!(parse_response(&response), status);
            assert!(
                matches!(status, 400 | 403 | 405 | 426 | 429 | 431 | 503),
                "status {status}"
            );
        }
        Handshake::Accepted { response, rest } => {
            assert_eq!(parse_response(&response), 101);
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            let Ok(httparse::Status::Complete(len)) = req.parse(&bytes) else {
                panic!("accepted a request httparse does not parse whole");
            };
            assert!(
                len <= 2 * max + 4096,
                "accepted a {len}-byte head under a {max} limit"
            );
            assert!(
                bytes[len..].starts_with(&rest),
                "the bytes after the head changed"
            );
            assert_eq!(req.method, Some("GET"));
            assert_eq!(req.version, Some(1));
            let get = |name: &str| {
                req.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| h.value)
            };
            assert_eq!(get("sec-websocket-version"), Some(&b"13"[..]));
            assert_eq!(get("sec-websocket-key").map(<[u8]>::len), Some(24));
            assert!(get("host").is_some());
        }
    }
});

/// The head limit the setters left (as `Config::max_handshake_bytes` clamps it).
fn config_max_head(setters: &[common::Setter]) -> usize {
    setters.iter().fold(16 * 1024, |max, s| match s {
        common::Setter::MaxHandshakeBytes(n) => (*n).max(256),
        _ => max,
    })
}
