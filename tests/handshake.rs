//! The HTTP upgrade and its policy: every refusal is an HTTP status before any WebSocket byte,
//! and a refused request never opens a session.
//!
//! Not tested here: the per-IP limit (429), because loopback peers are exempt from it.

mod support;

use std::time::Duration;

use support::*;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use wshub::http::StatusCode;
use wshub::{Config, Reject};

/// Sends an upgrade request of `path` with `headers` from a raw client; returns the response
/// and the client (still connected when upgraded).
async fn upgrade_with(
    t: &TestHub,
    path: &str,
    headers: &[(&str, &str)],
) -> (HttpResponse, RawClient) {
    let mut c = RawClient::connect(t.addr).await;
    let r = c.request(&upgrade_request(t.addr, path, headers)).await;
    (r, c)
}

#[tokio::test]
async fn cross_site_origin_is_refused_with_403() {
    let mut t = start(quiet_config(), Behaviour::default()).await;
    let same = format!("http://{}", t.addr);

    let (r, mut c) = upgrade_with(&t, "/", &[("Origin", "http://evil.example")]).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.body_text(), "origin not allowed");
    c.expect_eof().await;
    // Same host, other port: another origin.
    let other_port = format!("http://127.0.0.1:{}", t.addr.port().wrapping_add(1));
    let (r, _) = upgrade_with(&t, "/", &[("Origin", &other_port)]).await;
    assert_eq!(r.status, 403);

    let (r, same_origin) = upgrade_with(&t, "/", &[("Origin", &same)]).await;
    assert_eq!(r.status, 101, "same origin accepted");
    let (_, peer) = t.events.open().await;
    assert_eq!(peer, same_origin.local_addr());

    let (r, no_origin) = upgrade_with(&t, "/", &[]).await;
    assert_eq!(r.status, 101, "no Origin (not a browser) accepted");
    let (_, peer) = t.events.open().await;
    assert_eq!(peer, no_origin.local_addr());

    let s = t.hub.stats();
    assert_eq!((s.sessions_opened, s.handshakes_refused), (2, 2));
    t.events.assert_none_pending();
}

#[tokio::test]
async fn allowed_origins_extend_same_origin() {
    let config = quiet_config().allowed_origins(["https://app.example.com"]);
    let mut t = start(config, Behaviour::default()).await;

    let (r, _listed) = upgrade_with(&t, "/", &[("Origin", "https://app.example.com")]).await;
    assert_eq!(r.status, 101);
    t.events.open().await;
    for origin in [
        "https://app.example.com.evil.example",
        "http://app.example.com",
        "https://example.com",
    ] {
        let (r, _) = upgrade_with(&t, "/", &[("Origin", origin)]).await;
        assert_eq!(r.status, 403, "{origin}");
    }
    let same = format!("http://{}", t.addr);
    let (r, _same) = upgrade_with(&t, "/", &[("Origin", &same)]).await;
    assert_eq!(r.status, 101, "same origin still accepted");
    t.events.open().await;

    let s = t.hub.stats();
    assert_eq!((s.sessions_opened, s.handshakes_refused), (2, 3));
}

#[tokio::test]
async fn wildcard_origin_accepts_any() {
    let mut t = start(quiet_config().allowed_origins(["*"]), Behaviour::default()).await;
    let (r, _c) = upgrade_with(&t, "/", &[("Origin", "http://evil.example")]).await;
    assert_eq!(r.status, 101);
    t.events.open().await;
}

