//! What the Redis backplane guarantees under faults, against a real `redis-server` the test
//! starts (and fills, restarts, or cuts connections of), real nodes and real WebSocket
//! clients: an error reply fails only its own command; node numbers stay unique across a
//! Redis restart; a dropped subscription or a Redis restart never leaves a silent gap in a
//! topic's stream; every key has a TTL; presence converges after faults.
//!
//! Liveness and backoff are short (`fast_config`), so each test takes a few seconds.

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
    Config, Handler, HistoryPolicy, Hub, Message, Position, RedisBackplane, RedisConfig, Remote,
    Session,
};

const WAIT: Duration = Duration::from_secs(10);

/// Tells each client its id first; applies the JSON protocol's commands.
struct App;

#[wshub::async_trait]
impl Handler for App {
    async fn open(&self, s: &Session) {
        let _ = s.send(format!(r#"{{"type":"id","id":"{}"}}"#, s.id().as_u64()));
    }
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

async fn node(redis: &Redis, config: RedisConfig) -> Node {
    let backplane = Arc::new(
        RedisBackplane::connect_with(&redis.url, config)
            .await
            .expect("connect the backplane"),
    );
    let hub = Hub::builder(App)
        .config(
            Config::default()
                .history("feed*", HistoryPolicy::new(10_000, None))
                .presence("room*")
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

struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    id: u64,
}

impl Client {
    async fn connect(addr: std::net::SocketAddr, name: &str) -> Client {
        let url = format!("ws://{addr}/?name={name}");
        let ws = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("connect")
            .0;
        let mut c = Client { ws, id: 0 };
        let hello = c.recv().await;
        c.id = hello["id"].as_str().unwrap().parse().unwrap();
        c
    }

    /// The next text message (JSON, or a plain text as a JSON string), or the close frame's
    /// `{"close":code}`; `None` when nothing arrives within `wait`.
    async fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            match next {
                Some(Ok(Ws::Text(t))) => {
                    return Some(
                        serde_json::from_str(t.as_str()).unwrap_or(Value::String(t.to_string())),
                    );
                }
                Some(Ok(Ws::Close(f))) => {
                    let code = f.map_or(1005, |f| u16::from(f.code));
                    return Some(serde_json::json!({ "close": code }));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Some(serde_json::json!({ "close": 1006 })),
            }
        }
    }

    async fn recv(&mut self) -> Value {
        self.try_recv(WAIT)
            .await
            .unwrap_or_else(|| panic!("no message within {WAIT:?}"))
    }

    async fn send(&mut self, text: String) {
        self.ws.send(Ws::text(text)).await.expect("send");
    }

    async fn subscribe(&mut self, topic: &str, since: Option<Position>) -> Value {
        let text = match since {
            None => format!(r#"{{"type":"subscribe","topic":"{topic}"}}"#),
            Some(p) => format!(
                r#"{{"type":"subscribe","topic":"{topic}","since":{{"epoch":"{}","offset":{}}}}}"#,
                p.epoch, p.offset
            ),
        };
        self.send(text).await;
        self.recv().await
    }
}

fn position(v: &Value) -> Position {
    Position::new(
        v["epoch"].as_str().unwrap().parse().unwrap(),
        v["offset"].as_u64().unwrap(),
    )
}

fn cmd<T: redis::FromRedisValue>(redis: &Redis, args: &[&str]) -> T {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query(&mut redis.conn())
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

// (4) Error replies are per command.

#[tokio::test]
async fn an_error_reply_fails_only_its_own_command() {
    let Some(redis) = Redis::own("faults_error_reply") else {
        return;
    };
    let prefix = redis.prefix("err");
    let a = node(&redis, fast_config(&prefix)).await;
    let b = node(&redis, fast_config(&prefix)).await;
    let mut c = Client::connect(b.addr, "c").await;
    assert_eq!(c.subscribe("feed", None).await["type"], "subscribed");
    a.hub.publish("feed", "before");
    let first = c.recv().await;
    assert_eq!(first["data"], "before");
    let mut ann = Client::connect(a.addr, "ann").await;
    ann.subscribe("room", None).await;
    converges("ann present", &b.hub, &["ann"]).await;

    // Redis is full and refuses writes; PUBLISH needs no memory and still works.
    let _: () = cmd(&redis, &["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    let _: () = cmd(&redis, &["CONFIG", "SET", "maxmemory", "1"]);
    // One pipeline: a recorded publication (refused: out of memory) and a broadcast.
    a.hub.publish("feed", "refused");
    a.hub.broadcast("hello");
    let m = c.recv().await;
    assert_eq!(
        m, "hello",
        "the broadcast in the same pipeline as a refused command is delivered"
    );
    let confirmed = a.hub.publish_confirmed("feed", "refused too").await;
    assert_eq!(confirmed.position, None);
    assert_eq!(
        confirmed.remote,
        Remote::Failed(wshub::RemoteError::Refused),
        "the refusal is reported to the publisher"
    );
    let s = a.backplane.stats();
    assert_eq!((s.refused, s.lost, s.reconnects), (2, 0, 0), "{s:?}");
    assert!(s.connected);
    // While Redis is full, amy joins on A: A's writes may be refused, but what Redis holds
    // (ann) stays, beat after beat, TTL renewed (a rewrite would delete it first; a write
    // refused before the renewals would let it lapse).
    let mut amy = Client::connect(a.addr, "amy").await;
    amy.subscribe("room", None).await;
    // Past the liveness timeout (500 ms), so a TTL not renewed would show.
    let watch = std::time::Instant::now() + Duration::from_millis(800);
    while std::time::Instant::now() < watch {
        let names = present(&b.hub).await;
        assert!(
            names.contains(&"ann".to_owned()),
            "ann kept while Redis is full: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Memory again: the next publication follows the last one, no gap, no new epoch.
    let _: () = cmd(&redis, &["CONFIG", "SET", "maxmemory", "0"]);
    converges(
        "amy's entry written once Redis has memory",
        &b.hub,
        &["amy", "ann"],
    )
    .await;
    a.hub.publish("feed", "after");
    let m = c.recv().await;
    assert_eq!(m["data"], "after");
    assert_eq!(
        position(&m),
        Position::new(position(&first).epoch, 2),
        "refused publications were never numbered"
    );
}

#[tokio::test]
async fn a_lost_sequence_key_is_resynchronised_from_the_log() {
    let Some(redis) = Redis::own("faults_seq_lost") else {
        return;
    };
    let prefix = redis.prefix("seq");
    let a = node(&redis, fast_config(&prefix)).await;
    let mut c = Client::connect(a.addr, "c").await;
    assert_eq!(c.subscribe("feed", None).await["type"], "subscribed");
    let mut last = Position::default();
    for i in 1..=3 {
        let r = a.hub.publish_confirmed("feed", format!("m{i}")).await;
        last = r.position.expect("numbered");
        assert_eq!(c.recv().await["offset"], i);
    }
    let _: i64 = cmd(&redis, &["DEL", &format!("{prefix}:history:feed:seq")]);
    for i in 4..=5 {
        let r = a.hub.publish_confirmed("feed", format!("m{i}")).await;
        assert_eq!(
            r.position,
            Some(Position::new(last.epoch, i)),
            "numbering resumes after the log's last entry: {r:?}"
        );
        let m = c.recv().await;
        assert_eq!(
            (m["data"].as_str(), m["offset"].as_u64()),
            (Some(&*format!("m{i}")), Some(i))
        );
    }
    let s = a.backplane.stats();
    assert_eq!((s.refused, s.lost, s.reconnects), (0, 0, 0), "{s:?}");
}

// (5) Node numbers stay unique across a Redis restart.

#[tokio::test]
async fn a_node_whose_number_was_taken_renumbers_and_targets_stay_exact() {
    let Some(mut redis) = Redis::own("faults_renumber") else {
        return;
    };
    let prefix = redis.prefix("renumber");
    // A beats once a second and reconnects slowly: after Redis restarts it is still in its
    // backoff when B starts and claims a number, so B gets A's number.
    let slow = fast_config(&prefix)
        .heartbeat(Duration::from_secs(1))
        .liveness_timeout(Duration::from_secs(3))
        .reconnect_backoff(Duration::from_millis(1000), Duration::from_millis(1000));
    let a = node(&redis, slow).await;
    let number = a.backplane.node_id();
    let mut old = Client::connect(a.addr, "old").await;
    // Restart right after one of A's beats, so its next one comes after B's claim.
    let lease = format!("{prefix}:lease:{number}");
    let ttl = || cmd::<i64>(&redis, &["PTTL", &lease]);
    let mut before = ttl();
    wait_until("A renews its lease", || {
        let now = ttl();
        let renewed = now > before;
        before = now;
        async move { renewed }
    })
    .await;
    redis.stop();
    redis.start().unwrap();
    let b = node(&redis, fast_config(&prefix)).await;
    assert_eq!(
        b.backplane.node_id(),
        number,
        "the setup: B claimed A's number while A was reconnecting"
    );

    // A finds out and takes a new number; its sessions are closed with 1012.
    let closed = old.recv().await;
    assert_eq!(closed, serde_json::json!({ "close": 1012 }), "{closed}");
    assert_ne!(a.backplane.node_id(), number);
    assert_eq!(a.backplane.stats().renumbered, 1);

    // Targeted messages reach exactly their session, broadcasts cross both ways.
    let mut ca = Client::connect(a.addr, "ca").await;
    let mut cb = Client::connect(b.addr, "cb").await;
    assert_eq!(ca.id >> 48, u64::from(a.backplane.node_id()));
    assert_eq!(cb.id >> 48, u64::from(number));
    let to = |id| wshub::SessionId::from_u64(id);
    wait_until("A's new node channel is subscribed", || {
        let n = redis.subscribers(&format!("{prefix}:node:{}", a.backplane.node_id()));
        async move { n == 1 }
    })
    .await;
    assert_eq!(
        redis.subscribers(&format!("{prefix}:node:{number}")),
        1,
        "only B listens on its number"
    );
    wait_until("A publishes again", || {
        let up = a.backplane.is_connected();
        async move { up }
    })
    .await;
    b.hub.send_to(to(ca.id), "for ca").unwrap();
    a.hub.send_to(to(cb.id), "for cb").unwrap();
    assert_eq!(ca.recv().await, "for ca");
    assert_eq!(cb.recv().await, "for cb");
    b.hub.broadcast("from b");
    a.hub.broadcast("from a");
    for c in [&mut ca, &mut cb] {
        let mut got = vec![c.recv().await, c.recv().await];
        got.sort_by_key(|v| v.to_string());
        assert_eq!(got, ["from a", "from b"]);
        assert_eq!(
            c.try_recv(Duration::from_millis(200)).await,
            None,
            "nothing else"
        );
    }
}

// (1) No silent gap after the subscription drops or Redis loses its data.

/// Two nodes, each with `per_node` clients subscribed live to `feed`.
async fn two_nodes_subscribed(
    redis: &Redis,
    prefix: &str,
    per_node: usize,
) -> (Node, Node, Vec<Client>) {
    let a = node(redis, fast_config(prefix)).await;
    let b = node(redis, fast_config(prefix)).await;
    let mut clients = Vec::new();
    for _ in 0..per_node {
        for n in [&a, &b] {
            let mut c = Client::connect(n.addr, "c").await;
            assert_eq!(c.subscribe("feed", None).await["type"], "subscribed");
            clients.push(c);
        }
    }
    (a, b, clients)
}

/// Publishes `m1` … `m{n}` to `feed` from `hub`, one every `pace`; returns once a quarter is
/// published (the moment to inject a fault), with the task publishing the rest.
async fn publish_paced(hub: &Hub, n: u64, pace: Duration) -> tokio::task::JoinHandle<()> {
    let (quarter, mut reached) = tokio::sync::mpsc::channel(1);
    let hub = hub.clone();
    let publisher = tokio::spawn(async move {
        for i in 1..=n {
            hub.publish("feed", format!("m{i}"));
            if i == n / 4 {
                let _ = quarter.send(()).await;
            }
            tokio::time::sleep(pace).await;
        }
    });
    reached.recv().await.unwrap();
    publisher
}

#[tokio::test]
async fn a_killed_subscription_leaves_every_stream_exact() {
    let Some(redis) = Redis::own("faults_pubsub_kill") else {
        return;
    };
    let prefix = redis.prefix("kill");
    let (a, b, mut clients) = two_nodes_subscribed(&redis, &prefix, 2).await;
    const N: u64 = 300;
    // Paced, so that publishing goes on all through the resubscription.
    let publisher = publish_paced(&a.hub, N, Duration::from_millis(2)).await;
    let killed: i64 = cmd(&redis, &["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert_eq!(killed, 2, "both nodes' subscriptions");
    publisher.await.unwrap();
    for (i, c) in clients.iter_mut().enumerate() {
        for offset in 1..=N {
            let m = c.recv().await;
            assert_eq!(
                (m["offset"].as_u64(), m["data"].as_str()),
                (Some(offset), Some(&*format!("m{offset}"))),
                "client {i}: gap or duplicate: {m}"
            );
        }
        assert_eq!(
            c.try_recv(Duration::from_millis(100)).await,
            None,
            "client {i}"
        );
    }
    let mut caught_up = 0;
    for n in [&a, &b] {
        let s = n.backplane.stats();
        assert!(s.reconnects >= 1, "{s:?}");
        assert_eq!(s.unrecoverable, 0, "{s:?}");
        caught_up += s.caught_up;
    }
    assert!(
        caught_up > 0,
        "publications of the window came from the log"
    );
}

#[tokio::test]
async fn a_redis_restart_without_data_is_announced_as_unrecoverable() {
    let Some(mut redis) = Redis::own("faults_restart_unrecoverable") else {
        return;
    };
    let prefix = redis.prefix("restart");
    let a = node(&redis, fast_config(&prefix)).await;
    let b = node(&redis, fast_config(&prefix)).await;
    let mut c = Client::connect(b.addr, "c").await;
    assert_eq!(c.subscribe("feed", None).await["type"], "subscribed");
    for i in 1..=3 {
        a.hub.publish("feed", format!("old {i}"));
    }
    let mut old = Position::default();
    for i in 1..=3 {
        let m = c.recv().await;
        assert_eq!(m["offset"], i);
        old = position(&m);
    }
    redis.stop();
    redis.start().unwrap();
    // The subscription comes back to a log of another epoch: the session is told, unasked.
    let told = c.recv().await;
    assert_eq!(told["type"], "unrecoverable", "{told}");
    let from = position(&told["position"]);
    assert_ne!(from.epoch, old.epoch, "{told}");
    wait_until("A publishes again", || {
        let up = a.backplane.is_connected();
        async move { up }
    })
    .await;
    a.hub.publish("feed", "new 1");
    let m = c.recv().await;
    assert_eq!(m["data"], "new 1");
    assert_eq!(
        position(&m),
        Position::new(from.epoch, from.offset + 1),
        "the new epoch's publications follow the announced position"
    );
    assert_eq!(b.backplane.stats().unrecoverable, 1);
}

// (3) Every key has a TTL.

/// wshub's keys under `prefix` that have no TTL.
fn keys_without_ttl(redis: &Redis, prefix: &str) -> Vec<String> {
    let mut conn = redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query(&mut conn)
        .unwrap();
    let mut forever: Vec<String> = keys
        .into_iter()
        .filter(|k| redis::cmd("PTTL").arg(k).query::<i64>(&mut conn).unwrap() == -1)
        .collect();
    forever.sort();
    forever
}

#[tokio::test]
async fn every_key_wshub_writes_expires() {
    let Some(redis) = Redis::own("faults_ttl") else {
        return;
    };
    let prefix = redis.prefix("ttl");
    let a = node(&redis, fast_config(&prefix)).await;
    let b = node(&redis, fast_config(&prefix)).await;
    let mut ca = Client::connect(a.addr, "ann").await;
    let mut cb = Client::connect(b.addr, "bob").await;
    ca.subscribe("feed", None).await;
    cb.subscribe("room", None).await;
    let r = a.hub.publish_confirmed("feed", "kept").await;
    assert!(r.position.is_some());
    assert_eq!(ca.recv().await["data"], "kept");
    wait_until("bob is present", || async {
        a.hub.presence("room").await.unwrap().len() == 1
    })
    .await;
    // Topics used and left.
    drop((ca, cb));
    wait_until("the sessions are gone", || {
        let n = a.hub.session_count() + b.hub.session_count();
        async move { n == 0 }
    })
    .await;
    let forever = keys_without_ttl(&redis, &prefix);
    assert_eq!(forever, Vec::<String>::new(), "keys that never expire");
}

// (6) Presence converges after faults.

async fn present(hub: &Hub) -> Vec<String> {
    let mut names: Vec<String> = match hub.presence("room").await {
        Ok(entries) => entries.into_iter().filter_map(|e| e.info).collect(),
        Err(_) => return vec!["(error)".into()],
    };
    names.sort();
    names
}

async fn converges(what: &str, hub: &Hub, want: &[&str]) {
    let started = std::time::Instant::now();
    wait_until(what, || async { present(hub).await == want }).await;
    // fast_config: liveness 500 ms; a beat or two past it at most.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{what}: took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn presence_written_during_an_outage_converges() {
    let Some(redis) = Redis::own("faults_presence_outage") else {
        return;
    };
    let prefix = redis.prefix("presence-outage");
    let a = node(&redis, fast_config(&prefix)).await;
    let b = node(&redis, fast_config(&prefix)).await;
    let mut ann = Client::connect(a.addr, "ann").await;
    let mut bob = Client::connect(b.addr, "bob").await;
    ann.subscribe("room", None).await;
    bob.subscribe("room", None).await;
    converges("both present", &b.hub, &["ann", "bob"]).await;
    // A's connections to Redis break (not the subscriptions); ann leaves at once, so her
    // leave meets a broken connection.
    let _: () = cmd(&redis, &["CLIENT", "KILL", "TYPE", "normal"]);
    drop(ann);
    wait_until("ann's session is gone", || {
        let n = a.hub.session_count();
        async move { n == 0 }
    })
    .await;
    converges("no ghost of ann", &b.hub, &["bob"]).await;
    let mut cat = Client::connect(a.addr, "cat").await;
    cat.subscribe("room", None).await;
    converges("cat joins", &b.hub, &["bob", "cat"]).await;
}

#[tokio::test]
async fn presence_comes_back_after_a_redis_restart_and_a_lapsed_heartbeat() {
    let Some(mut redis) = Redis::own("faults_presence_restart") else {
        return;
    };
    let prefix = redis.prefix("presence-restart");
    let a = node(&redis, fast_config(&prefix)).await;
    let b = node(&redis, fast_config(&prefix)).await;
    let mut ann = Client::connect(a.addr, "ann").await;
    let mut bob = Client::connect(b.addr, "bob").await;
    ann.subscribe("room", None).await;
    bob.subscribe("room", None).await;
    converges("both present", &b.hub, &["ann", "bob"]).await;

    redis.stop();
    redis.start().unwrap();
    converges("re-registered after the restart", &b.hub, &["ann", "bob"]).await;

    // A's heartbeat lapses (its lease and its entries expire, as after a long stall): A's
    // entries come back with its next beat.
    let forget: Vec<String> = {
        let mut conn = redis.conn();
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:presence:*"))
            .query(&mut conn)
            .unwrap();
        keys.push(format!("{prefix}:lease:{}", a.backplane.node_id()));
        keys
    };
    let _: i64 = redis::cmd("DEL")
        .arg(&forget)
        .query(&mut redis.conn())
        .unwrap();
    converges("re-registered after the lapse", &b.hub, &["ann", "bob"]).await;
    drop((ann, bob));
}

#[tokio::test]
async fn a_node_that_leaves_cleanly_takes_its_presence_with_it_at_once() {
    let Some(redis) = Redis::own("faults_presence_leave") else {
        return;
    };
    let prefix = redis.prefix("presence-leave");
    let a = node(&redis, fast_config(&prefix)).await;
    let b = node(&redis, fast_config(&prefix)).await;
    let mut ann = Client::connect(a.addr, "ann").await;
    let mut bob = Client::connect(b.addr, "bob").await;
    ann.subscribe("room", None).await;
    bob.subscribe("room", None).await;
    converges("both present", &a.hub, &["ann", "bob"]).await;
    // Leaving the cluster without a hub shutdown: bob's session is still open on B.
    b.backplane.close().await.unwrap();
    assert_eq!(
        present(&a.hub).await,
        ["ann"],
        "no wait for B's liveness to lapse"
    );
    drop((ann, bob));
}

#[tokio::test]
async fn an_expired_history_is_announced_to_live_subscribers() {
    let Some(redis) = Redis::own("faults_history_ttl") else {
        return;
    };
    let prefix = redis.prefix("history-ttl");
    let config = fast_config(&prefix).history_ttl(Duration::from_millis(300));
    let a = node(&redis, config.clone()).await;
    let b = node(&redis, config).await;
    let mut c = Client::connect(b.addr, "c").await;
    assert_eq!(c.subscribe("feed", None).await["type"], "subscribed");
    a.hub.publish("feed", "old");
    let old = position(&c.recv().await);
    // The topic stays quiet past its history's TTL: the keys go, all three.
    let epoch_key = format!("{prefix}:history:feed:epoch");
    wait_until("the history expired", || {
        let left: i64 = cmd(&redis, &["EXISTS", &epoch_key]);
        async move { left == 0 }
    })
    .await;
    // The next publication starts a new epoch; the live subscriber is told, not moved silently.
    a.hub.publish("feed", "new 1");
    let told = c.recv().await;
    assert_eq!(told["type"], "unrecoverable", "{told}");
    let from = position(&told["position"]);
    assert_ne!(from.epoch, old.epoch);
    a.hub.publish("feed", "new 2");
    let m = c.recv().await;
    assert_eq!(m["data"], "new 2");
    assert_eq!(position(&m), Position::new(from.epoch, from.offset + 1));
}

/// Guarantee: while Redis is paused (`CLIENT PAUSE`), every publication to a history topic is
/// accounted for — `published`, or counted as not sent (`failed_down`, `failed_full`,
/// `refused`) or possibly lost (`lost`: its answer never came, so Redis may still have run
/// it) — and every subscriber on every node sees the same stream with no gap: all the
/// published ones, plus at most the possibly lost.
#[tokio::test]
async fn a_paused_redis_loses_nothing_uncounted() {
    let Some(redis) = Redis::own("faults_pause") else {
        return;
    };
    let prefix = redis.prefix("pause");
    let (a, _b, mut clients) = two_nodes_subscribed(&redis, &prefix, 1).await;
    const N: u64 = 200;
    // Paced, so that publishing goes on through the pause.
    let publisher = publish_paced(&a.hub, N, Duration::from_millis(5)).await;
    let _: String = cmd(&redis, &["CLIENT", "PAUSE", "1500", "ALL"]);
    publisher.await.unwrap();
    let accounted = |s: &wshub::backplane::RedisStats| {
        s.published + s.failed_down + s.failed_full + s.lost + s.refused
    };
    wait_until("every publication accounted for", || {
        let s = a.backplane.stats();
        async move { accounted(&s) == N }
    })
    .await;
    let stats = a.backplane.stats();
    let mut seen = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        let mut last = 0;
        while let Some(m) = c.try_recv(Duration::from_millis(1500)).await {
            if m["type"] == "pub" {
                let offset = m["offset"].as_u64().unwrap();
                assert_eq!(offset, last + 1, "client {i}: a silent gap: {m}");
                last = offset;
            }
        }
        seen.push(last);
    }
    assert_eq!(
        seen[0], seen[1],
        "both nodes' subscribers saw the same stream"
    );
    assert!(
        (stats.published..=stats.published + stats.lost).contains(&seen[0]),
        "{} delivered; {stats:?}",
        seen[0]
    );
    eprintln!(
        "paused Redis: {} of {N} delivered to every subscriber; {stats:?}",
        seen[0]
    );
}
