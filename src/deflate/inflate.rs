//! Inflating inbound messages with the size limit applied to the inflated size.

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};
use zlib_rs::{Inflate, InflateFlush, Status};

use crate::frame::ProtocolError;
use crate::message::CloseCode;

// ---------------------------------------------------------------------------------
// Inflation.

thread_local! {
    /// The inflater of every inbound compressed message (clients keep no context).
    static INFLATER: RefCell<Option<Box<Inflate>>> = const { RefCell::new(None) };
}

pub(super) const TOO_BIG: ProtocolError = ProtocolError {
    code: CloseCode::TOO_BIG,
    reason: "message too big once inflated",
};
pub(super) const BAD_DEFLATE: ProtocolError = ProtocolError {
    code: CloseCode::INVALID_PAYLOAD,
    reason: "invalid deflate data",
};

/// Inflates one message compressed without context; more than `max` inflated bytes is
/// refused with 1009 as soon as they are produced (memory and CPU bounded by `max`).
pub(crate) fn inflate(compressed: &[u8], max: usize) -> Result<Bytes, ProtocolError> {
    INFLATER.with_borrow_mut(|slot| {
        let inf = slot.get_or_insert_with(|| Box::new(Inflate::new(false, 15)));
        inf.reset(false);
        let result = inflate_with(inf, compressed, max);
        if result.is_err() {
            inf.reset(false);
        }
        result
    })
}

pub(super) fn inflate_with(
    inf: &mut Inflate,
    compressed: &[u8],
    max: usize,
) -> Result<Bytes, ProtocolError> {
    const TAIL: [u8; 4] = [0, 0, 0xFF, 0xFF];
    let mut out = BytesMut::with_capacity((compressed.len() * 4).clamp(64, 64 * 1024).min(max + 1));
    let mut ended = false;
    for (mut input, last) in [(compressed, false), (&TAIL[..], true)] {
        while !ended {
            if out.len() == out.capacity() {
                if out.len() > max {
                    return Err(TOO_BIG);
                }
                out.reserve(out.capacity().min(max + 1 - out.len()).max(64));
            }
            let len = out.len();
            let spare = out.capacity() - len;
            out.resize(len + spare, 0);
            let (in0, out0) = (inf.total_in(), inf.total_out());
            let status = inf
                .decompress(input, &mut out[len..], InflateFlush::SyncFlush)
                .map_err(|_| BAD_DEFLATE)?;
            let produced = (inf.total_out() - out0) as usize;
            out.truncate(len + produced);
            input = &input[(inf.total_in() - in0) as usize..];
            if out.len() > max {
                return Err(TOO_BIG);
            }
            match status {
                Status::StreamEnd => ended = true,
                // Input used up and room left: this part is done.
                _ if input.is_empty() && produced < spare => break,
                Status::BufError if produced == 0 && !input.is_empty() => {
                    return Err(BAD_DEFLATE);
                }
                _ => {}
            }
        }
        if last && !ended && !input.is_empty() {
            return Err(BAD_DEFLATE);
        }
    }
    Ok(out.freeze())
}
