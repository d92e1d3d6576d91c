//! permessage-deflate's negotiation (RFC 7692 sections 5 and 7): the modes a hub offers
//! ([`Compression`]), reading a client's offers and answering the first one it can honour.

use http::HeaderMap;
use http::header::SEC_WEBSOCKET_EXTENSIONS;

use super::Negotiated;
use crate::config::{Config, SlowConsumerPolicy};

/// permessage-deflate (RFC 7692) on a [`Config`](crate::Config): how a hub compresses.
///
/// | mode | context | compression state per connection | CPU per publication |
/// |---|---|---|---|
/// | `Off` | — | none | — |
/// | `Shared` | none, either way | none: compressors and inflaters are per worker thread | one compression per publication, whatever the number of recipients |
/// | `Dedicated` | server → client | none until the first compressed message, then one compressor (154 KiB with `window_bits` 12; see below) | one compression per recipient |
/// | `Topic` | server → client, per topic | none: one compressor per topic (154 KiB with `window_bits` 12) | one compression per publication |
///
/// In every mode the client is asked not to keep its context (`client_no_context_takeover`),
/// so inbound messages are inflated by a per-thread inflater and a connection never holds
/// inflate state. Messages shorter than [`Config::compression_min_size`] go uncompressed.
///
/// [`Config::compression_min_size`]: crate::Config::compression_min_size
///
/// ```
/// use wshub::{Compression, Config};
///
/// let config = Config::default().compression(Compression::Shared);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compression {
    /// No compression is negotiated (the default, as in the other servers: compression
    /// costs CPU and, with context takeover, memory; turn it on where bandwidth matters).
    #[default]
    Off,
    /// No context takeover in either direction: every message is compressed on its own,
    /// once per publication, and the compressed frame is shared by every recipient that
    /// negotiated it, exactly like the plain frame. No compression state per connection.
    /// About 0.65 wire/payload on small JSON messages.
    Shared,
    /// The server keeps its compression context between the messages of a connection
    /// (better ratios on repetitive streams: about 0.26 wire/payload on dashboard JSON), at
    /// the price of one compression per recipient and one compressor per connection,
    /// allocated on its first compressed message (none before: an idle connection costs
    /// nothing more). With zlib-rs its memory is a 128 KiB hash table plus
    /// `4 << window_bits` bytes plus about 7 KiB: 157,824 bytes (154 KiB) with
    /// `window_bits` 12. `window_bits` is 9..=15 (taken into that range); a client that asks
    /// for a smaller window gets the shared behaviour instead.
    Dedicated {
        /// The LZ77 window: 2^`window_bits` bytes of context.
        window_bits: u8,
    },
    /// Compress once *and* keep context: each topic has one compressor, kept from
    /// publication to publication, and its subscribers follow that stream: a publication is
    /// compressed once and the same frame goes to every follower, with the ratios of
    /// context takeover (about 0.26 wire/payload on dashboard JSON). A session follows at
    /// most one topic stream, entered at a point where the stream restarts without history
    /// (at its first publication, then at most every 32 publications while someone waits);
    /// until then, and for everything else sent to it (other topics, broadcasts, `send_to`,
    /// replays), it gets uncompressed frames, which never enter the client's window. A
    /// follower whose queue refuses a frame (`DropNewest`) leaves the stream until its next
    /// restart. Memory: one compressor per topic that has followers (about 154 KiB with
    /// `window_bits` 12), nothing per connection. With
    /// [`SlowConsumerPolicy::DropOldest`](crate::SlowConsumerPolicy::DropOldest), which
    /// could drop a frame the following ones refer to, it is [`Shared`](Self::Shared); so
    /// it is for a client whose window is smaller than `window_bits`.
    Topic {
        /// The LZ77 window of each topic's compressor: 2^`window_bits` bytes (9..=15).
        window_bits: u8,
    },
}

/// Put in a [`Request`](crate::Request)'s extensions (for instance from
/// [`Handler::authorize`](crate::Handler::authorize)) to decline compression for that
/// session, whatever the client offered.
///
/// ```
/// # struct Auth;
/// # #[wshub::async_trait]
/// # impl wshub::Handler for Auth {
/// async fn authorize(&self, request: &mut wshub::Request) -> Result<(), wshub::Reject> {
///     if request.header("x-no-compression").is_some() {
///         request.extensions_mut().insert(wshub::NoCompression);
///     }
///     Ok(())
/// }
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoCompression;

