//! `wshub::Client` against a hub that keeps history and speaks the JSON envelope
//! (PROTOCOL.md): after a reconnection the client subscribes with the position it last
//! received and gets exactly what it missed; after a server restart (history lost) it is told
//! `unrecoverable`; and when the live stream jumps (a publication withheld from one session),
//! the client notices the gap and repairs it with `since`. Real sockets on loopback, every
//! wait bounded.
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use wshub::protocol::{ClientCommand, ServerMessage};
use wshub::{
    Client, CloseCode, Config, Handler, HistoryPolicy, Hub, Message, Position, Session, SessionId,
};

const WAIT: Duration = Duration::from_secs(5);

/// Applies the protocol's commands and reports sessions and commands.
struct App {
    opened: mpsc::UnboundedSender<SessionId>,
    commands: mpsc::UnboundedSender<ClientCommand>,
}

#[wshub::async_trait]
impl Handler for App {
    async fn open(&self, s: &Session) {
        let _ = self.opened.send(s.id());
    }
    async fn on_message(&self, s: &Session, m: Message) {
        if let Some(command) = ClientCommand::parse(&m) {
            s.apply(&command).await.expect("apply");
            let _ = self.commands.send(command);
        }
    }
}

struct Server {
    hub: Hub,
    addr: SocketAddr,
    serve: JoinHandle<std::io::Result<()>>,
    opened: mpsc::UnboundedReceiver<SessionId>,
    commands: mpsc::UnboundedReceiver<ClientCommand>,
}

impl Server {
    /// A hub with history on `feed` and the envelope, on `addr` (port 0, or a stopped
    /// server's address).
    async fn start(addr: SocketAddr) -> Server {
        Server::with_history(addr, 1000).await
    }

