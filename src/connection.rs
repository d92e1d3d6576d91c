//! One socket, one task: the upgrade, then a loop that reads frames into the [`Handler`] and
//! writes whatever the session's outbox holds, in batches.
//!
//! Reads and writes go through per-thread scratch buffers, so a connection holds no buffer of
//! its own while idle: only the bytes of a message still arriving, or of a batch the socket
//! did not take yet, are kept per connection.

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tracing::Instrument;

use crate::engine::{Engine, TaskGuard};
use crate::frame::{Decoder, Event, ProtocolError};
use crate::handler::CloseReason;
use crate::handshake::{self, Accepted, Refused};
use crate::hub::Hub;
use crate::message::{CloseCode, CloseFrame, Message};
use crate::outbox::{Abort, Drained, Outbox, Socket};
use crate::registry::SessionTopics;
use crate::session::{Session, SessionInner};

const READ_SCRATCH: usize = 64 * 1024;

thread_local! {
    static READ_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_SCRATCH].into_boxed_slice());
    static WRITE_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Frames drained for a connection that compresses them at write time.
    #[cfg(feature = "deflate")]
    static DRAINED: RefCell<Vec<Bytes>> = const { RefCell::new(Vec::new()) };
}

/// Runs one raw connection: the HTTP upgrade, then the session.
pub(crate) fn run<S>(
    hub: Hub,
    io: S,
    peer: SocketAddr,
    task: TaskGuard,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The handshake is boxed so its state (request buffer, timers, hooks) is freed once it is
    // done; the session's future is awaited straight from the expression that builds it, so
    // the task is sized for the session alone and holds no second copy of it.
    let upgrading = Box::pin(upgrade(hub.engine.clone(), io, peer));
    async move {
        let Some((io, accepted, rest)) = upgrading.await else {
            return;
        };
        let mut session = pin!(serve_session(hub, io, accepted, rest));
        poll_fn(|cx| poll_batched(session.as_mut(), cx)).await;
        drop(task);
    }
}

/// The HTTP upgrade within the handshake timeout: `Some` once the 101 response is written.
async fn upgrade<S>(core: Arc<Engine>, mut io: S, peer: SocketAddr) -> Option<(S, Accepted, Bytes)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let core = &core;
    let handshake = async {
        let (head, rest) = handshake::read_head(&mut io, core.config.max_handshake_bytes).await?;
        // A panicking hook answers 500 instead of dropping the connection unanswered.
        let accepted = match catch_unwind_future(handshake::negotiate(core, head, peer)).await {
            Ok(result) => result?,
            Err(()) => {
                tracing::error!(%peer, "a handshake hook panicked");
                let status = http::StatusCode::INTERNAL_SERVER_ERROR;
                return Err(Refused::Respond(crate::Reject::new(status)));
            }
        };
        Ok::<_, Refused>((accepted, rest))
    };
    let outcome = tokio::select! {
        r = tokio::time::timeout(core.config.handshake_timeout, handshake) => {
            r.unwrap_or(Err(Refused::Gone))
        }
        _ = core.stopped() => {
            Err(Refused::Respond(handshake::unavailable("server shutting down")))
        }
    };
    let answer = match outcome {
        Ok(ok) => return write_upgrade(core, io, ok).await,
        Err(Refused::Gone) => return None,
        Err(Refused::Answered(page)) => page,
        Err(Refused::Respond(reject)) => {
            core.counters.refused.fetch_add(1, Ordering::Relaxed);
            let why = String::from_utf8_lossy(&reject.body);
            tracing::debug!(%peer, status = %reject.status, %why, "upgrade refused");
            reject
        }
    };
    let write = handshake::write_reject(&mut io, &answer);
    let _ = tokio::time::timeout(core.config.close_timeout, write).await;
    None
}

