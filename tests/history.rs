//! Topic history on a single node: recovery after a disconnect, the seam between replay and
//! live publications under concurrent publishing, the "unrecoverable" signal, the raw mode,
//! and presence with its join/leave hooks.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Client, connect, recv_text, send_text, within};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use wshub::protocol::ClientCommand;
use wshub::{Config, Handler, HistoryPolicy, Hub, Message, Position, Session};

/// Applies the JSON protocol's commands and reports joins and leaves.
struct App {
    joins: mpsc::UnboundedSender<(bool, String, wshub::SessionId)>,
}

#[wshub::async_trait]
impl Handler for App {
    async fn on_message(&self, s: &Session, m: Message) {
        if let Some(command) = ClientCommand::parse(&m) {
            s.apply(&command).await.expect("apply");
        }
    }
    fn on_subscribe(&self, s: &Session, topic: &str) {
        let _ = self.joins.send((true, topic.to_owned(), s.id()));
    }
    fn on_unsubscribe(&self, s: &Session, topic: &str) {
        let _ = self.joins.send((false, topic.to_owned(), s.id()));
    }
    fn presence_info(&self, s: &Session) -> Option<String> {
        s.request().query_param("name").map(str::to_owned)
    }
}

struct Served {
    hub: Hub,
    addr: std::net::SocketAddr,
    joins: mpsc::UnboundedReceiver<(bool, String, wshub::SessionId)>,
}

async fn serve(config: Config) -> Served {
    let (tx, joins) = mpsc::unbounded_channel();
    let hub = Hub::builder(App { joins: tx })
        .config(config.ping_interval(None).idle_timeout(None))
        .build();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(hub.clone().serve(listener));
    Served { hub, addr, joins }
}

fn history_config(max: usize) -> Config {
    Config::default()
        .history("feed", HistoryPolicy::new(max, None))
        .envelope(true)
}

async fn recv_json(c: &mut Client) -> Value {
    serde_json::from_str(&recv_text(c).await).expect("a JSON envelope")
}

fn position(v: &Value) -> Position {
    Position::new(
        v["epoch"].as_str().unwrap().parse().unwrap(),
        v["offset"].as_u64().unwrap(),
    )
}

