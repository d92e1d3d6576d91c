//! The limit reference: the smallest server that does what wshub does on the wire for the
//! peer benchmark's "broadcast hub" protocol, and nothing else.
//!
//! Every text or binary message from any client goes, with the same opcode and payload, to
//! every connected client, the sender included. Like wshub it frames each message **once**,
//! appends the frame's bytes to every connection's pending output, wakes a connection's writer
//! only when that output goes from empty to non-empty, and the writer takes the whole pending
//! buffer and writes it with one call. Unlike wshub it has no hub, no registry sharding, no
//! handler, no queue limits, no reference-counted frames, no timeouts and no heartbeat.
//!
//! It is not a server to deploy (one slow client grows memory without bound). It exists to tell
//! how close wshub gets to what the kernel and tokio allow: run the peer benchmark with both and
//! read wshub / limit (see `benches/README.md`).
//!
//! ```text
//! cargo run --release --example limit -- 127.0.0.1:9001
//! ```
//!
//! With the peer benchmark, from the repository root:
//!
//! ```text
//! cargo build --release --examples
//! ../shared/bench/run --quick --only rust-naive --scenarios fanout,echo,burst \
//!     limit='target/release/examples/limit 127.0.0.1:{port}' \
//!     wshub='target/release/examples/broadcast 127.0.0.1:{port}'
//! ```
use std::io;
use std::sync::{Arc, Mutex, RwLock};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// The largest message accepted; larger ones close the connection with 1009.
const MAX_MESSAGE: usize = 1 << 20;
/// The largest HTTP request head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// One connection as the broadcaster sees it: pending output and its writer's wake-up.
struct Conn {
    out: Mutex<Out>,
    wake: Notify,
}

#[derive(Default)]
struct Out {
    buf: Vec<u8>,
    /// Write what is pending, then end the connection.
    closing: bool,
}

impl Conn {
    /// Appends `frame` to the pending output; wakes the writer if it was empty.
    fn push(&self, frame: &[u8]) {
        let mut out = self.out.lock().unwrap();
        if out.closing {
            return;
        }
        let was_empty = out.buf.is_empty();
        out.buf.extend_from_slice(frame);
        drop(out);
        if was_empty {
            self.wake.notify_one();
        }
    }

    /// Queues `last` (a close frame, or nothing) and lets the writer finish.
    fn close(&self, last: &[u8]) {
        let mut out = self.out.lock().unwrap();
        if !out.closing {
            out.buf.extend_from_slice(last);
            out.closing = true;
        }
        drop(out);
        self.wake.notify_one();
    }
}

/// Every connected client, in one flat list.
type Clients = Arc<RwLock<Vec<Arc<Conn>>>>;

#[tokio::main]
async fn main() -> io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".into());
    let listener = TcpListener::bind(&addr).await?;
    println!(
        "limit reference listening on ws://{}",
        listener.local_addr()?
    );
    let clients = Clients::default();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, clients.clone()));
    }
}

async fn connection(mut stream: TcpStream, clients: Clients) {
    let Ok(Some(rest)) = upgrade(&mut stream).await else {
        return;
    };
    let (rd, wr) = stream.into_split();
    let conn = Arc::new(Conn {
        out: Mutex::default(),
        wake: Notify::new(),
    });
    clients.write().unwrap().push(conn.clone());
    tokio::spawn(writer(wr, conn.clone()));
    let last = reader(rd, rest, &conn, &clients).await;
    clients.write().unwrap().retain(|c| !Arc::ptr_eq(c, &conn));
    conn.close(&last);
}

/// Reads the HTTP upgrade request and answers 101; `Ok(None)` after answering 400.
/// Returns the bytes read past the request head.
async fn upgrade(stream: &mut TcpStream) -> io::Result<Option<BytesMut>> {
    let mut buf = BytesMut::with_capacity(1024);
    let (len, key) = loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(None);
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let key = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"))
                    .map(|h| tungstenite::handshake::derive_accept_key(h.value));
                let upgrade = req.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("upgrade")
                        && h.value.eq_ignore_ascii_case(b"websocket")
                });
                match key {
                    Some(key) if req.method == Some("GET") && upgrade => break (len, key),
                    _ => {
                        let bad = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
                        stream.write_all(bad.as_bytes()).await?;
                        return Ok(None);
                    }
                }
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            _ => return Ok(None),
        }
    };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {key}\r\n\r\n"
    );
    stream.write_all(response.as_bytes()).await?;
    buf.advance(len);
    Ok(Some(buf))
}

