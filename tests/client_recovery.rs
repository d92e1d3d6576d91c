//! `wshub::Client` against a hub that keeps history and speaks the JSON envelope
//! (PROTOCOL.md): after a reconnection the client subscribes with the position it last
//! received and gets exactly what it missed; after a server restart (history lost) it is told
//! `unrecoverable`. Real sockets on loopback, every wait bounded.
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
        let (opened_tx, opened) = mpsc::unbounded_channel();
        let (commands_tx, commands) = mpsc::unbounded_channel();
        let config = Config::default()
            .history("feed", HistoryPolicy::new(1000, None))
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
