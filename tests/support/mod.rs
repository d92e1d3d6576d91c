//! Helpers shared by the integration tests.
//!
//! - [`start`] serves a real [`Hub`] on `127.0.0.1:0` with a [`Recorder`] handler that reports
//!   every hook as an [`Event`] on a channel, so tests wait on events, never on sleeps.
//! - [`connect`] and [`connect_many`] open well-behaved clients (tokio-tungstenite).
//! - [`RawClient`] speaks hand-written HTTP and masked frames over a plain `TcpStream`, for
//!   clients that misbehave: never read, never answer pings, send invalid frames.
//! - [`within`] and [`wait_until`] bound every wait by [`WAIT`], so a broken build fails
//!   instead of hanging.
// Each test file uses a different part of this module, and its items are `pub` for the test
// files that include it (not for any outside user).
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame as WsCloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use wshub::http::{Response, StatusCode};
use wshub::{
    Bytes, CloseReason, Config, Handler, Hub, Message, Reject, Request, Session, SessionId,
};

/// The longest any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test if it takes longer than [`WAIT`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// Polls `cond` every few milliseconds until it holds, failing the test after [`WAIT`]. Only
/// for state that has no event (a counter); prefer waiting on [`Events`].
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// The recording handler

/// Typed data a test's `authorize` hook attaches; the recorder reports it on open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User(pub String);

/// [`CloseReason`] in a comparable form (it holds an `io::Error`, so it is neither `Clone` nor
/// `PartialEq`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    Client(u16, String),
    Server(u16, String),
    PingTimeout,
    Disconnected,
    Io(String),
}

impl Closed {
    fn of(reason: &CloseReason) -> Closed {
        match reason {
            CloseReason::Client(f) => Closed::Client(f.code.into(), f.reason.clone()),
            CloseReason::Server(f) => Closed::Server(f.code.into(), f.reason.clone()),
            CloseReason::PingTimeout => Closed::PingTimeout,
            CloseReason::Disconnected => Closed::Disconnected,
            CloseReason::Io(e) => Closed::Io(e.to_string()),
            other => Closed::Io(format!("unknown close reason: {other}")),
        }
    }

    /// A server close with `code` and `reason`.
    pub fn server(code: u16, reason: &str) -> Closed {
        Closed::Server(code, reason.to_string())
    }

    /// A client close with `code` and `reason`.
    pub fn client(code: u16, reason: &str) -> Closed {
        Closed::Client(code, reason.to_string())
    }
}

/// One hook call, as the recorder saw it.
#[derive(Debug, Clone)]
pub enum Event {
    Open {
        id: SessionId,
        peer: SocketAddr,
        user: Option<User>,
        subprotocol: Option<String>,
    },
    Message {
        id: SessionId,
        message: Message,
    },
    Close {
        id: SessionId,
        reason: Closed,
        /// Whether the hub still found the session when `on_close` ran (it must not).
        still_registered: bool,
        /// The topics the session was still in when `on_close` ran (it must be none).
        topics_left: Vec<String>,
    },
}

type OpenHook = Box<dyn Fn(&Session) + Send + Sync>;
type MessageHook = Box<dyn Fn(&Session, &Message) + Send + Sync>;
type AsyncMessageHook =
    Box<dyn Fn(Session, Message) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;
type AuthorizeHook = Box<dyn Fn(&mut Request) -> Result<(), Reject> + Send + Sync>;
type SubprotocolHook = Box<dyn Fn(&[&str]) -> Option<String> + Send + Sync>;
type HttpHook = Box<dyn Fn(&Request) -> Option<Response<Bytes>> + Send + Sync>;

/// What the recorder does besides recording; every hook is optional.
#[derive(Default)]
pub struct Behaviour {
    /// Runs in `open`, before the open event is recorded (so a subscription made here is in
    /// place when the test sees the event).
    pub open: Option<OpenHook>,
    /// Runs in `on_message`, after the message event is recorded (so a panic here still
    /// leaves the event).
    pub message: Option<MessageHook>,
    /// Awaited in `on_message` after `message`, for handlers that take their time.
    pub message_async: Option<AsyncMessageHook>,
    pub authorize: Option<AuthorizeHook>,
    pub subprotocol: Option<SubprotocolHook>,
    pub http: Option<HttpHook>,
}

