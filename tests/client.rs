//! `wshub::Client` against a real hub on a loopback port: sending and receiving, refusals,
//! reconnection with backoff after the server restarts on the same port, re-subscription,
//! a clean close; liveness against servers that go silent or stop reading (a read timeout,
//! a bounded `send`); and `wss://` against `Hub::serve_tls` (feature `tls`).
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use wshub::http::StatusCode;
use wshub::{
    Client, ClientSendError, ClientState, CloseReason, ConnectError, Handler, Hub, Message, Reject,
    Request, Session,
};

const WAIT: Duration = Duration::from_secs(5);

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Client>();
    send_sync::<ClientState>();
    send_sync::<ConnectError>();
    send_sync::<ClientSendError>();
};

/// What the server saw, in order.
#[derive(Debug, PartialEq)]
enum Seen {
    Subscribed(String),
    Unsubscribed(String),
    Text(String),
    Closed(String),
}

/// Understands the client's default subscribe messages and echoes everything else.
struct Topics {
    seen: mpsc::UnboundedSender<Seen>,
    require_token: bool,
}

#[wshub::async_trait]
impl Handler for Topics {
    async fn authorize(&self, request: &mut Request) -> Result<(), Reject> {
        if self.require_token && request.header("authorization") != Some("Bearer ok") {
            return Err(Reject::new(StatusCode::UNAUTHORIZED));
        }
        Ok(())
    }

    async fn on_message(&self, session: &Session, message: Message) {
        let text = message.as_text().unwrap_or_default().to_string();
        let parsed: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let topic = parsed["topic"].as_str().unwrap_or_default().to_string();
        match parsed["type"].as_str() {
            Some("subscribe") => {
                session.subscribe(&topic).unwrap();
                let _ = self.seen.send(Seen::Subscribed(topic));
            }
            Some("unsubscribe") => {
                session.unsubscribe(&topic);
                let _ = self.seen.send(Seen::Unsubscribed(topic));
            }
            _ => {
                let _ = session.send(message);
                let _ = self.seen.send(Seen::Text(text));
            }
        }
    }

    async fn on_close(&self, _session: &Session, reason: CloseReason) {
        let _ = self.seen.send(Seen::Closed(reason.to_string()));
    }
}

struct Server {
    hub: Hub,
    addr: SocketAddr,
    serve: JoinHandle<std::io::Result<()>>,
    seen: mpsc::UnboundedReceiver<Seen>,
}

