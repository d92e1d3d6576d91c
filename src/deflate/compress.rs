//! Compressing outbound messages: once per publication for the shared mode, per connection
//! for the dedicated mode, once per publication in a topic's own context for the topic mode.

use std::cell::RefCell;

use bytes::{BufMut, Bytes, BytesMut};
use zlib_rs::{Deflate, DeflateConfig, DeflateFlush, Status, Strategy};

use super::Negotiated;
use super::negotiate::*;

// ---------------------------------------------------------------------------------
// Compression.

thread_local! {
    /// The compressor of shared-mode messages (no context): one per worker thread.
    static SHARED: RefCell<Option<Box<Deflate>>> = const { RefCell::new(None) };
    /// Where a per-connection compressor writes before the frame header is known.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

pub(super) fn new_deflate(level: i32, window_bits: u8, mem_level: i32) -> Box<Deflate> {
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
pub(super) fn deflate_message(d: &mut Deflate, payload: &[u8], out: &mut Vec<u8>) -> bool {
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

pub(super) fn put_header(buf: &mut BytesMut, first: u8, len: usize) {
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

pub(super) fn frame(first: u8, compressed: &[u8]) -> Bytes {
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
    pub(super) window_bits: u8,
    pub(super) min_size: usize,
    pub(super) deflate: Option<Box<Deflate>>,
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
        let data = first & 0x0F == crate::frame::OP_TEXT || first & 0x0F == crate::frame::OP_BINARY;
        if !data || first & 0x70 != 0 || payload.len() < self.min_size {
            buf.extend_from_slice(frame);
            return;
        }
        let window_bits = self.window_bits;
        let d = self
            .deflate
            .get_or_insert_with(|| new_deflate(DEDICATED_LEVEL, window_bits, DEDICATED_MEM_LEVEL));
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
pub(super) const RESTART_EVERY: u32 = 32;
/// Identifies a topic stream between restarts; 0 is "following none".
pub(super) static NEXT_EPOCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// One topic's compression stream (the topic mode): one compressor whose context runs from
/// publication to publication, followed by the subscribers that entered it at a restart.
pub(crate) struct TopicStream {
    pub(super) window_bits: u8,
    pub(super) min_size: usize,
    pub(super) deflate: Option<Box<Deflate>>,
    pub(super) epoch: u64,
    pub(super) since_restart: u32,
    pub(super) waiting: bool,
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
        let d = self
            .deflate
            .get_or_insert_with(|| new_deflate(DEDICATED_LEVEL, window_bits, DEDICATED_MEM_LEVEL));
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
