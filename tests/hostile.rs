//! Hostile clients over raw TCP, each checked two ways: the offender gets the right answer
//! (an HTTP status before the upgrade, a close code after it, or a dropped socket), and a
//! well-behaved tokio-tungstenite client on the same hub (a [`Probe`]) still gets its echo
//! within [`NORMAL`] during and after the attack. Memory is measured where the attack aims at
//! it (`VmRSS`, Linux only).
//!
//! Covered elsewhere and not repeated here: malformed upgrades one by one
//! (`tests/handshake.rs`), 1009/1007/1002 for oversized, invalid-UTF-8 and the first forbidden
//! frames, and the rate limit at a low rate (`tests/protocol.rs`), clients that never read
//! under each slow-consumer policy (`tests/slow_consumer.rs`).
//!
//! The tests take turns ([`SERIAL`]): each floods the machine on purpose, and latency and
//! memory are only meaningful when one attack runs at a time.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wshub::{CloseCode, Config, SessionId};

/// One attack at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a well-behaved client may wait for its echo while the hub is under attack.
const NORMAL: Duration = Duration::from_secs(1);

/// A hub whose handler echoes the [`Probe`]'s messages (and only those: an attacker that
/// does not read would otherwise be closed as a slow consumer before its own offence).
async fn echo_hub(config: Config) -> TestHub {
    start(config, echo_probes()).await
}

fn echo_probes() -> Behaviour {
    Behaviour::default().on_message(|s, m| {
        if m.as_text().is_some_and(|t| t.starts_with("probe ")) {
            let _ = s.send(m.clone());
        }
    })
}

/// A well-behaved client that checks it is served.
struct Probe {
    client: Client,
    sent: u64,
}

impl Probe {
    /// Connects within [`NORMAL`].
    async fn connect(addr: SocketAddr) -> Probe {
        let client = tokio::time::timeout(NORMAL, connect(addr))
            .await
            .expect("a well-behaved client could not connect within 1 s");
        Probe { client, sent: 0 }
    }

    /// Sends a message and waits for its echo, failing the test after [`NORMAL`].
    async fn check(&mut self, when: &str) -> Duration {
        self.sent += 1;
        let text = format!("probe {} {when}", self.sent);
        let started = Instant::now();
        let echoed = tokio::time::timeout(NORMAL, async {
            self.client.send(WsMessage::text(text.clone())).await?;
            while let Some(m) = self.client.next().await {
                if let WsMessage::Text(t) = m? {
                    if t.as_str() == text {
                        return Ok(());
                    }
                }
            }
            Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed)
        })
        .await;
        match echoed {
            Ok(Ok(())) => started.elapsed(),
            Ok(Err(e)) => panic!("the well-behaved client failed {when}: {e}"),
            Err(_) => panic!("the well-behaved client got no echo within {NORMAL:?} {when}"),
        }
    }
}

/// The recorder's events, read out of order: opens in turn, closes by session (whatever else
/// arrives meanwhile, such as the probe's messages, is skipped, and closes are kept).
struct Seen {
    t: TestHub,
    closed: HashMap<SessionId, Closed>,
}

impl Seen {
    fn new(t: TestHub) -> Self {
        Seen {
            t,
            closed: HashMap::new(),
        }
    }

    /// The next session to open.
    async fn open(&mut self) -> SessionId {
        for _ in 0..1_000_000 {
            match self.t.events.next().await {
                Event::Open { id, .. } => return id,
                Event::Close { id, reason, .. } => self.record(id, reason),
                Event::Message { .. } => {}
            }
        }
        panic!("no open event");
    }

    /// Why session `id` closed, once it has.
    async fn close(&mut self, id: SessionId) -> Closed {
        for _ in 0..1_000_000 {
            if let Some(why) = self.closed.remove(&id) {
                return why;
            }
            if let Event::Close { id, reason, .. } = self.t.events.next().await {
                self.record(id, reason);
            }
        }
        panic!("no close event for {id}");
    }

    fn record(&mut self, id: SessionId, why: Closed) {
        assert!(
            self.closed.insert(id, why).is_none(),
            "on_close ran twice for {id}"
        );
    }

    /// Upgrades a raw client; returns it with its session id.
    async fn raw_session(&mut self) -> (RawClient, SessionId) {
        let c = RawClient::upgrade(self.t.addr).await;
        let id = self.open().await;
        (c, id)
    }
}

// ---------------------------------------------------------------------------------------------
// The handshake