impl Server {
    /// A hub on `addr` (port 0 for a fresh one, or the address of a stopped server).
    async fn start(addr: SocketAddr, require_token: bool) -> Server {
        let (tx, seen) = mpsc::unbounded_channel();
        let hub = Hub::new(Topics {
            seen: tx,
            require_token,
        });
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serve = tokio::spawn(hub.clone().serve(listener));
        Server {
            hub,
            addr,
            serve,
            seen,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    async fn next(&mut self) -> Seen {
        timeout(WAIT, self.seen.recv())
            .await
            .expect("server event in time")
            .expect("server alive")
    }

    /// Shuts the hub down (close 1001 to every session) and frees the port.
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

async fn recv_text(client: &mut Client) -> String {
    let m = timeout(WAIT, client.recv())
        .await
        .expect("message in time")
        .expect("client open");
    m.as_text().expect("text").to_string()
}

async fn wait_state(client: &Client, what: &str, pred: impl Fn(&ClientState) -> bool) {
    let mut states = client.state_changes();
    timeout(WAIT, states.wait_for(|s| pred(s)))
        .await
        .unwrap_or_else(|_| panic!("client never became {what}; it is {}", client.state()))
        .unwrap();
}

#[tokio::test]
async fn sends_and_receives_once_open() {
    let mut server = Server::start(([127, 0, 0, 1], 0).into(), false).await;
    let mut client = Client::connect(server.url()).await.unwrap();
    assert_eq!(client.state(), ClientState::Open);
    client.send("hello").await.unwrap();
    assert_eq!(server.next().await, Seen::Text("hello".into()));
    assert_eq!(recv_text(&mut client).await, "hello");
    server.stop().await;
}

#[tokio::test]
async fn reconnects_with_backoff_and_resubscribes_after_a_restart() {
    let mut first = Server::start(([127, 0, 0, 1], 0).into(), false).await;
    let mut client = fast(&first.url()).connect().await.unwrap();
    client.subscribe("news").await.unwrap();
    client.subscribe("sports").await.unwrap();
    client.subscribe("news").await.unwrap(); // already held: not sent again
    client.unsubscribe("sports").await.unwrap();
    assert_eq!(first.next().await, Seen::Subscribed("news".into()));
    assert_eq!(first.next().await, Seen::Subscribed("sports".into()));
    assert_eq!(first.next().await, Seen::Unsubscribed("sports".into()));
    first.hub.publish("news", "before");
    assert_eq!(recv_text(&mut client).await, "before");

    let addr = first.stop().await;
    // The port is closed now: attempts fail and the backoff goes on.
    wait_state(&client, "reconnecting after a failed attempt", |s| {
        matches!(s, ClientState::Reconnecting { attempt, retry_in }
            if *attempt >= 2 && *retry_in <= Duration::from_millis(200))
    })
    .await;
    // Sent while disconnected: goes out after the re-subscription.
    client.send("queued while down").await.unwrap();

    let mut second = Server::start(addr, false).await;
    assert_eq!(second.next().await, Seen::Subscribed("news".into()));
    assert_eq!(second.next().await, Seen::Text("queued while down".into()));
    assert_eq!(client.state(), ClientState::Open);
    assert_eq!(recv_text(&mut client).await, "queued while down");
    second.hub.publish("news", "after");
    assert_eq!(recv_text(&mut client).await, "after");
    assert_eq!(second.hub.topics(), ["news"]);
    second.stop().await;
}

#[tokio::test]
async fn the_first_connection_reports_a_refusal_with_its_status() {
    let server = Server::start(([127, 0, 0, 1], 0).into(), true).await;
    match Client::connect(server.url()).await {
        Err(ConnectError::Refused(status)) => assert_eq!(status, StatusCode::UNAUTHORIZED),
        other => panic!("expected a 401 refusal, got {other:?}"),
    }
    let client = Client::builder(server.url())
        .header("authorization", "Bearer ok")
        .connect()
        .await
        .unwrap();
    assert_eq!(client.state(), ClientState::Open);
    server.stop().await;
}

#[tokio::test]
async fn spawn_keeps_trying_until_the_server_is_up() {
    // A port that was free a moment ago and that nothing listens on.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    assert!(matches!(
        Client::connect(format!("ws://{addr}/")).await,
        Err(ConnectError::Io(_))
    ));
    let mut client = fast(&format!("ws://{addr}/")).spawn().unwrap();
    wait_state(&client, "reconnecting", |s| {
        matches!(s, ClientState::Reconnecting { .. })
    })
    .await;
    let mut server = Server::start(addr, false).await;
    wait_state(&client, "open", |s| *s == ClientState::Open).await;
    client.send("up").await.unwrap();
    assert_eq!(server.next().await, Seen::Text("up".into()));
    assert_eq!(recv_text(&mut client).await, "up");
    server.stop().await;
}

#[tokio::test]
async fn close_completes_the_close_handshake_and_stops() {
    let mut server = Server::start(([127, 0, 0, 1], 0).into(), false).await;
    let mut client = Client::connect(server.url()).await.unwrap();
    client.send("last words").await.unwrap();
    client.close().await;
    assert_eq!(client.state(), ClientState::Closed);
    assert_eq!(server.next().await, Seen::Text("last words".into()));
    match server.next().await {
        Seen::Closed(reason) => assert!(reason.contains("closed by client: 1000"), "{reason}"),
        other => panic!("expected the session to close, got {other:?}"),
    }
    // What had arrived can still be read; then the stream ends.
    let rest: Vec<Message> = timeout(WAIT, async {
        let mut rest = Vec::new();
        while let Some(m) = client.recv().await {
            rest.push(m);
        }
        rest
    })
    .await
    .unwrap();
    assert!(rest.len() <= 1);
    assert_eq!(client.send("too late").await, Err(ClientSendError::Closed));
    server.stop().await;
}

// Two worker threads, so that the client's task reads the socket while the test waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_gets_through_while_the_application_is_not_reading() {
    let mut server = Server::start(([127, 0, 0, 1], 0).into(), false).await;
    let client = Client::builder(server.url())
        .queue_capacity(1)
        .connect()
        .await
        .unwrap();
    client.send("fill").await.unwrap();
    assert_eq!(server.next().await, Seen::Text("fill".into()));
    // The echo and these fill the one-message queue many times over; nobody reads them.
    for i in 0..10 {
        server.hub.broadcast(format!("unread {i}"));
    }
    // Wait until the server has written them all (a bounded poll of its counters), so the
    // client's task is stuck on its full queue when the application closes.
    // Server frames of fewer than 126 bytes have a 2-byte header.
    let written = (2 + "fill".len() + 10 * (2 + "unread 0".len())) as u64;
    timeout(WAIT, async {
        while server.hub.stats().bytes_out < written {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    timeout(WAIT, client.close())
        .await
        .expect("close does not wait for the application to read");
    match server.next().await {
        Seen::Closed(reason) => assert!(reason.contains("closed by client: 1000"), "{reason}"),
        other => panic!("expected the session to close, got {other:?}"),
    }
    server.stop().await;
}

/// A WebSocket server that completes the upgrade of every connection and then neither reads
/// nor writes nor closes: a hung process, or a peer gone behind a NAT that still holds the
/// flow. Reports each connection it accepted.
async fn silent_server() -> (SocketAddr, mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            let ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            held.push(ws); // kept open, never polled again
            if accepted.send(()).is_err() {
                break;
            }
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn a_silent_server_is_declared_dead_within_the_read_timeout_and_the_client_reconnects() {
    const READ_TIMEOUT: Duration = Duration::from_millis(400);
    let (addr, mut accepted) = silent_server().await;
    let client = fast(&format!("ws://{addr}/"))
        .ping_interval(Some(Duration::from_millis(100)))
        .read_timeout(Some(READ_TIMEOUT))
        .connect()
        .await
        .unwrap();
    let opened = Instant::now();
    timeout(WAIT, accepted.recv()).await.unwrap().unwrap();
    assert_eq!(client.state(), ClientState::Open);
    // The TCP connection stays up, but nothing arrives: not even a pong.
    wait_state(&client, "reconnecting after the read timeout", |s| {
        matches!(s, ClientState::Reconnecting { .. })
    })
    .await;
    let detected = opened.elapsed();
    assert!(
        detected >= READ_TIMEOUT,
        "declared dead after {detected:?}, before the read timeout"
    );
    // The bound leaves room for a loaded machine; without a read timeout it never happens.
    assert!(
        detected < READ_TIMEOUT + Duration::from_millis(1600),
        "declared dead only after {detected:?}"
    );
    // And it connects again by itself.
    timeout(WAIT, accepted.recv())
        .await
        .expect("a second connection")
        .unwrap();
    wait_state(&client, "open again", |s| *s == ClientState::Open).await;
}

#[tokio::test]
async fn the_read_timeout_leaves_a_quiet_but_live_connection_alone() {
    // Nothing to say for several read timeouts: the hub's pongs keep the connection open.
    let mut server = Server::start(([127, 0, 0, 1], 0).into(), false).await;
    let mut client = Client::builder(server.url())
        .ping_interval(Some(Duration::from_millis(100)))
        .read_timeout(Some(Duration::from_millis(700)))
        .connect()
        .await
        .unwrap();
    // Three read timeouts without a message: the connection must stay open throughout.
    let mut states = client.state_changes();
    let quiet = timeout(
        Duration::from_millis(2100),
        states.wait_for(|s| *s != ClientState::Open),
    )
    .await;
    assert!(quiet.is_err(), "the client left Open: {}", client.state());
    client.send("still here").await.unwrap();
    assert_eq!(server.next().await, Seen::Text("still here".into()));
    assert_eq!(recv_text(&mut client).await, "still here");
    server.stop().await;
}

// Two worker threads: the client's task writes while the test sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_returns_at_once_with_full_when_the_server_does_not_read() {
    let (addr, mut accepted) = silent_server().await;
    let client = Client::builder(format!("ws://{addr}/"))
        .queue_capacity(8)
        .read_timeout(None)
        .ping_interval(None)
        .connect()
        .await
        .unwrap();
    timeout(WAIT, accepted.recv()).await.unwrap().unwrap();
    // 64 KiB messages: the socket buffers fill, the task's write blocks, then the queue.
    let big = "x".repeat(64 * 1024);
    let mut queued = 0usize;
    let full = loop {
        let sent = timeout(WAIT, client.send(big.as_str()))
            .await
            .expect("send returns without waiting for the server");
        match sent {
            Ok(()) => queued += 1,
            Err(e) => break e,
        }
        assert!(queued < 100_000, "the queue never filled");
        tokio::task::yield_now().await;
    };
    assert_eq!(full, ClientSendError::Full);
    assert!(queued >= 8, "only {queued} queued");
    // Subscribing goes through the same queue: it returns at once too (refused, unless the
    // task took one more message off the queue meanwhile).
    let subscribed = timeout(WAIT, client.subscribe("news"))
        .await
        .expect("subscribe returns without waiting for the server");
    assert!(
        matches!(subscribed, Ok(()) | Err(ClientSendError::Full)),
        "{subscribed:?}"
    );
    assert_eq!(client.state(), ClientState::Open);
    timeout(WAIT, client.close())
        .await
        .expect("close does not wait for the server to read");
}

/// wss:// against the hub's own TLS listener, with a certificate made in the test.
#[cfg(feature = "tls")]
mod wss {
    use std::sync::Arc;

    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use wshub::rustls::{self, ClientConfig, RootCertStore, ServerConfig};

    use super::*;

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// A self-signed certificate for `localhost`, and a server config that presents it.
    fn server_config() -> (CertificateDer<'static>, Arc<ServerConfig>) {
        let rcgen::CertifiedKey { cert, key_pair } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der()));
        let der = cert.der().clone();
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .unwrap();
        (der, Arc::new(config))
    }

    fn client_config(trusted: &CertificateDer<'static>) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(trusted.clone()).unwrap();
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }

    async fn next(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
        timeout(WAIT, seen.recv())
            .await
            .expect("server event in time")
            .unwrap()
    }

    #[tokio::test]
    async fn a_wss_round_trip_against_serve_tls() {
        let (tx, mut seen) = mpsc::unbounded_channel();
        let hub = Hub::new(Topics {
            seen: tx,
            require_token: false,
        });
        let (cert, tls) = server_config();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let serving = tokio::spawn(hub.clone().serve_tls(listener, tls));
        let url = format!("wss://localhost:{port}/");

        // Without a TLS configuration, a clear refusal rather than plain text to a TLS port.
        assert!(matches!(
            Client::connect(url.as_str()).await,
            Err(ConnectError::InvalidRequest(_))
        ));
        // A certificate the client does not trust fails the TLS handshake.
        let (other, _) = server_config();
        match Client::builder(url.as_str())
            .tls_config(client_config(&other))
            .connect()
            .await
        {
            Err(ConnectError::Handshake(why)) => assert!(why.contains("TLS"), "{why}"),
            other => panic!("expected a TLS handshake failure, got {other:?}"),
        }

        let mut client = Client::builder(url.as_str())
            .tls_config(client_config(&cert))
            .connect()
            .await
            .unwrap();
        assert_eq!(client.state(), ClientState::Open);
        client.subscribe("news").await.unwrap();
        client.send("over tls").await.unwrap();
        assert_eq!(next(&mut seen).await, Seen::Subscribed("news".into()));
        assert_eq!(next(&mut seen).await, Seen::Text("over tls".into()));
        assert_eq!(recv_text(&mut client).await, "over tls");
        hub.publish("news", "published");
        assert_eq!(recv_text(&mut client).await, "published");
        client.close().await;
        match next(&mut seen).await {
            Seen::Closed(reason) => assert!(reason.contains("closed by client: 1000"), "{reason}"),
            other => panic!("expected the session to close, got {other:?}"),
        }
        timeout(WAIT, hub.shutdown(Duration::from_secs(1)))
            .await
            .unwrap();
        timeout(WAIT, serving).await.unwrap().unwrap().unwrap();
    }
}
