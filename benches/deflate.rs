//! permessage-deflate: what compression costs a publication, and what inflating costs a read.
//!
//! - `deflate/broadcast_400B_json/{plain,shared}/N_sessions`: the time of one `hub.broadcast`
//!   call of a 400-byte dashboard-like JSON message to N sessions (10, 100, 1,000 over
//!   in-memory pipes, drained by counting clients), without compression and with
//!   [`Compression::Shared`], every session having negotiated it. The message is compressed
//!   once per call, so the `shared` column minus the `plain` one is one compression whatever
//!   N: flat, not linear.
//! - `deflate/inflate_text/SIZE`: decoding one masked, compressed text frame of 64 B, 1 KiB
//!   and 64 KiB (inflated) through the connection's decoder: unmasking, inflating with the
//!   per-thread inflater, UTF-8 validation.
//!
//! ```text
//! cargo bench --features deflate,fuzzing --bench deflate
//! ```

mod support;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;
use wshub::__fuzz::FrameDecoder;
use wshub::{Bytes, Compression, Handler, Hub};

use support::{Deliveries, Transport};

const BATCH: u64 = 32;
const SESSIONS: [usize; 3] = [10, 100, 1_000];
const OFFER: &str = "permessage-deflate; client_no_context_takeover; client_max_window_bits";

struct Silent;
impl Handler for Silent {}

/// Dashboard-like JSON of `len` bytes (at least its fixed fields).
fn json(seq: usize, len: usize) -> String {
    let mut s = format!(
        r#"{{"seq":{seq},"type":"parcel","id":"PX-{}","route":"Madrid → Göteborg","status":"at sorting hub","eta":"18:26","feed":""#,
        49_450 + seq
    );
    let events = [
        "18:08 handed to courier at Warszawa city locker; ",
        "17:04 sorted at Leipzig hub; ",
        "15:40 left Madrid depot; ",
        "12:02 label created; ",
    ];
    let mut i = seq;
    while s.len() + 2 < len {
        s.push_str(events[i % events.len()]);
        i += 1;
    }
    s.truncate(
        len.saturating_sub(2)
            .max(s.find(r#""feed":""#).unwrap() + 8),
    );
    s.push_str(r#""}"#);
    s
}

fn broadcasts(c: &mut Criterion, rt: &Runtime) {
    let mut group = c.benchmark_group("deflate");
    for n in SESSIONS {
        for (mode, compression) in [("plain", Compression::Off), ("shared", Compression::Shared)] {
            let config = support::bench_config().compression(compression);
            let hub = Hub::builder(Silent).config(config).build();
            let delivered = Arc::new(Deliveries::default());
            rt.block_on(async {
                let clients =
                    support::open_sessions_offering(&hub, Transport::Duplex, n, Some(OFFER)).await;
                for client in clients {
                    client.drain(delivered.clone());
                }
            });
            let payload = Bytes::from(json(1, 400));
            group.throughput(Throughput::Elements(n as u64));
            let id = BenchmarkId::new(
                format!("broadcast_400B_json/{mode}"),
                format!("{n}_sessions"),
            );
            group.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    let (hub, payload, delivered) =
                        (hub.clone(), payload.clone(), delivered.clone());
                    rt.block_on(rt.spawn(async move {
                        let mut timed = Duration::ZERO;
                        let mut left = iters;
                        while left > 0 {
                            let run = left.min(BATCH);
                            let target = delivered.expect(run * n as u64);
                            let start = Instant::now();
                            for _ in 0..run {
                                let text = wshub::Text::from_utf8(payload.clone()).expect("UTF-8");
                                black_box(hub.broadcast(wshub::Message::text(black_box(text))));
                            }
                            timed += start.elapsed();
                            delivered.wait(target).await;
                            left -= run;
                        }
                        timed
                    }))
                    .expect("bench task")
                })
            });
            rt.block_on(hub.shutdown(Duration::from_millis(200)));
        }
    }
    group.finish();
}

/// One masked client frame with RSV1 set, carrying `text` compressed without context.
fn compressed_client_frame(text: &str) -> Vec<u8> {
    use zlib_rs::{Deflate, DeflateConfig, DeflateFlush};
    let mut d = Deflate::new_with_config(DeflateConfig {
        window_bits: -15,
        ..DeflateConfig::default()
    });
    let mut body = vec![0; text.len() + 1024];
    d.compress(text.as_bytes(), &mut body, DeflateFlush::SyncFlush)
        .expect("deflate");
    body.truncate(d.total_out() as usize - 4);
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![0xC1];
    match body.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(body.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

fn inflation(c: &mut Criterion) {
    let mut group = c.benchmark_group("deflate");
    for (size, name) in [(64, "64B"), (1024, "1KiB"), (64 * 1024, "64KiB")] {
        let text = json(7, size);
        let frame = compressed_client_frame(&text);
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(BenchmarkId::new("inflate_text", name), |b| {
            b.iter(|| {
                let mut d = FrameDecoder::with_inflate(1 << 20);
                let (used, event) = d.decode(black_box(&frame)).expect("a valid frame");
                assert_eq!(used, frame.len());
                let event = event.expect("a message");
                assert_eq!(event.message().map(|m| m.len()), Some(text.len()));
            })
        });
    }
    group.finish();
}

fn deflate(c: &mut Criterion) {
    support::check_frame_counter();
    let rt = support::runtime();
    broadcasts(c, &rt);
    inflation(c);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = deflate
}
criterion_main!(benches);