/// Each malformed request gets its HTTP status, then the connection closes; nothing opens a
/// session, and the well-behaved client is served after each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_handshakes_get_an_http_status_and_spare_the_others() {
    let _serial = SERIAL.lock().await;
    let mut h = Seen::new(echo_hub(quiet_config()).await);
    let addr = h.t.addr;
    let mut probe = Probe::connect(addr).await;
    h.open().await;

    let upgrade = upgrade_request(addr, "/", &[]);
    let many_headers: String = (0..2_000).map(|i| format!("X-H{i}: {i:028}\r\n")).collect();
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "binary garbage",
            vec![0x00, 0xFF, 0x13, 0x37, b'\r', b'\n', b'\r', b'\n'],
            400,
        ),
        (
            "a TLS ClientHello on the plain port",
            vec![
                0x16, 0x03, 0x01, 0x00, 0xA5, 0x01, 0x00, 0x00, 0xA1, 0x03, 0x03,
            ],
            400,
        ),
        (
            "a request line without end",
            "G".repeat(64 * 1024).into_bytes(),
            431,
        ),
        (
            "a plain HTTP request",
            plain_get(addr, "/").into_bytes(),
            426,
        ),
        (
            "Sec-WebSocket-Version 8",
            upgrade
                .replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8")
                .into_bytes(),
            426,
        ),
        (
            "no Sec-WebSocket-Version",
            upgrade
                .replace("Sec-WebSocket-Version: 13\r\n", "")
                .into_bytes(),
            426,
        ),
        (
            "no Sec-WebSocket-Key",
            upgrade
                .replace(&format!("Sec-WebSocket-Key: {KEY}\r\n"), "")
                .into_bytes(),
            400,
        ),
        (
            "an upgrade over HTTP/1.0",
            upgrade.replace("HTTP/1.1", "HTTP/1.0").into_bytes(),
            400,
        ),
        (
            "one 64 KiB header",
            upgrade_request(addr, "/", &[("X-Padding", &"a".repeat(64 * 1024))]).into_bytes(),
            431,
        ),
        (
            "64 KiB of small headers",
            upgrade
                .replace("\r\n\r\n", &format!("\r\n{many_headers}\r\n"))
                .into_bytes(),
            431,
        ),
    ];
    for (what, request, status) in &cases {
        let mut c = RawClient::connect(addr).await;
        // Best effort: the hub may stop reading (and answer) before a large request is in.
        let _ = c.stream.write_all(request).await;
        let r = c.read_response().await;
        assert_eq!(r.status, *status, "{what}: {r:?}");
        if *status == 426 {
            assert_eq!(r.header("sec-websocket-version"), Some("13"), "{what}");
        }
        assert_eq!(r.header("connection"), Some("close"), "{what}");
        // The hub closes after answering (a reset, when it left part of a request unread).
        let mut rest = Vec::new();
        let _ = within("the hub to close", c.stream.read_to_end(&mut rest)).await;
        assert!(
            rest.is_empty(),
            "{what}: bytes after the response: {rest:?}"
        );
        probe.check(&format!("after {what}")).await;
    }
    let s = h.t.hub.stats();
    assert_eq!(s.sessions_opened, 1, "only the probe opened a session");
    assert_eq!(s.handshakes_refused, cases.len() as u64);
}

/// Slowloris: many sockets trickling an upgrade request one byte at a time (a request they
/// would complete in seconds) are all dropped at `handshake_timeout`, while a well-behaved
/// client keeps being served and new clients still connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_sockets_are_dropped_at_the_handshake_timeout() {
    const SOCKETS: usize = 200;
    const TIMEOUT: Duration = Duration::from_millis(500);
    const DRIP: Duration = Duration::from_millis(20);
    let _serial = SERIAL.lock().await;
    let mut h = Seen::new(echo_hub(quiet_config().handshake_timeout(TIMEOUT)).await);
    let addr = h.t.addr;
    let mut probe = Probe::connect(addr).await;
    h.open().await;

    let request = upgrade_request(addr, "/", &[]);
    assert!(
        DRIP * request.len() as u32 > 4 * TIMEOUT,
        "the request must outlast the timeout"
    );
    let started = Instant::now();
    let mut lorises = Vec::new();
    for _ in 0..SOCKETS {
        let request = request.clone();
        lorises.push(tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await.expect("TCP connect");
            let opened = Instant::now();
            let (mut read, mut write) = stream.into_split();
            let drip = async {
                for b in request.bytes() {
                    if write.write_all(&[b]).await.is_err() {
                        // Dropped by the hub; the read side will see it.
                        std::future::pending::<()>().await;
                    }
                    tokio::time::sleep(DRIP).await;
                }
            };
            let mut buf = [0u8; 256];
            tokio::select! {
                // EOF or a reset: dropped. Anything else is an answer it should not get.
                n = read.read(&mut buf) => {
                    let n = n.unwrap_or(0);
                    assert_eq!(n, 0, "a slowloris got {:?}", String::from_utf8_lossy(&buf[..n]));
                    opened.elapsed()
                }
                () = drip => panic!("a slowloris completed its request"),
            }
        }));
    }
    // Meanwhile the hub serves its session and accepts new ones.
    let mut fresh = Vec::new();
    while started.elapsed() < TIMEOUT && fresh.len() < 20 {
        probe.check("during the slowloris").await;
        fresh.push(Probe::connect(addr).await);
    }
    let mut longest = Duration::ZERO;
    for l in lorises {
        longest = longest.max(within("a slowloris to be dropped", l).await.unwrap());
    }
    assert!(
        longest < TIMEOUT + Duration::from_secs(2),
        "a slowloris lasted {longest:?} with a {TIMEOUT:?} handshake timeout"
    );
    probe.check("after the slowloris").await;
    for f in &mut fresh {
        f.check("for a client that connected during the slowloris")
            .await;
    }
    let s = h.t.hub.stats();
    assert_eq!(s.sessions_opened, 1 + fresh.len() as u64);
    assert_eq!(s.sessions, 1 + fresh.len());
}

