//! The axum integration on a real loopback port: REST and push on one port (the
//! `axum_app` example itself), refusals answered with HTTP statuses before any upgrade, the
//! 101 answer's accept key and subprotocol, and shutdown of sessions that came through axum.
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, protocol::Role};
use wshub::http::{Response, StatusCode};
use wshub::{Bytes, CloseReason, Config, Handler, Hub, Message, Reject, Request, Session};

#[allow(
    dead_code,
    reason = "the example's main is not run here; its router is"
)]
#[path = "../examples/axum_app.rs"]
mod axum_app;

const WAIT: Duration = Duration::from_secs(5);
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// RFC 6455 section 1.3: the accept value for `KEY`.
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Serves `router` on a fresh loopback port, with connect info.
async fn serve(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, service).await });
    addr
}

/// A response head read off a raw socket, and the socket (still open after a 101).
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    stream: TcpStream,
    /// After a 101: the bytes that followed the head (the first frames).
    rest: Vec<u8>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `method path` with `headers` (plus Host and, for a body, its length) and reads the
/// response head, and the response body when it has a content length.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Head {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).await.unwrap();
    timeout(WAIT, async move {
        let mut buf = Vec::new();
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed before the response head");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buf[..end].to_vec()).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        let mut body = buf[end..].to_vec();
        if status == 101 {
            return Head {
                status,
                headers,
                body: String::new(),
                stream,
                rest: body,
            };
        }
        let length = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse::<usize>().unwrap());
        while body.len() < length {
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed before the body's end");
            body.extend_from_slice(&chunk[..n]);
        }
        Head {
            status,
            headers,
            body: String::from_utf8(body).unwrap(),
            stream,
            rest: Vec::new(),
        }
    })
    .await
    .expect("response in time")
}

fn upgrade_headers<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", KEY),
    ];
    for (name, value) in extra {
        h.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        h.push((name, value));
    }
    h
}

/// Checks the token, picks subprotocol `v2.wshub`, greets with what it saw, echoes.
struct Policy {
    closed: mpsc::UnboundedSender<String>,
}

#[wshub::async_trait]
impl Handler for Policy {
    fn select_subprotocol(&self, offered: &[&str], _request: &Request) -> Option<String> {
        offered
            .contains(&"v2.wshub")
            .then(|| "v2.wshub".to_string())
    }

    fn http(&self, _request: &Request) -> Option<Response<Bytes>> {
        Some(Response::new(Bytes::from_static(
            b"Handler::http must not run under axum",
        )))
    }

    async fn authorize(&self, request: &mut Request) -> Result<(), Reject> {
        match request.query_param("token") {
            Some("ok") => Ok(()),
            _ => {
                Err(Reject::new(StatusCode::UNAUTHORIZED).with_header("www-authenticate", "Bearer"))
            }
        }
    }

    async fn open(&self, session: &Session) {
        let greeting = format!(
            "peer={} protocol={}",
            session.peer_addr(),
            session.subprotocol().unwrap_or("-")
        );
        let _ = session.send(greeting);
    }

    async fn on_message(&self, session: &Session, message: Message) {
        let _ = session.send(message);
    }

    async fn on_close(&self, _session: &Session, reason: CloseReason) {
        let _ = self.closed.send(reason.to_string());
    }
}

fn policy_hub(config: Config) -> (Hub, mpsc::UnboundedReceiver<String>) {
    let (closed, rx) = mpsc::unbounded_channel();
    (Hub::builder(Policy { closed }).config(config).build(), rx)
}

