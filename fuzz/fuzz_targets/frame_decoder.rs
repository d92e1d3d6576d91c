//! The frame decoder on arbitrary bytes: it must never panic, never stall (consume nothing
//! without finishing), and give the same events and the same refusal however the bytes are
//! split across reads. Every event must respect the protocol's limits. A second part frames
//! an arbitrary message as the hub does, masks it as a client would, and decodes it back.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use wshub::__fuzz::{FrameDecoder, FrameEvent, encode_frame};
use wshub::Message;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    /// The message size limit (small, so limits are reached).
    max_message: u16,
    /// Lengths of successive reads (0 counts as 1); the last one repeats.
    splits: Vec<u8>,
    bytes: &'a [u8],
    roundtrip: Option<(bool, &'a [u8], [u8; 4])>,
}

type Outcome = (Vec<FrameEvent>, Option<(u16, String)>);

/// Decodes `chunks` read after read, as a connection does.
fn run<'a>(max: usize, chunks: impl Iterator<Item = &'a [u8]>) -> Outcome {
    let mut d = FrameDecoder::new(max);
    let mut events = Vec::new();
    for chunk in chunks {
        let mut input = chunk;
        while !input.is_empty() {
            match d.decode(input) {
                Ok((used, event)) => {
                    assert!(used <= input.len(), "used {used} of {}", input.len());
                    assert!(
                        used > 0 || event.is_some(),
                        "no progress on {} bytes",
                        input.len()
                    );
                    input = &input[used..];
                    if let Some(e) = event {
                        check(&e, max);
                        events.push(e);
                    }
                }
                Err((code, reason)) => {
                    assert!(
                        matches!(code, 1002 | 1007 | 1009),
                        "refused with {code} ({reason})"
                    );
                    return (events, Some((code, reason.to_string())));
                }
            }
        }
    }
    (events, None)
}

fn check(e: &FrameEvent, max: usize) {
    if let Some(m) = e.message() {
        assert!(
            m.len() <= max,
            "a {}-byte message under a {max} limit",
            m.len()
        );
        if m.is_text() {
            assert!(
                std::str::from_utf8(m.as_bytes()).is_ok(),
                "text that is not UTF-8"
            );
        }
    }
    if let Some(p) = e.ping() {
        assert!(p.len() <= 125, "a {}-byte ping", p.len());
    }
    if let Some(Some(close)) = e.close() {
        assert!(close.code.is_sendable(), "close code {}", close.code);
        assert!(close.reason.len() <= 123);
    }
}

fn client_frame(server_frame: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let header = match server_frame[1] & 0x7F {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    let mut out = server_frame[..header].to_vec();
    out[1] |= 0x80;
    out.extend_from_slice(&mask);
    out.extend(
        server_frame[header..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4]),
    );
    out
}

fuzz_target!(|input: Input<'_>| {
    let max = usize::from(input.max_message);
    let whole = run(max, std::iter::once(input.bytes));

    let mut chunks = Vec::new();
    let mut rest = input.bytes;
    let mut sizes = input
        .splits
        .iter()
        .copied()
        .chain(std::iter::repeat(input.splits.last().copied().unwrap_or(1)));
    while !rest.is_empty() {
        let n = usize::from(sizes.next().unwrap_or(1).max(1)).min(rest.len());
        chunks.push(&rest[..n]);
        rest = &rest[n..];
    }
    let split = run(max, chunks.into_iter());
    assert_eq!(whole, split, "the split changed the outcome");

    if let Some((text, payload, mask)) = input.roundtrip {
        let message = match (text, std::str::from_utf8(payload)) {
            (true, Ok(s)) => Message::text(s.to_string()),
            _ => Message::binary(payload.to_vec()),
        };
        let frame = client_frame(&encode_frame(&message), mask);
        let (events, error) = run(payload.len(), frame.chunks(7));
        assert_eq!(error, None);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].message(), Some(&message));
    }
});