// ---------------------------------------------------------------------------------------------
// Frames

/// Frames RFC 6455 forbids, most of them not sent by `tests/protocol.rs` (which checks the
/// codes; this checks the neighbours too): each closes its session with its code (reported
/// to `on_close` as a server close), and the well-behaved client is served after each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_frames_get_their_close_code_and_spare_the_others() {
    let _serial = SERIAL.lock().await;
    let mut h = Seen::new(echo_hub(quiet_config()).await);
    let mut probe = Probe::connect(h.t.addr).await;
    h.open().await;
    let limit = h.t.hub.config().get_max_message_size();

    let with_first_byte = |first: u8, payload: &[u8]| {
        let mut f = client_frame(true, OP_TEXT, payload);
        f[0] = first;
        f
    };
    let mut msb_length = vec![0x82, 0x80 | 127];
    msb_length.extend_from_slice(&(1u64 << 63).to_be_bytes());
    msb_length.extend_from_slice(&[1, 2, 3, 4]);
    let mut bad_utf8_across_fragments = client_frame(false, OP_TEXT, "caf".as_bytes());
    bad_utf8_across_fragments.extend(client_frame(true, OP_CONTINUATION, &[0xC3, 0x28]));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "RSV2 set",
            with_first_byte(0x80 | 0x20 | OP_TEXT, b"x"),
            1002,
        ),
        (
            "RSV3 set",
            with_first_byte(0x80 | 0x10 | OP_BINARY, b"x"),
            1002,
        ),
        (
            "RSV1 on a ping",
            with_first_byte(0x80 | 0x40 | OP_PING, b"x"),
            1002,
        ),
        (
            "reserved data opcode 0x7",
            client_frame(true, 0x7, b"x"),
            1002,
        ),
        (
            "reserved control opcode 0xB",
            client_frame(true, 0xB, b"x"),
            1002,
        ),
        (
            "reserved control opcode 0xF",
            client_frame(true, 0xF, b""),
            1002,
        ),
        (
            "fragmented close",
            client_frame(false, OP_CLOSE, &close_payload(1000, "")),
            1002,
        ),
        ("fragmented pong", client_frame(false, OP_PONG, b"x"), 1002),
        (
            "close over 125 bytes",
            client_frame(true, OP_CLOSE, &close_payload(1000, &"r".repeat(124))),
            1002,
        ),
        (
            "pong over 125 bytes",
            client_frame(true, OP_PONG, &[0; 126]),
            1002,
        ),
        (
            "an unmasked ping",
            frame_with_mask(true, OP_PING, b"x", None),
            1002,
        ),
        (
            "an unmasked text frame",
            frame_with_mask(true, OP_TEXT, b"x", None),
            1002,
        ),
        ("a length with its top bit set", msb_length, 1002),
        (
            "invalid UTF-8",
            client_frame(true, OP_TEXT, &[b'o', b'k', 0xFF]),
            1007,
        ),
        (
            "invalid UTF-8 across fragments",
            bad_utf8_across_fragments,
            1007,
        ),
        (
            "a message one byte over the limit",
            client_frame(true, OP_BINARY, &vec![1; limit + 1]),
            1009,
        ),
    ];
    let count = cases.len();
    for (what, frame, expected) in cases {
        let (mut c, id) = h.raw_session().await;
        // Best effort: the hub may close before a large frame is all in.
        let _ = c.stream.write_all(&frame).await;
        let (code, reason) = c.read_close().await;
        assert_eq!(code, expected, "{what}: {reason}");
        assert_eq!(
            h.close(id).await,
            Closed::Server(expected, reason),
            "{what}"
        );
        probe.check(&format!("after {what}")).await;
    }
    assert_eq!(h.t.hub.session_count(), 1);
    assert_eq!(
        h.t.hub.stats().messages_in,
        count as u64,
        "only the probe's messages"
    );
}