fn subscribe_message(topic: &str, since: Option<Position>) -> String {
    match since {
        None => format!(r#"{{"type":"subscribe","topic":"{topic}"}}"#),
        Some(p) => format!(
            r#"{{"type":"subscribe","topic":"{topic}","since":{{"epoch":"{}","offset":{}}}}}"#,
            p.epoch, p.offset
        ),
    }
}

/// Subscribes and returns the `subscribed`/`unrecoverable` reply.
async fn subscribe(c: &mut Client, topic: &str, since: Option<Position>) -> Value {
    send_text(c, &subscribe_message(topic, since)).await;
    recv_json(c).await
}

#[tokio::test]
async fn a_client_that_missed_n_publications_recovers_exactly_those_n_in_order() {
    let s = serve(history_config(1000)).await;
    let mut c = connect(s.addr).await;
    let reply = subscribe(&mut c, "feed", None).await;
    assert_eq!(reply["type"], "subscribed");
    assert_eq!(reply["position"]["offset"], 0);
    let mut last = position(&reply["position"]);
    for i in 0..3 {
        let d = s.hub.publish("feed", format!("live {i}"));
        assert_eq!(d.queued, 1);
        let m = recv_json(&mut c).await;
        assert_eq!(m["data"], format!("live {i}"));
        assert_eq!(Some(position(&m)), d.position);
        last = position(&m);
    }
    drop(c);
    support::wait_until("the session to leave", || {
        s.hub.subscriber_count("feed") == 0
    })
    .await;
    const N: u64 = 25;
    for i in 0..N {
        s.hub.publish("feed", format!("missed {i}"));
    }
    let mut c = connect(s.addr).await;
    let reply = subscribe(&mut c, "feed", Some(last)).await;
    assert_eq!(reply["type"], "subscribed");
    assert_eq!(reply["recovered"], true);
    assert_eq!(reply["replayed"], N);
    for i in 0..N {
        let m = recv_json(&mut c).await;
        assert_eq!(m["data"], format!("missed {i}"));
        assert_eq!(position(&m), Position::new(last.epoch, last.offset + 1 + i));
    }
    s.hub.publish("feed", "after");
    let m = recv_json(&mut c).await;
    assert_eq!(m["data"], "after");
    assert_eq!(position(&m).offset, last.offset + N + 1);
}

#[tokio::test]
async fn the_seam_between_replay_and_live_has_no_gap_and_no_duplicate() {
    let s = serve(history_config(100_000)).await;
    const ROUNDS: usize = 40;
    const PER_ROUND: u64 = 300;
    for round in 0..ROUNDS {
        let start = s.hub.publish("feed", "start").position.unwrap();
        let hub = s.hub.clone();
        let publisher = tokio::spawn(async move {
            let mut last = start;
            for i in 0..PER_ROUND {
                last = hub.publish("feed", format!("{i}")).position.unwrap();
                if i % 8 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            last
        });
        let mut c = connect(s.addr).await;
        let reply = subscribe(&mut c, "feed", Some(start)).await;
        assert_eq!(reply["type"], "subscribed", "round {round}");
        let end = within("the publisher", publisher).await.unwrap();
        let mut expected = start.offset + 1;
        while expected <= end.offset {
            let m = recv_json(&mut c).await;
            let p = position(&m);
            assert_eq!(p.epoch, start.epoch);
            assert_eq!(
                p.offset, expected,
                "round {round}: gap or duplicate at the seam"
            );
            expected += 1;
        }
        // Nothing more than that: the next message is the next publication.
        s.hub.publish("feed", "fence");
        assert_eq!(position(&recv_json(&mut c).await).offset, end.offset + 1);
    }
}

#[tokio::test]
async fn a_position_evicted_from_history_or_of_another_epoch_is_unrecoverable() {
    let s = serve(history_config(5)).await;
    let mut positions = Vec::new();
    for i in 0..10 {
        positions.push(s.hub.publish("feed", format!("{i}")).position.unwrap());
    }
    let current = positions[9];
    let mut c = connect(s.addr).await;
    let reply = subscribe(&mut c, "feed", Some(positions[2])).await;
    assert_eq!(reply["type"], "unrecoverable");
    assert_eq!(position(&reply["position"]), current);
    // Nothing was replayed: the next message is live.
    s.hub.publish("feed", "live");
    let m = recv_json(&mut c).await;
    assert_eq!(
        (m["data"].as_str(), position(&m).offset),
        (Some("live"), 11)
    );

    // The oldest kept one can still be served, from the one before it.
    let got = s.hub.history("feed", Some(positions[5])).await.unwrap();
    assert_eq!(got.len(), 5);
    assert!(matches!(
        s.hub.history("feed", Some(positions[4])).await,
        Err(wshub::HistoryError::Unrecoverable { .. })
    ));

    let other_epoch = Position::new(current.epoch ^ 1, 9);
    let mut c2 = connect(s.addr).await;
    let reply = subscribe(&mut c2, "feed", Some(other_epoch)).await;
    assert_eq!(reply["type"], "unrecoverable");
    assert_eq!(position(&reply["position"]).epoch, current.epoch);
}

#[tokio::test]
async fn raw_mode_by_default_and_the_rust_api_recovers() {
    let s = serve(Config::default().history("log/*", HistoryPolicy::new(100, None))).await;
    let plain = s.hub.publish("other", "x");
    assert_eq!(
        plain.position, None,
        "topics without history get no position"
    );
    let first = s.hub.publish("log/a", "one").position.unwrap();
    s.hub.publish("log/a", "two");
    s.hub.publish("log/a", "three");
    let all = s.hub.history("log/a", None).await.unwrap();
    assert_eq!(all.len(), 3);
    assert!(matches!(
        s.hub.history("other", None).await,
        Err(wshub::HistoryError::NotEnabled)
    ));

    let mut c = connect(s.addr).await;
    let id = within("the session", async {
        loop {
            if let Some(session) = first_session(&s.hub) {
                return session;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let session = s.hub.session(id).unwrap();
    let outcome = session.subscribe_from("log/a", first).await.unwrap();
    assert!(matches!(
        outcome,
        wshub::Recovered::Replayed { messages: 2, .. }
    ));
    assert_eq!(recv_text(&mut c).await, "two", "raw, no envelope");
    assert_eq!(recv_text(&mut c).await, "three");
}

fn first_session(hub: &Hub) -> Option<wshub::SessionId> {
    // Session ids of node 0 count up from 1.
    (1..100)
        .map(wshub::SessionId::from_u64)
        .find(|id| hub.session(*id).is_some())
}

#[tokio::test]
async fn presence_lists_who_is_subscribed_and_hooks_see_joins_and_leaves() {
    let mut s = serve(Config::default().presence("room").envelope(true)).await;
    let named = |name: &str| {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        format!("ws://{}/?name={name}", s.addr)
            .into_client_request()
            .unwrap()
    };
    let (mut ann, _) = support::connect_with(s.addr, named("ann")).await;
    let (mut bob, _) = support::connect_with(s.addr, named("bob")).await;
    let a = subscribe(&mut ann, "room", None).await;
    assert_eq!(a["position"], Value::Null, "no history on this topic");
    subscribe(&mut bob, "room", None).await;
    let (joined, topic, ann_id) = within("a join", s.joins.recv()).await.unwrap();
    assert!(joined && topic == "room");
    let (_, _, bob_id) = within("a join", s.joins.recv()).await.unwrap();
    let mut names: Vec<_> = s
        .hub
        .presence("room")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.info.unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["ann", "bob"]);
    drop(bob);
    let left = within("a leave", s.joins.recv()).await.unwrap();
    assert_eq!(left, (false, "room".to_owned(), bob_id));
    let present = s.hub.presence("room").await.unwrap();
    assert_eq!(present.len(), 1);
    assert_eq!(present[0].id, ann_id);
    send_text(&mut ann, r#"{"type":"unsubscribe","topic":"room"}"#).await;
    let left = within("a leave", s.joins.recv()).await.unwrap();
    assert_eq!(left, (false, "room".to_owned(), ann_id));
    assert!(s.hub.presence("room").await.unwrap().is_empty());
}
