//! permessage-deflate (RFC 7692), built for fan-out: the negotiation, the shared outbound frame
//! that is compressed at most once per publication, inbound inflation with the limit applied to
//! the inflated size, and the per-connection compressor of the dedicated mode.
//!
//! Without the `deflate` feature only the types the rest of the crate names are compiled: no
//! offer is ever accepted, so no session has [`Negotiated`] parameters and RSV1 stays a
//! protocol error.

use bytes::Bytes;

#[cfg(feature = "deflate")]
pub use codec::{Compression, NoCompression};
#[cfg(feature = "deflate")]
pub(crate) use codec::{Dedicated, TopicStream, inflate, negotiate};

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
            payload_len: codec::split_frame(&plain).1.len(),
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
                    .get_or_init(|| codec::compress_shared(&self.plain))
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
mod codec {
    use std::cell::RefCell;

    use bytes::{BufMut, Bytes, BytesMut};
    use http::HeaderMap;
    use http::header::SEC_WEBSOCKET_EXTENSIONS;
    use zlib_rs::{Deflate, DeflateConfig, DeflateFlush, Inflate, InflateFlush, Status, Strategy};

    use super::Negotiated;
    use crate::config::{Config, SlowConsumerPolicy};
    use crate::frame::ProtocolError;
    use crate::message::CloseCode;

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
    const SHARED_LEVEL: i32 = 6;
    /// Compression level of the per-connection compressors. Measured with the peer benchmark
    /// (400-byte dashboard JSON, window 12, one run): level 1 gives 0.32 wire/payload at
    /// 2.8 µs of server CPU per delivery, 2 gives 0.30 at 7.4, 3 gives 0.26 at 6.7, 4 gives
    /// 0.26 at 7.1, 6 gives 0.25 at 8.3. Level 3 is where the ratio stops improving.
    const DEDICATED_LEVEL: i32 = 3;
    /// zlib's memory level for the per-connection compressors: 1 KiB symbol buffer.
    const DEDICATED_MEM_LEVEL: i32 = 4;

    // ---------------------------------------------------------------------------------
    // Negotiation (RFC 7692 sections 5 and 7).

    /// One valid permessage-deflate offer.
    #[derive(Debug, Default, PartialEq, Eq)]
    struct Offer {
        server_no_context_takeover: bool,
        client_no_context_takeover: bool,
        server_max_window_bits: Option<u8>,
        /// `Some(None)`: offered without a value.
        client_max_window_bits: Option<Option<u8>>,
    }

    /// Splits on `sep` outside double quotes.
    fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
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

    fn window_bits(value: &str) -> Option<u8> {
        let v = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        // 1*DIGIT without leading zeros, 8..=15.
        if v.is_empty()
            || v.len() > 2
            || v.starts_with('0')
            || !v.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let n: u8 = v.parse().ok()?;
        (8..=15).contains(&n).then_some(n)
    }

