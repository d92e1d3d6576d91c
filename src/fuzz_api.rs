//! Thin wrappers that expose wshub's own parsers to the fuzz targets in `fuzz/`.
//!
//! Compiled only with the internal `fuzzing` feature and hidden from the docs: this is not a
//! public API and may change in any release. Each wrapper calls the real code path (the frame
//! decoder, `read_head` and the handshake policy, the registry's topic map, the config's
//! derived values) with nothing but plumbing around it, so a crash found here is a crash in
//! the library.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderMap, Method};
use tokio::io::{AsyncRead, ReadBuf};

use crate::engine::Delivery;
use crate::frame::{self, Event};
use crate::handler::{Handler, Request};
use crate::handshake::{self, Refused};
use crate::hub::Hub;
use crate::message::{CloseCode, CloseFrame, Message};
use crate::outbox::Outbox;
use crate::registry::SessionTopics;
use crate::session::SessionInner;
use crate::{Config, TopicError};

/// One event of the frame decoder, comparable across runs.
#[derive(Debug, PartialEq)]
pub struct FrameEvent(Event);

impl FrameEvent {
    /// The data message, if this event is one.
    pub fn message(&self) -> Option<&Message> {
        match &self.0 {
            Event::Message(m) => Some(m),
            _ => None,
        }
    }

    /// The payload of a ping, if this event is one.
    pub fn ping(&self) -> Option<&[u8]> {
        match &self.0 {
            Event::Ping(p) => Some(p),
            _ => None,
        }
    }

    /// The close frame of a close event: `Some(None)` for a close without a code.
    pub fn close(&self) -> Option<Option<&CloseFrame>> {
        match &self.0 {
            Event::Close(c) => Some(c.as_ref()),
            _ => None,
        }
    }
}

/// The incremental decoder of client frames, as a connection drives it.
pub struct FrameDecoder(frame::Decoder);

impl FrameDecoder {
    /// A decoder refusing messages over `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        FrameDecoder(frame::Decoder::new(max_message))
    }

    /// Consumes bytes of `input` until one event completes or the input is used up: the bytes
    /// used and the event, or the close code and reason of a refusal.
    pub fn decode(&mut self, input: &[u8]) -> Result<(usize, Option<FrameEvent>), (u16, &str)> {
        match self.0.decode(input) {
            Ok((used, event)) => Ok((used, event.map(FrameEvent))),
            Err(e) => Err((e.code.into(), e.reason)),
        }
    }
}

/// A complete server frame, as the hub frames every message it sends.
pub fn encode_frame(message: &Message) -> Bytes {
    frame::encode_message(message)
}

/// A server close frame (the reason cut to fit a control frame).
pub fn encode_close(code: u16, reason: &str) -> Bytes {
    frame::encode_close(Some(&CloseFrame::new(CloseCode::from(code), reason)))
}

/// What the handshake made of a request.
#[derive(Debug)]
pub enum Handshake {
    /// Upgraded: the `101` response, and the bytes that followed the request head.
    Accepted {
        /// The complete `101 Switching Protocols` response.
        response: Vec<u8>,
        /// Bytes after the request head (the client's first frames).
        rest: Bytes,
    },
    /// Refused or answered: the complete HTTP response written to the client.
    Answered {
        /// Its status code.
        status: u16,
        /// The complete response.
        response: Vec<u8>,
    },
    /// No answer: the request never completed.
    Gone,
}

/// A handler with every default: same-origin check, no authorization, no subprotocol.
struct Defaults;

impl Handler for Defaults {}

/// Reads one upgrade request from `chunks` (each delivered by one socket read) with
/// `read_head`, then applies the handshake policy of a hub built with `config`, exactly as a
/// connection does before the upgrade.
///
/// # Panics
/// If the handshake waits on anything: with these inputs every step is ready at once.
pub fn handshake(config: Config, chunks: &[&[u8]], peer: SocketAddr) -> Handshake {
    let hub = Hub::builder(Defaults).config(config).build();
    let core = hub.engine.clone();
    let mut io = Chunks { chunks, at: 0 };
    let outcome = ready(async {
        let (head, rest) = handshake::read_head(&mut io, core.config.max_handshake_bytes).await?;
        let accepted = handshake::negotiate(&core, head, peer).await?;
        Ok::<_, Refused>((accepted, rest))
    });
    let reject = match outcome {
        Ok((accepted, rest)) => {
            return Handshake::Accepted {
                response: accepted.response(),
                rest,
            };
        }
        Err(Refused::Gone) => return Handshake::Gone,
        Err(Refused::Respond(r) | Refused::Answered(r)) => r,
    };
    let mut response = Vec::new();
    ready(handshake::write_reject(&mut response, &reject));
    Handshake::Answered {
        status: reject.status.as_u16(),
        response,
    }
}