impl Behaviour {
    pub fn on_open(mut self, f: impl Fn(&Session) + Send + Sync + 'static) -> Self {
        self.open = Some(Box::new(f));
        self
    }
    pub fn on_message(mut self, f: impl Fn(&Session, &Message) + Send + Sync + 'static) -> Self {
        self.message = Some(Box::new(f));
        self
    }
    pub fn on_message_async<F>(
        mut self,
        f: impl Fn(Session, Message) -> F + Send + Sync + 'static,
    ) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.message_async = Some(Box::new(move |s, m| Box::pin(f(s, m))));
        self
    }
    pub fn authorize(
        mut self,
        f: impl Fn(&mut Request) -> Result<(), Reject> + Send + Sync + 'static,
    ) -> Self {
        self.authorize = Some(Box::new(f));
        self
    }
    pub fn subprotocol(
        mut self,
        f: impl Fn(&[&str]) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.subprotocol = Some(Box::new(f));
        self
    }
    pub fn http(
        mut self,
        f: impl Fn(&Request) -> Option<Response<Bytes>> + Send + Sync + 'static,
    ) -> Self {
        self.http = Some(Box::new(f));
        self
    }
}

/// A [`Handler`] that reports every hook as an [`Event`] and counts `on_close` per session.
pub struct Recorder {
    events: mpsc::UnboundedSender<Event>,
    closes: Arc<Mutex<HashMap<SessionId, usize>>>,
    behaviour: Behaviour,
}

#[wshub::async_trait]
impl Handler for Recorder {
    async fn authorize(&self, request: &mut Request) -> Result<(), Reject> {
        match &self.behaviour.authorize {
            Some(f) => f(request),
            None => Ok(()),
        }
    }

    fn select_subprotocol(&self, offered: &[&str], _request: &Request) -> Option<String> {
        self.behaviour.subprotocol.as_ref().and_then(|f| f(offered))
    }

    fn http(&self, request: &Request) -> Option<Response<Bytes>> {
        self.behaviour.http.as_ref().and_then(|f| f(request))
    }

    async fn open(&self, session: &Session) {
        if let Some(f) = &self.behaviour.open {
            f(session);
        }
        let _ = self.events.send(Event::Open {
            id: session.id(),
            peer: session.peer_addr(),
            user: session.data::<User>().cloned(),
            subprotocol: session.subprotocol().map(str::to_string),
        });
    }

    async fn on_message(&self, session: &Session, message: Message) {
        let _ = self.events.send(Event::Message {
            id: session.id(),
            message: message.clone(),
        });
        if let Some(f) = &self.behaviour.message {
            f(session, &message);
        }
        if let Some(f) = &self.behaviour.message_async {
            f(session.clone(), message).await;
        }
    }

    async fn on_close(&self, session: &Session, reason: CloseReason) {
        *self.closes.lock().unwrap().entry(session.id()).or_default() += 1;
        let _ = self.events.send(Event::Close {
            id: session.id(),
            reason: Closed::of(&reason),
            still_registered: session.hub().session(session.id()).is_some(),
            topics_left: session.topics(),
        });
    }
}

/// The events a [`Recorder`] reported, in the order its hooks ran.
pub struct Events {
    rx: mpsc::UnboundedReceiver<Event>,
}

impl Events {
    /// The next event, failing the test after [`WAIT`].
    pub async fn next(&mut self) -> Event {
        within("the next handler event", self.rx.recv())
            .await
            .expect("the recorder is alive while the hub is")
    }

    /// The next event if one is already there.
    pub fn try_next(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }

    /// Fails the test if an event is waiting.
    pub fn assert_none_pending(&mut self) {
        if let Some(e) = self.try_next() {
            panic!("unexpected handler event: {e:?}");
        }
    }