/// A frame declaring 2^63 - 1 bytes is refused with 1009 from its header alone, without
/// memory for it (an attempt to reserve it would abort the process); so is a frame one byte
/// over the limit, before any of its payload is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_lengths_over_the_limit_close_with_1009_before_the_payload() {
    const ATTACKERS: usize = 50;
    let _serial = SERIAL.lock().await;
    let mut h = Seen::new(echo_hub(quiet_config()).await);
    let mut probe = Probe::connect(h.t.addr).await;
    h.open().await;
    let rss_before = vm_rss_kib();

    let declaring = |len: u64| {
        let mut header = vec![0x80 | OP_BINARY, 0x80 | 127];
        header.extend_from_slice(&len.to_be_bytes());
        header.extend_from_slice(&[9, 9, 9, 9]);
        header
    };
    for i in 0..ATTACKERS {
        let (mut c, id) = h.raw_session().await;
        let mut frame = declaring(i64::MAX as u64);
        frame.extend_from_slice(&[0; 1024]);
        c.write(&frame).await;
        assert_eq!(c.read_close().await.0, 1009);
        assert_eq!(h.close(id).await, Closed::server(1009, "message too big"));
        if i % 10 == 0 {
            probe.check("after 2^63 - 1 byte declarations").await;
        }
    }
    if let (Some(before), Some(after)) = (rss_before, vm_rss_kib()) {
        let grown = after.saturating_sub(before);
        assert!(
            grown < 8 * 1024,
            "memory grew by {grown} KiB for {ATTACKERS} declarations of 2^63 - 1 bytes"
        );
    }

    let limit = h.t.hub.config().get_max_message_size() as u64;
    let (mut c, id) = h.raw_session().await;
    c.write(&declaring(limit + 1)).await;
    assert_eq!(c.read_close().await.0, 1009, "no payload was needed");
    assert_eq!(h.close(id).await, Closed::server(1009, "message too big"));
    probe.check("at the end").await;
    assert_eq!(h.t.hub.session_count(), 1);
}

// ---------------------------------------------------------------------------------------------
// Floods

/// One million pings from a client that never reads: the hub keeps answering only the latest
/// ones (at most 16 owed pongs), so its memory stays flat; the other client is served
/// throughout; and when the flooder finally reads, its last ping has been answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_from_a_client_that_never_reads_costs_bounded_memory() {
    const PINGS: u32 = 1_000_000;
    const PER_WRITE: u32 = 10_000;
    let _serial = SERIAL.lock().await;
    let mut h = Seen::new(echo_hub(quiet_config()).await);
    let mut probe = Probe::connect(h.t.addr).await;
    h.open().await;
    let mut flooder = RawClient::upgrade_small_rcvbuf(h.t.addr, 4096).await;
    let flooder_id = h.open().await;

    // The flood is written from its own task, in batches built as it goes.
    let (writer_done_tx, mut writer_done) = tokio::sync::oneshot::channel();
    let rss_before = vm_rss_kib();
    let started = Instant::now();
    let (read_half, mut write_half) = flooder.stream.into_split();
    let writer = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(PER_WRITE as usize * 10);
        for first in (0..PINGS).step_by(PER_WRITE as usize) {
            batch.clear();
            for seq in first..first + PER_WRITE {
                batch.extend(client_frame(true, OP_PING, &seq.to_be_bytes()));
            }
            write_half
                .write_all(&batch)
                .await
                .expect("the flood was cut");
        }
        let _ = writer_done_tx.send(());
        write_half
    });
    let mut checks = 0;
    while writer_done.try_recv().is_err() {
        probe.check("during the ping flood").await;
        checks += 1;
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the flood never finished"
        );
    }
    let mut write_half = within("the flood to be written", writer).await.unwrap();
    // The pings were written; the echo of a message sent after them on another connection
    // does not prove they were read, so end with a marked ping and wait for its pong.
    write_half
        .write_all(&client_frame(true, OP_PING, b"last"))
        .await
        .unwrap();
    flooder.stream = read_half.reunite(write_half).unwrap();
    let flood_time = started.elapsed();

    let mut pongs = 0u64;
    let mut last_seq = None;
    loop {
        let f = flooder.read_frame().await.expect("a pong");
        assert_eq!(f.opcode, OP_PONG, "{f:?}");
        pongs += 1;
        if f.payload == b"last" {
            break;
        }
        let seq = u32::from_be_bytes(f.payload[..].try_into().unwrap());
        assert!(
            last_seq < Some(seq),
            "pongs out of order: {seq} after {last_seq:?}"
        );
        last_seq = Some(seq);
        assert!(pongs <= u64::from(PINGS), "more pongs than pings");
    }
    let rss_after = vm_rss_kib();
    eprintln!(
        "{PINGS} pings in {flood_time:?}: {pongs} pongs, {checks} probe echoes, RSS {rss_before:?} -> {rss_after:?} KiB"
    );
    assert!(
        pongs < u64::from(PINGS) / 2,
        "{pongs} pongs for {PINGS} pings: not coalesced"
    );
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        let grown = after.saturating_sub(before);
        assert!(
            grown < 16 * 1024,
            "memory grew by {grown} KiB during the ping flood"
        );
    }
    // No queue grew: pongs are not data, and the probe's echoes are tiny.
    assert!(h.t.hub.stats().queue_high_water_bytes < 1024);
    probe.check("after the ping flood").await;
    assert!(
        h.t.hub.session(flooder_id).is_some(),
        "pinging is not an offence"
    );
}

