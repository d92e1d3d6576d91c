//! Topic churn on one node: per-topic state is freed once its sessions leave, and the
//! process does not grow from one round of churn to the next. In a test binary of its own,
//! so that the process's memory is this test's alone.

mod support;

use serde_json::Value;
use support::{Client, connect, recv_text, send_text};
use wshub::protocol::ClientCommand;
use wshub::{Config, Handler, HistoryPolicy, Hub, Message, Session};

/// Applies the JSON protocol's commands.
struct App;

#[wshub::async_trait]
impl Handler for App {
    async fn on_message(&self, s: &Session, m: Message) {
        if let Some(command) = ClientCommand::parse(&m) {
            let _ = s.apply(&command).await;
        }
    }
}

async fn serve(config: Config) -> (Hub, std::net::SocketAddr) {
    let hub = Hub::builder(App)
        .config(config.ping_interval(None).idle_timeout(None))
        .build();
    let listener = support::listen();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(hub.clone().serve(listener));
    (hub, addr)
}

async fn recv_json(c: &mut Client) -> Value {
    serde_json::from_str(&recv_text(c).await).expect("a JSON envelope")
}

/// This process's resident memory in KiB (Linux), `None` elsewhere.
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Guarantee: per-topic state is freed once its sessions leave. 50 clients subscribe (through
/// the JSON protocol, with history and presence) to 1,000 topics each — 50,000 topics — then
/// leave; five times. After each round the node holds no topic, no history state and no
/// presence entry, and the process's peak stops growing: at least one of the last three
/// rounds adds no more than 2 MB (the allocator keeps freed pages, so the process does not
/// shrink, and it took a one-off step of about 15 MB in round three or four in our runs; a
/// leak of even 100 bytes per topic would add 5 MB in every round). Before: every topic's
/// history entry stayed for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_thousand_topics_leave_nothing_behind() {
    const CLIENTS: usize = 50;
    const TOPICS: usize = 1_000;
    let config = Config::default()
        .history("t/*", HistoryPolicy::new(16, None))
        .presence("t/*")
        .envelope(true);
    let (hub, addr) = serve(config).await;
    let baseline = rss_kib();
    let mut peaks = Vec::new();
    let mut afters = Vec::new();
    for round in 0..5 {
        let mut clients = Vec::new();
        for c in 0..CLIENTS {
            clients.push(tokio::spawn(async move {
                let mut ws = connect(addr).await;
                for t in 0..TOPICS {
                    let topic = format!("t/{round}/{c}/{t}");
                    send_text(
                        &mut ws,
                        &format!(r#"{{"type":"subscribe","topic":"{topic}"}}"#),
                    )
                    .await;
                }
                let mut answered = 0;
                while answered < TOPICS {
                    let m = recv_json(&mut ws).await;
                    if m["type"] == "subscribed" {
                        answered += 1;
                    }
                }
                ws
            }));
        }
        let mut sockets = Vec::new();
        for c in clients {
            sockets.push(
                support::within("a client's subscriptions", c)
                    .await
                    .unwrap(),
            );
        }
        let stats = hub.stats();
        assert_eq!(stats.topics, CLIENTS * TOPICS);
        assert_eq!(stats.history_topics, CLIENTS * TOPICS);
        peaks.push(rss_kib());
        drop(sockets);
        // Every session's end has run (it counts the close last, after leaving its topics).
        let opened = (round + 1) as u64 * CLIENTS as u64;
        support::wait_until("every session to end", || {
            let s = hub.stats();
            s.closed_by_client + s.closed_by_server + s.disconnected + s.io_errors == opened
        })
        .await;
        let stats = hub.stats();
        assert_eq!((stats.topics, stats.history_topics), (0, 0), "{stats:?}");
        assert!(hub.presence("t/0/0/0").await.unwrap().is_empty());
        afters.push(rss_kib());
    }
    let figures = format!("RSS KiB: baseline {baseline:?}, peaks {peaks:?}, after {afters:?}");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("{figures}\n").as_bytes());
    let peaks: Option<Vec<u64>> = peaks.into_iter().collect();
    if let Some(peaks) = peaks {
        // A leak grows every round; the allocator's one-off steps do not.
        let flat = peaks[1..].windows(2).any(|w| w[1] <= w[0] + 2 * 1024);
        assert!(flat, "the process grew every round: {figures}");
    }
}
