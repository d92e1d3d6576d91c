//! Cross-node fan-out benchmark: deliveries per second to 1,000 subscribers from one node
//! alone, and from 2 nodes × 500 subscribers sharing broadcasts through Redis; the Redis CPU
//! per message; and the publisher's cost per broadcast as the number of nodes grows.
//!
//! ```text
//! cargo run --release --features redis --example cluster_bench -- redis://127.0.0.1:6379/
//! ```
//!
//! Optional arguments after the URL: messages per run (default 5,000), flow-control window
//! (default 32 messages in flight, as the `fanout` scenario of `../shared/bench`), payload
//! bytes (default 64), rounds (default 3; the median round is reported). Use a Redis of its
//! own for a clean CPU figure (`redis-server --port 6390 --save '' --appendonly no`): the
//! Redis CPU is read from `INFO cpu` before and after each run. Everything runs in this one
//! process on loopback — hubs, subscribers (raw sockets that only count frames) and the
//! publisher, which calls `Hub::broadcast` — so compare the scenarios of one run, not
//! absolute numbers across machines.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;
use wshub::{Config, Handler, Hub, RedisBackplane, RedisConfig, Remote};

struct Quiet;
impl Handler for Quiet {}

struct Params {
    url: String,
    messages: u64,
    window: u64,
    size: usize,
    rounds: usize,
}

/// What the subscribers have received, across all of them.
#[derive(Default)]
struct Tally {
    frames: AtomicU64,
    out_of_order: AtomicU64,
    progress: Notify,
}

struct Node {
    hub: Hub,
    backplane: Option<Arc<RedisBackplane>>,
    addr: std::net::SocketAddr,
}

fn config() -> Config {
    // Room for the window on every session; the defaults would do, this only rules out
    // slow-consumer disconnects as a cause of a bad number.
    Config::default()
        .max_queue_messages(16_384)
        .max_queue_bytes(16 << 20)
        .max_messages_per_second(None)
}

async fn start_node(redis: Option<(&str, &str)>) -> Node {
    let mut builder = Hub::builder(Quiet).config(config());
    let mut backplane = None;
    if let Some((url, prefix)) = redis {
        let bp = Arc::new(
            RedisBackplane::connect_with(url, RedisConfig::default().prefix(prefix))
                .await
                .expect("connect to Redis"),
        );
        builder = builder.backplane(bp.clone());
        backplane = Some(bp);
    }
    let hub = builder.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(hub.clone().serve(listener));
    Node {
        hub,
        backplane,
        addr,
    }
}

/// A subscriber: the upgrade by hand, then counts frames and checks their sequence numbers.
/// Dropping the returned write half ends it.
async fn subscriber(addr: std::net::SocketAddr, tally: Arc<Tally>) -> OwnedWriteHalf {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "upgrade refused");
    let (mut rd, wr) = s.into_split();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut have = 0;
        let mut next_seq = 0u64;
        loop {
            let n = match rd.read(&mut buf[have..]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            have += n;
            let (mut pos, mut frames) = (0, 0);
            while let Some((payload, len)) = frame_at(&buf[pos..have]) {
                let seq =
                    u64::from_be_bytes(buf[pos + payload..pos + payload + 8].try_into().unwrap());
                if seq != next_seq {
                    tally.out_of_order.fetch_add(1, Relaxed);
                }
                next_seq = seq + 1;
                pos += len;
                frames += 1;
            }
            buf.copy_within(pos..have, 0);
            have -= pos;
            if frames > 0 {
                tally.frames.fetch_add(frames, Relaxed);
                tally.progress.notify_one();
            }
        }
    });
    // The subscriber never sends (the hub pings only every 20 s, longer than a run).
    wr
}

/// `(payload offset, frame length)` of the complete server frame at the start of `b`.
fn frame_at(b: &[u8]) -> Option<(usize, usize)> {
    if b.len() < 2 {
        return None;
    }
    let (hdr, len) = match b[1] & 0x7F {
        126 if b.len() >= 4 => (4, u16::from_be_bytes([b[2], b[3]]) as usize),
        127 if b.len() >= 10 => (10, u64::from_be_bytes(b[2..10].try_into().ok()?) as usize),
        126 | 127 => return None,
        n => (2, n as usize),
    };
    (b.len() >= hdr + len).then_some((hdr, hdr + len))
}

struct Run {
    deliveries_per_s: f64,
    publish_ns: f64,
    redis_cpu_us_per_msg: Option<f64>,
    out_of_order: u64,
    lost: u64,
    remote_failed: u64,
    /// `PUBLISH` commands the publishing node sent per message.
    publishes_per_msg: Option<f64>,
}