#[tokio::test]
async fn authorize_refuses_with_its_status_or_attaches_data() {
    let mut t = start(
        quiet_config(),
        Behaviour::default().authorize(|req| {
            let Some(token) = req.query_param("token") else {
                return Err(Reject::new(StatusCode::UNAUTHORIZED)
                    .with_body("no token")
                    .with_header("www-authenticate", "Bearer"));
            };
            if token == "bad" {
                return Err(Reject::new(StatusCode::FORBIDDEN));
            }
            let user = User(token.to_string());
            req.extensions_mut().insert(user);
            Ok(())
        }),
    )
    .await;

    let (r, mut c) = upgrade_with(&t, "/live", &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.body_text(), "no token");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(r.header("connection"), Some("close"));
    c.expect_eof().await;

    let (r, _) = upgrade_with(&t, "/live?token=bad", &[]).await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.body_text(),
        "Forbidden",
        "the reason phrase as default body"
    );

    // A well-behaved client with a good token: the data is on the session.
    let (_c, response) = connect_with(
        t.addr,
        format!("ws://{}/live?token=alice", t.addr)
            .into_client_request()
            .unwrap(),
    )
    .await;
    assert_eq!(response.status(), 101);
    match t.events.next().await {
        Event::Open { user, .. } => assert_eq!(user, Some(User("alice".into()))),
        other => panic!("expected open, got {other:?}"),
    }
    let s = t.hub.stats();
    assert_eq!((s.sessions_opened, s.handshakes_refused), (1, 2));
    t.events.assert_none_pending();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_beyond_max_sessions_get_503() {
    let mut t = start(quiet_config().max_sessions(2), Behaviour::default()).await;
    let mut a = connect(t.addr).await;
    let (a_id, _) = t.events.open().await;
    let _b = connect(t.addr).await;
    t.events.open().await;

    let (r, mut c) = upgrade_with(&t, "/", &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("5"));
    c.expect_eof().await;
    assert_eq!(t.hub.session_count(), 2);

    // A place frees when a session ends: by the time on_close runs.
    client_close(&mut a, 1000, "").await;
    finish(&mut a).await;
    assert_eq!(t.events.close().await.0, a_id);
    let (r, c) = upgrade_with(&t, "/", &[]).await;
    assert_eq!(r.status, 101);
    let (_, peer) = t.events.open().await;
    assert_eq!(peer, c.local_addr());

    let s = t.hub.stats();
    assert_eq!((s.sessions_opened, s.handshakes_refused), (3, 1));
}

/// Concurrent upgrades racing for the last places: exactly `max_sessions` win.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_upgrades_never_exceed_max_sessions() {
    const MAX: usize = 10;
    const TRIES: usize = 30;
    let mut t = start(quiet_config().max_sessions(MAX), Behaviour::default()).await;
    let addr = t.addr;
    let tasks: Vec<_> = (0..TRIES)
        .map(|_| {
            tokio::spawn(async move {
                let mut c = RawClient::connect(addr).await;
                let r = c.request(&upgrade_request(addr, "/", &[])).await;
                (r.status, c)
            })
        })
        .collect();
    let mut statuses = Vec::new();
    let mut kept = Vec::new();
    for task in tasks {
        let (status, c) = within("an upgrade", task).await.unwrap();
        statuses.push(status);
        kept.push(c);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 101).count(), MAX);
    assert_eq!(statuses.iter().filter(|s| **s == 503).count(), TRIES - MAX);
    t.events.opens(MAX).await;
    assert_eq!(t.hub.session_count(), MAX);
    assert_eq!(t.hub.stats().handshakes_refused, (TRIES - MAX) as u64);
}