/// Writes the `101 Switching Protocols` response within the handshake timeout.
async fn write_upgrade<S>(
    core: &Engine,
    mut io: S,
    (accepted, rest): (Accepted, Bytes),
) -> Option<(S, Accepted, Bytes)>
where
    S: AsyncWrite + Unpin,
{
    let response = accepted.response();
    let written = tokio::time::timeout(core.config.handshake_timeout, async {
        io.write_all(&response).await?;
        io.flush().await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        return None;
    }
    Some((io, accepted, rest))
}

/// Registers an upgraded connection as a session; the returned future runs it to the end,
/// `on_close` included.
///
/// The setup is synchronous so the future holds only the session's running state, not the
/// handshake's leftovers: its size is most of an idle connection's memory.
pub(crate) fn serve_session<S>(
    hub: Hub,
    io: S,
    accepted: Accepted,
    rest: Bytes,
) -> impl Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let core = hub.engine.clone();
    core.start_timer();
    let Accepted {
        request,
        subprotocol,
        admission,
        deflate,
        ..
    } = accepted;
    let inner = Arc::new(SessionInner {
        id: core.registry.next_id(),
        request,
        subprotocol: subprotocol.map(String::into_boxed_str),
        outbox: Outbox::new(&core.config, core.counters.clone()),
        deflate: deflate.map(|(n, _)| n),
        following: AtomicU64::new(0),
        topics: std::sync::Mutex::new(SessionTopics::default()),
        last_seen: AtomicU64::new(core.now_ms()),
        ping_sent: AtomicU64::new(0),
        close_deadline: AtomicU64::new(0),
        in_handler: AtomicBool::new(false),
    });
    core.registry.insert(inner.clone());
    core.counters.opened.fetch_add(1, Ordering::Relaxed);
    admission.transfer();
    let socket = Socket::of(&io);
    let conn = Connection::new(io, socket, inner.clone(), core, rest);
    // Every event of the session (open, close with its reason, protocol errors, slow-consumer
    // actions) is recorded inside this span.
    let span = tracing::info_span!("session", id = %inner.id, peer = %inner.request.peer_addr());
    run_session(conn, Registered(Session { inner, hub })).instrument(span)
}

/// Polls the future of [`serve_session`] inside a [`WakeBatch`](crate::outbox::WakeBatch):
/// the sessions its handlers send to are woken when the poll ends, after every message it
/// read. (Pinned by the caller: a helper future would store the session's state twice.)
pub(crate) fn poll_batched<F: Future>(
    session: Pin<&mut F>,
    cx: &mut Context<'_>,
) -> Poll<F::Output> {
    let _batch = crate::outbox::WakeBatch::begin();
    session.poll(cx)
}

/// The session of a connection task. Dropping it takes the session out of the registry and
/// gives back its place among `max_sessions`, also when the task is dropped mid-session
/// (runtime shutdown, a caller dropping the future of `Hub::accept`).
struct Registered(Session);

impl Drop for Registered {
    fn drop(&mut self) {
        self.0.inner.outbox.finish();
        self.0.hub.engine.session_ended(&self.0);
    }
}

#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would store the connection twice in the task"
)]
fn run_session<S>(
    mut conn: Connection<S>,
    registered: Registered,
) -> impl Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // A plain `async fn` would store its arguments twice (as arguments and as locals).
    async move {
        let session = &registered.0;
        let handler = || &*session.hub.engine.handler;
        tracing::debug!(id = %session.id(), peer = %session.peer_addr(), path = session.path(), "session open");
        let mut driven = conn.drive(handler().open(session)).await;
        let reason = loop {
            if driven == Driven::Panicked {
                tracing::error!(id = %session.id(), "handler panicked; closing the session with 1011");
                let frame = CloseFrame::new(CloseCode::INTERNAL, "internal error");
                session.hub.engine.close_session(&session.inner, frame);
            }
            let message = match poll_fn(|cx| conn.poll_event(cx)).await {
                Step::Message(m) => m,
                Step::End(reason) => break reason,
            };
            driven = conn.drive(handler().on_message(session, message)).await;
        };
        drop(conn);
        let session = registered.0.clone();
        drop(registered);
        // Boxed, so the task's state is sized for the running session, not for this last
        // step (an idle connection's memory is mostly that state).
        Box::pin(closed(session, reason)).await;
    }
}

/// The end of a session, after its connection and registration are gone: counted, logged,
/// and `on_close` run.
async fn closed(session: Session, reason: CloseReason) {
    let core = &session.hub.engine;
    core.counters.closed(&reason);
    tracing::debug!(id = %session.id(), %reason, "session closed");
    let closing = AssertUnwindSafe(core.handler.on_close(&session, reason));
    if catch_unwind_future(closing).await.is_err() {
        tracing::error!(id = %session.id(), "on_close panicked");
    }
}

async fn catch_unwind_future<F: Future>(fut: F) -> Result<F::Output, ()> {
    let mut fut = pin!(fut);
    poll_fn(
        |cx| match std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(())),
        },
    )
    .await
}

/// What the connection asks of the session loop.
enum Step {
    Message(Message),
    End(CloseReason),
}

/// How a handler call ended.
#[derive(Debug, PartialEq, Eq)]
enum Driven {
    Done,
    Panicked,
    /// The connection was aborted; the handler's future was dropped.
    Aborted,
}

