//! Fan-out: what one broadcast costs the caller, and how long until every session has it.
//!
//! A [`Hub`] with 10, 100 or 1,000 sessions, each over its own byte stream handed in through
//! [`Hub::accept`] after a real client handshake; each client is drained by its own task that
//! counts whole data frames, so queues never fill.
//!
//! - `fanout/broadcast_64B_to/N_sessions`: the time of one `hub.broadcast` call (frame once,
//!   queue to N sessions, wake the idle ones), called from a runtime worker as a handler would,
//!   while the connection tasks write concurrently. Broadcasts are timed in runs of 32 (the
//!   peer benchmark's window), with an untimed wait for delivery between runs.
//! - `fanout/deliver_32_broadcasts_of_64B_to/N_sessions`: from the first of 32 broadcasts
//!   until all N clients have received all 32 (in-memory pipes: wshub's work without the
//!   kernel's). Throughput is in deliveries (messages × sessions) per second.
//! - `fanout/deliver_32_broadcasts_of_64B_over_tcp_to/N_sessions`: the same over loopback TCP.
//!
//! ```text
//! cargo bench --bench fanout
//! ```

mod support;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;
use wshub::{Bytes, Handler, Hub};

use support::{Deliveries, Transport};

/// Broadcasts per timed run, and per end-to-end batch: the peer benchmark's window.
const BATCH: u64 = 32;
const SESSIONS: [usize; 3] = [10, 100, 1_000];

/// Receives nothing worth handling: the benches only push.
struct Silent;
impl Handler for Silent {}

/// A hub whose sessions are all drained by counting clients.
struct Fanout {
    hub: Hub,
    sessions: u64,
    delivered: Arc<Deliveries>,
    payload: Bytes,
}

impl Fanout {
    fn start(rt: &Runtime, transport: Transport, sessions: usize) -> Fanout {
        let hub = Hub::builder(Silent).config(support::bench_config()).build();
        let delivered = Arc::new(Deliveries::default());
        rt.block_on(async {
            for client in support::open_sessions(&hub, transport, sessions).await {
                client.drain(delivered.clone());
            }
        });
        Fanout {
            hub,
            sessions: sessions as u64,
            delivered,
            payload: Bytes::from(vec![0x5a; 64]),
        }
    }

    /// Total time of `iters` broadcast calls, run on a runtime worker in runs of [`BATCH`].
    fn time_broadcasts(&self, rt: &Runtime, iters: u64) -> Duration {
        let (hub, payload, delivered, n) = (
            self.hub.clone(),
            self.payload.clone(),
            self.delivered.clone(),
            self.sessions,
        );
        rt.block_on(rt.spawn(async move {
            let mut timed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let run = left.min(BATCH);
                let target = delivered.expect(run * n);
                let mut short = 0;
                let start = Instant::now();
                for _ in 0..run {
                    let report = hub.broadcast(black_box(payload.clone()));
                    short += usize::from(report.queued as u64 != n);
                }
                timed += start.elapsed();
                assert_eq!(short, 0, "a broadcast did not reach every session");
                delivered.wait(target).await;
                left -= run;
            }
            timed
        }))
        .expect("bench task")
    }

    /// Total time of `iters` batches: [`BATCH`] broadcasts, then until all were received.
    fn time_deliveries(&self, rt: &Runtime, iters: u64) -> Duration {
        let (hub, payload, delivered, n) = (
            self.hub.clone(),
            self.payload.clone(),
            self.delivered.clone(),
            self.sessions,
        );
        rt.block_on(rt.spawn(async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let target = delivered.expect(BATCH * n);
                let start = Instant::now();
                for _ in 0..BATCH {
                    hub.broadcast(payload.clone());
                }
                delivered.wait(target).await;
                total += start.elapsed();
            }
            total
        }))
        .expect("bench task")
    }

    fn stop(self, rt: &Runtime) {
        // The draining clients never answer the close frame: a short deadline drops them.
        rt.block_on(self.hub.shutdown(Duration::from_millis(200)));
    }
}

fn fanout(c: &mut Criterion) {
    support::check_frame_counter();
    let rt = support::runtime();
    let mut group = c.benchmark_group("fanout");
    for n in SESSIONS {
        let sessions = format!("{n}_sessions");
        let bench = Fanout::start(&rt, Transport::Duplex, n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::new("broadcast_64B_to", &sessions), |b| {
            b.iter_custom(|iters| bench.time_broadcasts(&rt, iters))
        });
        group.throughput(Throughput::Elements(BATCH * n as u64));
        group.bench_function(
            BenchmarkId::new("deliver_32_broadcasts_of_64B_to", &sessions),
            |b| b.iter_custom(|iters| bench.time_deliveries(&rt, iters)),
        );
        bench.stop(&rt);

        let bench = Fanout::start(&rt, Transport::Tcp, n);
        group.bench_function(
            BenchmarkId::new("deliver_32_broadcasts_of_64B_over_tcp_to", &sessions),
            |b| b.iter_custom(|iters| bench.time_deliveries(&rt, iters)),
        );
        bench.stop(&rt);
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = fanout
}
criterion_main!(benches);
