//! One session's bounded outbound queue, shared by every sender and the session's connection.
//!
//! Senders (`send_to`, `broadcast`, `publish`, the heartbeat timer) push pre-framed [`Bytes`]
//! under a short mutex, never awaiting and never blocking on the socket; the first push after
//! the connection went idle wakes it, later pushes of the same batch do not. The connection
//! drains everything queued into one buffer and writes it with one system call.
//!
//! Inside a [`WakeBatch`] (a connection task's poll, where handlers run) a push wakes nobody:
//! when the poll ends, a batch of at most [`FLUSH_RECIPIENTS`] recipients writes each one's
//! frames straight into its socket in one call, when the socket is plain TCP, its
//! connection is not writing and the socket takes it all; only the others are woken. A small
//! fan-out from a handler thus costs one system call per recipient and no task wake-up.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;

use bytes::Bytes;

use crate::config::{Config, SlowConsumerPolicy};
use crate::error::FullOutcome;
use crate::frame;
use crate::message::{CloseCode, CloseFrame};
use crate::session::SessionInner;
use crate::stats::Counters;

/// Pongs kept owed before later pings replace the newest one.
const MAX_PONGS: usize = 16;

/// While the socket still takes everything written to it, a burst may queue this many times
/// the configured limits before the slow-consumer policy applies (see [`Outbox::push`]).
pub(crate) const BURST_FACTOR: usize = 4;

/// At most this many queued bytes are written by a batch's flush; the connection writes the
/// rest.
const FLUSH_BYTES: usize = 64 * 1024;

/// A batch with more recipients than this wakes their connections instead of writing for
/// them: a large fan-out is then written by every worker at once, not by the sender's
/// alone, and each recipient's task, run a little later, finds more messages to write in
/// one call (BENCHMARKS.md §7.8 has the figures).
const FLUSH_RECIPIENTS: usize = 64;

/// What a [`WakeBatch`] does when it ends.
enum Deferred {
    /// Wake a connection (a close, pong or ping queued).
    Wake(Waker),
    /// Write what was pushed for this session, or wake its connection.
    Flush(Arc<SessionInner>),
}

thread_local! {
    /// Whether a [`WakeBatch`] is open on this thread, and what it does when it ends.
    static BATCHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static DEFERRED: std::cell::RefCell<Vec<Deferred>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The bytes of one flush, reused.
    static FLUSH_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// While one connection task is polled, the sessions its handlers push to are written when
/// the poll ends instead of woken at each push: the batch then writes every message of the
/// batch the task read with one call per recipient, straight into the recipient's socket
/// when that connection is idle and the batch small (see [`Outbox::flush`]), and wakes the
/// other connections.
/// Dropping the batch (also on unwind) does this.
pub(crate) struct WakeBatch {
    outermost: bool,
}

impl WakeBatch {
    pub(crate) fn begin() -> Self {
        WakeBatch {
            outermost: !BATCHING.replace(true),
        }
    }
}

impl Drop for WakeBatch {
    fn drop(&mut self) {
        if !self.outermost {
            return;
        }
        BATCHING.set(false);
        let mut deferred = DEFERRED.take();
        if deferred.is_empty() {
            return;
        }
        let mut written = Written::default();
        let recipients = deferred.iter().filter(|d| matches!(d, Deferred::Flush(_)));
        let write = recipients.count() <= FLUSH_RECIPIENTS;
        FLUSH_BUF.with_borrow_mut(|buf| {
            for d in deferred.drain(..) {
                match d {
                    Deferred::Wake(w) => w.wake(),
                    Deferred::Flush(s) => s.outbox.flush(write, buf, &mut written),
                }
            }
            if buf.capacity() > 2 * FLUSH_BYTES {
                *buf = Vec::new();
            }
        });
        written.count();
        if deferred.capacity() <= 4096 {
            DEFERRED.with_borrow_mut(|d| {
                if d.is_empty() {
                    *d = deferred;
                }
            });
        }
    }
}

/// Bytes and writes of one batch's flushes, counted once per hub.
#[derive(Default)]
struct Written {
    counters: Option<Arc<Counters>>,
    bytes: u64,
    writes: u64,
}

impl Written {
    fn add(&mut self, counters: &Arc<Counters>, bytes: usize) {
        if !self
            .counters
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, counters))
        {
            self.count();
            self.counters = Some(counters.clone());
        }
        self.bytes += bytes as u64;
        self.writes += 1;
    }

    fn count(&mut self) {
        if let Some(c) = &self.counters {
            c.bytes_out.fetch_add(self.bytes, Ordering::Relaxed);
            c.writes.fetch_add(self.writes, Ordering::Relaxed);
        }
        (self.bytes, self.writes) = (0, 0);
    }
}

