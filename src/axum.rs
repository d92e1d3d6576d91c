//! Mounting a hub at a route of an [axum] 0.8 `Router` (feature `axum`), so one port serves the
//! application's REST routes and its WebSocket push.
//!
//! The upgrade goes through hyper's own upgrade mechanism: the handshake policy
//! ([`Handler::check_origin`](crate::Handler::check_origin), [`Handler::authorize`](crate::Handler::authorize),
//! [`Handler::select_subprotocol`](crate::Handler::select_subprotocol), the session limits) runs
//! on the request axum parsed, a refusal is answered with its HTTP status (403, 401, 429, 503,
//! 426, …) **before** anything is upgraded, and an accepted request gets `101 Switching
//! Protocols`; the session then runs on the upgraded connection exactly as on the hub's own
//! listener. [`Handler::http`](crate::Handler::http) is not called: the router has its own
//! routes.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use std::net::SocketAddr;
//! use wshub::{Handler, Hub, Session};
//!
//! struct Orders;
//! #[wshub::async_trait]
//! impl Handler for Orders {
//!     async fn open(&self, s: &Session) {
//!         let _ = s.subscribe("orders");
//!     }
//! }
//!
//! # #[tokio::main] async fn main() -> std::io::Result<()> {
//! let hub = Hub::new(Orders);
//! let app = Router::new()
//!     .route("/health", get(|| async { "ok" }))
//!     .route("/ws", wshub::axum::endpoint(hub.clone()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! // `with_connect_info` lets the hub see each client's address (per-IP limits, logs).
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
//! # }
//! ```
//!
//! Serve the router with
//! [`into_make_service_with_connect_info::<SocketAddr>()`](axum::Router::into_make_service_with_connect_info)
//! so that sessions see the client's address. Without it every client is reported as
//! `0.0.0.0:0`, and so shares one [`max_sessions_per_ip`](crate::Config::max_sessions_per_ip)
//! budget.
//!
//! Only HTTP/1.1 upgrades are supported, not RFC 8441 WebSocket over HTTP/2 (an HTTP/2
//! request carries no `Upgrade` header, so it gets 426). [`Hub::shutdown`] closes and waits
//! for the sessions upgraded here too,
//! but stopping axum's listener is the host application's job
//! ([`axum::serve::Serve::with_graceful_shutdown`]).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Once;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::engine::TaskGuard;
use crate::handler::Reject;
use crate::handshake::{self, Accepted, Head};
use crate::hub::Hub;

/// A `GET` route that upgrades requests to sessions of `hub`; mount it with
/// [`Router::route`](axum::Router::route). Other methods get axum's 405.
///
/// Works with any router state `S`. To read the router's state or other extractors before
/// upgrading, write the handler yourself and call [`upgrade`].
///
/// ```
/// # struct App;
/// # impl wshub::Handler for App {}
/// let hub = wshub::Hub::new(App);
/// let app: axum::Router = axum::Router::new().route("/ws", wshub::axum::endpoint(hub));
/// ```
pub fn endpoint<S>(hub: Hub) -> MethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    get(move |request: Request| {
        let hub = hub.clone();
        async move { upgrade(&hub, request).await }
    })
}