/// Byte chunks read one per `poll_read` (split further when the buffer is smaller), then EOF.
struct Chunks<'a> {
    chunks: &'a [&'a [u8]],
    at: usize,
}

impl AsyncRead for Chunks<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while let Some(chunk) = self.chunks.first() {
            if self.at < chunk.len() {
                let n = (chunk.len() - self.at).min(buf.remaining());
                buf.put_slice(&chunk[self.at..self.at + n]);
                self.at += n;
                return Poll::Ready(Ok(()));
            }
            self.chunks = &self.chunks[1..];
            self.at = 0;
        }
        Poll::Ready(Ok(()))
    }
}

/// Polls a future that must complete without waiting.
fn ready<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("the handshake waited on something"),
    }
}

/// A hub's registry with sessions that have no connection, for driving the topic map.
pub struct Topics {
    hub: Hub,
    sessions: Vec<Arc<SessionInner>>,
}

impl Topics {
    /// A hub with `sessions` registered sessions (index `0..sessions`).
    pub fn new(sessions: usize) -> Self {
        let hub = Hub::builder(Defaults)
            .config(Config::default().max_queue_messages(8))
            .build();
        let sessions = (0..sessions).map(|_| detached_session(&hub)).collect();
        Topics { hub, sessions }
    }

    /// The hub, for its public queries (`topics`, `subscriber_count`, `session_count`).
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// `Session::subscribe` for session `i`.
    pub fn subscribe(&self, i: usize, topic: &str) -> Result<bool, TopicError> {
        let joined = self
            .hub
            .engine
            .registry
            .subscribe(&self.sessions[i], topic)?;
        Ok(joined.added)
    }

    /// `Session::unsubscribe` for session `i`.
    pub fn unsubscribe(&self, i: usize, topic: &str) -> bool {
        self.hub
            .engine
            .registry
            .unsubscribe(&self.sessions[i], topic)
            .removed
    }

    /// The topics session `i` is in.
    pub fn session_topics(&self, i: usize) -> Vec<String> {
        crate::registry::Registry::session_topics(&self.sessions[i])
    }

    /// `Hub::publish`.
    pub fn publish(&self, topic: &str, message: &[u8]) -> Delivery {
        self.hub.publish(topic, message)
    }

    /// What a session's end does: out of every topic and the registry; true the first time.
    pub fn remove(&self, i: usize) -> bool {
        self.hub.engine.registry.remove(&self.sessions[i]).is_some()
    }
}

fn detached_session(hub: &Hub) -> Arc<SessionInner> {
    let core = &hub.engine;
    let peer = SocketAddr::from(([127, 0, 0, 1], 1));
    let request = Request::new(
        Method::GET,
        PathAndQuery::from_static("/"),
        HeaderMap::new(),
        peer,
    );
    let inner = Arc::new(SessionInner {
        id: core.registry.next_id(),
        request,
        subprotocol: None,
        outbox: Outbox::new(&core.config, core.counters.clone()),
        topics: Mutex::new(SessionTopics::default()),
        last_seen: AtomicU64::new(core.now_ms()),
        ping_sent: AtomicU64::new(0),
        close_deadline: AtomicU64::new(0),
        in_handler: AtomicBool::new(false),
    });
    core.registry.insert(inner.clone());
    inner
}

/// The values a hub derives from `config`: how often its timer looks, and the close deadline
/// it sets on a session it closes now (with the hub's clock at that moment).
#[derive(Debug, Clone, Copy)]
pub struct Derived {
    /// The hub timer's period.
    pub timer_tick: Duration,
    /// The hub's clock (milliseconds) just before the close.
    pub now_ms: u64,
    /// The close deadline the close set (hub milliseconds).
    pub close_deadline_ms: u64,
}

/// Builds a hub with `config`, registers a session and closes it as the hub does.
pub fn derive(config: Config) -> Derived {
    let hub = Hub::builder(Defaults).config(config).build();
    let s = detached_session(&hub);
    let core = &hub.engine;
    let timer_tick = core.config.timer_tick();
    let now_ms = core.now_ms();
    core.close_session(&s, CloseFrame::new(CloseCode::NORMAL, "fuzz"));
    Derived {
        timer_tick,
        now_ms,
        close_deadline_ms: s.close_deadline.load(Ordering::Acquire),
    }
}