/// A flood of small messages at full speed is closed with 1008 by the default inbound rate
/// limit (10,000 per second), after about that many messages reached the handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_flood_is_closed_with_1008_at_the_default_rate_limit() {
    const MESSAGES: usize = 100_000;
    let _serial = SERIAL.lock().await;
    let config = quiet_config();
    let rate: u32 = 10_000;
    assert!(
        format!("{config:?}").contains(&format!("max_messages_per_second: Some({rate})")),
        "the default rate limit changed: {config:?}"
    );
    let mut h = Seen::new(echo_hub(config).await);
    let mut probe = Probe::connect(h.t.addr).await;
    h.open().await;
    let (mut flooder, flooder_id) = h.raw_session().await;
    let mut flood = Vec::with_capacity(MESSAGES * 7);
    for i in 0..MESSAGES {
        flood.extend(client_frame(true, OP_TEXT, &[b'a' + (i % 26) as u8]));
    }
    let started = Instant::now();
    let (read_half, mut write_half) = flooder.stream.into_split();
    let writer = tokio::spawn(async move {
        // The hub stops reading once it has closed; the rest may not go out.
        let _ = write_half.write_all(&flood).await;
        write_half
    });
    flooder.stream = {
        let write_half = within("the flood to be written", writer).await.unwrap();
        read_half.reunite(write_half).unwrap()
    };
    probe.check("during the message flood").await;
    let (echoes, (code, reason)) = flooder.read_until_close().await;
    assert!(echoes.is_empty(), "the flood was echoed");
    assert_eq!((code, reason.as_str()), (1008, "rate limit exceeded"));
    let elapsed = started.elapsed();
    flooder.send(true, OP_CLOSE, &close_payload(1008, "")).await;

    let mut delivered = 0u64;
    loop {
        match h.t.events.next().await {
            Event::Message { id, .. } if id == flooder_id => delivered += 1,
            Event::Close { id, reason, .. } if id == flooder_id => {
                assert_eq!(reason, Closed::server(1008, "rate limit exceeded"));
                break;
            }
            _ => {}
        }
    }
    // The burst, plus what refilled while the flood was read.
    let refill = (elapsed.as_secs_f64() + 1.0) * f64::from(rate);
    assert!(
        delivered >= u64::from(rate) && (delivered as f64) <= f64::from(rate) + refill,
        "{delivered} messages delivered in {elapsed:?}"
    );
    probe.check("after the message flood").await;
}

