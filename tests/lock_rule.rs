//! The lock rule: no application code runs while wshub holds one of its own locks. Every
//! `Handler` hook here calls back into the hub (publish to the same topic with history,
//! subscribe/unsubscribe, `send_to`, `presence`, `stats`), on one node and with Redis; each
//! step must finish within a timeout. Before the engine split, a recovery subscribe ran
//! `on_subscribe` under the topic's history lock, so `hub.publish` on that topic from the
//! hook deadlocked the worker.

#[cfg(feature = "redis")]
mod cluster_support;
mod support;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use wshub::{
    CloseReason, Config, Handler, HistoryPolicy, Hub, Message, Position, Reject, Request, Session,
};

/// Calls back into the hub from every hook and notes that the hook finished.
struct Reentrant {
    hub: OnceLock<Hub>,
    notes: mpsc::UnboundedSender<String>,
}

impl Reentrant {
    fn hub(&self) -> &Hub {
        self.hub
            .get()
            .expect("the test sets the hub before connecting")
    }
    fn note(&self, what: impl Into<String>) {
        let _ = self.notes.send(what.into());
    }
}

#[wshub::async_trait]
impl Handler for Reentrant {
    fn check_origin(&self, _origin: &str, _request: &Request) -> bool {
        let hub = self.hub();
        hub.publish("room", "checking an origin");
        let _ = hub.stats();
        self.note("check_origin");
        true
    }

    async fn authorize(&self, _request: &mut Request) -> Result<(), Reject> {
        let hub = self.hub();
        hub.publish("room", "authorizing");
        let _ = hub.presence("room").await;
        self.note("authorize");
        Ok(())
    }

    fn select_subprotocol(&self, offered: &[&str], _request: &Request) -> Option<String> {
        let _ = self.hub().session_count();
        self.hub().publish("room", "choosing a subprotocol");
        self.note("select_subprotocol");
        offered.first().map(|p| p.to_string())
    }

    async fn open(&self, s: &Session) {
        let hub = self.hub();
        let _ = hub.subscribe(s.id(), "side");
        let _ = hub.send_to(s.id(), "welcome");
        hub.publish("room", "someone opened");
        self.note("open");
    }

    async fn on_message(&self, s: &Session, m: Message) {
        match m.as_text() {
            // A recovery subscribe: the path that held the history lock around the hooks.
            Some("join") => {
                let r = s.subscribe_from("room", Position::new(1, 0)).await;
                self.note(format!("joined {}", r.is_ok()));
            }
            Some("leave") => {
                s.unsubscribe("room");
                self.note("left");
            }
            _ => {}
        }
    }

    fn on_subscribe(&self, s: &Session, topic: &str) {
        if topic != "room" {
            return;
        }
        let hub = self.hub();
        hub.publish("room", format!("{} joined", s.id()));
        let _ = hub.send_to(s.id(), "you joined");
        let _ = hub.subscribe(s.id(), "side2");
        let _ = hub.stats();
        let _ = hub.subscriber_count("room");
        // `presence` is async: a synchronous hook spawns it (see `Handler::on_subscribe`).
        let (hub, notes) = (hub.clone(), self.notes.clone());
        tokio::spawn(async move {
            let present = hub.presence("room").await.map(|p| p.len()).unwrap_or(0);
            let _ = notes.send(format!("presence from on_subscribe saw {present}"));
        });
        self.note("on_subscribe");
    }

    fn on_unsubscribe(&self, s: &Session, topic: &str) {
        let hub = self.hub();
        hub.publish(topic, format!("{} left {topic}", s.id()));
        let _ = hub.unsubscribe(s.id(), "side2");
        let _ = hub.stats();
        self.note(format!("on_unsubscribe {topic}"));
    }

    fn presence_info(&self, s: &Session) -> Option<String> {
        let hub = self.hub();
        hub.publish("room", "taking presence info");
        let _ = hub.subscriber_count("room");
        let _ = hub.send_to(s.id(), "your presence info");
        self.note("presence_info");
        Some("alice".into())
    }

    async fn on_close(&self, _s: &Session, _why: CloseReason) {
        let hub = self.hub();
        hub.publish("room", "closed");
        let _ = hub.presence("room").await;
        let _ = hub.stats();
        self.note("on_close");
    }
}

fn config() -> Config {
    support::quiet_config()
        .history("room", HistoryPolicy::new(100, None))
        .presence("room")
        .envelope(true)
        .allowed_origins(["https://app.example"])
}