/// The next text message, skipping control frames.
async fn next_text<S>(ws: &mut S) -> String
where
    S: futures_util::Stream<Item = Result<tungstenite::Message, tungstenite::Error>> + Unpin,
{
    loop {
        match timeout(WAIT, ws.next()).await.expect("message in time") {
            Some(Ok(tungstenite::Message::Text(t))) => return t.to_string(),
            Some(Ok(tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_))) => {}
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn rest_and_push_share_one_port() {
    let (hub, router) = axum_app::app();
    let addr = serve(router).await;

    let orders = request(addr, "GET", "/api/orders", &[], "").await;
    assert_eq!(orders.status, 200);
    assert!(orders.body.contains(r#""id":17"#), "{}", orders.body);

    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token=demo"))
        .await
        .unwrap();
    // The session is open and subscribed once its snapshot arrives.
    let snapshot: serde_json::Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    assert_eq!(snapshot["type"], "orders");
    assert_eq!(snapshot["orders"][0]["status"], "received");
    assert_eq!(hub.subscriber_count("orders"), 1);
    let changed = request(
        addr,
        "POST",
        "/api/orders/17/status",
        &[("content-type", "application/json")],
        r#"{"status":"shipped"}"#,
    )
    .await;
    assert_eq!(changed.status, 200, "{}", changed.body);

    let pushed: serde_json::Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    assert_eq!(pushed["type"], "order");
    assert_eq!(pushed["order"]["id"], 17);
    assert_eq!(pushed["order"]["status"], "shipped");

    let metrics = request(addr, "GET", "/metrics", &[], "").await;
    assert_eq!(metrics.status, 200);
    assert_eq!(
        metrics.header("content-type"),
        Some("text/plain; version=0.0.4")
    );
    assert!(
        metrics.body.contains("\nwshub_sessions 1\n"),
        "{}",
        metrics.body
    );
    assert!(metrics.body.contains("wshub_messages_queued_total 2\n"));

    // Without the token the hook refuses before the upgrade.
    let refused = request(addr, "GET", "/ws", &upgrade_headers(&[]), "").await;
    assert_eq!(refused.status, 401);
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn refusals_are_http_statuses_before_the_upgrade() {
    let (hub, _closed) = policy_hub(Config::default());
    let addr = serve(Router::new().route("/ws", wshub::axum::endpoint(hub.clone()))).await;
    let evil = ("Origin", "http://evil.example");
    // (what, path, request headers, expected status)
    let cases = [
        ("no token", "/ws", upgrade_headers(&[]), 401),
        (
            "foreign origin",
            "/ws?token=ok",
            upgrade_headers(&[evil]),
            403,
        ),
        (
            "old version",
            "/ws?token=ok",
            upgrade_headers(&[("Sec-WebSocket-Version", "8")]),
            426,
        ),
        (
            "bad key",
            "/ws?token=ok",
            upgrade_headers(&[("Sec-WebSocket-Key", "short")]),
            400,
        ),
        ("plain GET", "/ws?token=ok", vec![], 426),
        (
            "HTTP/1.1 without Upgrade: websocket",
            "/ws?token=ok",
            upgrade_headers(&[("Upgrade", "h2c")]),
            426,
        ),
    ];
    for (what, path, headers, status) in &cases {
        let head = request(addr, "GET", path, headers, "").await;
        assert_eq!(head.status, *status, "{what}: {}", head.body);
        assert!(head.header("sec-websocket-accept").is_none(), "{what}");
        assert!(
            !head.body.contains("must not run"),
            "{what}: Handler::http ran"
        );
    }
    let head = request(addr, "GET", "/ws", &upgrade_headers(&[]), "").await;
    assert_eq!(head.header("www-authenticate"), Some("Bearer"));
    let head = request(
        addr,
        "GET",
        "/ws?token=ok",
        &upgrade_headers(&[("Sec-WebSocket-Version", "8")]),
        "",
    )
    .await;
    assert_eq!(head.header("sec-websocket-version"), Some("13"));
    assert_eq!(hub.stats().handshakes_refused, cases.len() as u64 + 2);
    assert_eq!(hub.stats().sessions_opened, 0);

    // Other methods never reach the hub: axum answers them.
    let post = request(addr, "POST", "/ws?token=ok", &upgrade_headers(&[]), "x").await;
    assert_eq!(post.status, 405);
}

#[tokio::test]
async fn a_full_hub_answers_503_before_the_upgrade() {
    let (hub, _closed) = policy_hub(Config::default().max_sessions(1));
    let addr = serve(Router::new().route("/ws", wshub::axum::endpoint(hub.clone()))).await;
    let (mut first, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token=ok"))
        .await
        .unwrap();
    next_text(&mut first).await;
    let second = request(addr, "GET", "/ws?token=ok", &upgrade_headers(&[]), "").await;
    assert_eq!(second.status, 503);
    assert!(second.header("retry-after").is_some());
    assert_eq!(hub.session_count(), 1);
}

#[tokio::test]
async fn the_upgrade_answers_the_key_and_the_chosen_subprotocol() {
    let (hub, mut closed) = policy_hub(Config::default());
    let addr = serve(Router::new().route("/ws", wshub::axum::endpoint(hub.clone()))).await;
    let offered = ("Sec-WebSocket-Protocol", "chat, v2.wshub");
    let head = request(
        addr,
        "GET",
        "/ws?token=ok",
        &upgrade_headers(&[offered]),
        "",
    )
    .await;
    assert_eq!(head.status, 101);
    assert_eq!(head.header("sec-websocket-accept"), Some(ACCEPT));
    assert_eq!(head.header("sec-websocket-protocol"), Some("v2.wshub"));
    assert!(
        head.header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
    );

    // The same socket now speaks WebSocket; the session saw the real peer and the protocol.
    let local = head.stream.local_addr().unwrap();
    let mut ws =
        WebSocketStream::from_partially_read(head.stream, head.rest, Role::Client, None).await;
    assert_eq!(
        next_text(&mut ws).await,
        format!("peer={local} protocol=v2.wshub")
    );
    ws.send(tungstenite::Message::text("echo me"))
        .await
        .unwrap();
    assert_eq!(next_text(&mut ws).await, "echo me");
    ws.close(None).await.unwrap();
    let reason = timeout(WAIT, closed.recv()).await.unwrap().unwrap();
    assert!(reason.starts_with("closed by client"), "{reason}");
    assert_eq!(hub.stats().sessions_opened, 1);
}

#[tokio::test]
async fn shutdown_closes_and_waits_for_sessions_that_came_through_axum() {
    let (hub, mut closed) = policy_hub(Config::default());
    let addr = serve(Router::new().route("/ws", wshub::axum::endpoint(hub.clone()))).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token=ok"))
        .await
        .unwrap();
    next_text(&mut ws).await;
    // The client answers the close frame while the hub waits for it.
    let client = tokio::spawn(async move {
        while let Some(Ok(m)) = ws.next().await {
            if let tungstenite::Message::Close(frame) = m {
                return frame.map(|f| u16::from(f.code));
            }
        }
        None
    });
    timeout(WAIT, hub.shutdown(Duration::from_secs(2)))
        .await
        .expect("shutdown in time");
    // on_close ran before shutdown returned.
    let reason = closed.try_recv().expect("on_close ran");
    assert!(reason.contains("1001"), "{reason}");
    assert_eq!(timeout(WAIT, client).await.unwrap().unwrap(), Some(1001));
    let late = request(addr, "GET", "/ws?token=ok", &upgrade_headers(&[]), "").await;
    assert_eq!(late.status, 503);
}