/// Compression level of the shared compressor (zlib's default): it runs once per
/// publication, and without context every byte of ratio comes from within the message.
pub(super) const SHARED_LEVEL: i32 = 6;
/// Compression level of the per-connection compressors. Measured with the peer benchmark
/// (400-byte dashboard JSON, window 12, one run): level 1 gives 0.32 wire/payload at
/// 2.8 µs of server CPU per delivery, 2 gives 0.30 at 7.4, 3 gives 0.26 at 6.7, 4 gives
/// 0.26 at 7.1, 6 gives 0.25 at 8.3. Level 3 is where the ratio stops improving.
pub(super) const DEDICATED_LEVEL: i32 = 3;
/// zlib's memory level for the per-connection compressors: 1 KiB symbol buffer.
pub(super) const DEDICATED_MEM_LEVEL: i32 = 4;

// ---------------------------------------------------------------------------------
// Negotiation (RFC 7692 sections 5 and 7).

/// One valid permessage-deflate offer.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Offer {
    pub(super) server_no_context_takeover: bool,
    pub(super) client_no_context_takeover: bool,
    pub(super) server_max_window_bits: Option<u8>,
    /// `Some(None)`: offered without a value.
    pub(super) client_max_window_bits: Option<Option<u8>>,
}

/// Splits on `sep` outside double quotes.
pub(super) fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in s.char_indices() {
        if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            out.push(&s[start..i]);
            start = i + 1;
        }
    }
    out.push(&s[start..]);
    out
}

pub(super) fn window_bits(value: &str) -> Option<u8> {
    let v = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    // 1*DIGIT without leading zeros, 8..=15.
    if v.is_empty() || v.len() > 2 || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u8 = v.parse().ok()?;
    (8..=15).contains(&n).then_some(n)
}

/// Parses one extension's parameters; `None` when the offer must be declined (unknown or
/// repeated parameter, a value where none is allowed, a window outside 8..=15).
pub(super) fn parse_offer(params: &[&str]) -> Option<Offer> {
    let mut o = Offer::default();
    let mut seen = [false; 4];
    for p in params {
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (p.trim(), None),
        };
        let slot = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() => {
                o.server_no_context_takeover = true;
                0
            }
            "client_no_context_takeover" if value.is_none() => {
                o.client_no_context_takeover = true;
                1
            }
            "server_max_window_bits" => {
                o.server_max_window_bits = Some(window_bits(value?)?);
                2
            }
            "client_max_window_bits" => {
                o.client_max_window_bits = Some(match value {
                    None => None,
                    Some(v) => Some(window_bits(v)?),
                });
                3
            }
            _ => return None,
        };
        if std::mem::replace(&mut seen[slot], true) {
            return None;
        }
    }
    Some(o)
}

/// Picks the first permessage-deflate offer of `headers` this mode can honour. Returns the
/// session's parameters and the `Sec-WebSocket-Extensions` value of the response.
pub(crate) fn negotiate(config: &Config, headers: &HeaderMap) -> Option<(Negotiated, String)> {
    let (mut mode, min_size) = (config.compression, config.compression_min_size);
    if mode == Compression::Off {
        return None;
    }
    if config.slow_consumer == SlowConsumerPolicy::DropOldest {
        // Dropping a queued frame of a topic stream would corrupt the frames behind it.
        if let Compression::Topic { .. } = mode {
            mode = Compression::Shared;
        }
    }
    let values = headers
        .get_all(SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok());
    for value in values {
        for ext in split_unquoted(value, ',') {
            let parts = split_unquoted(ext, ';');
            if !parts[0].trim().eq_ignore_ascii_case("permessage-deflate") {
                continue;
            }
            let Some(offer) = parse_offer(&parts[1..]) else {
                continue;
            };
            return Some(answer(mode, min_size, &offer));
        }
    }
    None
}

pub(super) fn answer(mode: Compression, min_size: usize, offer: &Offer) -> (Negotiated, String) {
    let client_window = offer.server_max_window_bits.unwrap_or(15);
    let (takeover, stream, server_window) = match mode {
        Compression::Dedicated { window_bits }
            if !offer.server_no_context_takeover && client_window >= 9 =>
        {
            (true, false, window_bits.clamp(9, 15).min(client_window))
        }
        // A stream's window must fit in the client's.
        Compression::Topic { window_bits }
            if !offer.server_no_context_takeover && client_window >= window_bits.clamp(9, 15) =>
        {
            (false, true, window_bits.clamp(9, 15))
        }
        _ => (false, false, client_window),
    };
    let mut response = String::from("permessage-deflate");
    if !takeover && !stream {
        response.push_str("; server_no_context_takeover");
    }
    // Always allowed (section 7.1.1.2): inbound messages are inflated per thread.
    response.push_str("; client_no_context_takeover");
    if offer.server_max_window_bits.is_some() {
        // Must be answered, with a value no larger than offered (section 7.1.2.1).
        response.push_str(&format!("; server_max_window_bits={server_window}"));
    }
    let negotiated = Negotiated {
        server_window,
        takeover,
        stream,
        min_size: u32::try_from(min_size).unwrap_or(u32::MAX),
    };
    (negotiated, response)
}