    /// The next event, which must be an open; returns the session id and peer address.
    pub async fn open(&mut self) -> (SessionId, SocketAddr) {
        match self.next().await {
            Event::Open { id, peer, .. } => (id, peer),
            other => panic!("expected an open event, got {other:?}"),
        }
    }

    /// The next `n` events, which must all be opens.
    pub async fn opens(&mut self, n: usize) -> Vec<(SessionId, SocketAddr)> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.open().await);
        }
        out
    }

    /// The next event, which must be a message; returns its session and message.
    pub async fn message(&mut self) -> (SessionId, Message) {
        match self.next().await {
            Event::Message { id, message } => (id, message),
            other => panic!("expected a message event, got {other:?}"),
        }
    }

    /// The next event, which must be a close after which the session was gone from the
    /// registry and every topic; returns its session and reason.
    pub async fn close(&mut self) -> (SessionId, Closed) {
        match self.next().await {
            Event::Close {
                id,
                reason,
                still_registered,
                topics_left,
            } => {
                assert!(
                    !still_registered,
                    "session {id} was still registered in on_close"
                );
                assert!(
                    topics_left.is_empty(),
                    "session {id} was still in topics {topics_left:?} in on_close"
                );
                (id, reason)
            }
            other => panic!("expected a close event, got {other:?}"),
        }
    }

    /// The next `n` events, which must all be closes.
    pub async fn closes(&mut self, n: usize) -> HashMap<SessionId, Closed> {
        let mut out = HashMap::with_capacity(n);
        for _ in 0..n {
            let (id, reason) = self.close().await;
            assert!(
                out.insert(id, reason).is_none(),
                "on_close ran twice for {id}"
            );
        }
        out
    }
}

/// A hub served on a loopback port, with its recorder's events.
pub struct TestHub {
    pub hub: Hub,
    pub addr: SocketAddr,
    pub events: Events,
    closes: Arc<Mutex<HashMap<SessionId, usize>>>,
    pub serve: JoinHandle<std::io::Result<()>>,
}

impl TestHub {
    /// How many times `on_close` ran for `id`.
    pub fn close_count(&self, id: SessionId) -> usize {
        self.closes.lock().unwrap().get(&id).copied().unwrap_or(0)
    }

    /// The `on_close` count of every session that closed.
    pub fn close_counts(&self) -> HashMap<SessionId, usize> {
        self.closes.lock().unwrap().clone()
    }

    /// `ws://` URL of `path` on this hub.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }
}

/// A listener on `127.0.0.1:0` with a backlog of 1,024.
///
/// `TcpListener::bind` listens with a backlog of 128, as the standard library does: when more
/// connections arrive at once than the accept loop has taken yet, Linux drops the extra SYNs
/// and the clients retry one second later, which would look like a hub that stalls under a
/// burst. Tests that open hundreds of sockets at once bind through this.
pub fn listen() -> TcpListener {
    let socket = TcpSocket::new_v4().expect("a TCP socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind port 0");
    socket.listen(1024).expect("listen")
}

/// [`listen`], with the send buffer of every accepted socket set to `bytes` (Linux doubles
/// it): the hub's writes then fill a socket after a few kilobytes, not megabytes.
pub fn listen_with_send_buffer(bytes: u32) -> TcpListener {
    let socket = TcpSocket::new_v4().expect("a TCP socket");
    socket.set_send_buffer_size(bytes).expect("SO_SNDBUF");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind port 0");
    socket.listen(1024).expect("listen")
}

/// Serves a hub with `config` and a recorder doing `behaviour` on `127.0.0.1:0`.
pub async fn start(config: Config, behaviour: Behaviour) -> TestHub {
    start_on(listen(), config, behaviour).await
}