/// Thousands of connections dropped abruptly at every stage (before any byte, mid-request,
/// right after the upgrade, mid-frame), many at a time: every session that opened closes
/// once, the registry and topics end empty, and the well-behaved client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_abrupt_connections_leave_nothing_behind() {
    const CONNECTIONS: usize = 2_000;
    const IN_FLIGHT: usize = 64;
    let _serial = SERIAL.lock().await;
    let behaviour = echo_probes().on_open(|s| {
        let _ = s.subscribe("all");
    });
    let mut h = Seen::new(start(quiet_config(), behaviour).await);
    let addr = h.t.addr;
    let mut probe = Probe::connect(addr).await;
    h.open().await;

    let request = upgrade_request(addr, "/", &[]);
    let started = Instant::now();
    let upgraded: usize = futures_util::stream::iter(0..CONNECTIONS)
        .map(|i| {
            let request = request.clone();
            async move {
                let mut s = TcpStream::connect(addr).await.expect("TCP connect");
                let mut upgraded = 0;
                match i % 4 {
                    0 => {}
                    1 => s.write_all(&request.as_bytes()[..40]).await.unwrap(),
                    _ => {
                        s.write_all(request.as_bytes()).await.unwrap();
                        let mut head = [0u8; 12];
                        s.read_exact(&mut head).await.unwrap();
                        assert_eq!(&head, b"HTTP/1.1 101");
                        upgraded = 1;
                        if i % 4 == 3 {
                            let frame = client_frame(true, OP_BINARY, &[7; 300]);
                            s.write_all(&frame[..150]).await.unwrap();
                        }
                    }
                }
                if (i / 4) % 2 == 0 {
                    reset(s);
                } else {
                    drop(s);
                }
                upgraded
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .fold(0, |n, u| async move { n + u })
        .await;
    probe.check("after the abrupt connections").await;
    // Every client that read its 101 opened a session (registered just after the 101 went
    // out), so `upgraded` closes mean every one has opened and ended.
    wait_until("every on_close to run", || {
        h.t.close_counts().len() == upgraded
    })
    .await;
    let elapsed = started.elapsed();
    eprintln!("{CONNECTIONS} abrupt connections ({upgraded} upgraded) in {elapsed:?}");
    assert_eq!(h.t.hub.session_count(), 1);
    let s = h.t.hub.stats();
    assert_eq!(s.sessions_opened, 1 + upgraded as u64);
    assert!(
        h.t.close_counts().values().all(|n| *n == 1),
        "an on_close ran twice"
    );
    assert_eq!(h.t.hub.subscriber_count("all"), 1);
    assert_eq!(h.t.hub.topics(), vec!["all".to_string()]);
    assert_eq!(
        s.handshakes_refused, 0,
        "dropped handshakes are not refusals"
    );
    probe.check("at the end").await;
    Probe::connect(addr).await.check("for a new client").await;
}

/// Resets (RST, not FIN) at the worst moments: in the middle of the request, in the middle
/// of a frame, right after a close frame, and while the hub is writing a large message. Each
/// session that opened ends once as `Disconnected`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_mid_handshake_and_mid_frame_are_cleaned_up() {
    const EACH: usize = 25;
    let _serial = SERIAL.lock().await;
    let mut h = Seen::new(echo_hub(quiet_config()).await);
    let addr = h.t.addr;
    let mut probe = Probe::connect(addr).await;
    let probe_id = h.open().await;

    let request = upgrade_request(addr, "/", &[]);
    for i in 0..EACH {
        let mut c = RawClient::connect(addr).await;
        c.write(&request.as_bytes()[..request.len() - 2 - i % 3])
            .await;
        reset(c.stream);
    }
    probe.check("after resets mid-handshake").await;
    assert_eq!(h.t.hub.stats().sessions_opened, 1);

    let mut ids = Vec::new();
    let big = vec![0x5A; 2 * 1024 * 1024];
    for i in 0..3 * EACH {
        let (mut c, id) = h.raw_session().await;
        match i % 3 {
            0 => {
                let frame = client_frame(false, OP_TEXT, "né".as_bytes());
                c.write(&frame[..frame.len() - 1]).await;
            }
            1 => c.send(true, OP_CLOSE, &close_payload(1000, "bye")).await,
            _ => {
                h.t.hub.send_to(id, big.clone()).unwrap();
                let mut some = [0u8; 1024];
                c.stream.read_exact(&mut some).await.unwrap();
            }
        }
        reset(c.stream);
        ids.push((i, id));
    }
    for (i, id) in ids {
        let why = h.close(id).await;
        match i % 3 {
            // The close arrived before the reset, and was answered: a client close.
            1 => assert!(
                why == Closed::client(1000, "bye") || why == Closed::Disconnected,
                "{why:?}"
            ),
            _ => assert_eq!(why, Closed::Disconnected, "case {}", i % 3),
        }
        assert_eq!(h.t.close_count(id), 1);
    }
    assert_eq!(h.t.hub.session_count(), 1);
    assert!(h.t.hub.session(probe_id).is_some());
    probe.check("after resets mid-frame").await;
    assert_eq!(
        h.t.hub.stats().io_errors,
        0,
        "a reset is a disconnect, not an I/O error"
    );
}

/// Upgrades beyond `max_sessions`, hundreds at once: all get 503 with `Retry-After`, and the
/// sessions already open are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_flood_beyond_max_sessions_gets_503() {
    const MAX: usize = 20;
    const FLOOD: usize = 500;
    let _serial = SERIAL.lock().await;
    let mut h = Seen::new(echo_hub(quiet_config().max_sessions(MAX)).await);
    let addr = h.t.addr;
    let mut probe = Probe::connect(addr).await;
    h.open().await;
    let mut full = Vec::new();
    for _ in 1..MAX {
        full.push(h.raw_session().await.0);
    }
    let request = upgrade_request(addr, "/", &[]);
    let flood = futures_util::stream::iter(0..FLOOD)
        .map(|_| {
            let request = request.clone();
            async move {
                let mut c = RawClient::connect(addr).await;
                let r = c.request(&request).await;
                (r.status, r.header("retry-after").map(str::to_string))
            }
        })
        .buffer_unordered(100)
        .collect::<Vec<_>>();
    let mut flood = std::pin::pin!(flood);
    let answers = loop {
        tokio::select! {
            answers = &mut flood => break answers,
            _ = probe.check("during the upgrade flood") => {}
        }
    };
    assert!(
        answers
            .iter()
            .all(|(status, retry)| *status == 503 && retry.as_deref() == Some("5")),
        "{:?}",
        answers.iter().find(|(s, _)| *s != 503)
    );
    assert_eq!(h.t.hub.session_count(), MAX);
    assert_eq!(h.t.hub.stats().handshakes_refused, FLOOD as u64);
    probe.check("after the upgrade flood").await;
}

// ---------------------------------------------------------------------------------------------
// The per-IP limit
//
// Loopback peers are exempt from `max_sessions_per_ip`, and tests only have loopback. So
// these tests accept real sockets themselves and hand them to `Hub::accept` with the peer
// address a public client would have (documentation addresses: no packet goes there).