/// A plain TCP socket's descriptor: what a batch's flush writes to while the connection that
/// owns the socket is not writing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Socket(#[cfg(unix)] std::os::fd::RawFd);

impl Socket {
    /// The socket under `io` when it is a plain TCP stream: a flush cannot write through TLS
    /// or an upgraded hyper connection, whose state belongs to the connection.
    pub(crate) fn of<S: 'static>(io: &S) -> Option<Socket> {
        #[cfg(unix)]
        {
            use std::os::fd::AsRawFd;
            let io: &dyn std::any::Any = io;
            io.downcast_ref::<tokio::net::TcpStream>()
                .map(|s| Socket(s.as_raw_fd()))
        }
        #[cfg(not(unix))]
        {
            let _ = io;
            None
        }
    }

    /// One non-blocking write (the socket is in non-blocking mode, as tokio keeps it).
    fn write(self, data: &[u8]) -> io::Result<usize> {
        #[cfg(unix)]
        {
            use std::io::Write;
            use std::os::fd::FromRawFd;
            #[allow(
                unsafe_code,
                reason = "a write to a descriptor the connection keeps open"
            )]
            // SAFETY: the descriptor is open and is this session's socket: the connection
            // detaches it from the outbox (under the lock every caller of this holds) before
            // it closes the socket. `ManuallyDrop`: it is not closed here.
            let stream =
                std::mem::ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(self.0) });
            (&*stream).write(data)
        }
        #[cfg(not(unix))]
        {
            let _ = data;
            Err(io::ErrorKind::Unsupported.into())
        }
    }
}

/// Stores `waker` in `slot`, unless the one there already wakes the same task.
fn keep_waker(slot: &mut Option<Waker>, waker: &Waker) {
    match slot {
        Some(w) => w.clone_from(waker),
        None => *slot = Some(waker.clone()),
    }
}

/// The result of one push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    Queued,
    /// Queued after discarding this many older messages.
    QueuedDroppingOldest(usize),
    DroppedNewest,
    Disconnected,
    /// The session is closing or gone.
    Closed,
}

impl Pushed {
    pub(crate) fn full_outcome(self) -> Option<FullOutcome> {
        match self {
            Pushed::QueuedDroppingOldest(n) => Some(FullOutcome::DroppedOldest(n)),
            Pushed::DroppedNewest => Some(FullOutcome::DroppedNewest),
            Pushed::Disconnected => Some(FullOutcome::Disconnected),
            Pushed::Queued | Pushed::Closed => None,
        }
    }
}

/// Why the connection must stop at once, without waiting for the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Abort {
    PingTimeout,
    /// The close handshake or the drain before it took too long.
    CloseTimeout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// A close frame is queued behind the data; no more data is accepted.
    Closing,
    /// The close frame went into a write batch.
    CloseWritten,
    Aborted(Abort),
    /// The connection ended.
    Gone,
}

struct State {
    frames: VecDeque<Bytes>,
    bytes: usize,
    ping_due: bool,
    phase: Phase,
    waker: Option<Waker>,
    /// The connection was woken and has not drained since: no need to wake it again.
    notified: bool,
    high_water: usize,
    /// The connection's socket, while a batch's flush may write to it (see [`Outbox::flush`]).
    socket: Option<Socket>,
    /// The connection took frames it has not finished writing: a flush must not write now.
    writing: bool,
    /// What most sessions never need, allocated on first use: an idle session holds one
    /// pointer for it.
    rare: Option<Box<Rare>>,
}