/// Takes the whole pending output and writes it with one call, until closing and drained.
async fn writer(mut wr: OwnedWriteHalf, conn: Arc<Conn>) {
    let mut batch = Vec::new();
    loop {
        let closing = {
            let mut out = conn.out.lock().unwrap();
            batch.clear();
            std::mem::swap(&mut batch, &mut out.buf);
            out.closing
        };
        if batch.is_empty() {
            if closing {
                break;
            }
            conn.wake.notified().await;
            continue;
        }
        if wr.write_all(&batch).await.is_err() {
            conn.close(&[]);
            return;
        }
    }
    let _ = wr.shutdown().await;
}

/// Reads client frames until the connection ends; returns the last frame to send (a close
/// frame, or nothing after EOF or an error).
async fn reader(
    mut rd: OwnedReadHalf,
    mut buf: BytesMut,
    conn: &Conn,
    clients: &Clients,
) -> Vec<u8> {
    let mut frame = Vec::new();
    loop {
        loop {
            match parse(&mut buf) {
                Parsed::Data(opcode, payload) => {
                    encode(&mut frame, opcode, &payload);
                    for c in clients.read().unwrap().iter() {
                        c.push(&frame);
                    }
                }
                Parsed::Ping(payload) => {
                    encode(&mut frame, OP_PONG, &payload);
                    conn.push(&frame);
                }
                Parsed::Pong => {}
                Parsed::NeedMore => break,
                Parsed::Close(payload) => {
                    // Echo the status code, as RFC 6455 section 5.5.1 asks.
                    let code = payload.get(..2).unwrap_or(&[]);
                    encode(&mut frame, OP_CLOSE, code);
                    return frame;
                }
                Parsed::Fail(code) => {
                    encode(&mut frame, OP_CLOSE, &code.to_be_bytes());
                    return frame;
                }
            }
        }
        buf.reserve(64 * 1024);
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return Vec::new(),
            Ok(_) => {}
        }
    }
}

const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

enum Parsed {
    Data(u8, BytesMut),
    Ping(BytesMut),
    Pong,
    Close(BytesMut),
    NeedMore,
    /// Anything unexpected: close with this code.
    Fail(u16),
}

/// Takes one complete client frame off the front of `buf`. Fragmented messages, reserved bits,
/// unmasked frames and unknown opcodes are refused (the load generator sends none).
fn parse(buf: &mut BytesMut) -> Parsed {
    if buf.len() < 2 {
        return Parsed::NeedMore;
    }
    let (b0, b1) = (buf[0], buf[1]);
    let (fin, rsv, opcode) = (b0 & 0x80 != 0, b0 & 0x70, b0 & 0x0F);
    if !fin || rsv != 0 || b1 & 0x80 == 0 {
        return Parsed::Fail(1002);
    }
    let (len, header) = match b1 & 0x7F {
        126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().unwrap()), 10),
        126 | 127 => return Parsed::NeedMore,
        n => (u64::from(n), 2),
    };
    if opcode >= 0x8 && len > 125 {
        return Parsed::Fail(1002);
    }
    if len > MAX_MESSAGE as u64 {
        return Parsed::Fail(1009);
    }
    let len = len as usize;
    if buf.len() < header + 4 + len {
        return Parsed::NeedMore;
    }
    let mask: [u8; 4] = buf[header..header + 4].try_into().unwrap();
    buf.advance(header + 4);
    let mut payload = buf.split_to(len);
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
    match opcode {
        OP_TEXT if std::str::from_utf8(&payload).is_err() => Parsed::Fail(1007),
        OP_TEXT | OP_BINARY => Parsed::Data(opcode, payload),
        OP_PING => Parsed::Ping(payload),
        OP_PONG => Parsed::Pong,
        OP_CLOSE => Parsed::Close(payload),
        _ => Parsed::Fail(1002),
    }
}

/// Frames one unmasked, unfragmented server frame into `out` (cleared first).
fn encode(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.clear();
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}
