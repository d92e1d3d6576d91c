//! Topic history and presence across two nodes over a real Redis: recovery from either node,
//! the seam under concurrent publishing, "unrecoverable" after eviction and after a Redis
//! restart (a new epoch), presence across nodes and its expiry after a node dies.

mod cluster_support;

use std::sync::Arc;
use std::time::Duration;

use cluster_support::{Redis, fast_config, wait_until};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wshub::protocol::ClientCommand;
use wshub::{
    Config, Handler, HistoryPolicy, Hub, Message, Position, RedisBackplane, RedisConfig, Session,
};

const WAIT: Duration = Duration::from_secs(10);

struct App;

#[wshub::async_trait]
impl Handler for App {
    async fn on_message(&self, s: &Session, m: Message) {
        if let Some(command) = ClientCommand::parse(&m) {
            if let Err(e) = s.apply(&command).await {
                let _ = s.send(format!(r#"{{"type":"error","error":"{e}"}}"#));
            }
        }
    }
    fn presence_info(&self, s: &Session) -> Option<String> {
        s.request().query_param("name").map(str::to_owned)
    }
}

struct Node {
    hub: Hub,
    backplane: Arc<RedisBackplane>,
    addr: std::net::SocketAddr,
}

async fn node(redis: &Redis, config: RedisConfig, max: usize) -> Node {
    let backplane = Arc::new(
        RedisBackplane::connect_with(&redis.url, config)
            .await
            .unwrap(),
    );
    let hub = Hub::builder(App)
        .config(
            Config::default()
                .history("feed", HistoryPolicy::new(max, None))
                .presence("room")
                .envelope(true),
        )
        .backplane(backplane.clone())
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(hub.clone().serve(listener));
    Node {
        hub,
        backplane,
        addr,
    }
}

type Ws_ = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn connect(addr: std::net::SocketAddr, name: &str) -> Ws_ {
    let url = format!("ws://{addr}/?name={name}");
    tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect in time")
        .expect("connect")
        .0
}

async fn recv(c: &mut Ws_) -> Value {
    loop {
        let m = tokio::time::timeout(WAIT, c.next())
            .await
            .expect("a message in time")
            .expect("open")
            .expect("no error");
        if let Ws::Text(t) = m {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

fn position(v: &Value) -> Position {
    Position::new(
        v["epoch"].as_str().unwrap().parse().unwrap(),
        v["offset"].as_u64().unwrap(),
    )
}

async fn subscribe(c: &mut Ws_, topic: &str, since: Option<Position>) -> Value {
    let text = match since {
        None => format!(r#"{{"type":"subscribe","topic":"{topic}"}}"#),
        Some(p) => format!(
            r#"{{"type":"subscribe","topic":"{topic}","since":{{"epoch":"{}","offset":{}}}}}"#,
            p.epoch, p.offset
        ),
    };
    c.send(Ws::text(text)).await.unwrap();
    recv(c).await
}

/// The last position of `topic`, read through `hub` (publications are numbered by Redis).
async fn last(hub: &Hub) -> Position {
    let all = hub.history("feed", None).await.unwrap();
    all.last().map(|(p, _)| *p).unwrap_or_default()
}

#[tokio::test]
async fn a_client_recovers_on_another_node_exactly_what_it_missed() {
    let Some(redis) = Redis::any("cluster_history_recover") else {
        return;
    };
    let prefix = redis.prefix("hist-recover");
    let a = node(&redis, fast_config(&prefix), 1000).await;
    let b = node(&redis, fast_config(&prefix), 1000).await;
    let mut c = connect(a.addr, "c").await;
    let reply = subscribe(&mut c, "feed", None).await;
    assert_eq!(reply["type"], "subscribed");
    a.hub.publish("feed", "first");
    let m = recv(&mut c).await;
    assert_eq!(
        m["data"], "first",
        "a node delivers its own recorded publication"
    );
    let seen = position(&m);
    drop(c);
    const N: u64 = 20;
    for i in 0..N {
        // From both nodes: one log.
        let hub = if i % 2 == 0 { &a.hub } else { &b.hub };
        hub.publish("feed", format!("missed {i}"));
    }
    let mut waited = 0;
    while last(&a.hub).await.offset < seen.offset + N {
        waited += 1;
        assert!(waited < 1000, "the publications reach Redis");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut c = connect(b.addr, "c").await;
    let reply = subscribe(&mut c, "feed", Some(seen)).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(reply["replayed"], N);
    // Two nodes published concurrently: the log's order is Redis's, the same for everyone.
    let mut got = Vec::new();
    for i in 0..N {
        let m = recv(&mut c).await;
        assert_eq!(position(&m).offset, seen.offset + 1 + i);
        got.push(m["data"].as_str().unwrap().to_owned());
    }
    let mut want: Vec<String> = (0..N).map(|i| format!("missed {i}")).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    a.hub.publish("feed", "live");
    let m = recv(&mut c).await;
    assert_eq!(
        (m["data"].as_str(), position(&m).offset),
        (Some("live"), seen.offset + N + 1)
    );
}

#[tokio::test]
async fn the_cross_node_seam_has_no_gap_and_no_duplicate() {
    let Some(redis) = Redis::any("cluster_history_seam") else {
        return;
    };
    let prefix = redis.prefix("hist-seam");
    let a = node(&redis, fast_config(&prefix), 100_000).await;
    let b = node(&redis, fast_config(&prefix), 100_000).await;
    // A subscriber on B keeps the log flowing into B all along.
    for round in 0..15 {
        a.hub.publish("feed", "start");
        let mut waited = 0;
        let start = loop {
            let p = last(&a.hub).await;
            if p.offset > 0 {
                break p;
            }
            waited += 1;
            assert!(waited < 1000);
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let hub = a.hub.clone();
        let publisher = tokio::spawn(async move {
            for i in 0..200 {
                hub.publish("feed", format!("{i}"));
                if i % 4 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        });
        let mut c = connect(b.addr, "c").await;
        let reply = subscribe(&mut c, "feed", Some(start)).await;
        assert_eq!(reply["type"], "subscribed", "round {round}: {reply}");
        publisher.await.unwrap();
        a.hub.publish("feed", "fence");
        let mut expected = start.offset + 1;
        loop {
            let m = recv(&mut c).await;
            assert_eq!(
                position(&m).offset,
                expected,
                "round {round}: gap or duplicate"
            );
            expected += 1;
            if m["data"] == "fence" {
                break;
            }
        }
    }
    let _ = b;
}

#[tokio::test]
async fn eviction_and_a_redis_restart_are_reported_as_unrecoverable() {
    let Some(mut redis) = Redis::own("cluster_history_unrecoverable") else {
        return;
    };
    let prefix = redis.prefix("hist-lost");
    let a = node(&redis, fast_config(&prefix), 5).await;
    for i in 0..50 {
        a.hub.publish("feed", format!("{i}"));
    }
    let mut waited = 0;
    while last(&a.hub).await.offset < 50 {
        waited += 1;
        assert!(waited < 1000);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = last(&a.hub).await;
    let mut c = connect(a.addr, "c").await;
    let reply = subscribe(&mut c, "feed", Some(Position::new(before.epoch, 2))).await;
    assert_eq!(reply["type"], "unrecoverable", "evicted: {reply}");
    assert_eq!(position(&reply["position"]), before);
    drop(c);

    // Redis restarts without persistence: the history and its epoch are gone.
    redis.stop();
    redis.start().unwrap();
    wait_until("the backplane reconnects", || async {
        a.backplane.is_connected()
    })
    .await;
    let mut c = connect(a.addr, "c").await;
    let reply = loop {
        let reply = subscribe(&mut c, "feed", Some(before)).await;
        if reply["type"] != "error" {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(reply["type"], "unrecoverable", "{reply}");
    assert_ne!(
        position(&reply["position"]).epoch,
        before.epoch,
        "a new epoch"
    );
}

#[tokio::test]
async fn presence_spans_nodes_and_a_dead_nodes_entries_expire() {
    let Some(redis) = Redis::any("cluster_presence") else {
        return;
    };
    let prefix = redis.prefix("presence");
    let a = node(&redis, fast_config(&prefix), 10).await;
    // Node B runs in a runtime of its own, so that it can die without leaving.
    let url = redis.url.clone();
    let config = fast_config(&prefix);
    let (rt, b_addr) = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let addr = rt.block_on(async move {
            let redis_b = RedisBackplane::connect_with(&url, config).await.unwrap();
            let hub = Hub::builder(App)
                .config(Config::default().presence("room").envelope(true))
                .backplane(Arc::new(redis_b))
                .build();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(hub.serve(listener));
            addr
        });
        (rt, addr)
    })
    .join()
    .unwrap();
    let mut ann = connect(a.addr, "ann").await;
    let mut bob = connect(b_addr, "bob").await;
    subscribe(&mut ann, "room", None).await;
    subscribe(&mut bob, "room", None).await;
    let names = || async {
        let mut n: Vec<String> = a
            .hub
            .presence("room")
            .await
            .unwrap()
            .into_iter()
            .filter_map(|e| e.info)
            .collect();
        n.sort();
        n
    };
    wait_until("both present", || async { names().await == ["ann", "bob"] }).await;
    // B dies: no leave, no lease release.
    rt.shutdown_background();
    drop(bob);
    let died = std::time::Instant::now();
    wait_until("bob's entry expires", || async { names().await == ["ann"] }).await;
    assert!(
        died.elapsed() < Duration::from_secs(3),
        "within the liveness timeout"
    );
}

#[tokio::test]
async fn publish_confirmed_returns_the_position_redis_assigned() {
    let Some(redis) = Redis::any("cluster_history_confirmed") else {
        return;
    };
    let prefix = redis.prefix("hist-confirmed");
    let a = node(&redis, fast_config(&prefix), 1000).await;
    let b = node(&redis, fast_config(&prefix), 1000).await;
    let report = a.hub.publish("feed", "unconfirmed");
    assert_eq!(
        report.position, None,
        "Redis numbers it after publish returns"
    );
    let mut seen = Vec::new();
    for (i, hub) in [&a.hub, &b.hub, &a.hub].into_iter().enumerate() {
        let report = hub.publish_confirmed("feed", format!("m{i}")).await;
        let position = report.position.expect("a position once Redis numbered it");
        seen.push(position);
    }
    // One epoch, consecutive offsets after the unconfirmed one, whichever node published.
    assert!(seen.iter().all(|p| p.epoch == seen[0].epoch));
    let offsets: Vec<u64> = seen.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, vec![2, 3, 4]);
    // The log agrees: the confirmed positions hold the confirmed messages.
    let log = a.hub.history("feed", None).await.unwrap();
    for (i, position) in seen.iter().enumerate() {
        let (_, message) = log
            .iter()
            .find(|(p, _)| p == position)
            .expect("the confirmed position is in the log");
        assert_eq!(message.as_text(), Some(format!("m{i}").as_str()));
    }
    assert_eq!(last(&b.hub).await, seen[2]);
    drop((a, b));
}

/// The JSON protocol's `join` and `leave` events reach a topic's subscribers on every node:
/// a session joining on node B is announced to a subscriber on node A, with its presence
/// info, and so is its leaving when it disconnects.
#[tokio::test]
async fn join_and_leave_events_cross_nodes() {
    let Some(redis) = Redis::any("cluster_join_leave") else {
        return;
    };
    let prefix = redis.prefix("join_leave");
    let a = node(&redis, fast_config(&prefix), 10).await;
    let b = node(&redis, fast_config(&prefix), 10).await;
    let mut ann = connect(a.addr, "ann").await;
    assert_eq!(
        subscribe(&mut ann, "room", None).await["type"],
        "subscribed"
    );
    // Ann hears of herself first.
    let own = recv(&mut ann).await;
    assert_eq!(
        (own["type"].as_str(), own["info"].as_str()),
        (Some("join"), Some("ann"))
    );
    // Node A subscribes to the topic's channel before Bob joins on B.
    wait_until("node A to listen on the topic", || async {
        a.backplane.stats().topic_channels > 0
    })
    .await;
    let mut bob = connect(b.addr, "bob").await;
    assert_eq!(
        subscribe(&mut bob, "room", None).await["type"],
        "subscribed"
    );
    let joined = recv(&mut ann).await;
    assert_eq!(
        (
            joined["type"].as_str(),
            joined["topic"].as_str(),
            joined["info"].as_str()
        ),
        (Some("join"), Some("room"), Some("bob")),
        "{joined}"
    );
    let bob_id = joined["id"].as_str().unwrap().to_owned();
    assert_eq!(
        bob_id.parse::<u64>().unwrap() >> 48,
        u64::from(b.backplane.node_id())
    );
    drop(bob);
    let left = recv(&mut ann).await;
    assert_eq!(
        (left["type"].as_str(), left["id"].as_str()),
        (Some("leave"), Some(bob_id.as_str())),
        "{left}"
    );
}
