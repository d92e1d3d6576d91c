//! Handler dispatch: what one inbound message costs, from the socket to `on_message`.
//!
//! - `dispatch/receive_64B_messages_into/{a_counting_handler,the_default_handler}`: one client
//!   over an in-memory pipe writes masked 64-byte binary frames (1,000 per write) to one session;
//!   each is read, unmasked, decoded into a `Message` and handed to `Handler::on_message`
//!   through the `async_trait` boxed future. A ping after each run of frames and the wait for
//!   its pong mark the end: wshub reads the ping only after every earlier message's handler
//!   returned. The counting handler increments an atomic; the default one does nothing.
//! - `dispatch/poll_once_{an_empty,an_on_message}_future/{unboxed,boxed_as_dyn_future}`: the
//!   price of the box alone: `Box::pin(async {})` (and a future holding what `on_message`'s
//!   holds: a reference and a `Message`) created and polled once through
//!   `Pin<Box<dyn Future + Send>>`, against the same future pinned on the stack.
//!
//! - `dispatch/relay_to_another_session_over_tcp/64B`: two clients on real loopback sockets
//!   (driven from the bench thread) and a handler that broadcasts: one client writes a 64-byte
//!   binary message, the time runs until the other client has its copy (the peer benchmark's
//!   `echo`). The sender's handler runs on one server worker, the receiver's session is
//!   woken by the broadcast. `.../64B_after_1ms_idle` waits a millisecond before each message
//!   (not timed), so the server's workers are parked when it arrives, as in the peer
//!   benchmark's `echo` at 1,000 messages/s: that is the case the wake-ups decide.
//!
//! ```text
//! cargo bench --bench dispatch
//! ```

mod support;

use std::future::Future;
use std::hint::black_box;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::runtime::Runtime;
use wshub::{Bytes, Handler, Hub, Message, Session};

/// Messages per client write; a ping follows each run of them.
const RUN: u64 = 1_000;
const OP_BINARY: u8 = 0x2;
const OP_PING: u8 = 0x9;

struct Counting(Arc<AtomicU64>);

#[wshub::async_trait]
impl Handler for Counting {
    async fn on_message(&self, _session: &Session, _message: Message) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

struct DefaultHandler;
impl Handler for DefaultHandler {}

/// Sends every message to every session, its sender included (the peer benchmark's hub).
struct Broadcast;

#[wshub::async_trait]
impl Handler for Broadcast {
    async fn on_message(&self, session: &Session, message: Message) {
        session.hub().broadcast(message);
    }
}

/// Times `iters` messages of 64 bytes from `sender`'s write until `receiver` has the copy
/// the hub broadcast, each after `idle` without traffic (not counted). The sender's own copy
/// is read after the clock stops.
async fn relay_times(
    sender: &mut support::Upgraded<tokio::net::TcpStream>,
    receiver: &mut support::Upgraded<tokio::net::TcpStream>,
    iters: u64,
    idle: Duration,
) -> Duration {
    let frame = support::masked_frame(OP_BINARY, &[7u8; 64]);
    // A copy: a 2-byte header (FIN + binary, length 64) and the payload, unmasked.
    let mut copy = [0u8; 66];
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        if !idle.is_zero() {
            tokio::time::sleep(idle).await;
        }
        let start = Instant::now();
        sender.io.write_all(&frame).await.expect("write");
        receiver
            .io
            .read_exact(&mut copy)
            .await
            .expect("read the copy");
        total += start.elapsed();
        assert_eq!(
            copy[..2],
            [0x82, 64],
            "one unfragmented 64-byte binary frame"
        );
        sender
            .io
            .read_exact(&mut copy)
            .await
            .expect("read its own copy");
    }
    total
}

/// One session and its client end, writing runs of pre-built masked frames.
struct Inbound {
    hub: Hub,
    client: DuplexStream,
    frames: Vec<u8>,
    frame_len: usize,
    pings: u64,
    sent: u64,
}

impl Inbound {
    fn start(rt: &Runtime, handler: impl Handler) -> Inbound {
        let hub = Hub::builder(handler)
            .config(support::bench_config())
            .build();
        let client = rt.block_on(async {
            let mut clients = support::open_sessions(&hub, support::Transport::Duplex, 1).await;
            match clients.pop() {
                Some(support::Client::Duplex(upgraded)) => {
                    assert!(upgraded.rest.is_empty(), "no data before the first message");
                    upgraded.io
                }
                _ => unreachable!("one duplex client"),
            }
        });
        let frame = support::masked_frame(OP_BINARY, &[0x5a; 64]);
        Inbound {
            hub,
            client,
            frame_len: frame.len(),
            frames: frame.repeat(RUN as usize),
            pings: 0,
            sent: 0,
        }
    }