    /// As [`start`](Self::start), keeping the last `kept` publications of `feed`.
    async fn with_history(addr: SocketAddr, kept: usize) -> Server {
        let (opened_tx, opened) = mpsc::unbounded_channel();
        let (commands_tx, commands) = mpsc::unbounded_channel();
        let config = Config::default()
            .history("feed", HistoryPolicy::new(kept, None))
            .envelope(true)
            .ping_interval(None)
            .idle_timeout(None);
        let hub = Hub::builder(App {
            opened: opened_tx,
            commands: commands_tx,
        })
        .config(config)
        .build();
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serve = tokio::spawn(hub.clone().serve(listener));
        Server {
            hub,
            addr,
            serve,
            opened,
            commands,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    async fn opened(&mut self) -> SessionId {
        timeout(WAIT, self.opened.recv())
            .await
            .expect("a session in time")
            .unwrap()
    }

    async fn command(&mut self) -> ClientCommand {
        timeout(WAIT, self.commands.recv())
            .await
            .expect("a command in time")
            .unwrap()
    }

    async fn stop(self) -> SocketAddr {
        timeout(WAIT, self.hub.shutdown(Duration::from_secs(1)))
            .await
            .unwrap();
        timeout(WAIT, self.serve).await.unwrap().unwrap().unwrap();
        self.addr
    }
}

fn fast(url: &str) -> wshub::ClientBuilder {
    Client::builder(url)
        .initial_backoff(Duration::from_millis(20))
        .max_backoff(Duration::from_millis(200))
}

/// The next message, which must be an envelope message.
async fn next(client: &mut Client) -> ServerMessage {
    let m = timeout(WAIT, client.recv())
        .await
        .expect("a message in time")
        .expect("client open");
    ServerMessage::parse(&m).unwrap_or_else(|| panic!("not an envelope message: {m:?}"))
}

/// The next message, which must be a publication on `feed`: its data and position.
async fn next_pub(client: &mut Client) -> (String, Position) {
    match next(client).await {
        ServerMessage::Pub {
            topic,
            position,
            data,
            ..
        } => {
            assert_eq!(topic, "feed");
            (
                data.as_text().expect("text").to_owned(),
                position.expect("a position"),
            )
        }
        other => panic!("expected a publication, got {other:?}"),
    }
}

fn subscribe(since: Option<Position>) -> ClientCommand {
    ClientCommand::Subscribe {
        topic: "feed".into(),
        since,
    }
}

/// Subscribes, checks the live answer, and receives three publications; the last position.
async fn subscribe_and_receive_three(server: &mut Server, client: &mut Client) -> Position {
    client.subscribe("feed").await.unwrap();
    assert_eq!(server.command().await, subscribe(None));
    let start = match next(client).await {
        ServerMessage::Subscribed {
            recovered: false,
            position: Some(p),
            ..
        } => p,
        other => panic!("expected subscribed, got {other:?}"),
    };
    assert_eq!(client.position("feed"), Some(start));
    let mut last = start;
    for i in 0..3 {
        let published = server.hub.publish("feed", format!("before {i}"));
        let (data, p) = next_pub(client).await;
        assert_eq!(data, format!("before {i}"));
        assert_eq!(Some(p), published.position);
        last = p;
    }
    assert_eq!(last, Position::new(start.epoch, start.offset + 3));
    assert_eq!(client.position("feed"), Some(last));
    last
}

#[tokio::test]
async fn a_cut_connection_recovers_exactly_the_missed_publications_in_order() {
    let mut server = Server::start(([127, 0, 0, 1], 0).into()).await;
    let mut client = fast(&server.url()).connect().await.unwrap();
    let id = server.opened().await;
    let last = subscribe_and_receive_three(&mut server, &mut client).await;

    // The server cuts the connection and publishes N more at once: the session is closing,
    // so they can only reach the client through recovery.
    server.hub.close(id, CloseCode::GOING_AWAY, "cut").unwrap();
    const N: u64 = 20;
    for i in 0..N {
        let d = server.hub.publish("feed", format!("missed {i}"));
        assert_eq!(
            d.position,
            Some(Position::new(last.epoch, last.offset + 1 + i))
        );
    }

    // The client reconnects by itself and subscribes from where it was.
    let second = server.opened().await;
    assert_ne!(second, id);
    assert_eq!(server.command().await, subscribe(Some(last)));
    match next(&mut client).await {
        ServerMessage::Subscribed {
            recovered: true,
            replayed,
            position,
            ..
        } => {
            assert_eq!(replayed, N);
            assert_eq!(position, Some(Position::new(last.epoch, last.offset + N)));
        }
        other => panic!("expected a recovered subscription, got {other:?}"),
    }
    for i in 0..N {
        let (data, p) = next_pub(&mut client).await;
        assert_eq!(data, format!("missed {i}"));
        assert_eq!(p, Position::new(last.epoch, last.offset + 1 + i));
    }
    // Then live, with nothing repeated in between.
    server.hub.publish("feed", "live");
    let (data, p) = next_pub(&mut client).await;
    assert_eq!(data, "live");
    assert_eq!(p, Position::new(last.epoch, last.offset + N + 1));
    assert_eq!(client.position("feed"), Some(p));
    server.stop().await;
}

#[tokio::test]
async fn after_a_server_restart_the_client_is_told_unrecoverable() {
    let mut first = Server::start(([127, 0, 0, 1], 0).into()).await;
    let mut client = fast(&first.url()).connect().await.unwrap();
    let last = subscribe_and_receive_three(&mut first, &mut client).await;

    // A new process on the same port: its history starts over in a new epoch.
    let addr = first.stop().await;
    let mut second = Server::start(addr).await;
    assert_eq!(second.command().await, subscribe(Some(last)));
    let current = match next(&mut client).await {
        ServerMessage::Unrecoverable {
            topic,
            position: Some(p),
            ..
        } => {
            assert_eq!(topic, "feed");
            p
        }
        other => panic!("expected unrecoverable, got {other:?}"),
    };
    assert_ne!(current.epoch, last.epoch, "a new epoch");
    assert_eq!(current.offset, 0);
    assert_eq!(client.position("feed"), Some(current));
    // Still subscribed: live publications of the new epoch follow.
    second.hub.publish("feed", "after");
    let (data, p) = next_pub(&mut client).await;
    assert_eq!(data, "after");
    assert_eq!(p, Position::new(current.epoch, 1));
    second.stop().await;
}

/// The next `n` messages, which must be publications on `feed`: their data and positions.
async fn pubs(client: &mut Client, n: usize) -> Vec<(String, Position)> {
    let mut seen = Vec::new();
    for _ in 0..n {
        seen.push(next_pub(client).await);
    }
    seen
}

#[tokio::test]
async fn a_gap_on_the_live_stream_is_repaired_and_every_offset_seen_once() {
    let mut server = Server::start(([127, 0, 0, 1], 0).into()).await;
    let mut client = fast(&server.url()).connect().await.unwrap();
    let id = server.opened().await;
    let last = subscribe_and_receive_three(&mut server, &mut client).await;
    let at = |k: u64| Position::new(last.epoch, last.offset + k);

    // One publication withheld from this session: it is out of the topic for a moment,
    // without being told, then back for the next ones. The stream it sees jumps.
    assert_eq!(server.hub.unsubscribe(id, "feed"), Ok(true));
    assert_eq!(server.hub.publish("feed", "withheld").position, Some(at(1)));
    assert_eq!(server.hub.subscribe(id, "feed"), Ok(true));
    for (k, data) in [(2, "a"), (3, "b"), (4, "c")] {
        assert_eq!(server.hub.publish("feed", data).position, Some(at(k)));
    }

    // The client sees "a" one step too far: it subscribes again since what it has, and
    // ignores "b" and "c" as they come live, until the answer and the replay.
    assert_eq!(server.command().await, subscribe(Some(last)));
    match next(&mut client).await {
        ServerMessage::Subscribed {
            recovered: true,
            replayed,
            ..
        } => assert_eq!(replayed, 4),
        other => panic!("expected a recovered subscription, got {other:?}"),
    }
    server.hub.publish("feed", "live");
    let seen = pubs(&mut client, 5).await;
    let expected: Vec<(String, Position)> = ["withheld", "a", "b", "c", "live"]
        .iter()
        .zip(1..)
        .map(|(data, k)| (data.to_string(), at(k)))
        .collect();
    assert_eq!(seen, expected, "every offset exactly once, in order");
    assert_eq!(client.position("feed"), Some(at(5)));
    // Nothing else was queued for the application (no duplicate after the seam).
    server.hub.publish("feed", "after");
    assert_eq!(next_pub(&mut client).await, ("after".to_string(), at(6)));
    server.stop().await;
}

#[tokio::test]
async fn a_gap_the_history_no_longer_covers_is_reported_unrecoverable() {
    // Only the last 2 publications are kept.
    let mut server = Server::with_history(([127, 0, 0, 1], 0).into(), 2).await;
    let mut client = fast(&server.url()).connect().await.unwrap();
    let id = server.opened().await;
    let last = subscribe_and_receive_three(&mut server, &mut client).await;
    let at = |k: u64| Position::new(last.epoch, last.offset + k);

    // Three withheld: the first of them is no longer kept when the client asks.
    assert_eq!(server.hub.unsubscribe(id, "feed"), Ok(true));
    for k in 1..=3 {
        assert_eq!(server.hub.publish("feed", "withheld").position, Some(at(k)));
    }
    assert_eq!(server.hub.subscribe(id, "feed"), Ok(true));
    server.hub.publish("feed", "jumped");

    assert_eq!(server.command().await, subscribe(Some(last)));
    match next(&mut client).await {
        ServerMessage::Unrecoverable {
            topic,
            position: Some(p),
        } => {
            assert_eq!(topic, "feed");
            assert_eq!(p, at(4));
        }
        other => panic!("expected unrecoverable, got {other:?}"),
    }
    // The application reloads; the client takes the server's position and goes on live.
    assert_eq!(client.position("feed"), Some(at(4)));
    server.hub.publish("feed", "live");
    assert_eq!(next_pub(&mut client).await, ("live".to_string(), at(5)));
    server.stop().await;
}

/// A hand-written envelope server for what one hub does not produce: an epoch change on a
/// live stream, and an `unrecoverable` nobody asked for (a server that lost part of a live
/// stream, e.g. Redis restarted without its data).
mod scripted {
    use futures_util::{SinkExt, StreamExt};
    use serde_json::json;
    use tokio::net::TcpStream;
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::Message as WsMessage;

    use super::*;

    type Ws = WebSocketStream<TcpStream>;

    fn wire(p: Position) -> serde_json::Value {
        json!({ "epoch": p.epoch.to_string(), "offset": p.offset })
    }

    async fn say(ws: &mut Ws, value: serde_json::Value) {
        timeout(WAIT, ws.send(WsMessage::text(value.to_string())))
            .await
            .unwrap()
            .unwrap();
    }

    async fn publish(ws: &mut Ws, p: Position, data: &str) {
        let mut m = wire(p);
        m["type"] = json!("pub");
        m["topic"] = json!("feed");
        m["data"] = json!(data);
        say(ws, m).await;
    }

    /// The next text the client sent.
    async fn heard(ws: &mut Ws) -> Message {
        loop {
            match timeout(WAIT, ws.next()).await.expect("a message in time") {
                Some(Ok(WsMessage::Text(t))) => return Message::from(t.as_str()),
                Some(Ok(_)) => {}
                other => panic!("expected a text message, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn an_epoch_change_is_a_gap_and_an_unrequested_unrecoverable_is_passed_on() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/", listener.local_addr().unwrap());
        let accepting = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio_tungstenite::accept_async(tcp).await.unwrap()
        });
        let mut client = fast(&url).connect().await.unwrap();
        let mut ws = timeout(WAIT, accepting).await.unwrap().unwrap();
        let (old, new) = (|o| Position::new(7, o), |o| Position::new(9, o));

        client.subscribe("feed").await.unwrap();
        assert_eq!(
            ClientCommand::parse(&heard(&mut ws).await),
            Some(subscribe(None))
        );
        say(
            &mut ws,
            json!({"type":"subscribed","topic":"feed","recovered":false,"replayed":0,"position":wire(old(0))}),
        )
        .await;
        publish(&mut ws, old(1), "one").await;
        // Another epoch on the live stream: a gap, repaired from the last position.
        publish(&mut ws, new(5), "other epoch").await;
        assert_eq!(
            ClientCommand::parse(&heard(&mut ws).await),
            Some(subscribe(Some(old(1))))
        );
        // Until the answer, the topic's publications are ignored.
        publish(&mut ws, new(6), "ignored").await;
        say(
            &mut ws,
            json!({"type":"unrecoverable","topic":"feed","position":wire(new(6))}),
        )
        .await;
        publish(&mut ws, new(7), "seven").await;
        // Unrequested: taken as the new position, the subscription kept, nothing asked.
        say(
            &mut ws,
            json!({"type":"unrecoverable","topic":"feed","position":wire(new(20))}),
        )
        .await;
        publish(&mut ws, new(21), "twenty-one").await;

        assert!(matches!(
            next(&mut client).await,
            ServerMessage::Subscribed { .. }
        ));
        assert_eq!(next_pub(&mut client).await, ("one".to_string(), old(1)));
        match next(&mut client).await {
            ServerMessage::Unrecoverable { position, .. } => assert_eq!(position, Some(new(6))),
            other => panic!("expected unrecoverable, got {other:?}"),
        }
        assert_eq!(next_pub(&mut client).await, ("seven".to_string(), new(7)));
        match next(&mut client).await {
            ServerMessage::Unrecoverable { position, .. } => {
                assert_eq!(position, Some(new(20)))
            }
            other => panic!("expected unrecoverable, got {other:?}"),
        }
        assert_eq!(
            next_pub(&mut client).await,
            ("twenty-one".to_string(), new(21))
        );
        assert_eq!(client.position("feed"), Some(new(21)));
        // The client sent nothing in between: the next thing the server hears is this.
        client.send("marker").await.unwrap();
        assert_eq!(heard(&mut ws).await.as_text(), Some("marker"));
    }
}