/// The parts of a queue used by pings, closes and streamed replays only.
#[derive(Default)]
struct Rare {
    /// Pong frames owed, at most [`MAX_PONGS`]: past that the newest replaces the last, so a
    /// ping flood from a client that does not read costs bounded memory and the latest ping
    /// is still answered (RFC 6455 section 5.5.3 allows answering only the latest).
    pongs: Vec<Bytes>,
    close: Option<Bytes>,
    /// The close frame this side sent first, for `on_close`.
    close_frame: Option<CloseFrame>,
    /// A streamed replay waiting for the queue to drain to half (see [`Outbox::poll_room`]).
    room: Option<Waker>,
    /// The end of a write a flush began and the socket did not take: written before
    /// anything else, never dropped.
    partial: Option<Bytes>,
}

impl State {
    fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// Whether a close frame is queued and not yet taken by a drain.
    fn close_queued(&self) -> bool {
        self.rare.as_ref().is_some_and(|r| r.close.is_some())
    }
}

pub(crate) struct Outbox {
    state: Mutex<State>,
    /// Mirrors of `State::phase` for the checks the connection makes on every message,
    /// written under the mutex, read without it.
    open: AtomicBool,
    aborted: AtomicU8,
    /// The socket refused part of the last write: the connection holds unwritten bytes.
    socket_full: AtomicBool,
    counters: Arc<Counters>,
    max_bytes: usize,
    max_messages: usize,
    policy: SlowConsumerPolicy,
}

/// What one drain put into the write buffer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Drained {
    pub(crate) frames: usize,
    pub(crate) close_written: bool,
    /// The queue is empty and the waker registered: no need to drain again.
    pub(crate) emptied: bool,
}