struct Connection<S> {
    io: S,
    session: Arc<SessionInner>,
    core: Arc<Engine>,
    decoder: Decoder,
    /// Received bytes not yet decoded (after an event ended mid-read).
    input: Bytes,
    /// The part of a write batch the socket has not taken yet.
    pending: BytesMut,
    needs_flush: bool,
    /// Reading stopped: the peer's close arrived, its input was refused, or EOF.
    read_closed: bool,
    eof: bool,
    /// The peer's close frame (inner `None`: it had no status code).
    close_received: Option<Box<Option<CloseFrame>>>,
    close_written: bool,
    /// A protocol error: close without waiting for the peer's answer.
    failing: bool,
    /// Batches may write to the socket (see [`Outbox::attach`]).
    shared_socket: bool,
    io_error: Option<io::Error>,
    /// Inbound rate limit: tokens left, and when the bucket was last refilled (hub ms).
    tokens: f64,
    refilled_at: u64,
    /// The dedicated-mode compressor (context takeover), if this session negotiated it.
    #[cfg(feature = "deflate")]
    deflater: Option<Box<crate::deflate::Dedicated>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    fn new(
        io: S,
        socket: Option<Socket>,
        session: Arc<SessionInner>,
        core: Arc<Engine>,
        input: Bytes,
    ) -> Self {
        let tokens = f64::from(core_rate(&core));
        let refilled_at = core.coarse_ms();
        #[cfg(feature = "deflate")]
        let deflater = session
            .deflate
            .as_ref()
            .and_then(crate::deflate::Dedicated::new)
            .map(Box::new);
        #[cfg(not(feature = "deflate"))]
        let deflater: Option<()> = None;
        // A connection that compresses at write time writes every frame itself.
        let socket = socket.filter(|_| deflater.is_none());
        if let Some(socket) = socket {
            session.outbox.attach(socket);
        }
        Connection {
            #[cfg(feature = "deflate")]
            deflater,
            io,
            decoder: Decoder::with_inflate(core.config.max_message_size, session.deflate.is_some()),
            session,
            core,
            input,
            pending: BytesMut::new(),
            needs_flush: false,
            read_closed: false,
            eof: false,
            close_received: None,
            close_written: false,
            failing: false,
            shared_socket: socket.is_some(),
            io_error: None,
            tokens,
            refilled_at,
        }
    }