/// Waits for each note in `expected` (in any order) within the test timeout.
async fn expect(notes: &mut mpsc::UnboundedReceiver<String>, expected: &[&str]) {
    let mut missing: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    support::within(&format!("hooks {missing:?} to finish"), async {
        while !missing.is_empty() {
            let note = notes.recv().await.expect("the handler lives");
            missing.retain(|m| !note.starts_with(m.as_str()));
        }
    })
    .await;
}

/// Drives every hook once against a hub serving at `addr`.
async fn scenario(addr: std::net::SocketAddr, notes: &mut mpsc::UnboundedReceiver<String>) {
    let mut request = format!("ws://{addr}/").into_client_request().unwrap();
    let headers = request.headers_mut();
    // An origin outside the allowed list, so `check_origin` is asked.
    headers.insert("Origin", "https://elsewhere.example".parse().unwrap());
    headers.insert("Sec-WebSocket-Protocol", "chat".parse().unwrap());
    let (mut ws, _) = support::within("the upgrade", tokio_tungstenite::connect_async(request))
        .await
        .expect("upgrade");
    expect(
        notes,
        &["check_origin", "authorize", "select_subprotocol", "open"],
    )
    .await;

    ws.send(Ws::text("join")).await.unwrap();
    expect(
        notes,
        &[
            "presence_info",
            "on_subscribe",
            "joined true",
            "presence from on_subscribe saw 1",
        ],
    )
    .await;
    // The publication made from inside `on_subscribe` reaches the joining session itself.
    support::within("the hook's publication", async {
        loop {
            let Some(Ok(Ws::Text(t))) = ws.next().await else {
                panic!("connection ended")
            };
            if t.contains(r#""type":"pub""#) && t.contains(" joined") {
                break;
            }
        }
    })
    .await;

    ws.send(Ws::text("leave")).await.unwrap();
    expect(notes, &["on_unsubscribe room", "left"]).await;

    ws.close(None).await.unwrap();
    expect(notes, &["on_close"]).await;
}

/// Serves a hub whose handler calls back into it from every hook (`build` adds to a builder
/// with the test's config), drives every hook once, and shuts it down.
async fn serve_and_drive(build: impl FnOnce(wshub::HubBuilder) -> wshub::HubBuilder) {
    let (tx, mut notes) = mpsc::unbounded_channel();
    let handler = Arc::new(Reentrant {
        hub: OnceLock::new(),
        notes: tx,
    });
    let hub = build(Hub::builder(Shared(handler.clone())).config(config())).build();
    handler.hub.set(hub.clone()).ok();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(hub.clone().serve(listener));
    scenario(addr, &mut notes).await;
    hub.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hook_may_call_back_into_a_single_hub() {
    serve_and_drive(|builder| builder).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hook_may_call_back_into_a_hub_with_redis() {
    let Some(redis) = cluster_support::Redis::any("every_hook_may_call_back_into_a_hub_with_redis")
    else {
        return;
    };
    let prefix = redis.prefix("lock_rule");
    let backplane = Arc::new(
        wshub::RedisBackplane::connect_with(&redis.url, cluster_support::fast_config(&prefix))
            .await
            .expect("connect the backplane"),
    );
    serve_and_drive(|builder| builder.backplane(backplane.clone())).await;
    backplane.close().await.expect("leave the cluster");
}

/// The handler behind an `Arc`, so the test keeps a reference to set the hub.
struct Shared(Arc<Reentrant>);

#[wshub::async_trait]
impl Handler for Shared {
    fn check_origin(&self, origin: &str, request: &Request) -> bool {
        self.0.check_origin(origin, request)
    }
    async fn authorize(&self, request: &mut Request) -> Result<(), Reject> {
        self.0.authorize(request).await
    }
    fn select_subprotocol(&self, offered: &[&str], request: &Request) -> Option<String> {
        self.0.select_subprotocol(offered, request)
    }
    async fn open(&self, s: &Session) {
        self.0.open(s).await
    }
    async fn on_message(&self, s: &Session, m: Message) {
        self.0.on_message(s, m).await
    }
    fn on_subscribe(&self, s: &Session, topic: &str) {
        self.0.on_subscribe(s, topic)
    }
    fn on_unsubscribe(&self, s: &Session, topic: &str) {
        self.0.on_unsubscribe(s, topic)
    }
    fn presence_info(&self, s: &Session) -> Option<String> {
        self.0.presence_info(s)
    }
    async fn on_close(&self, s: &Session, why: CloseReason) {
        self.0.on_close(s, why).await
    }
}