/// [`start`] on `listener`.
pub async fn start_on(listener: TcpListener, config: Config, behaviour: Behaviour) -> TestHub {
    let (tx, rx) = mpsc::unbounded_channel();
    let closes = Arc::new(Mutex::new(HashMap::new()));
    let recorder = Recorder {
        events: tx,
        closes: closes.clone(),
        behaviour,
    };
    let hub = Hub::builder(recorder).config(config).build();
    let addr = listener.local_addr().expect("local address");
    let serve = tokio::spawn(hub.clone().serve(listener));
    TestHub {
        hub,
        addr,
        events: Events { rx },
        closes,
        serve,
    }
}

/// [`start`] with the default config and a recorder that only records.
pub async fn start_default() -> TestHub {
    start(Config::default(), Behaviour::default()).await
}

/// A config for tests: the heartbeat and idle timeout off (so no ping interleaves with what a
/// test counts), unless a test turns them on again.
pub fn quiet_config() -> Config {
    Config::default().ping_interval(None).idle_timeout(None)
}

// ---------------------------------------------------------------------------------------------
// Well-behaved clients (tokio-tungstenite)

pub type Client = WebSocketStream<TcpStream>;
pub type WsMessage = tungstenite::Message;
pub type ClientRequest = tungstenite::handshake::client::Request;
pub type ClientResponse = tungstenite::handshake::client::Response;

/// Opens a WebSocket client to `addr` at `/`.
pub async fn connect(addr: SocketAddr) -> Client {
    connect_with(addr, format!("ws://{addr}/").into_client_request().unwrap())
        .await
        .0
}

/// Opens a WebSocket client with a custom request (headers, path); returns the 101 response.
pub async fn connect_with(addr: SocketAddr, request: ClientRequest) -> (Client, ClientResponse) {
    within("a client handshake", async {
        let tcp = TcpStream::connect(addr).await.expect("TCP connect");
        tcp.set_nodelay(true).unwrap();
        tokio_tungstenite::client_async(request, tcp)
            .await
            .expect("WebSocket handshake")
    })
    .await
}

/// Opens `n` clients one after the other; returns them with their session ids, in order.
pub async fn connect_each(t: &mut TestHub, n: usize) -> (Vec<Client>, Vec<SessionId>) {
    let mut clients = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(connect(t.addr).await);
        ids.push(t.events.open().await.0);
    }
    (clients, ids)
}

/// Opens `n` clients concurrently, at most `in_flight` handshakes at a time.
pub async fn connect_many(addr: SocketAddr, n: usize, in_flight: usize) -> Vec<Client> {
    futures_util::stream::iter(0..n)
        .map(|_| connect(addr))
        .buffer_unordered(in_flight)
        .collect()
        .await
}

/// The local address of a client's socket: the peer address the hub sees.
pub fn local_addr(client: &Client) -> SocketAddr {
    client.get_ref().local_addr().unwrap()
}

/// Sends a text message.
pub async fn send_text(client: &mut Client, text: &str) {
    within("a client send", client.send(WsMessage::text(text)))
        .await
        .expect("client send");
}

/// The next data message as text, skipping pings and pongs; fails on close or error.
pub async fn recv_text(client: &mut Client) -> String {
    loop {
        let msg = within("a message from the hub", client.next())
            .await
            .expect("the connection ended while a message was expected")
            .expect("client read error");
        match msg {
            WsMessage::Text(t) => return t.as_str().to_string(),
            WsMessage::Binary(b) => return String::from_utf8(b.to_vec()).expect("utf-8"),
            WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
            other => panic!("expected a data message, got {other:?}"),
        }
    }
}