    /// Sends `iters` messages in runs of [`RUN`], each run followed by a ping whose pong
    /// means every message before it went through `on_message`.
    fn time_messages(&mut self, rt: &Runtime, iters: u64) -> Duration {
        rt.block_on(async {
            let start = Instant::now();
            let mut left = iters;
            while left > 0 {
                let run = left.min(RUN);
                let frames = &self.frames[..run as usize * self.frame_len];
                self.client.write_all(frames).await.expect("write frames");
                self.pings += 1;
                let seq = self.pings.to_be_bytes();
                let ping = support::masked_frame(OP_PING, &seq);
                self.client.write_all(&ping).await.expect("write ping");
                let mut pong = [0u8; 10];
                support::within("the pong", self.client.read_exact(&mut pong))
                    .await
                    .expect("read pong");
                assert_eq!(pong[..2], [0x8A, 8], "a pong with an 8-byte payload");
                assert_eq!(pong[2..], seq, "the pong of the latest ping");
                left -= run;
                self.sent += run;
            }
            start.elapsed()
        })
    }
}

fn dispatch(c: &mut Criterion) {
    let rt = support::runtime();
    let mut group = c.benchmark_group("dispatch");
    group.throughput(Throughput::Elements(1));

    let counted = Arc::new(AtomicU64::new(0));
    let mut inbound = Inbound::start(&rt, Counting(counted.clone()));
    group.bench_function(
        BenchmarkId::new("receive_64B_messages_into", "a_counting_handler"),
        |b| b.iter_custom(|iters| inbound.time_messages(&rt, iters)),
    );
    assert_eq!(
        counted.load(Ordering::Relaxed),
        inbound.sent,
        "every message counted"
    );
    rt.block_on(inbound.hub.shutdown(Duration::from_millis(200)));

    let mut inbound = Inbound::start(&rt, DefaultHandler);
    group.bench_function(
        BenchmarkId::new("receive_64B_messages_into", "the_default_handler"),
        |b| b.iter_custom(|iters| inbound.time_messages(&rt, iters)),
    );
    assert_eq!(
        inbound.hub.stats().messages_in,
        inbound.sent,
        "every message read"
    );
    rt.block_on(inbound.hub.shutdown(Duration::from_millis(200)));

    let hub = Hub::builder(Broadcast)
        .config(support::bench_config())
        .build();
    let clients = rt.block_on(support::open_sessions(&hub, support::Transport::Tcp, 2));
    let [
        support::Client::Tcp(mut sender),
        support::Client::Tcp(mut receiver),
    ] = <[support::Client; 2]>::try_from(clients).unwrap_or_else(|_| unreachable!("two clients"))
    else {
        unreachable!("two TCP clients")
    };
    assert!(
        sender.rest.is_empty() && receiver.rest.is_empty(),
        "nothing sent yet"
    );
    for (name, idle) in [("64B", 0), ("64B_after_1ms_idle", 1)] {
        let idle = Duration::from_millis(idle);
        let id = BenchmarkId::new("relay_to_another_session_over_tcp", name);
        group.bench_function(id, |b| {
            b.iter_custom(|iters| rt.block_on(relay_times(&mut sender, &mut receiver, iters, idle)))
        });
    }
    rt.block_on(hub.shutdown(Duration::from_millis(200)));

    let counter = AtomicU64::new(0);
    let message = Message::binary(Bytes::from(vec![0x5a; 64]));
    group.bench_function(
        BenchmarkId::new("poll_once_an_empty_future", "unboxed"),
        |b| b.iter(|| poll_once(black_box(pin!(async {})))),
    );
    group.bench_function(
        BenchmarkId::new("poll_once_an_empty_future", "boxed_as_dyn_future"),
        |b| {
            b.iter(|| {
                let fut: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async {});
                poll_once(black_box(fut).as_mut())
            })
        },
    );
    group.bench_function(
        BenchmarkId::new("poll_once_an_on_message_future", "unboxed"),
        |b| {
            b.iter(|| {
                let fut = pin!(on_message(&counter, black_box(message.clone())));
                poll_once(black_box(fut))
            })
        },
    );
    group.bench_function(
        BenchmarkId::new("poll_once_an_on_message_future", "boxed_as_dyn_future"),
        |b| {
            b.iter(|| {
                let fut: Pin<Box<dyn Future<Output = ()> + Send + '_>> =
                    Box::pin(on_message(&counter, black_box(message.clone())));
                poll_once(black_box(fut).as_mut())
            })
        },
    );
    group.finish();
}

/// What the counting handler's `on_message` does, as a plain async fn.
async fn on_message(counter: &AtomicU64, message: Message) {
    counter.fetch_add(1, Ordering::Relaxed);
    drop(message);
}

fn poll_once<F: Future<Output = ()> + ?Sized>(fut: Pin<&mut F>) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    fut.poll(&mut cx) == Poll::Ready(())
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = dispatch
}
criterion_main!(benches);
