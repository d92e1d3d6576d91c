//! Helpers for the cluster tests: a Redis to test against, hubs with a Redis backplane on
//! port 0, WebSocket clients, and bounded waits.
//!
//! Redis is found this way: `REDIS_URL` when it is set; otherwise a `redis-server` from PATH,
//! started on a free port for the test and killed when it ends; otherwise the test prints
//! `SKIPPED: no Redis ...` and returns, unless `WSHUB_REQUIRE_REDIS=1` (as in CI), which makes
//! it fail instead.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the helpers"
)]

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wshub::{Handler, Hub, Message, RedisBackplane, RedisConfig, Session};

/// How long any single wait in these tests may take.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

fn required() -> bool {
    std::env::var("WSHUB_REQUIRE_REDIS").is_ok_and(|v| v == "1")
}

fn skip(test: &str, why: &str) {
    assert!(
        !required(),
        "{test}: no Redis, and WSHUB_REQUIRE_REDIS=1 requires one: {why}"
    );
    // Straight to the process's stderr: libtest hides what `eprintln!` prints in a passing test.
    let _ = writeln!(
        std::io::stderr(),
        "\n!!! SKIPPED {test}: no Redis (set REDIS_URL or install redis-server): {why} !!!\n"
    );
}

/// A Redis for one test: the one at `REDIS_URL`, or a `redis-server` of the test's own.
pub(crate) struct Redis {
    pub(crate) url: String,
    port: u16,
    child: Option<Child>,
}

impl Redis {
    /// `REDIS_URL`, else a server of the test's own; `None` (after saying so) when there is
    /// neither.
    pub(crate) fn any(test: &str) -> Option<Redis> {
        if let Ok(url) = std::env::var("REDIS_URL") {
            return Some(Redis {
                url,
                port: 0,
                child: None,
            });
        }
        Self::own(test)
    }

    /// A `redis-server` of the test's own, which it may stop and restart; `None` (after saying
    /// so) when none can be started.
    pub(crate) fn own(test: &str) -> Option<Redis> {
        let port = free_port();
        let mut redis = Redis {
            url: format!("redis://127.0.0.1:{port}/"),
            port,
            child: None,
        };
        match redis.start() {
            Ok(()) => Some(redis),
            Err(e) => {
                skip(test, &format!("cannot start redis-server: {e}"));
                None
            }
        }
    }

    /// Whether this test may stop and restart the server.
    pub(crate) fn is_own(&self) -> bool {
        self.port != 0
    }

    /// Starts (or restarts) the test's own server on its port and waits until it answers.
    pub(crate) fn start(&mut self) -> std::io::Result<()> {
        assert!(self.is_own(), "only a test's own Redis is started");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(client) = redis::Client::open(self.url.as_str()) {
                if let Ok(mut c) = client.get_connection_with_timeout(Duration::from_millis(200)) {
                    if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                        return Ok(());
                    }
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(std::io::Error::other(format!(
                    "redis-server exited: {status}"
                )));
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::other("redis-server did not answer"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the test's own server (an outage: no clean shutdown) and waits for it to exit.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A synchronous connection, for inspecting Redis from the test.
    pub(crate) fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url.as_str())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            .expect("connect to Redis")
    }

    /// How many connections subscribe to `channel`.
    pub(crate) fn subscribers(&self, channel: &str) -> usize {
        let (_, n): (String, usize) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query(&mut self.conn())
            .expect("PUBSUB NUMSUB");
        n
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr").port()
}

/// A channel and key prefix no other test (or test run) shares, so tests can run in parallel
/// on one Redis; its keys are deleted when it is dropped (a shared Redis stays clean).
pub(crate) struct Prefix {
    name: String,
    url: String,
}

impl Redis {
    pub(crate) fn prefix(&self, test: &str) -> Prefix {
        static N: AtomicUsize = AtomicUsize::new(0);
        Prefix {
            name: format!(
                "wshub-test-{}-{}-{test}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ),
            url: self.url.clone(),
        }
    }
}

impl std::ops::Deref for Prefix {
    type Target = str;
    fn deref(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        let Ok(mut conn) = redis::Client::open(self.url.as_str())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(500)))
        else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.name))
            .query(&mut conn)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _ = redis::cmd("DEL").arg(keys).query::<i64>(&mut conn);
        }
    }
}

/// Fast heartbeats and reconnections, so liveness and recovery are observable in a test.
pub(crate) fn fast_config(prefix: &str) -> RedisConfig {
    RedisConfig::default()
        .prefix(prefix)
        .heartbeat(Duration::from_millis(100))
        .liveness_timeout(Duration::from_millis(500))
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .connect_timeout(Duration::from_millis(500))
        .response_timeout(Duration::from_secs(1))
}