    /// Runs a handler future to completion while the socket keeps being written.
    ///
    /// Heartbeat and idle timeouts wait while it runs (nothing is read meanwhile); an abort
    /// (close deadline, shutdown deadline) drops the handler's future.
    fn drive<'a, F>(&'a mut self, mut fut: F) -> impl Future<Output = Driven> + 'a
    where
        F: Future<Output = ()> + Unpin + 'a,
    {
        self.session.in_handler.store(true, Ordering::Release);
        let done = |this: &mut Self, driven: Driven| {
            let s = &this.session;
            s.last_seen.store(this.core.coarse_ms(), Ordering::Release);
            s.in_handler.store(false, Ordering::Release);
            Poll::Ready(driven)
        };
        poll_fn(move |cx| {
            if self.session.outbox.aborted().is_some() {
                return done(self, Driven::Aborted);
            }
            // What the handler queues for this session is written right after its poll, in
            // this same wake-up: its pushes need not wake this task (a self-wake would
            // reschedule the task and rouse an idle worker for nothing).
            self.session.outbox.hold(cx.waker());
            let polled = std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(&mut fut).poll(cx)));
            match polled {
                Ok(Poll::Ready(())) => return done(self, Driven::Done),
                Ok(Poll::Pending) => {}
                Err(_) => return done(self, Driven::Panicked),
            }
            // The handler waits: keep the socket written meanwhile. The drain that empties
            // the queue ends the hold, so later pushes wake this task again.
            if self.io_error.is_none() {
                if let Poll::Ready(Err(e)) = self.poll_write_side(cx) {
                    self.io_error = Some(e);
                    // The peer is gone: senders (a streamed replay waiting for room among
                    // them) learn it now rather than when the handler returns.
                    self.session.outbox.finish();
                }
            }
            Poll::Pending
        })
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
        loop {
            if let Some(why) = self.session.outbox.aborted() {
                return Poll::Ready(Step::End(self.reason(Some(why))));
            }
            if self.io_error.is_none() {
                if let Poll::Ready(Err(e)) = self.poll_write_side(cx) {
                    self.io_error = Some(e);
                }
            }
            if let Some(reason) = self.finished(cx) {
                return Poll::Ready(Step::End(reason));
            }
            if self.read_closed {
                // Waiting for the queue to drain, the close deadline, or an abort.
                self.session.outbox.register(cx.waker());
                return Poll::Pending;
            }
            match self.poll_read_side(cx) {
                Poll::Ready(Some(message)) => return Poll::Ready(Step::Message(message)),
                Poll::Ready(None) => continue,
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Whether the connection is over, and why.
    fn finished(&mut self, cx: &mut Context<'_>) -> Option<CloseReason> {
        if self.io_error.is_some() || self.eof {
            return Some(self.reason(None));
        }
        let flushed = self.pending.is_empty() && !self.needs_flush;
        if self.close_written && flushed && (self.close_received.is_some() || self.failing) {
            // The server closes the TCP connection first (RFC 6455 section 7.1.1); best effort.
            let _ = Pin::new(&mut self.io).poll_shutdown(cx);
            return Some(self.reason(None));
        }
        None
    }

    fn reason(&mut self, abort: Option<Abort>) -> CloseReason {
        if abort == Some(Abort::PingTimeout) {
            return CloseReason::PingTimeout;
        }
        if let Some(frame) = self.session.outbox.sent_close_frame() {
            return CloseReason::Server(frame);
        }
        if let Some(frame) = self.close_received.take() {
            return CloseReason::Client(
                frame.unwrap_or_else(|| CloseFrame::new(CloseCode::NO_STATUS, "")),
            );
        }
        match self.io_error.take() {
            Some(e)
                if !matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset
                        | io::ErrorKind::BrokenPipe
                        | io::ErrorKind::UnexpectedEof
                        | io::ErrorKind::ConnectionAborted
                ) =>
            {
                CloseReason::Io(e)
            }
            _ => CloseReason::Disconnected,
        }
    }

    /// Writes what is pending, then everything queued, batch by batch, until the queue is
    /// empty (`Ready(Ok)`, the outbox holds the waker) or the socket is full (`Pending`).
    fn poll_write_side(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let batch = self.core.config.write_batch_bytes;
        loop {
            while !self.pending.is_empty() {
                let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.pending))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pending.advance(n);
                self.needs_flush = true;
            }
            if self.pending.capacity() > 0 {
                self.pending = BytesMut::new();
                // The socket took what it had refused: bursts may queue again.
                self.session.outbox.set_socket_full(false);
            }
            let wrote = WRITE_BUF.with_borrow_mut(|buf| {
                buf.clear();
                let drained = self.drain_into(buf, batch, cx.waker());
                if drained.frames == 0 {
                    return Ok(None);
                }
                self.close_written |= drained.close_written;
                self.needs_flush = true;
                let counters = &self.core.counters;
                counters
                    .bytes_out
                    .fetch_add(buf.len() as u64, Ordering::Relaxed);
                counters.writes.fetch_add(1, Ordering::Relaxed);
                let mut off = 0;
                while off < buf.len() {
                    match Pin::new(&mut self.io).poll_write(cx, &buf[off..]) {
                        Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                        Poll::Ready(Ok(n)) => off += n,
                        Poll::Ready(Err(e)) => return Err(e),
                        Poll::Pending => break,
                    }
                }
                if off < buf.len() {
                    self.pending.extend_from_slice(&buf[off..]);
                    // The reader is not keeping up: the queue limits apply from now on.
                    self.session.outbox.set_socket_full(true);
                }
                if buf.capacity() > 4 * batch {
                    *buf = Vec::new();
                }
                Ok(Some(drained.emptied))
            })?;
            let Some(emptied) = wrote else {
                break;
            };
            if !self.pending.is_empty() {
                return Poll::Pending;
            }
            if emptied {
                if self.shared_socket {
                    self.session.outbox.written();
                }
                break;
            }
        }
        if self.needs_flush {
            ready!(Pin::new(&mut self.io).poll_flush(cx))?;
            self.needs_flush = false;
        }
        Poll::Ready(Ok(()))
    }

    /// Moves queued frames into the write buffer, compressing them in the dedicated mode.
    fn drain_into(&mut self, buf: &mut Vec<u8>, batch: usize, waker: &Waker) -> Drained {
        #[cfg(feature = "deflate")]
        if let Some(deflater) = self.deflater.as_mut() {
            return DRAINED.with_borrow_mut(|frames| {
                let drained = self.session.outbox.drain_frames(frames, batch, waker);
                for frame in frames.drain(..) {
                    deflater.write(&frame, buf);
                }
                drained
            });
        }
        self.session.outbox.drain(buf, batch, waker)
    }

    /// Reads and decodes until a message is complete (`Ready(Some)`), the connection's state
    /// changed (`Ready(None)`: close, error, EOF), or the socket has nothing (`Pending`).
    fn poll_read_side(&mut self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        while !self.input.is_empty() {
            let input = std::mem::take(&mut self.input);
            match self.decode_from(&input) {
                Decoded::Message(m, used) => {
                    self.input = input.slice(used..);
                    return Poll::Ready(Some(m));
                }
                Decoded::Stop => return Poll::Ready(None),
                Decoded::NeedMore => {}
            }
        }
        loop {
            let read = READ_BUF.with_borrow_mut(|buf| {
                let mut rb = ReadBuf::new(&mut buf[..]);
                match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => {
                        self.io_error = Some(e);
                        return Poll::Ready(None);
                    }
                    Poll::Ready(Ok(())) => {}
                }
                let n = rb.filled().len();
                if n == 0 {
                    self.eof = true;
                    self.read_closed = true;
                    return Poll::Ready(None);
                }
                self.session
                    .last_seen
                    .store(self.core.coarse_ms(), Ordering::Release);
                match self.decode_from(&buf[..n]) {
                    Decoded::Message(m, used) => {
                        self.input = Bytes::copy_from_slice(&buf[used..n]);
                        Poll::Ready(Some(Some(m)))
                    }
                    Decoded::Stop => Poll::Ready(None),
                    Decoded::NeedMore => Poll::Ready(Some(None)),
                }
            });
            match read {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Some(m))) => return Poll::Ready(Some(m)),
                Poll::Ready(Some(None)) => continue,
            }
        }
    }

    /// Decodes `data` until a message completes, reading must stop, or the data is used up.
    fn decode_from(&mut self, data: &[u8]) -> Decoded {
        let mut pos = 0;
        while pos < data.len() {
            match self.decoder.decode(&data[pos..]) {
                Ok((used, event)) => {
                    pos += used;
                    match event {
                        Some(Event::Message(m)) => {
                            // Closing: data after our close frame is discarded.
                            let counters = &self.core.counters;
                            counters.messages_in.fetch_add(1, Ordering::Relaxed);
                            counters
                                .bytes_in
                                .fetch_add(m.len() as u64, Ordering::Relaxed);
                            if self.session.outbox.is_open() && self.within_rate() {
                                return Decoded::Message(m, pos);
                            }
                        }
                        Some(Event::Ping(payload)) => self.session.outbox.pong(&payload),
                        Some(Event::Pong) | None => {}
                        Some(Event::Close(frame)) => {
                            self.session.outbox.reply_close(frame.as_ref());
                            self.close_received = Some(Box::new(frame));
                            self.read_closed = true;
                            return Decoded::Stop;
                        }
                    }
                }
                Err(e) => {
                    self.fail(e);
                    return Decoded::Stop;
                }
            }
        }
        Decoded::NeedMore
    }

    /// Takes a token for one inbound message; closes with 1008 when the bucket is empty.
    fn within_rate(&mut self) -> bool {
        let Some(rate) = self.core.config.max_messages_per_second else {
            return true;
        };
        let now = self.core.coarse_ms();
        let elapsed = now.saturating_sub(self.refilled_at);
        self.refilled_at = now;
        let rate = f64::from(rate);
        self.tokens = (self.tokens + elapsed as f64 * rate / 1000.0).min(rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return true;
        }
        tracing::debug!(id = %self.session.id, "inbound rate limit exceeded");
        let frame = CloseFrame::new(CloseCode::POLICY, "rate limit exceeded");
        self.core.close_session(&self.session, frame);
        false
    }

    /// Refuses the peer's input: close with the error's code, without waiting for an answer.
    fn fail(&mut self, e: ProtocolError) {
        tracing::debug!(id = %self.session.id, code = %e.code, reason = e.reason, "protocol error");
        self.failing = true;
        self.read_closed = true;
        self.core
            .close_session(&self.session, CloseFrame::new(e.code, e.reason));
    }
}

impl<S> Drop for Connection<S> {
    fn drop(&mut self) {
        // Before the socket closes: no flush may write to its descriptor from now on.
        if self.shared_socket {
            self.session.outbox.detach();
        }
    }
}

fn core_rate(core: &Engine) -> u32 {
    core.config.max_messages_per_second.unwrap_or(0)
}

enum Decoded {
    /// A message, and how many bytes of the input it took.
    Message(Message, usize),
    Stop,
    NeedMore,
}
