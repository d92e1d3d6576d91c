//! permessage-deflate (RFC 7692), built for fan-out: the negotiation, the shared outbound frame
//! that is compressed at most once per publication, inbound inflation with the limit applied to
//! the inflated size, and the per-connection compressor of the dedicated mode.
//!
//! This file holds what the rest of the crate names (the negotiated parameters, the shared
//! outbound frame); `negotiate.rs` the modes and the RFC 7692 negotiation, `compress.rs` the
//! shared, dedicated and per-topic compressors, `inflate.rs` inbound inflation.
//!
//! Without the `deflate` feature only the types the rest of the crate names are compiled: no
//! offer is ever accepted, so no session has [`Negotiated`] parameters and RSV1 stays a
//! protocol error.

use bytes::Bytes;

#[cfg(feature = "deflate")]
pub(crate) use compress::{Dedicated, TopicStream};
#[cfg(feature = "deflate")]
pub(crate) use inflate::inflate;
#[cfg(feature = "deflate")]
pub(crate) use negotiate::negotiate;
#[cfg(feature = "deflate")]
pub use negotiate::{Compression, NoCompression};

/// The parameters a session negotiated (only ever built with the `deflate` feature).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Negotiated {
    /// The largest LZ77 window the client accepts from the server (`server_max_window_bits`),
    /// 8..=15. Without context takeover a message of at most `2^bits` bytes cannot refer back
    /// further than the window, whatever window compressed it.
    #[cfg_attr(not(feature = "deflate"), allow(dead_code))]
    pub(crate) server_window: u8,
    /// The server keeps its compression context between messages (the dedicated mode): the
    /// connection compresses at write time with a compressor of its own.
    pub(crate) takeover: bool,
    /// The topic mode: the session can follow one topic's compression stream (see
    /// [`TopicStream`]); every other message goes to it uncompressed.
    pub(crate) stream: bool,
    /// Messages shorter than this many bytes are sent uncompressed.
    #[cfg_attr(not(feature = "deflate"), allow(dead_code))]
    pub(crate) min_size: u32,
}

impl Negotiated {
    /// Whether a frame compressed once without context can go to this session as it is.
    #[cfg(feature = "deflate")]
    fn shares(&self, payload_len: usize) -> bool {
        // The shared compressor's own window is 15 bits.
        !self.takeover
            && !self.stream
            && payload_len >= self.min_size as usize
            && (self.server_window >= 15 || payload_len <= 1 << self.server_window)
    }
}

/// One outbound data frame handed to many recipients: the plain frame, and the compressed frame
/// computed at most once, on the first recipient that negotiated compression without context
/// takeover. Recipients that did not negotiate it (or keep a context of their own, or accept a
/// window too small for the message) get the plain frame.
pub(crate) struct OutFrame {
    plain: Bytes,
    /// The payload's length, for the per-recipient window check.
    #[cfg(feature = "deflate")]
    payload_len: usize,
    #[cfg(feature = "deflate")]
    compressed: std::cell::OnceCell<Option<Bytes>>,
}

impl OutFrame {
    pub(crate) fn new(plain: Bytes) -> Self {
        OutFrame {
            #[cfg(feature = "deflate")]
            payload_len: compress::split_frame(&plain).1.len(),
            plain,
            #[cfg(feature = "deflate")]
            compressed: std::cell::OnceCell::new(),
        }
    }

    /// The frame to queue for a session with these parameters.
    pub(crate) fn for_session(&self, deflate: Option<&Negotiated>) -> Bytes {
        #[cfg(feature = "deflate")]
        if let Some(n) = deflate {
            if n.shares(self.payload_len) {
                if let Some(c) = self
                    .compressed
                    .get_or_init(|| compress::compress_shared(&self.plain))
                {
                    return c.clone();
                }
            }
        }
        #[cfg(not(feature = "deflate"))]
        let _ = deflate;
        self.plain.clone()
    }
}

/// The frame to queue for one session (a `send_to`, a replay): compressed for it when it
/// negotiated compression without context takeover.
pub(crate) fn for_one(deflate: Option<&Negotiated>, plain: Bytes) -> Bytes {
    if deflate.is_none() {
        return plain;
    }
    OutFrame::new(plain).for_session(deflate)
}

/// Inflation without the `deflate` feature: never reached, since RSV1 is refused before.
#[cfg(not(feature = "deflate"))]
pub(crate) fn inflate(
    _compressed: &[u8],
    _max: usize,
) -> Result<Bytes, crate::frame::ProtocolError> {
    Err(crate::frame::ProtocolError {
        code: crate::message::CloseCode::PROTOCOL_ERROR,
        reason: "compression was not negotiated",
    })
}

#[cfg(feature = "deflate")]
mod compress;
#[cfg(feature = "deflate")]
mod inflate;
#[cfg(feature = "deflate")]
mod negotiate;
#[cfg(all(test, feature = "deflate"))]
mod tests;
