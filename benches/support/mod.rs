//! Helpers shared by the benches: sessions of a real [`Hub`] over real byte streams (in-memory
//! duplex pipes or loopback TCP) opened with a real WebSocket client handshake, clients that
//! drain and count what they receive, and masked client frames.
//!
//! Only wshub's public API is used: a session is a stream handed to [`Hub::accept`].
#![allow(
    dead_code,
    unreachable_pub,
    reason = "each bench uses a different part of this module, whose items are pub for them"
)]

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::Notify;
use wshub::{Config, Hub};

/// The client key of every handshake, and the accept value the server must answer with.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Bytes each side of an in-memory pipe buffers, like a socket buffer.
pub const PIPE_BYTES: usize = 64 * 1024;

/// The longest any wait in a bench may take before it fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(30);

/// A multi-thread runtime with one worker per core of the bench machine (2).
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The default configuration without the timers and limits that would end a bench's sessions
/// or throttle its client: no heartbeat, no idle timeout, no inbound rate limit.
pub fn bench_config() -> Config {
    Config::default()
        .ping_interval(None)
        .idle_timeout(None)
        .max_messages_per_second(None)
}

/// Awaits `fut`, panicking after [`WAIT`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("bench timed out after {WAIT:?} waiting for {what}"),
    }
}

/// How the benches reach the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `tokio::io::duplex`: wshub's cost without the kernel's.
    Duplex,
    /// Loopback TCP with `TCP_NODELAY`, as in production and the peer benchmark.
    Tcp,
}

/// Opens `n` sessions of `hub`, each over its own stream, with a client handshake. Returns the
/// client ends (each with the bytes read past the 101 response).
pub async fn open_sessions(hub: &Hub, transport: Transport, n: usize) -> Vec<Client> {
    open_sessions_offering(hub, transport, n, None).await
}

/// [`open_sessions`] whose clients send `Sec-WebSocket-Extensions: offer`.
pub async fn open_sessions_offering(
    hub: &Hub,
    transport: Transport,
    n: usize,
    offer: Option<&str>,
) -> Vec<Client> {
    let mut clients = Vec::with_capacity(n);
    match transport {
        Transport::Duplex => {
            for i in 0..n {
                let (client, server) = tokio::io::duplex(PIPE_BYTES);
                let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, 1 + (i % 60_000) as u16));
                tokio::spawn(hub.accept(server, peer));
                clients.push(Client::Duplex(handshake(client, offer).await));
            }
        }
        Transport::Tcp => {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .await
                .expect("bind 127.0.0.1:0");
            let addr = listener.local_addr().expect("local addr");
            let acceptor = {
                let hub = hub.clone();
                tokio::spawn(async move {
                    for _ in 0..n {
                        let (stream, peer) = listener.accept().await.expect("accept");
                        stream.set_nodelay(true).expect("TCP_NODELAY");
                        tokio::spawn(hub.accept(stream, peer));
                    }
                })
            };
            for _ in 0..n {
                let stream = TcpStream::connect(addr).await.expect("connect");
                stream.set_nodelay(true).expect("TCP_NODELAY");
                clients.push(Client::Tcp(handshake(stream, offer).await));
            }
            within("the acceptor", acceptor).await.expect("acceptor");
        }
    }
    within("every session to open", async {
        while hub.session_count() < n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    clients
}

/// The client end of one session, after the handshake.
pub enum Client {
    Duplex(Upgraded<DuplexStream>),
    Tcp(Upgraded<TcpStream>),
}

/// A stream after a successful upgrade, with the bytes read past the response head.
pub struct Upgraded<S> {
    pub io: S,
    pub rest: Vec<u8>,
}

impl Client {
    /// Spawns a task that reads this client's stream for as long as it is open and counts the
    /// complete data frames into `counter`.
    pub fn drain(self, counter: Arc<Deliveries>) {
        match self {
            Client::Duplex(u) => drop(tokio::spawn(drain(u, counter))),
            Client::Tcp(u) => drop(tokio::spawn(drain(u, counter))),
        }
    }
}

/// Writes a valid upgrade request and reads the `101 Switching Protocols` response, checking
/// its `Sec-WebSocket-Accept`.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    offer: Option<&str>,
) -> Upgraded<S> {
    let extensions = offer
        .map(|o| format!("Sec-WebSocket-Extensions: {o}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET /bench HTTP/1.1\r\nHost: bench.local\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extensions}\r\n"
    );
    within("the upgrade", async {
        io.write_all(request.as_bytes())
            .await
            .expect("write request");
        let mut buf = Vec::with_capacity(256);
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 512];
            let n = io.read(&mut chunk).await.expect("read response");
            assert!(n > 0, "connection closed during the upgrade");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = std::str::from_utf8(&buf[..end]).expect("ASCII response head");
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "upgrade refused: {head:?}"
        );
        let accept = tungstenite::handshake::derive_accept_key(KEY.as_bytes());
        assert!(
            head.lines().any(|l| {
                l.split_once(':').is_some_and(|(name, value)| {
                    name.eq_ignore_ascii_case("sec-websocket-accept") && value.trim() == accept
                })
            }),
            "wrong Sec-WebSocket-Accept in {head:?}"
        );
        Upgraded {
            rest: buf[end..].to_vec(),
            io,
        }
    })
    .await
}