/// The test application: tells each client its id on open; `sub:T` / `unsub:T` subscribe and
/// unsubscribe (answered `ok:...`); `pub:T:payload` publishes; anything else is broadcast.
pub(crate) struct Chat;

#[wshub::async_trait]
impl Handler for Chat {
    async fn open(&self, s: &Session) {
        let _ = s.send(format!("id:{}", s.id().as_u64()));
    }

    async fn on_message(&self, s: &Session, m: Message) {
        let text = m.as_text().unwrap_or("").to_owned();
        if let Some(topic) = text.strip_prefix("sub:") {
            let _ = s.subscribe(topic);
            let _ = s.send(format!("ok:{text}"));
        } else if let Some(topic) = text.strip_prefix("unsub:") {
            s.unsubscribe(topic);
            let _ = s.send(format!("ok:{text}"));
        } else if let Some(rest) = text.strip_prefix("pub:") {
            let (topic, payload) = rest.split_once(':').unwrap_or((rest, ""));
            s.hub().publish(topic, payload.to_owned());
        } else {
            s.hub().broadcast(m);
        }
    }
}

/// One node: a hub with a Redis backplane, serving on a port of its own.
pub(crate) struct Node {
    pub(crate) hub: Hub,
    pub(crate) backplane: Arc<RedisBackplane>,
    pub(crate) addr: SocketAddr,
}

impl Node {
    pub(crate) async fn start(redis: &Redis, config: RedisConfig) -> Node {
        let backplane = Arc::new(
            RedisBackplane::connect_with(&redis.url, config)
                .await
                .expect("connect the backplane"),
        );
        let hub = Hub::builder(Chat).backplane(backplane.clone()).build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(hub.clone().serve(listener));
        Node {
            hub,
            backplane,
            addr,
        }
    }

    pub(crate) fn node_id(&self) -> u16 {
        self.backplane.node_id()
    }

    pub(crate) async fn client(&self) -> Client {
        Client::connect(self.addr).await
    }

    /// Stops the hub and leaves the cluster cleanly.
    pub(crate) async fn stop(self) {
        self.hub.shutdown(Duration::from_secs(1)).await;
        self.backplane.close().await.expect("leave the cluster");
    }
}

/// A WebSocket client that knows its session id.
pub(crate) struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub(crate) id: u64,
}

impl Client {
    pub(crate) async fn connect(addr: SocketAddr) -> Client {
        let (ws, _) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::connect_async(format!("ws://{addr}/")),
        )
        .await
        .expect("connect in time")
        .expect("connect");
        let mut c = Client { ws, id: 0 };
        let hello = c.recv().await;
        c.id = hello
            .strip_prefix("id:")
            .and_then(|id| id.parse().ok())
            .expect("the hub says the session id first");
        c
    }

    pub(crate) async fn send(&mut self, text: &str) {
        self.ws
            .send(WsMessage::text(text.to_owned()))
            .await
            .expect("send");
    }

    /// The next text message, within [`WAIT`].
    pub(crate) async fn recv(&mut self) -> String {
        match self.try_recv(WAIT).await {
            Some(Ok(text)) => text,
            Some(Err(close)) => panic!("closed while a message was expected: {close}"),
            None => panic!("no message within {WAIT:?}"),
        }
    }

    /// The next text message (`Ok`) or the close frame's `code reason` (`Err`); `None` when
    /// nothing arrives within `wait`.
    pub(crate) async fn try_recv(&mut self, wait: Duration) -> Option<Result<String, String>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            match next {
                Some(Ok(WsMessage::Text(t))) => return Some(Ok(t.to_string())),
                Some(Ok(WsMessage::Close(frame))) => {
                    return Some(Err(frame.map_or_else(
                        || "no status".to_owned(),
                        |f| format!("{} {}", u16::from(f.code), f.reason),
                    )));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Some(Err(format!("error: {e}"))),
                None => return Some(Err("eof".to_owned())),
            }
        }
    }

    /// Sends `sub:topic` and waits for the hub's answer.
    pub(crate) async fn subscribe(&mut self, topic: &str) {
        self.send(&format!("sub:{topic}")).await;
        assert_eq!(self.recv().await, format!("ok:sub:{topic}"));
    }

    /// Sends `unsub:topic` and waits for the hub's answer.
    pub(crate) async fn unsubscribe(&mut self, topic: &str) {
        self.send(&format!("unsub:{topic}")).await;
        assert_eq!(self.recv().await, format!("ok:unsub:{topic}"));
    }

    pub(crate) async fn close(mut self) {
        let _ = self.ws.close(None).await;
        while let Ok(Some(_)) = tokio::time::timeout(WAIT, self.ws.next()).await {}
    }
}

/// Polls `check` every 10 ms until it holds; panics with `what` after [`WAIT`].
pub(crate) async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