/// Reads until the hub's close frame and returns its code and reason; data messages before it
/// fail the test. Keeps reading afterwards so the client answers the close and sees the end.
pub async fn recv_close(client: &mut Client) -> (u16, String) {
    let frame = loop {
        let msg = within("a close frame from the hub", client.next()).await;
        match msg {
            Some(Ok(WsMessage::Close(frame))) => break frame,
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    finish(client).await;
    let frame = frame.expect("the close frame carries a code");
    (frame.code.into(), frame.reason.as_str().to_string())
}

/// Reads until the connection ends (answering a close on the way).
pub async fn finish(client: &mut Client) {
    within("the connection to end", async {
        for _ in 0..1_000 {
            match client.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
        panic!("the connection kept delivering messages after its close");
    })
    .await;
}

/// Starts the close handshake from the client with `code` and `reason`.
pub async fn client_close(client: &mut Client, code: u16, reason: &str) {
    let frame = WsCloseFrame {
        code: WsCloseCode::from(code),
        reason: reason.into(),
    };
    within("the client's close", client.close(Some(frame)))
        .await
        .expect("client close");
}

// ---------------------------------------------------------------------------------------------
// Raw clients: hand-written HTTP and frames

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// A valid `Sec-WebSocket-Key` (the example of RFC 6455 section 1.3).
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// One client-to-server frame, masked as RFC 6455 requires of clients.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame_with_mask(fin, opcode, payload, Some([0x37, 0xfa, 0x21, 0x3d]))
}

/// A frame, masked with `mask` or (to break the protocol) unmasked.
pub fn frame_with_mask(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(if fin { 0x80 } else { 0 } | opcode);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= 0xFFFF {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A close frame's payload: the code, then the reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// An upgrade request for `path` on `addr`, with extra header lines.
pub fn upgrade_request(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> String {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    req
}

/// An HTTP response head and body as a raw client read it.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("utf-8 body")
    }
}

/// A frame as a raw client read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    /// RSV1: a compressed message (permessage-deflate).
    pub rsv1: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The code and reason of a close frame.
    pub fn close_code(&self) -> (u16, String) {
        assert_eq!(self.opcode, OP_CLOSE, "not a close frame: {self:?}");
        assert!(self.payload.len() >= 2, "close frame without a code");
        let code = u16::from_be_bytes([self.payload[0], self.payload[1]]);
        let reason = String::from_utf8(self.payload[2..].to_vec()).expect("utf-8 reason");
        (code, reason)
    }
}

/// A TCP client that writes whatever a test asks and reads only when told to.
pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
}

impl RawClient {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let stream = within("a TCP connect", TcpStream::connect(addr))
            .await
            .expect("TCP connect");
        RawClient::from_stream(stream)
    }

    /// Upgrades with a small receive buffer, so that a client that never reads stops taking
    /// data early (the kernel would otherwise absorb megabytes).
    pub async fn upgrade_small_rcvbuf(addr: SocketAddr, bytes: u32) -> RawClient {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(bytes).unwrap();
        let stream = within("a TCP connect", socket.connect(addr))
            .await
            .expect("TCP connect");
        RawClient::from_stream(stream).upgraded(addr).await
    }

    fn from_stream(stream: TcpStream) -> RawClient {
        stream.set_nodelay(true).unwrap();
        RawClient {
            stream,
            buf: Vec::new(),
            pos: 0,
        }
    }

    /// Connects and completes a WebSocket upgrade of `/` (fails the test on any other answer).
    pub async fn upgrade(addr: SocketAddr) -> RawClient {
        RawClient::connect(addr).await.upgraded(addr).await
    }

    async fn upgraded(mut self, addr: SocketAddr) -> RawClient {
        let r = self.request(&upgrade_request(addr, "/", &[])).await;
        assert_eq!(r.status, 101, "upgrade refused: {r:?}");
        self
    }

    /// Sends `request` and reads the response head (and, unless it is a 101, the body).
    pub async fn request(&mut self, request: &str) -> HttpResponse {
        self.write(request.as_bytes()).await;
        self.read_response().await
    }

    /// The local address: the peer address the hub sees.
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().unwrap()
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        within("a raw write", self.stream.write_all(bytes))
            .await
            .expect("raw write");
    }

    /// Sends one masked frame.
    pub async fn send(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        self.write(&client_frame(fin, opcode, payload)).await;
    }

    /// Reads more bytes into the buffer; false at EOF (a reset counts as EOF too).
    async fn fill(&mut self) -> bool {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 64 * 1024 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let mut chunk = [0u8; 16 * 1024];
        match within("bytes from the hub", self.stream.read(&mut chunk)).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    fn available(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Reads the status code of an HTTP response, or `None` if the hub closes first.
    pub async fn read_status_or_eof(&mut self) -> Option<u16> {
        loop {
            if let Some(i) = find(self.available(), b"\r\n") {
                let line = String::from_utf8_lossy(&self.available()[..i]).to_string();
                let status = line.split(' ').nth(1).and_then(|s| s.parse().ok());
                return Some(status.unwrap_or_else(|| panic!("bad status line {line:?}")));
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Reads an HTTP response: the head, then `content-length` bytes of body (none for 101).
    pub async fn read_response(&mut self) -> HttpResponse {
        let head_len = loop {
            if let Some(i) = find(self.available(), b"\r\n\r\n") {
                break i + 4;
            }
            assert!(self.fill().await, "the hub closed before its response head");
        };
        let head = String::from_utf8(self.available()[..head_len].to_vec()).expect("ASCII head");
        self.pos += head_len;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').expect("header line");
                (n.trim().to_ascii_lowercase(), v.trim().to_string())
            })
            .collect();
        let mut response = HttpResponse {
            status,
            headers,
            body: Vec::new(),
        };
        if status != 101 {
            let len: usize = response
                .header("content-length")
                .map(|v| v.parse().expect("numeric content-length"))
                .unwrap_or(0);
            while self.available().len() < len {
                assert!(self.fill().await, "the hub closed before the body ended");
            }
            response.body = self.available()[..len].to_vec();
            self.pos += len;
        }
        response
    }

    /// Reads one server frame; `None` at EOF. Fails on a masked frame (servers must not mask).
    pub async fn read_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some((frame, used)) = parse_server_frame(self.available()) {
                self.pos += used;
                return Some(frame);
            }
            if !self.fill().await {
                assert!(
                    self.available().is_empty(),
                    "EOF inside a frame: {} bytes left",
                    self.available().len()
                );
                return None;
            }
        }
    }

    /// Reads frames until a close frame and returns its code and reason; fails on EOF first.
    /// Data frames on the way are returned too.
    pub async fn read_until_close(&mut self) -> (Vec<Frame>, (u16, String)) {
        let mut data = Vec::new();
        loop {
            match self.read_frame().await {
                Some(f) if f.opcode == OP_CLOSE => return (data, f.close_code()),
                Some(f) if f.opcode == OP_PING || f.opcode == OP_PONG => {}
                Some(f) => data.push(f),
                None => panic!(
                    "EOF before a close frame (after {} data frames)",
                    data.len()
                ),
            }
        }
    }

    /// Reads until the close frame and returns its code and reason; data frames are ignored.
    pub async fn read_close(&mut self) -> (u16, String) {
        self.read_until_close().await.1
    }

    /// Reads until EOF, failing if anything but EOF arrives.
    pub async fn expect_eof(&mut self) {
        if let Some(f) = self.read_frame().await {
            panic!("expected EOF, got {f:?}");
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses one unmasked server frame from the start of `b`; `None` if incomplete.
fn parse_server_frame(b: &[u8]) -> Option<(Frame, usize)> {
    if b.len() < 2 {
        return None;
    }
    assert_eq!(b[1] & 0x80, 0, "the server masked a frame");
    let (len, mut at) = match b[1] & 0x7F {
        126 => {
            if b.len() < 4 {
                return None;
            }
            (u16::from_be_bytes([b[2], b[3]]) as usize, 4)
        }
        127 => {
            if b.len() < 10 {
                return None;
            }
            (
                u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                10,
            )
        }
        n => (n as usize, 2),
    };
    if b.len() < at + len {
        return None;
    }
    let frame = Frame {
        fin: b[0] & 0x80 != 0,
        rsv1: b[0] & 0x40 != 0,
        opcode: b[0] & 0x0F,
        payload: b[at..at + len].to_vec(),
    };
    at += len;
    Some((frame, at))
}

/// A plain (non-upgrade) GET of `path`.
pub fn plain_get(addr: SocketAddr, path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/html\r\n\r\n")
}

/// A `Response` with status 200, `content_type` and `body`.
pub fn response(content_type: &str, body: &'static str) -> Response<Bytes> {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", content_type)
        .body(Bytes::from_static(body.as_bytes()))
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Abrupt clients and process measurements (tests/hostile.rs, tests/churn.rs)

/// Drops `stream` with a TCP reset instead of a FIN: `SO_LINGER` 0 makes `close` send RST at
/// once and discard anything unsent.
pub fn reset(stream: TcpStream) {
    // A zero linger never blocks on close (the reason tokio deprecates `set_linger`), and
    // `set_zero_linger` would need tokio 1.50.
    #[allow(deprecated)]
    stream
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0");
    drop(stream);
}

/// The process's resident memory in KiB (`VmRSS` of `/proc/self/status`); `None` where there
/// is no procfs (not Linux), and the memory checks are skipped there.
pub fn vm_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// How many file descriptors the process has open (`/proc/self/fd`); `None` without procfs.
pub fn open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

// ---------------------------------------------------------------------------------------------
// permessage-deflate (RFC 7692) on the client side of raw tests

/// Raw deflate for a client's messages and an inflater for the hub's, on zlib-rs.
#[cfg(feature = "deflate")]
pub mod pmd {
    use super::*;
    use zlib_rs::{Deflate, DeflateConfig, DeflateFlush, Inflate, InflateFlush};

    /// One message compressed without context: a sync flush without its `00 00 ff ff` tail.
    pub fn compress(payload: &[u8]) -> Vec<u8> {
        compress_with(&mut new_deflate(), payload)
    }

    pub fn new_deflate() -> Deflate {
        Deflate::new_with_config(DeflateConfig {
            window_bits: -15,
            ..DeflateConfig::default()
        })
    }

    /// One message compressed in `d`'s context.
    pub fn compress_with(d: &mut Deflate, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0; payload.len() + payload.len() / 100 + 1024];
        let before = d.total_out();
        d.compress(payload, &mut out, DeflateFlush::SyncFlush)
            .expect("deflate");
        out.truncate((d.total_out() - before) as usize);
        assert!(out.ends_with(&[0, 0, 0xFF, 0xFF]), "not a sync flush");
        out.truncate(out.len() - 4);
        out
    }

    /// A client-side inflater; keep it across messages when the server keeps its context.
    pub fn new_inflate() -> Inflate {
        Inflate::new(false, 15)
    }

    /// Inflates one server message (appending the `00 00 ff ff` tail) in `inf`'s context.
    pub fn inflate_with(inf: &mut Inflate, body: &[u8]) -> Vec<u8> {
        let mut input = body.to_vec();
        input.extend_from_slice(&[0, 0, 0xFF, 0xFF]);
        let mut out = vec![0; 64 * 1024 + body.len() * 64];
        let before = inf.total_out();
        inf.decompress(&input, &mut out, InflateFlush::SyncFlush)
            .expect("inflate");
        out.truncate((inf.total_out() - before) as usize);
        out
    }

    /// Inflates one message compressed without context.
    pub fn inflate(body: &[u8]) -> Vec<u8> {
        inflate_with(&mut new_inflate(), body)
    }

    /// Upgrades a raw client with `Sec-WebSocket-Extensions: offer`; returns the answer.
    pub async fn upgrade_offering(addr: SocketAddr, offer: &str) -> (RawClient, Option<String>) {
        let mut c = RawClient::connect(addr).await;
        let r = c
            .request(&upgrade_request(
                addr,
                "/",
                &[("Sec-WebSocket-Extensions", offer)],
            ))
            .await;
        assert_eq!(r.status, 101, "upgrade refused: {r:?}");
        let answer = r.header("sec-websocket-extensions").map(str::to_string);
        (c, answer)
    }

    /// A masked frame with RSV1 set on its first byte.
    pub fn compressed_frame(fin: bool, opcode: u8, body: &[u8]) -> Vec<u8> {
        let mut f = client_frame(fin, opcode, body);
        f[0] |= 0x40;
        f
    }
}