/// Data frames received by a set of clients, and a way to wait for a number of them.
#[derive(Default)]
pub struct Deliveries {
    count: AtomicU64,
    target: AtomicU64,
    reached: Notify,
}

impl Deliveries {
    /// Announces `more` deliveries to come; returns the count to [`wait`](Self::wait) for.
    pub fn expect(&self, more: u64) -> u64 {
        self.target.fetch_add(more, Ordering::AcqRel) + more
    }

    /// Waits until `target` data frames were received in all.
    pub async fn wait(&self, target: u64) {
        within("the deliveries", async {
            loop {
                let reached = self.reached.notified();
                if self.count.load(Ordering::Acquire) >= target {
                    return;
                }
                reached.await;
            }
        })
        .await;
    }

    fn add(&self, frames: u64) {
        let now = self.count.fetch_add(frames, Ordering::AcqRel) + frames;
        if now >= self.target.load(Ordering::Acquire) {
            self.reached.notify_one();
        }
    }
}

async fn drain<S: AsyncRead + Unpin>(mut u: Upgraded<S>, counter: Arc<Deliveries>) {
    let mut frames = FrameCounter::default();
    counter.add(frames.feed(&u.rest));
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match u.io.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let complete = frames.feed(&buf[..n]);
                if complete > 0 {
                    counter.add(complete);
                }
            }
        }
    }
}

/// Counts complete server data frames in a byte stream without buffering payloads.
#[derive(Default)]
pub struct FrameCounter {
    head: Vec<u8>,
    /// Payload bytes still to skip, and whether the frame they end is a data frame.
    skip: u64,
    data: bool,
}

impl FrameCounter {
    /// Consumes `bytes`; returns how many data frames they completed.
    pub fn feed(&mut self, mut bytes: &[u8]) -> u64 {
        let mut complete = 0;
        loop {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len() as u64);
                self.skip -= n;
                bytes = &bytes[n as usize..];
                if self.skip > 0 {
                    return complete;
                }
                complete += u64::from(std::mem::take(&mut self.data));
            }
            if bytes.is_empty() {
                return complete;
            }
            // Accumulate a header: 2 bytes, plus 2 or 8 of extended length.
            let want: usize = match self.head.get(1).map(|b| b & 0x7F) {
                Some(126) => 4,
                Some(127) => 10,
                _ => 2,
            };
            let take = want.saturating_sub(self.head.len()).min(bytes.len());
            self.head.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            let want = match self.head.get(1).map(|b| b & 0x7F) {
                Some(126) => 4,
                Some(127) => 10,
                _ => 2,
            };
            if self.head.len() < want {
                continue;
            }
            let len = match want {
                4 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
                10 => u64::from_be_bytes(self.head[2..10].try_into().expect("8 bytes")),
                _ => u64::from(self.head[1] & 0x7F),
            };
            let opcode = self.head[0] & 0x0F;
            let is_data = self.head[0] & 0x80 != 0 && matches!(opcode, 0x0..=0x2);
            self.head.clear();
            if len == 0 {
                complete += u64::from(is_data);
            } else {
                self.skip = len;
                self.data = is_data;
            }
        }
    }
}

/// One masked client frame (FIN set) with `opcode` and `payload`.
pub fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Checks [`FrameCounter`] on frames of every header size, split at every kind of boundary;
/// the benches call it once so a miscount fails loudly instead of hanging a wait.
pub fn check_frame_counter() {
    let mut stream = Vec::new();
    for len in [0usize, 5, 125, 126, 300, 70_000] {
        stream.push(0x82);
        match len {
            n if n < 126 => stream.push(n as u8),
            n if n <= 65_535 => {
                stream.push(126);
                stream.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                stream.push(127);
                stream.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        stream.extend(std::iter::repeat_n(7u8, len));
    }
    stream.extend_from_slice(&[0x89, 0x00]); // a ping is not a data frame
    for step in [1, 2, 3, 7, 1000, stream.len()] {
        let mut c = FrameCounter::default();
        let n: u64 = stream.chunks(step).map(|ch| c.feed(ch)).sum();
        assert_eq!(n, 6, "FrameCounter miscounted with chunks of {step}");
    }
}
