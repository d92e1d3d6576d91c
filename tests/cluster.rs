//! Several hubs in one process, each on its own port, sharing broadcasts, topics, `send_to`,
//! `close` and counts through a real Redis (see `cluster_support` for how one is found).

mod cluster_support;

use std::collections::HashMap;
use std::time::Duration;

use cluster_support::{Client, Node, Redis, fast_config, wait_until};
use wshub::backplane::Backplane;
use wshub::{CloseCode, Remote, RemoteError, SendError, SessionId};

/// Reads until every origin in `ends` has sent its end marker, and checks that the messages
/// `{origin}-{i}` of each origin arrive once each, in order.
async fn read_until_ends(client: &mut Client, origins: &[&str], per_origin: usize) {
    let mut next: HashMap<String, usize> = origins.iter().map(|o| (o.to_string(), 0)).collect();
    let mut ended = 0;
    while ended < origins.len() {
        let text = client.recv().await;
        let (origin, i) = text.rsplit_once('-').expect("origin-index");
        let expected = next.get_mut(origin).expect("a known origin");
        if i == "end" {
            assert_eq!(*expected, per_origin, "{origin}: all before its end marker");
            ended += 1;
            continue;
        }
        let i: usize = i.parse().expect("index");
        assert_eq!(i, *expected, "{origin}: once each, in order (got {text})");
        *expected += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_broadcasts_exactly_once_in_publisher_order() {
    let Some(redis) = Redis::any("two_nodes_share_broadcasts") else {
        return;
    };
    let prefix = redis.prefix("broadcast");
    let a = Node::start(&redis, fast_config(&prefix)).await;
    let b = Node::start(&redis, fast_config(&prefix)).await;
    assert_ne!(a.node_id(), b.node_id(), "each node gets its own number");
    let mut clients = vec![
        a.client().await,
        a.client().await,
        b.client().await,
        b.client().await,
    ];
    for c in &clients[..2] {
        assert_eq!(
            u64::from(a.node_id()),
            c.id >> 48,
            "ids carry the node number"
        );
    }

    const N: usize = 300;
    let (ha, hb) = (a.hub.clone(), b.hub.clone());
    let publish = |hub: wshub::Hub, origin: &'static str| {
        tokio::spawn(async move {
            for i in 0..N {
                let report = hub.broadcast(format!("{origin}-{i}"));
                assert_eq!(report.remote, Remote::Queued);
                assert_eq!(report.queued, 2, "both local clients, once");
                if i % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            hub.broadcast(format!("{origin}-end"));
        })
    };
    let (pa, pb) = (publish(ha, "a"), publish(hb, "b"));
    pa.await.unwrap();
    pb.await.unwrap();
    for c in &mut clients {
        read_until_ends(c, &["a", "b"], N).await;
    }
    // Nothing more may come: a second round's end markers are the very next messages.
    a.hub.broadcast("a-end");
    b.hub.broadcast("b-end");
    for c in &mut clients {
        let (x, y) = (c.recv().await, c.recv().await);
        let mut got = [x, y];
        got.sort();
        assert_eq!(got, ["a-end", "b-end"], "no duplicate arrived late");
    }
    // One PUBLISH per message, whatever the number of nodes.
    // (Counted once Redis answers, which may be after the other node got it.)
    wait_until("A's publishes are counted", || async {
        a.backplane.stats().published == N as u64 + 2
    })
    .await;
    wait_until("B's receipts are counted", || async {
        b.backplane.stats().received == N as u64 + 2
    })
    .await;
    assert_eq!(
        a.backplane.stats().published,
        N as u64 + 2,
        "not once per node"
    );
    drop(clients);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_chat_from_clients() {
    let Some(redis) = Redis::any("three_nodes_chat_from_clients") else {
        return;
    };
    let prefix = redis.prefix("three");
    let nodes = [
        Node::start(&redis, fast_config(&prefix)).await,
        Node::start(&redis, fast_config(&prefix)).await,
        Node::start(&redis, fast_config(&prefix)).await,
    ];
    let mut clients = Vec::new();
    for node in &nodes {
        clients.push(node.client().await);
        clients.push(node.client().await);
    }
    // Every client sends K messages through its own node's on_message -> broadcast.
    const K: usize = 50;
    let names: Vec<String> = (0..clients.len()).map(|i| format!("c{i}")).collect();
    for i in 0..K {
        for (c, name) in clients.iter_mut().zip(&names) {
            c.send(&format!("{name}-{i}")).await;
        }
    }
    for (c, name) in clients.iter_mut().zip(&names) {
        c.send(&format!("{name}-end")).await;
    }
    let origins: Vec<&str> = names.iter().map(String::as_str).collect();
    for c in &mut clients {
        read_until_ends(c, &origins, K).await;
    }
    drop(clients);
    for node in nodes {
        assert_eq!(node.backplane.stats().malformed, 0);
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_to_and_close_reach_the_owning_node() {
    let Some(redis) = Redis::any("send_to_and_close") else {
        return;
    };
    let prefix = redis.prefix("send-to");
    let a = Node::start(&redis, fast_config(&prefix)).await;
    let b = Node::start(&redis, fast_config(&prefix)).await;
    let mut on_a = a.client().await;
    let mut on_b = b.client().await;
    let id_a = SessionId::from_u64(on_a.id);

    // From B to a session of A, and the other way round.
    for i in 0..20 {
        assert_eq!(b.hub.send_to(id_a, format!("for a {i}")), Ok(()));
    }
    for i in 0..20 {
        assert_eq!(on_a.recv().await, format!("for a {i}"));
    }
    a.hub
        .send_to(SessionId::from_u64(on_b.id), "for b")
        .unwrap();
    assert_eq!(on_b.recv().await, "for b");

    // A session id of a node nobody holds: forwarded, and counted as undeliverable.
    let nobody = (u64::from(a.node_id().max(b.node_id())) + 100) << 48 | 1;
    assert_eq!(b.hub.send_to(SessionId::from_u64(nobody), "lost"), Ok(()));
    wait_until("the PUBLISH to a node nobody holds is counted", || async {
        b.backplane.stats().undeliverable == 1
    })
    .await;

    // Close across nodes.
    assert_eq!(b.hub.close(id_a, CloseCode::from(4000), "moved"), Ok(()));
    assert_eq!(
        on_a.try_recv(cluster_support::WAIT).await,
        Some(Err("4000 moved".into()))
    );
    on_a.close().await; // answers the close
    wait_until("the session is gone", || async {
        a.hub.session_count() == 0
    })
    .await;
    on_b.close().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_channels_follow_local_interest() {
    let Some(redis) = Redis::any("topic_channels_follow_local_interest") else {
        return;
    };
    let prefix = redis.prefix("interest");
    let a = Node::start(&redis, fast_config(&prefix)).await;
    let b = Node::start(&redis, fast_config(&prefix)).await;
    let channel = format!("{prefix}:topic:prices");
    assert_eq!(redis.subscribers(&channel), 0);
    assert_eq!(redis.subscribers(&format!("{prefix}:all")), 2);

    let mut x = a.client().await;
    let mut y = a.client().await;
    x.subscribe("prices").await;
    // Redis counts the subscription before the backplane has processed Redis's answer.
    wait_until("A subscribes to the topic's channel", || async {
        redis.subscribers(&channel) == 1 && a.backplane.stats().topic_channels == 1
    })
    .await;
    y.subscribe("prices").await;
    assert_eq!(redis.subscribers(&channel), 1, "one subscription per node");
    assert_eq!(
        a.backplane.stats().topic_channels,
        1,
        "one channel per topic, not per session"
    );
    assert_eq!(b.backplane.stats().topic_channels, 0, "B has no subscriber");

    let report = b.hub.publish("prices", "42");
    assert_eq!((report.queued, report.remote), (0, Remote::Queued));
    assert_eq!(x.recv().await, "42");
    assert_eq!(y.recv().await, "42");

    // The last local subscriber leaving (unsubscribe, then a session closing) ends interest.
    x.unsubscribe("prices").await;
    assert_eq!(redis.subscribers(&channel), 1, "y still listens");
    y.close().await;
    wait_until("A unsubscribes from the topic's channel", || async {
        redis.subscribers(&channel) == 0 && a.backplane.stats().topic_channels == 0
    })
    .await;

    // Interest comes back with a new subscriber, on the other node this time.
    let mut z = b.client().await;
    z.subscribe("prices").await;
    wait_until("B subscribes", || async {
        redis.subscribers(&channel) == 1
    })
    .await;
    a.hub.publish("prices", "43");
    assert_eq!(z.recv().await, "43");
    // x is no longer subscribed: the next thing it gets is a broadcast, not "43".
    b.hub.broadcast("fence");
    assert_eq!(x.recv().await, "fence");
    drop((x, z));
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_counts_and_node_liveness() {
    let Some(redis) = Redis::any("cluster_counts_and_node_liveness") else {
        return;
    };
    let prefix = redis.prefix("counts");
    let a = Node::start(&redis, fast_config(&prefix)).await;
    let b = Node::start(&redis, fast_config(&prefix)).await;
    let c = Node::start(&redis, fast_config(&prefix)).await;
    let mut a1 = a.client().await;
    let _a2 = a.client().await;
    let mut b1 = b.client().await;
    let _c1 = c.client().await;
    a1.subscribe("news").await;
    b1.subscribe("news").await;

    let bp = a.backplane.clone();
    wait_until("3 nodes, 4 sessions", || async {
        let s = bp.cluster_sessions().await.unwrap();
        s.nodes.len() == 3 && s.total() == 4
    })
    .await;
    let s = bp.cluster_sessions().await.unwrap();
    assert_eq!(
        (
            s.node(a.node_id()),
            s.node(b.node_id()),
            s.node(c.node_id())
        ),
        (2, 1, 1)
    );
    wait_until("2 subscribers of news", || async {
        bp.cluster_subscribers("news").await.unwrap().total() == 2
    })
    .await;
    assert_eq!(bp.cluster_subscribers("none").await.unwrap().total(), 0);

    // Counts follow changes.
    b1.unsubscribe("news").await;
    wait_until("1 subscriber of news", || async {
        bp.cluster_subscribers("news").await.unwrap().total() == 1
    })
    .await;

    // A node that leaves cleanly stops counting at once.
    let c_id = c.node_id();
    drop(_c1);
    c.stop().await;
    let s = bp.cluster_sessions().await.unwrap();
    assert_eq!(s.node(c_id), 0);
    assert_eq!(s.nodes.len(), 2);

    // A node that dies without leaving stops counting once its liveness (500 ms) lapses.
    let b_id = b.node_id();
    drop(b1);
    let Node { hub, backplane, .. } = b;
    hub.shutdown(Duration::from_secs(1)).await;
    drop(hub);
    drop(backplane); // stops its heartbeat without leaving: a crash, as Redis sees it
    let died = std::time::Instant::now();
    wait_until("the dead node stops counting", || async {
        bp.cluster_sessions().await.unwrap().node(b_id) == 0
    })
    .await;
    assert!(
        died.elapsed() < Duration::from_secs(3),
        "bounded by the liveness timeout"
    );
    drop((a1, _a2));
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_keeps_local_delivery_and_recovers_by_itself() {
    let Some(mut redis) = Redis::own("redis_outage") else {
        return;
    };
    let prefix = redis.prefix("outage");
    let a = Node::start(&redis, fast_config(&prefix)).await;
    let b = Node::start(&redis, fast_config(&prefix)).await;
    let mut on_a = a.client().await;
    let mut on_b = b.client().await;
    on_a.subscribe("t").await;
    wait_until("A listens to t", || async {
        a.backplane.stats().topic_channels == 1
    })
    .await;
    a.hub.broadcast("before");
    assert_eq!(on_a.recv().await, "before");
    assert_eq!(on_b.recv().await, "before");

    redis.stop();
    // Within moments the report stops saying Queued; every local session still gets it.
    let mut n = 0;
    wait_until("a publish reports that Redis is down", || {
        n += 1;
        let report = a.hub.broadcast(format!("during-{n}"));
        assert_eq!(report.queued, 1, "local delivery goes on");
        async move { report.remote == Remote::Failed(RemoteError::Down) }
    })
    .await;
    for i in 1..=n {
        assert_eq!(on_a.recv().await, format!("during-{i}"));
    }
    let report = a.hub.publish("t", "local only");
    assert_eq!(
        (report.queued, report.remote),
        (1, Remote::Failed(RemoteError::Down))
    );
    assert_eq!(on_a.recv().await, "local only");
    assert_eq!(
        a.hub.send_to(SessionId::from_u64(on_b.id), "x"),
        Err(SendError::Remote {
            id: SessionId::from_u64(on_b.id),
            error: RemoteError::Down
        })
    );
    let stats = a.backplane.stats();
    assert!(!stats.connected && stats.failed_down >= 2, "{stats:?}");

    redis.start().expect("restart Redis on the same port");
    wait_until("both nodes are back", || async {
        let (sa, sb) = (a.backplane.stats(), b.backplane.stats());
        sa.connected && sa.subscribed && sb.connected && sb.subscribed && sa.topic_channels == 1
    })
    .await;
    // Cross-node delivery resumes: broadcasts from A reach B, topic publishes from B reach A.
    let report = a.hub.broadcast("after");
    assert_eq!(report.remote, Remote::Queued);
    assert_eq!(on_a.recv().await, "after");
    assert_eq!(
        on_b.recv().await,
        "after",
        "nothing sent during the outage arrives late"
    );
    b.hub.publish("t", "resubscribed");
    assert_eq!(on_a.recv().await, "resubscribed");
    // And the node counts come back with the heartbeats.
    wait_until("the counts are rewritten", || async {
        a.backplane
            .cluster_sessions()
            .await
            .is_ok_and(|s| s.total() == 2 && s.nodes.len() == 2)
    })
    .await;
    assert!(a.backplane.stats().reconnects >= 1);
    drop((on_a, on_b));
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_never_takes_a_live_nodes_number() {
    let Some(redis) = Redis::any("a_new_node_never_takes_a_live_nodes_number") else {
        return;
    };
    let prefix = redis.prefix("numbers");
    let a = Node::start(&redis, fast_config(&prefix)).await;
    // What a Redis restart without persistence does to A's number: the lease and the counter
    // are gone, so the next INCR hands out A's number again.
    let _: i64 = redis::cmd("DEL")
        .arg(format!("{prefix}:lease:{}", a.node_id()))
        .arg(format!("{prefix}:node-seq"))
        .query(&mut redis.conn())
        .unwrap();
    let b = Node::start(&redis, fast_config(&prefix)).await;
    assert_ne!(
        a.node_id(),
        b.node_id(),
        "A still listens on its node channel"
    );
    // A takes its lease back at its next heartbeat.
    wait_until("A renews its lease", || async {
        redis::cmd("EXISTS")
            .arg(format!("{prefix}:lease:{}", a.node_id()))
            .query::<i64>(&mut redis.conn())
            .unwrap()
            == 1
    })
    .await;
    a.stop().await;
    b.stop().await;
}