/// Serves `hub` on a new loopback listener, presenting every connection as coming from `as_ip`.
async fn serve_as(hub: &wshub::Hub, as_ip: std::net::IpAddr) -> SocketAddr {
    let listener = support::listen();
    let addr = listener.local_addr().unwrap();
    let hub = hub.clone();
    tokio::spawn(async move {
        let mut port = 40_000;
        while let Ok((stream, _)) = listener.accept().await {
            port += 1;
            tokio::spawn(hub.accept(stream, SocketAddr::new(as_ip, port)));
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_beyond_the_per_ip_limit_get_429() {
    const PER_IP: usize = 3;
    let _serial = SERIAL.lock().await;
    let mut h = Seen::new(echo_hub(quiet_config().max_sessions_per_ip(PER_IP)).await);
    let mut probe = Probe::connect(h.t.addr).await;
    h.open().await;
    let a = serve_as(&h.t.hub, [203, 0, 113, 7].into()).await;
    let b = serve_as(&h.t.hub, [198, 51, 100, 9].into()).await;

    let mut from_a = Vec::new();
    for _ in 0..PER_IP {
        let c = RawClient::upgrade(a).await;
        from_a.push((c, h.open().await));
    }
    for _ in 0..3 {
        let mut c = RawClient::connect(a).await;
        let r = c.request(&upgrade_request(a, "/", &[])).await;
        assert_eq!(r.status, 429, "{r:?}");
        assert_eq!(r.header("retry-after"), Some("5"));
    }
    probe.check("while one address is at its limit").await;
    // Another address is not affected.
    let _b = RawClient::upgrade(b).await;
    h.open().await;
    // A place frees when a session of that address ends.
    let (c, id) = from_a.pop().unwrap();
    drop(c);
    assert_eq!(h.close(id).await, Closed::Disconnected);
    let _again = RawClient::upgrade(a).await;
    assert_eq!(h.t.hub.session_count(), 1 + PER_IP + 1);
}

/// A reverse proxy on the same host reaching a hub that listens on `[::]` arrives as the
/// IPv4-mapped loopback address `::ffff:127.0.0.1`: it is loopback, and must be exempt from
/// the per-IP limit like `127.0.0.1` and `::1` (otherwise every user behind the proxy shares
/// one address's limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_mapped_loopback_is_exempt_from_the_per_ip_limit() {
    let _serial = SERIAL.lock().await;
    let mut h = Seen::new(echo_hub(quiet_config().max_sessions_per_ip(1)).await);
    let mapped = std::net::Ipv4Addr::LOCALHOST.to_ipv6_mapped();
    let proxy = serve_as(&h.t.hub, mapped.into()).await;
    let v6 = serve_as(&h.t.hub, std::net::Ipv6Addr::LOCALHOST.into()).await;
    let mut kept = Vec::new();
    for addr in [proxy, proxy, proxy, v6, v6] {
        let mut c = RawClient::connect(addr).await;
        let r = c.request(&upgrade_request(addr, "/", &[])).await;
        assert_eq!(r.status, 101, "from {addr}: {r:?}");
        h.open().await;
        kept.push(c);
    }
}

// ---------------------------------------------------------------------------------------------
// Extreme settings

/// "Wait as long as it takes": `Duration::MAX` as the close timeout and as the shutdown
/// deadline must mean a long wait, not an overflow (a panic, or a deadline that wrapped into
/// the past and drops every session at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_max_timeouts_wait_instead_of_overflowing() {
    let _serial = SERIAL.lock().await;
    let config = quiet_config()
        .close_timeout(Duration::MAX)
        .handshake_timeout(Duration::MAX)
        .idle_timeout(Some(Duration::MAX))
        .ping_interval(Some(Duration::MAX))
        .ping_timeout(Duration::MAX);
    let mut h = Seen::new(echo_hub(config).await);
    let mut a = connect(h.t.addr).await;
    let a_id = h.open().await;
    let mut b = connect(h.t.addr).await;
    let b_id = h.open().await;

    // A close the client answers late: the session waits for the answer.
    h.t.hub.close(a_id, CloseCode::NORMAL, "bye").unwrap();
    let hub = h.t.hub.clone();
    let shutdown = tokio::spawn(async move { hub.shutdown(Duration::MAX).await });
    // The shutdown's 1001 reaches b; both clients answer their close.
    assert_eq!(
        recv_close(&mut b).await,
        (1001, "server shutting down".to_string())
    );
    assert_eq!(recv_close(&mut a).await, (1000, "bye".to_string()));
    within("shutdown", shutdown).await.unwrap();
    assert_eq!(h.close(a_id).await, Closed::server(1000, "bye"));
    assert_eq!(
        h.close(b_id).await,
        Closed::server(1001, "server shutting down")
    );
}

// ---------------------------------------------------------------------------------------------
// permessage-deflate

/// Compressed-input attacks on a hub with compression on: each offender gets its close code
/// (a decompression bomb 1009 with bounded memory, RSV1 on control and continuation frames
/// 1002, invalid deflate data 1007, RSV1 after a declined offer 1002, a flood of tiny
/// compressed messages 1008 from the rate limit), and the well-behaved client is served after
/// each.
#[cfg(feature = "deflate")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_input_attacks_get_their_close_code_with_bounded_memory() {
    use support::pmd::*;
    const OFFER: &str = "permessage-deflate; client_max_window_bits";
    let _serial = SERIAL.lock().await;
    let config = quiet_config().compression(wshub::Compression::Shared);
    let mut h = Seen::new(echo_hub(config).await);
    let mut probe = Probe::connect(h.t.addr).await;
    h.open().await;
    let limit = h.t.hub.config().get_max_message_size();

    // 1 GiB of zeros deflates to about 1 MiB; a quarter of it is enough to show the limit
    // applies to the inflated size (256 MiB, in 256 KiB of input).
    let mut d = new_deflate();
    let chunk = vec![0u8; 1 << 20];
    let mut bomb = Vec::new();
    for _ in 0..255 {
        let mut out = vec![0; 4096];
        let before = d.total_out();
        d.compress(&chunk, &mut out, zlib_rs::DeflateFlush::NoFlush)
            .unwrap();
        out.truncate((d.total_out() - before) as usize);
        bomb.extend(out);
    }
    bomb.extend(compress_with(&mut d, &chunk));
    assert!(bomb.len() < limit, "the bomb is {} bytes", bomb.len());
    let body = compress(b"{\"a\":1}");
    let (x, y) = body.split_at(2);
    let cases: Vec<(&str, &str, Vec<u8>, u16)> = vec![
        (
            "a 256 MiB decompression bomb",
            OFFER,
            compressed_frame(true, OP_BINARY, &bomb),
            1009,
        ),
        (
            "RSV1 on a ping",
            OFFER,
            compressed_frame(true, OP_PING, b"x"),
            1002,
        ),
        (
            "RSV1 on a close",
            OFFER,
            compressed_frame(true, OP_CLOSE, &close_payload(1000, "")),
            1002,
        ),
        (
            "RSV1 on a continuation",
            OFFER,
            [
                compressed_frame(false, OP_TEXT, x),
                compressed_frame(true, OP_CONTINUATION, y),
            ]
            .concat(),
            1002,
        ),
        (
            "an invalid deflate stream",
            OFFER,
            compressed_frame(true, OP_TEXT, &[0xFF; 32]),
            1007,
        ),
        (
            "invalid UTF-8 once inflated",
            OFFER,
            compressed_frame(true, OP_TEXT, &compress(&[b'a', 0xFF, b'b'])),
            1007,
        ),
        (
            "RSV1 after an offer with a window of 7 was declined",
            "permessage-deflate; server_max_window_bits=7",
            compressed_frame(true, OP_TEXT, &body),
            1002,
        ),
    ];
    for (what, offer, frame, expected) in cases {
        let (mut c, answer) = upgrade_offering(h.t.addr, offer).await;
        assert_eq!(
            answer.is_some(),
            !offer.contains("=7"),
            "{what}: {answer:?}"
        );
        let id = h.open().await;
        let rss_before = vm_rss_kib();
        let _ = c.stream.write_all(&frame).await;
        let (code, reason) = c.read_close().await;
        assert_eq!(code, expected, "{what}: {reason}");
        assert_eq!(
            h.close(id).await,
            Closed::Server(expected, reason),
            "{what}"
        );
        if let (Some(before), Some(after)) = (rss_before, vm_rss_kib()) {
            // The limit (1 MiB) plus the inflater's buffers, nowhere near the bomb's size.
            let grown = after.saturating_sub(before);
            assert!(grown < 16 * 1024, "{what}: memory grew by {grown} KiB");
        }
        probe.check(&format!("after {what}")).await;
    }

    // A flood of tiny compressed messages: each costs an inflation, and the rate limit still
    // closes the connection with 1008.
    let (mut flooder, answer) = upgrade_offering(h.t.addr, OFFER).await;
    assert!(answer.is_some());
    h.open().await;
    let tiny = compressed_frame(true, OP_TEXT, &compress(b"x"));
    let flood = tiny.repeat(100_000);
    let rss_before = vm_rss_kib();
    let (read_half, mut write_half) = flooder.stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = write_half.write_all(&flood).await;
        write_half
    });
    probe.check("during the compressed flood").await;
    flooder.stream = {
        let write_half = within("the flood to be written", writer).await.unwrap();
        read_half.reunite(write_half).unwrap()
    };
    let (_, (code, reason)) = flooder.read_until_close().await;
    assert_eq!((code, reason.as_str()), (1008, "rate limit exceeded"));
    if let (Some(before), Some(after)) = (rss_before, vm_rss_kib()) {
        let grown = after.saturating_sub(before);
        assert!(grown < 16 * 1024, "the flood grew memory by {grown} KiB");
    }
    probe.check("after the compressed flood").await;
}
