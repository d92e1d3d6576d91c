//! Frame building: what a message costs before it reaches any session.
//!
//! - `frame/message_from_{str,string,vec,bytes}/SIZE`: converting each payload type into a
//!   [`Message`] (the `impl Into<Message>` of every sending method). `&str` copies; an owned
//!   `String`, `Vec<u8>` or `Bytes` should not (the owned input is made outside the timing).
//! - `frame/broadcast_to_0_sessions/SIZE`: `hub.broadcast` with no session connected, i.e.
//!   building the one shared frame plus walking an empty registry and counting.
//! - `frame/copy_into_a_new_buffer/SIZE`: the floor for framing: one allocation and one copy of
//!   the payload, which any framing that shares one frame among sessions has to pay.
//!
//! ```text
//! cargo bench --bench frame
//! ```

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use wshub::{Bytes, Handler, Hub, Message};

const SIZES: [(usize, &str); 3] = [(64, "64B"), (1024, "1KiB"), (64 * 1024, "64KiB")];

struct Silent;
impl Handler for Silent {}

fn batch(size: usize) -> BatchSize {
    if size > 4096 {
        BatchSize::LargeInput
    } else {
        BatchSize::SmallInput
    }
}

fn frame(c: &mut Criterion) {
    let hub = Hub::new(Silent);
    let mut group = c.benchmark_group("frame");
    for (size, name) in SIZES {
        let text: String = "x".repeat(size);
        let bytes = Bytes::from(vec![0x5a; size]);
        let message = Message::binary(bytes.clone());
        group.throughput(Throughput::Bytes(size as u64));

        group.bench_function(BenchmarkId::new("message_from_str", name), |b| {
            b.iter(|| Message::from(black_box(text.as_str())))
        });
        group.bench_function(BenchmarkId::new("message_from_string", name), |b| {
            b.iter_batched(|| text.clone(), Message::from, batch(size))
        });
        group.bench_function(BenchmarkId::new("message_from_vec", name), |b| {
            b.iter_batched(|| bytes.to_vec(), Message::from, batch(size))
        });
        group.bench_function(BenchmarkId::new("message_from_bytes", name), |b| {
            b.iter_batched(|| bytes.clone(), Message::from, batch(size))
        });
        group.bench_function(BenchmarkId::new("broadcast_to_0_sessions", name), |b| {
            b.iter(|| hub.broadcast(black_box(message.clone())))
        });
        group.bench_function(BenchmarkId::new("copy_into_a_new_buffer", name), |b| {
            b.iter(|| {
                let payload = black_box(&bytes[..]);
                let mut frame = Vec::with_capacity(payload.len() + 10);
                frame.extend_from_slice(&[0x82, 127, 0, 0, 0, 0, 0, 0, 0, 0]);
                frame.extend_from_slice(payload);
                Bytes::from(frame)
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = frame
}
criterion_main!(benches);