    /// Parses one extension's parameters; `None` when the offer must be declined (unknown or
    /// repeated parameter, a value where none is allowed, a window outside 8..=15).
    fn parse_offer(params: &[&str]) -> Option<Offer> {
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

    fn answer(mode: Compression, min_size: usize, offer: &Offer) -> (Negotiated, String) {
        let client_window = offer.server_max_window_bits.unwrap_or(15);
        let (takeover, stream, server_window) = match mode {
            Compression::Dedicated { window_bits }
                if !offer.server_no_context_takeover && client_window >= 9 =>
            {
                (true, false, window_bits.clamp(9, 15).min(client_window))
            }
            // A stream's window must fit in the client's.
            Compression::Topic { window_bits }
                if !offer.server_no_context_takeover
                    && client_window >= window_bits.clamp(9, 15) =>
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

    // ---------------------------------------------------------------------------------
    // Compression.

    thread_local! {
        /// The compressor of shared-mode messages (no context): one per worker thread.
        static SHARED: RefCell<Option<Box<Deflate>>> = const { RefCell::new(None) };
        /// Where a per-connection compressor writes before the frame header is known.
        static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        /// The inflater of every inbound compressed message (clients keep no context).
        static INFLATER: RefCell<Option<Box<Inflate>>> = const { RefCell::new(None) };
    }

    fn new_deflate(level: i32, window_bits: u8, mem_level: i32) -> Box<Deflate> {
        Box::new(Deflate::new_with_config(DeflateConfig {
            level,
            window_bits: -i32::from(window_bits),
            mem_level,
            strategy: Strategy::Default,
            ..DeflateConfig::default()
        }))
    }

    /// The header length and payload of a server frame (unmasked).
    pub(crate) fn split_frame(frame: &[u8]) -> (u8, &[u8]) {
        let header = match frame.get(1).map(|b| b & 0x7F) {
            Some(126) => 4,
            Some(127) => 10,
            _ => 2,
        };
        (frame[0], frame.get(header..).unwrap_or(&[]))
    }

    /// Deflates `payload` as one message: a sync flush with its 4-byte tail removed (section
    /// 7.2.1), appended to `out`.
    fn deflate_message(d: &mut Deflate, payload: &[u8], out: &mut Vec<u8>) -> bool {
        let start = out.len();
        // Deflate's worst case plus the sync flush's empty block.
        out.reserve(payload.len() + payload.len() / 1000 + 64);
        let mut input = payload;
        loop {
            let before_in = d.total_in();
            let before_out = d.total_out();
            let len = out.len();
            let spare = out.capacity() - len;
            out.resize(len + spare, 0);
            let result = d.compress(input, &mut out[len..], DeflateFlush::SyncFlush);
            let produced = (d.total_out() - before_out) as usize;
            out.truncate(len + produced);
            input = &input[(d.total_in() - before_in) as usize..];
            match result {
                Ok(Status::Ok | Status::BufError | Status::StreamEnd) => {}
                Err(_) => return false,
            }
            // Done when all the input is in and the flush left output space unused.
            if input.is_empty() && produced < spare {
                break;
            }
            out.reserve(out.capacity().max(256));
        }
        if out.len() - start >= 4 && out.ends_with(&[0, 0, 0xFF, 0xFF]) {
            out.truncate(out.len() - 4);
        } else {
            out.truncate(start);
            return false;
        }
        if out.len() == start {
            // An empty message compresses to a single 0x00 (section 7.2.3.6).
            out.push(0);
        }
        true
    }

    fn put_header(buf: &mut BytesMut, first: u8, len: usize) {
        buf.put_u8(first);
        if len < 126 {
            buf.put_u8(len as u8);
        } else if len <= u16::MAX as usize {
            buf.put_u8(126);
            buf.put_u16(len as u16);
        } else {
            buf.put_u8(127);
            buf.put_u64(len as u64);
        }
    }

    fn frame(first: u8, compressed: &[u8]) -> Bytes {
        let mut buf = BytesMut::with_capacity(compressed.len() + 10);
        put_header(&mut buf, first | 0x40, compressed.len());
        buf.extend_from_slice(compressed);
        buf.freeze()
    }

    /// The compressed form of a plain data frame, without context, or `None` when it would not
    /// be smaller.
    pub(crate) fn compress_shared(plain: &[u8]) -> Option<Bytes> {
        let (first, payload) = split_frame(plain);
        SHARED.with_borrow_mut(|slot| {
            let d = slot.get_or_insert_with(|| new_deflate(SHARED_LEVEL, 15, 8));
            d.reset();
            let mut out = Vec::new();
            let ok = deflate_message(d, payload, &mut out);
            (ok && out.len() < payload.len()).then(|| frame(first, &out))
        })
    }

    /// The compressor of one connection in the dedicated mode, allocated on its first
    /// compressed message.
    pub(crate) struct Dedicated {
        window_bits: u8,
        min_size: usize,
        deflate: Option<Box<Deflate>>,
    }

    impl Dedicated {
        pub(crate) fn new(n: &Negotiated) -> Option<Self> {
            n.takeover.then(|| Dedicated {
                window_bits: n.server_window,
                min_size: n.min_size as usize,
                deflate: None,
            })
        }

        /// Appends `frame` to `buf`, compressed in this connection's context when it is a data
        /// frame of at least the minimum size.
        pub(crate) fn write(&mut self, frame: &[u8], buf: &mut Vec<u8>) {
            let (first, payload) = split_frame(frame);
            let data =
                first & 0x0F == crate::frame::OP_TEXT || first & 0x0F == crate::frame::OP_BINARY;
            if !data || first & 0x70 != 0 || payload.len() < self.min_size {
                buf.extend_from_slice(frame);
                return;
            }
            let window_bits = self.window_bits;
            let d = self.deflate.get_or_insert_with(|| {
                new_deflate(DEDICATED_LEVEL, window_bits, DEDICATED_MEM_LEVEL)
            });
            SCRATCH.with_borrow_mut(|scratch| {
                scratch.clear();
                if !deflate_message(d, payload, scratch) {
                    // The context is unusable now: start afresh (always valid for the client).
                    d.reset();
                    buf.extend_from_slice(frame);
                    return;
                }
                // Sent compressed even when larger: the client's window must see what ours did.
                let mut header = BytesMut::with_capacity(10);
                put_header(&mut header, first | 0x40, scratch.len());
                buf.extend_from_slice(&header);
                buf.extend_from_slice(scratch);
                if scratch.capacity() > 64 * 1024 {
                    *scratch = Vec::new();
                }
            });
        }
    }

    /// Publications after which a topic stream restarts, when a subscriber waits to enter it.
    const RESTART_EVERY: u32 = 32;
    /// Identifies a topic stream between restarts; 0 is "following none".
    static NEXT_EPOCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

    /// One topic's compression stream (the topic mode): one compressor whose context runs from
    /// publication to publication, followed by the subscribers that entered it at a restart.
    pub(crate) struct TopicStream {
        window_bits: u8,
        min_size: usize,
        deflate: Option<Box<Deflate>>,
        epoch: u64,
        since_restart: u32,
        waiting: bool,
    }

    impl TopicStream {
        pub(crate) fn new(n: &Negotiated) -> Self {
            TopicStream {
                window_bits: n.server_window,
                min_size: n.min_size as usize,
                deflate: None,
                epoch: 0,
                since_restart: 0,
                waiting: false,
            }
        }

        /// The stream's current epoch (what its followers hold).
        pub(crate) fn epoch(&self) -> u64 {
            self.epoch
        }

        /// Whether a subscriber waited to enter at the last publication.
        pub(crate) fn set_waiting(&mut self, waiting: bool) {
            self.waiting = waiting;
        }

        /// Compresses a plain data frame in the stream. Returns the compressed frame, the
        /// stream's epoch, and the epoch before when this publication restarts the stream (a
        /// point where anyone may enter); `None` for a frame sent plain to everyone.
        pub(crate) fn compress(&mut self, plain: &[u8]) -> Option<(Bytes, u64, Option<u64>)> {
            let (first, payload) = split_frame(plain);
            if payload.len() < self.min_size {
                return None;
            }
            let restart =
                self.deflate.is_none() || (self.waiting && self.since_restart >= RESTART_EVERY);
            let window_bits = self.window_bits;
            let d = self.deflate.get_or_insert_with(|| {
                new_deflate(DEDICATED_LEVEL, window_bits, DEDICATED_MEM_LEVEL)
            });
            let previous = restart.then(|| {
                d.reset();
                self.since_restart = 0;
                let previous = self.epoch;
                self.epoch = NEXT_EPOCH.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                previous
            });
            let out = SCRATCH.with_borrow_mut(|scratch| {
                scratch.clear();
                deflate_message(d, payload, scratch).then(|| frame(first, scratch))
            });
            let Some(out) = out else {
                // Unusable context: the next publication restarts the stream.
                self.deflate = None;
                return None;
            };
            self.since_restart += 1;
            Some((out, self.epoch, previous))
        }
    }

    // ---------------------------------------------------------------------------------
    // Inflation.

    const TOO_BIG: ProtocolError = ProtocolError {
        code: CloseCode::TOO_BIG,
        reason: "message too big once inflated",
    };
    const BAD_DEFLATE: ProtocolError = ProtocolError {
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

    fn inflate_with(
        inf: &mut Inflate,
        compressed: &[u8],
        max: usize,
    ) -> Result<Bytes, ProtocolError> {
        const TAIL: [u8; 4] = [0, 0, 0xFF, 0xFF];
        let mut out =
            BytesMut::with_capacity((compressed.len() * 4).clamp(64, 64 * 1024).min(max + 1));
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

    #[cfg(test)]
    mod tests {
        use super::*;
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
            assert!(
                answer_of(shared, "permessage-deflate; client_max_window_bits=\"12\"").is_some()
            );
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
            assert!(
                compress_shared(&crate::frame::encode(crate::frame::OP_BINARY, &noise)).is_none()
            );
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
    }
}
