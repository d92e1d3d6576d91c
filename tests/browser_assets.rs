//! The browser client's files served over real sockets: from `Handler::http` on the hub's own
//! port (`wshub::browser::serve`) and from an axum router (`wshub::axum::browser_client`):
//! status, media type, strong `ETag`, revalidation with `If-None-Match`, and nothing answered
//! for other paths or methods.
mod support;

use std::net::SocketAddr;

use support::{Behaviour, HttpResponse, RawClient, start};
use wshub::browser::{SCRIPT, TYPES};

/// `method path` with extra headers, read by a raw client.
async fn get(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    RawClient::connect(addr).await.request(&request).await
}

/// What both ways of serving must answer.
async fn check_assets(addr: SocketAddr) {
    let script = get(addr, "GET", "/wshub.js", &[]).await;
    assert_eq!(script.status, 200);
    assert_eq!(script.body_text(), SCRIPT.text);
    assert_eq!(
        script.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(script.header("cache-control"), Some("no-cache"));
    let etag = script.header("etag").expect("an ETag").to_string();
    assert_eq!(etag, SCRIPT.etag);
    assert!(!etag.starts_with("W/"), "a strong tag: {etag}");

    // A browser revalidating its copy gets 304 and no body while the file is the same.
    let again = get(addr, "GET", "/wshub.js", &[("If-None-Match", &etag)]).await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    assert_eq!(again.header("etag"), Some(etag.as_str()));
    let stale = get(addr, "GET", "/wshub.js", &[("If-None-Match", "\"0000\"")]).await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.body.len(), SCRIPT.text.len());

    let types = get(addr, "GET", "/wshub.d.ts", &[]).await;
    assert_eq!(types.status, 200);
    assert_eq!(types.body_text(), TYPES.text);
    assert_eq!(types.header("etag"), Some(TYPES.etag));
    assert!(
        types
            .header("content-type")
            .unwrap()
            .starts_with("application/typescript")
    );
}

#[tokio::test]
async fn handler_http_serves_the_client_with_a_strong_etag() {
    let t = start(
        support::quiet_config(),
        Behaviour::default().http(wshub::browser::serve),
    )
    .await;
    check_assets(t.addr).await;
    // Anything else is left to the application: here nothing answers it, so 426.
    assert_eq!(get(t.addr, "GET", "/other.js", &[]).await.status, 426);
    assert_eq!(get(t.addr, "POST", "/wshub.js", &[]).await.status, 426);
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn an_axum_router_serves_the_client_with_a_strong_etag() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router: axum::Router = axum::Router::new()
        .route("/health", axum::routing::get(|| async { "ok" }))
        .merge(wshub::axum::browser_client());
    tokio::spawn(async move { axum::serve(listener, router).await });
    check_assets(addr).await;
    assert_eq!(get(addr, "GET", "/health", &[]).await.status, 200);
    assert_eq!(get(addr, "POST", "/wshub.js", &[]).await.status, 405);
}