/// Publishes `messages` from `publisher` with at most `window` in flight per subscriber (on
/// average), until `subscribers` have each received them all.
async fn run(
    p: &Params,
    publisher: &Hub,
    subscribers: u64,
    tally: &Tally,
    redis: Option<&mut redis::Connection>,
) -> Run {
    let mut redis = redis;
    let before = redis.as_deref_mut().map(redis_cpu);
    let base = tally.frames.load(Relaxed);
    let mut payload = vec![0u8; p.size.max(8)];
    let mut publish_time = Duration::ZERO;
    let mut remote_failed = 0;
    let start = Instant::now();
    for seq in 0..p.messages {
        loop {
            let progress = tally.progress.notified();
            let done = tally.frames.load(Relaxed) - base;
            if seq * subscribers <= done + p.window * subscribers {
                break;
            }
            progress.await;
        }
        payload[..8].copy_from_slice(&seq.to_be_bytes());
        let t = Instant::now();
        let report = publisher.broadcast(payload.clone());
        publish_time += t.elapsed();
        if matches!(report.remote, Remote::Failed(_)) {
            remote_failed += 1;
        }
    }
    let want = p.messages * subscribers;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let progress = tally.progress.notified();
        if tally.frames.load(Relaxed) - base >= want || Instant::now() > deadline {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), progress).await;
    }
    let elapsed = start.elapsed();
    let got = tally.frames.load(Relaxed) - base;
    let after = redis.map(redis_cpu);
    Run {
        deliveries_per_s: got as f64 / elapsed.as_secs_f64(),
        publish_ns: publish_time.as_nanos() as f64 / p.messages as f64,
        redis_cpu_us_per_msg: before
            .zip(after)
            .map(|(b, a)| (a - b) * 1e6 / p.messages as f64),
        out_of_order: tally.out_of_order.load(Relaxed),
        lost: want.saturating_sub(got),
        remote_failed,
        publishes_per_msg: None,
    }
}

fn redis_cpu(c: &mut redis::Connection) -> f64 {
    let info: String = redis::cmd("INFO").arg("cpu").query(c).expect("INFO cpu");
    info.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| *k == "used_cpu_sys" || *k == "used_cpu_user")
        .map(|(_, v)| v.trim().parse::<f64>().unwrap_or(0.0))
        .sum()
}

/// One scenario: `nodes` hubs (a backplane when `nodes > 1` or `force_redis`), the
/// subscribers spread over `subscriber_nodes`, the publisher on node 0.
async fn scenario(p: &Params, nodes: usize, spread: &[u64], use_redis: bool, round: usize) -> Run {
    let prefix = format!("wshub-bench-{}-{nodes}-{round}", std::process::id());
    let mut hubs = Vec::new();
    for _ in 0..nodes {
        let redis = use_redis.then_some((p.url.as_str(), prefix.as_str()));
        hubs.push(start_node(redis).await);
    }
    let tally = Arc::new(Tally::default());
    let mut keep = Vec::new();
    let mut total = 0;
    for (node, &count) in hubs.iter().zip(spread) {
        for _ in 0..count {
            keep.push(subscriber(node.addr, tally.clone()).await);
        }
        total += count;
        while node.hub.session_count() < count as usize {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let mut conn = use_redis.then(|| {
        redis::Client::open(p.url.as_str())
            .unwrap()
            .get_connection()
            .unwrap()
    });
    let mut result = run(p, &hubs[0].hub, total, &tally, conn.as_mut()).await;
    if let Some(bp) = &hubs[0].backplane {
        result.publishes_per_msg = Some(bp.stats().published as f64 / p.messages as f64);
    }
    drop(keep);
    for node in hubs {
        node.hub.shutdown(Duration::from_millis(200)).await;
        if let Some(bp) = node.backplane {
            let _ = bp.close().await;
        }
    }
    result
}

fn median(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.deliveries_per_s.total_cmp(&b.deliveries_per_s));
    let mid = runs.len() / 2;
    runs.swap_remove(mid)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let p = Params {
        url: args
            .next()
            .unwrap_or_else(|| "redis://127.0.0.1:6379/".into()),
        messages: args.next().map_or(5_000, |a| a.parse().expect("messages")),
        window: args.next().map_or(32, |a| a.parse().expect("window")),
        size: args.next().map_or(64, |a| a.parse().expect("bytes")),
        rounds: args.next().map_or(3, |a| a.parse().expect("rounds")),
    };
    println!(
        "{} messages of {} B, window {}, median of {} rounds, Redis {}",
        p.messages, p.size, p.window, p.rounds, p.url
    );
    println!(
        "{:<44} {:>14} {:>12} {:>16} {:>12} {:>6}",
        "scenario", "deliveries/s", "publish ns", "Redis CPU µs/msg", "PUBLISH/msg", "lost"
    );
    let scenarios: Vec<(&str, usize, Vec<u64>, bool)> = vec![
        ("1 node x 1000 subscribers, no Redis", 1, vec![1000], false),
        (
            "2 nodes x 500 subscribers through Redis",
            2,
            vec![500, 500],
            true,
        ),
        (
            "publisher alone + 1 node x 1000 (Redis)",
            2,
            vec![0, 1000],
            true,
        ),
        (
            "publisher alone + 2 nodes x 500 (Redis)",
            3,
            vec![0, 500, 500],
            true,
        ),
        (
            "publisher alone + 4 nodes x 250 (Redis)",
            5,
            vec![0, 250, 250, 250, 250],
            true,
        ),
    ];
    for (name, nodes, spread, use_redis) in scenarios {
        let mut runs = Vec::new();
        for round in 0..p.rounds {
            runs.push(scenario(&p, nodes, &spread, use_redis, round).await);
        }
        let r = median(runs);
        let cpu = r
            .redis_cpu_us_per_msg
            .map_or_else(|| "-".to_owned(), |c| format!("{c:.1}"));
        let publishes = r
            .publishes_per_msg
            .map_or_else(|| "-".to_owned(), |n| format!("{n:.2}"));
        println!(
            "{name:<44} {:>14.0} {:>12.0} {cpu:>16} {publishes:>12} {:>6}",
            r.deliveries_per_s, r.publish_ns, r.lost
        );
        if r.out_of_order + r.remote_failed > 0 {
            println!(
                "    !! out of order: {}, remote failed: {}",
                r.out_of_order, r.remote_failed
            );
        }
    }
}