/// Runs the handshake policy of `hub` on `request` and answers it: `101 Switching Protocols`
/// with the session started on the upgraded connection, or the refusal's HTTP status.
///
/// Use it from your own axum handler; `Request` must be the handler's last argument.
///
/// ```
/// use axum::extract::{Request, State};
/// use axum::response::Response;
///
/// #[derive(Clone)]
/// struct AppState {
///     hub: wshub::Hub,
/// }
///
/// async fn live(State(state): State<AppState>, request: Request) -> Response {
///     wshub::axum::upgrade(&state.hub, request).await
/// }
/// # struct App;
/// # impl wshub::Handler for App {}
/// let state = AppState { hub: wshub::Hub::new(App) };
/// let app: axum::Router = axum::Router::new()
///     .route("/live", axum::routing::get(live))
///     .with_state(state);
/// ```
///
/// # Return
/// The response to give back to axum. A 101 means the handshake was accepted; the session is
/// registered (and [`Handler::open`](crate::Handler::open) runs) once hyper has handed over the
/// connection, in a task of its own. A request that is not a WebSocket upgrade gets
/// `426 Upgrade Required`.
///
/// # Cancel safety
/// Dropping the future before it completes refuses the upgrade; no session is started.
pub async fn upgrade(hub: &Hub, request: Request) -> Response {
    let core = &hub.engine;
    let (mut parts, _body) = request.into_parts();
    let peer = match parts.extensions.get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(peer)) => *peer,
        None => unknown_peer(),
    };
    let on_upgrade = parts.extensions.remove::<OnUpgrade>();
    let head = Head::from_parts(parts);
    if !handshake::is_upgrade(&head.headers) {
        let reject = handshake::upgrade_required("this endpoint speaks WebSocket only");
        return refuse(hub, peer, reject);
    }
    let negotiated = tokio::time::timeout(
        core.config.handshake_timeout,
        handshake::policy(core, head, peer),
    )
    .await;
    let accepted = match negotiated {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(reject)) => return refuse(hub, peer, reject),
        Err(_) => {
            let reject = Reject::new(StatusCode::REQUEST_TIMEOUT).with_body("handshake timed out");
            return refuse(hub, peer, reject);
        }
    };
    let Some(on_upgrade) = on_upgrade else {
        // Served without hyper's connection (e.g. `Router::oneshot` in a test).
        let reject = Reject::new(StatusCode::INTERNAL_SERVER_ERROR)
            .with_body("this connection cannot be upgraded");
        return refuse(hub, peer, reject);
    };
    let response = switching_protocols(&accepted);
    let task = TaskGuard::new(core);
    let hub = hub.clone();
    tokio::spawn(async move {
        let upgraded = tokio::time::timeout(hub.engine.config.handshake_timeout, on_upgrade).await;
        match upgraded {
            Ok(Ok(io)) => {
                let session =
                    crate::connection::serve_session(hub, TokioIo::new(io), accepted, Bytes::new());
                let mut session = std::pin::pin!(session);
                std::future::poll_fn(|cx| crate::connection::poll_batched(session.as_mut(), cx))
                    .await;
            }
            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "upgrade failed"),
            Err(_) => tracing::debug!(%peer, "upgrade timed out"),
        }
        drop(task);
    });
    response
}

/// A router that serves the browser client: `GET /wshub.js` and `GET /wshub.d.ts` (strong
/// `ETag`, `304` on `If-None-Match`, see [`crate::browser`]). Merge it into the application's
/// router.
///
/// ```
/// # struct App;
/// # impl wshub::Handler for App {}
/// let hub = wshub::Hub::new(App);
/// let app: axum::Router = axum::Router::new()
///     .route("/ws", wshub::axum::endpoint(hub))
///     .merge(wshub::axum::browser_client());
/// ```
pub fn browser_client<S>() -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let mut router = axum::Router::new();
    for asset in crate::browser::ASSETS {
        router = router.route(
            asset.path,
            get(move |request: Request| async move {
                let tag = request.headers().get(header::IF_NONE_MATCH);
                let tag = tag.and_then(|v| v.to_str().ok());
                asset.response(tag).map(Body::from)
            }),
        );
    }
    router
}

/// Counts and logs a refused handshake and turns it into its response.
fn refuse(hub: &Hub, peer: SocketAddr, reject: Reject) -> Response {
    hub.engine.counters.refused.fetch_add(1, Ordering::Relaxed);
    let why = std::str::from_utf8(&reject.body).unwrap_or("");
    tracing::debug!(%peer, status = %reject.status, why, "upgrade refused");
    reject.into_response()
}

/// The `101 Switching Protocols` response of an accepted handshake.
fn switching_protocols(accepted: &Accepted) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(key) = HeaderValue::from_str(&accepted.accept_key) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, key);
    }
    if let Some(protocol) = accepted
        .subprotocol
        .as_deref()
        .and_then(|p| HeaderValue::from_str(p).ok())
    {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    if let Some(extensions) = accepted
        .deflate
        .as_ref()
        .and_then(|(_, e)| HeaderValue::from_str(e).ok())
    {
        headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, extensions);
    }
    response
}

/// The address reported when the router was served without connect info.
fn unknown_peer() -> SocketAddr {
    static WARNED: Once = Once::new();
    WARNED.call_once(|| {
        tracing::warn!(
            "wshub::axum: no ConnectInfo<SocketAddr> on the request; serve the router with \
             into_make_service_with_connect_info::<SocketAddr>() so sessions see client addresses"
        );
    });
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
}

/// A refusal as an axum response: its status, headers and body (`text/plain` unless the
/// refusal set a content type), so an axum handler can return a [`Reject`] directly.
///
/// ```
/// use axum::response::IntoResponse;
/// use wshub::{Reject, http::StatusCode};
///
/// let response = Reject::new(StatusCode::FORBIDDEN).with_body("no").into_response();
/// assert_eq!(response.status(), StatusCode::FORBIDDEN);
/// ```
impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        let mut response = Response::new(Body::from(self.body));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers;
        response
            .headers_mut()
            .entry(header::CONTENT_TYPE)
            .or_insert(HeaderValue::from_static("text/plain; charset=utf-8"));
        response
    }
}