#[tokio::test]
async fn http_hook_answers_plain_requests_and_426_otherwise() {
    let t = start(
        quiet_config(),
        Behaviour::default().http(|req| {
            (req.path() == "/").then(|| response("text/html; charset=utf-8", "<p>hello</p>"))
        }),
    )
    .await;

    let mut c = RawClient::connect(t.addr).await;
    let r = c.request(&plain_get(t.addr, "/")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(r.header("content-length"), Some("12"));
    assert_eq!(
        r.headers
            .iter()
            .filter(|(n, _)| n == "content-length")
            .count(),
        1
    );
    assert_eq!(r.body_text(), "<p>hello</p>");
    c.expect_eof().await;

    // The hook declines other paths: 426 Upgrade Required.
    let mut c = RawClient::connect(t.addr).await;
    let r = c.request(&plain_get(t.addr, "/elsewhere")).await;
    assert_eq!(r.status, 426);
    assert_eq!(r.header("upgrade"), Some("websocket"));
    assert_eq!(r.header("sec-websocket-version"), Some("13"));

    // No hook at all: 426 too.
    let plain = start_default().await;
    let mut c = RawClient::connect(plain.addr).await;
    let r = c.request(&plain_get(plain.addr, "/")).await;
    assert_eq!(r.status, 426);
    assert_eq!(plain.hub.stats().sessions_opened, 0);
    assert_eq!(t.hub.stats().sessions_opened, 0);
}

#[tokio::test]
async fn the_handler_picks_one_of_the_offered_subprotocols() {
    let mut t = start(
        quiet_config(),
        Behaviour::default().subprotocol(|offered| {
            offered
                .iter()
                .find(|p| **p == "v2.chat" || **p == "not-offered")
                .map(|p| p.to_string())
                .or(Some("not-offered".to_string()))
        }),
    )
    .await;

    let mut request = t.url("/").into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "v1.chat, v2.chat".parse().unwrap(),
    );
    let (_c, response) = connect_with(t.addr, request).await;
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap()),
        Some("v2.chat")
    );
    match t.events.next().await {
        Event::Open { subprotocol, .. } => assert_eq!(subprotocol.as_deref(), Some("v2.chat")),
        other => panic!("expected open, got {other:?}"),
    }

    // A choice the client did not offer is not sent.
    let (r, _raw) = upgrade_with(&t, "/", &[("Sec-WebSocket-Protocol", "v1.chat")]).await;
    assert_eq!(r.status, 101);
    assert_eq!(r.header("sec-websocket-protocol"), None);
    match t.events.next().await {
        Event::Open { subprotocol, .. } => assert_eq!(subprotocol, None),
        other => panic!("expected open, got {other:?}"),
    }
}

#[tokio::test]
async fn the_accept_key_follows_rfc_6455() {
    let t = start(Config::default(), Behaviour::default()).await;
    let (r, _c) = upgrade_with(&t, "/", &[]).await;
    assert_eq!(r.status, 101);
    // The example of RFC 6455 section 1.3.
    assert_eq!(
        r.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    assert_eq!(
        r.header("upgrade").map(str::to_ascii_lowercase).as_deref(),
        Some("websocket")
    );
}

/// A page served by the HTTP hook is not a refused upgrade; `Stats::handshakes_refused` counts
/// "upgrade requests answered with an HTTP error status".
#[tokio::test]
async fn http_hook_pages_are_not_counted_as_refused_handshakes() {
    let t = start(
        quiet_config(),
        Behaviour::default().http(|_| Some(response("text/plain", "ok"))),
    )
    .await;
    for _ in 0..3 {
        let mut c = RawClient::connect(t.addr).await;
        assert_eq!(c.request(&plain_get(t.addr, "/health")).await.status, 200);
    }
    assert_eq!(t.hub.stats().handshakes_refused, 0);
}

/// A panicking `authorize` must not cost a place among `max_sessions`, nor open a session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_authorize_does_not_leak_a_session_slot() {
    let mut t = start(
        quiet_config().max_sessions(1),
        Behaviour::default().authorize(|req| {
            if req.query_param("token") == Some("boom") {
                panic!("test authorize hook panics on purpose");
            }
            Ok(())
        }),
    )
    .await;
    for _ in 0..3 {
        let mut c = RawClient::connect(t.addr).await;
        c.write(upgrade_request(t.addr, "/?token=boom", &[]).as_bytes())
            .await;
        // No session and no 101, whatever the answer (today: none, the connection drops).
        if let Some(line) = c.read_status_or_eof().await {
            assert!(line >= 500, "a panicking authorize answered {line}");
        }
    }
    let (r, _ok) = upgrade_with(&t, "/", &[]).await;
    assert_eq!(r.status, 101, "the only place is free again");
    t.events.open().await;
    assert_eq!(t.hub.stats().sessions_opened, 1);
    t.events.assert_none_pending();
}