impl Outbox {
    pub(crate) fn new(config: &Config, counters: Arc<Counters>) -> Self {
        Outbox {
            open: AtomicBool::new(true),
            aborted: AtomicU8::new(0),
            socket_full: AtomicBool::new(false),
            counters,
            state: Mutex::new(State {
                frames: VecDeque::new(),
                bytes: 0,
                ping_due: false,
                phase: Phase::Open,
                waker: None,
                notified: false,
                high_water: 0,
                socket: None,
                writing: false,
                rare: None,
            }),
            max_bytes: config.max_queue_bytes,
            max_messages: config.max_queue_messages,
            policy: config.slow_consumer,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent (every critical
        // section is a few field updates), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues one pre-framed data message, applying the slow-consumer policy when full.
    ///
    /// "Full" means over the configured limits **once the socket has refused data** (the
    /// reader is not keeping up): that is what the limits bound. While the socket still takes
    /// everything, a burst may queue up to [`BURST_FACTOR`] times the limits, since the
    /// connection task is about to write it — as a server that writes through to the kernel
    /// would have the kernel's buffer absorb it.
    ///
    /// `owner` is the session this outbox belongs to: inside a [`WakeBatch`] it is kept for
    /// the batch's flush.
    pub(crate) fn push(&self, frame: Bytes, owner: &Arc<SessionInner>) -> Pushed {
        let mut st = self.lock();
        if st.phase != Phase::Open {
            return Pushed::Closed;
        }
        let len = frame.len();
        let factor = if self.socket_full.load(Ordering::Acquire) {
            1
        } else {
            BURST_FACTOR
        };
        let (max_messages, max_bytes) = (self.max_messages * factor, self.max_bytes * factor);
        let full = |st: &State| {
            !st.frames.is_empty() && (st.frames.len() >= max_messages || st.bytes + len > max_bytes)
        };
        let mut result = Pushed::Queued;
        if full(&st) {
            match self.policy {
                SlowConsumerPolicy::DropNewest => return Pushed::DroppedNewest,
                SlowConsumerPolicy::DropOldest => {
                    let mut dropped = 0;
                    while full(&st) {
                        if let Some(old) = st.frames.pop_front() {
                            st.bytes -= old.len();
                            dropped += 1;
                        }
                    }
                    result = Pushed::QueuedDroppingOldest(dropped);
                }
                SlowConsumerPolicy::Disconnect => {
                    st.frames.clear();
                    st.bytes = 0;
                    let frame = CloseFrame::new(CloseCode::POLICY, "slow consumer");
                    self.begin_close(&mut st, frame);
                    Self::wake(&mut st);
                    return Pushed::Disconnected;
                }
            }
        }
        st.bytes += len;
        st.frames.push_back(frame);
        if st.bytes > st.high_water {
            st.high_water = st.bytes;
            self.counters.high_water(st.bytes);
        }
        if !st.notified && st.waker.is_some() && BATCHING.get() {
            // Marked woken: the batch's flush writes it or wakes the connection.
            st.notified = true;
            DEFERRED.with_borrow_mut(|d| d.push(Deferred::Flush(owner.clone())));
        } else {
            Self::wake(&mut st);
        }
        result
    }

    /// Queues a close frame behind the data already queued; no more data is accepted. Returns
    /// false when the session was already closing.
    pub(crate) fn close(&self, frame: CloseFrame) -> bool {
        let mut st = self.lock();
        if st.phase != Phase::Open {
            return false;
        }
        self.begin_close(&mut st, frame);
        Self::wake(&mut st);
        true
    }

    /// Answers the peer's close frame (echoing its code) unless this side already closed.
    pub(crate) fn reply_close(&self, frame: Option<&CloseFrame>) {
        let mut st = self.lock();
        if st.phase == Phase::Open {
            st.rare().close = Some(frame::encode_close(
                frame.map(|f| CloseFrame::new(f.code, "")).as_ref(),
            ));
            st.phase = Phase::Closing;
            self.open.store(false, Ordering::Release);
            Self::wake_room(&mut st);
            Self::wake(&mut st);
        }
    }

    fn begin_close(&self, st: &mut State, frame: CloseFrame) {
        Self::wake_room(st);
        self.open.store(false, Ordering::Release);
        let rare = st.rare();
        rare.close = Some(frame::encode_close(Some(&frame)));
        rare.close_frame = Some(frame);
        st.phase = Phase::Closing;
    }

    /// Queues a pong answering a ping (see `pongs` for the bound).
    pub(crate) fn pong(&self, payload: &[u8]) {
        let mut st = self.lock();
        if st.phase == Phase::Open {
            let pong = frame::encode(frame::OP_PONG, payload);
            let pongs = &mut st.rare().pongs;
            if pongs.len() >= MAX_PONGS {
                pongs.pop();
            }
            pongs.push(pong);
            Self::wake(&mut st);
        }
    }

    /// Asks the connection to send a heartbeat ping.
    pub(crate) fn ping(&self) {
        let mut st = self.lock();
        if st.phase == Phase::Open {
            st.ping_due = true;
            Self::wake(&mut st);
        }
    }

    /// Stops the connection at once.
    pub(crate) fn abort(&self, why: Abort) {
        let mut st = self.lock();
        if st.phase != Phase::Gone && !matches!(st.phase, Phase::Aborted(_)) {
            st.phase = Phase::Aborted(why);
            Self::wake_room(&mut st);
            self.open.store(false, Ordering::Release);
            let code = match why {
                Abort::PingTimeout => 1,
                Abort::CloseTimeout => 2,
            };
            self.aborted.store(code, Ordering::Release);
            // Always wake: the connection may be parked on a full socket with `notified` set.
            if let Some(w) = &st.waker {
                w.wake_by_ref();
            }
        }
    }

    fn wake(st: &mut State) {
        if !st.notified {
            if let Some(w) = &st.waker {
                st.notified = true;
                if BATCHING.get() {
                    DEFERRED.with_borrow_mut(|d| d.push(Deferred::Wake(w.clone())));
                } else {
                    w.wake_by_ref();
                }
            }
        }
    }

    /// Moves queued frames into `buf` (pongs first, then heartbeat ping, data, and the close
    /// frame once the data is out) until `buf` holds `max` bytes. When nothing is left, stores
    /// `waker` to be woken by the next push.
    pub(crate) fn drain(&self, buf: &mut Vec<u8>, max: usize, waker: &Waker) -> Drained {
        let start = buf.len();
        self.drain_with(max, waker, |f| {
            buf.extend_from_slice(&f);
            buf.len() - start
        })
    }

    /// [`drain`](Self::drain), moving the frames themselves into `frames` (for a connection
    /// that transforms them before writing, outside this lock).
    #[cfg(feature = "deflate")]
    pub(crate) fn drain_frames(
        &self,
        frames: &mut Vec<Bytes>,
        max: usize,
        waker: &Waker,
    ) -> Drained {
        let mut taken = 0;
        self.drain_with(max, waker, |f| {
            taken += f.len();
            frames.push(f);
            taken
        })
    }

    /// The drain itself: `put` takes one frame and returns the bytes taken so far.
    fn drain_with(
        &self,
        max: usize,
        waker: &Waker,
        mut put: impl FnMut(Bytes) -> usize,
    ) -> Drained {
        let mut st = self.lock();
        let mut out = Drained::default();
        if matches!(st.phase, Phase::Aborted(_) | Phase::Gone) {
            Self::wake_room(&mut st);
            return out;
        }
        let mut taken = 0;
        if let Some(rest) = st.rare.as_mut().and_then(|r| r.partial.take()) {
            taken = put(rest);
            out.frames += 1;
        }
        let pongs = st.rare.as_mut().map(|r| std::mem::take(&mut r.pongs));
        for pong in pongs.into_iter().flatten() {
            taken = put(pong);
            out.frames += 1;
        }
        if std::mem::take(&mut st.ping_due) {
            taken = put(frame::encode(frame::OP_PING, b""));
            out.frames += 1;
        }
        while taken < max {
            let Some(f) = st.frames.pop_front() else {
                break;
            };
            st.bytes -= f.len();
            taken = put(f);
            out.frames += 1;
        }
        if st.frames.is_empty() {
            if let Some(close) = st.rare.as_mut().and_then(|r| r.close.take()) {
                put(close);
                st.phase = Phase::CloseWritten;
                out.frames += 1;
                out.close_written = true;
            }
        }
        if self.has_room(&st) || st.phase != Phase::Open {
            Self::wake_room(&mut st);
        }
        if st.frames.is_empty() && !st.close_queued() {
            // Everything is taken: the next push wakes the connection. Registering now saves
            // the connection a second look at an empty queue after writing this batch.
            out.emptied = true;
            st.notified = false;
            keep_waker(&mut st.waker, waker);
        }
        st.writing = out.frames > 0;
        out
    }

    /// A batch's flush of what pushes queued for this session (see [`WakeBatch`]): when
    /// `write`, written into the socket from here, up to [`FLUSH_BYTES`], if the connection
    /// has a plain TCP socket, is not writing and has nothing else to send (pong, ping,
    /// close); else, or when the socket does not take it all, the connection is woken to do
    /// the rest.
    fn flush(&self, write: bool, buf: &mut Vec<u8>, written: &mut Written) {
        let mut st = self.lock();
        if !st.notified {
            // The connection drained meanwhile and waits for the next push.
            return;
        }
        let idle = st.phase == Phase::Open
            && !st.writing
            && !st.ping_due
            && (st.rare.as_ref()).is_none_or(|r| r.pongs.is_empty() && r.partial.is_none());
        let socket = st.socket.filter(|_| write && idle);
        let Some(socket) = socket else {
            if let Some(w) = &st.waker {
                w.wake_by_ref();
            }
            return;
        };
        buf.clear();
        while buf.len() < FLUSH_BYTES {
            let Some(f) = st.frames.pop_front() else {
                break;
            };
            st.bytes -= f.len();
            buf.extend_from_slice(&f);
        }
        let mut off = 0;
        while off < buf.len() {
            match socket.write(&buf[off..]) {
                Ok(0) => break,
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Full (the connection waits for room) or failed (it meets the error too).
                Err(_) => break,
            }
        }
        if off > 0 {
            written.add(&self.counters, off);
        }
        if off < buf.len() {
            st.rare().partial = Some(Bytes::copy_from_slice(&buf[off..]));
            self.set_socket_full(true);
        }
        if st.frames.is_empty() && off == buf.len() {
            // All written: the connection sleeps on, woken by the next push.
            st.notified = false;
        } else if let Some(w) = &st.waker {
            w.wake_by_ref();
        }
    }

    /// The connection wrote everything it drained: a flush may write to the socket again.
    pub(crate) fn written(&self) {
        let mut st = self.lock();
        st.writing = false;
        self.set_socket_full(false);
    }

    /// Lets a batch's flush write to `socket` (see [`WakeBatch`]).
    pub(crate) fn attach(&self, socket: Socket) {
        self.lock().socket = Some(socket);
    }

    /// Stops flushes writing to the socket: called before the connection closes it.
    pub(crate) fn detach(&self) {
        self.lock().socket = None;
    }

    /// Registers the connection's waker and marks the connection awake while it polls a
    /// handler: pushes made meanwhile (the handler's own sends among them) do not wake it,
    /// since it drains right after the poll; that drain, once it empties the queue, ends the
    /// hold. An abort still wakes it.
    pub(crate) fn hold(&self, waker: &Waker) {
        let mut st = self.lock();
        st.notified = true;
        keep_waker(&mut st.waker, waker);
    }

    /// Registers the connection's waker when it is about to wait without draining (a close
    /// in progress), so the next push or abort wakes it.
    pub(crate) fn register(&self, waker: &Waker) {
        let mut st = self.lock();
        st.notified = false;
        keep_waker(&mut st.waker, waker);
    }

    /// `Ready(true)` once the queue is at most half full (so a streamed replay may add to
    /// it without ever filling it), `Ready(false)` once the session no longer takes data;
    /// else `Pending`, woken by the drain that makes room.
    pub(crate) fn poll_room(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<bool> {
        let mut st = self.lock();
        if st.phase != Phase::Open {
            return std::task::Poll::Ready(false);
        }
        if self.has_room(&st) {
            return std::task::Poll::Ready(true);
        }
        st.rare().room = Some(cx.waker().clone());
        std::task::Poll::Pending
    }

    fn has_room(&self, st: &State) -> bool {
        st.frames.len() <= self.max_messages / 2 && st.bytes <= self.max_bytes / 2
    }

    fn wake_room(st: &mut State) {
        if let Some(w) = st.rare.as_mut().and_then(|r| r.room.take()) {
            w.wake();
        }
    }

    pub(crate) fn aborted(&self) -> Option<Abort> {
        match self.aborted.load(Ordering::Acquire) {
            0 => None,
            1 => Some(Abort::PingTimeout),
            _ => Some(Abort::CloseTimeout),
        }
    }

    /// The connection's write side: whether the socket refused part of the last write
    /// (`true`) or took everything (`false`).
    pub(crate) fn set_socket_full(&self, full: bool) {
        if self.socket_full.load(Ordering::Relaxed) != full {
            self.socket_full.store(full, Ordering::Release);
        }
    }

    /// Whether data is still accepted (not closing, aborted or ended).
    pub(crate) fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// The close frame this side queued first, if any.
    pub(crate) fn sent_close_frame(&self) -> Option<CloseFrame> {
        self.lock().rare.as_ref()?.close_frame.clone()
    }

    /// The connection ended: refuse everything from now on and free the queue.
    pub(crate) fn finish(&self) {
        let mut st = self.lock();
        st.phase = Phase::Gone;
        self.open.store(false, Ordering::Release);
        st.socket = None;
        st.frames = VecDeque::new();
        st.bytes = 0;
        st.waker = None;
        // The close frame this side sent stays, for `on_close`; the rest is freed.
        if let Some(rare) = st.rare.as_mut() {
            rare.pongs = Vec::new();
            rare.close = None;
            rare.partial = None;
        }
        Self::wake_room(&mut st);
    }
}