#[tokio::test]
async fn malformed_upgrades_get_4xx() {
    let t = start(
        quiet_config().max_handshake_bytes(1024),
        Behaviour::default(),
    )
    .await;
    let addr = t.addr;
    let cases: Vec<(String, u16)> = vec![
        (
            upgrade_request(addr, "/", &[]).replacen("GET", "POST", 1),
            405,
        ),
        (
            upgrade_request(addr, "/", &[]).replace("Version: 13", "Version: 8"),
            426,
        ),
        (
            upgrade_request(addr, "/", &[]).replace(KEY, "not-a-key"),
            400,
        ),
        (
            upgrade_request(addr, "/", &[]).replace(&format!("Host: {addr}\r\n"), ""),
            400,
        ),
        (
            upgrade_request(addr, "/", &[("X-Padding", &"a".repeat(2048))]),
            431,
        ),
        ("NOT HTTP AT ALL\r\n\r\n".to_string(), 400),
    ];
    for (request, status) in &cases {
        let mut c = RawClient::connect(addr).await;
        let r = c.request(request).await;
        assert_eq!(r.status, *status, "for {:?}", request.lines().next());
        c.expect_eof().await;
    }
    let s = t.hub.stats();
    assert_eq!(s.sessions_opened, 0);
    assert_eq!(s.handshakes_refused, cases.len() as u64);
}

/// A client that opens a socket and never finishes its request is dropped after
/// `handshake_timeout` (slowloris).
#[tokio::test]
async fn an_unfinished_handshake_is_dropped_after_the_timeout() {
    let config = quiet_config().handshake_timeout(Duration::from_millis(200));
    let t = start(config, Behaviour::default()).await;
    let mut c = RawClient::connect(t.addr).await;
    c.write(b"GET / HTTP/1.1\r\nHost: x\r\n").await;
    c.expect_eof().await;
    assert_eq!(t.hub.stats().sessions_opened, 0);
}

/// A session keeps its target and every header but the handshake-only ones, exactly as sent
/// (repeated headers in order), after the request head itself has been freed.
#[tokio::test]
async fn an_open_session_sees_its_target_and_headers_as_sent() {
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let behaviour = Behaviour::default().on_open(move |s| {
        // One value at a time first (read from the compact copy), then the map.
        let r = s.request();
        let one = [
            r.header("X-TAG"),
            r.header("x-empty"),
            r.header("x-utf8"),
            r.header("sec-websocket-key"),
            r.header("missing"),
        ]
        .map(|v| v.map(str::to_string));
        let h = s.headers();
        let all = |name: &str| -> Vec<String> {
            h.get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect()
        };
        let handshake_only = [
            "upgrade",
            "connection",
            "sec-websocket-key",
            "sec-websocket-version",
        ]
        .iter()
        .filter(|n| h.contains_key(**n))
        .count();
        let _ = seen_tx.send((
            s.path().to_string(),
            s.query().map(str::to_string),
            s.request().path_and_query().as_str().to_string(),
            all("x-tag"),
            all("cookie"),
            all("user-agent"),
            all("x-empty"),
            one,
            all("x-utf8"),
            s.request().header("host").map(str::to_string),
            handshake_only,
            h.len(),
        ));
    });
    let mut t = start(quiet_config(), behaviour).await;
    let (r, _c) = upgrade_with(
        &t,
        "/live/feed?room=7&token=a%20b",
        &[
            ("X-Tag", "first"),
            ("Cookie", "s=1; theme=dark"),
            ("User-Agent", "test/1.0 (X11; Linux)"),
            ("X-Tag", "second"),
            ("X-Empty", ""),
            ("X-Utf8", "café"),
        ],
    )
    .await;
    assert_eq!(r.status, 101);
    t.events.open().await;
    let seen = within("the open hook's report", seen.recv()).await.unwrap();
    assert_eq!(seen.0, "/live/feed");
    assert_eq!(seen.1.as_deref(), Some("room=7&token=a%20b"));
    assert_eq!(seen.2, "/live/feed?room=7&token=a%20b");
    assert_eq!(seen.3, ["first", "second"], "repeated header, in order");
    assert_eq!(seen.4, ["s=1; theme=dark"]);
    assert_eq!(seen.5, ["test/1.0 (X11; Linux)"]);
    assert_eq!(seen.6, [""]);
    assert_eq!(
        seen.7,
        [Some("first".into()), Some(String::new()), None, None, None],
        "header(): the first value in any case; not visible ASCII, handshake-only and absent are None"
    );
    assert_eq!(seen.8, ["café"], "bytes kept as sent");
    assert_eq!(seen.9, Some(t.addr.to_string()));
    assert_eq!(seen.10, 0, "handshake-only headers dropped");
    // host, x-tag ×2, cookie, user-agent, x-empty, x-utf8
    assert_eq!(seen.11, 7);
}
