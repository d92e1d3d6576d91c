//! The application's side: the [`Handler`] trait and what its hooks see.

use std::fmt;
use std::net::SocketAddr;
use std::sync::OnceLock;

use async_trait::async_trait;
use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{Extensions, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use crate::message::{CloseFrame, Message};
use crate::session::Session;

/// The application logic of a hub, like Tornado's `WebSocketHandler`.
///
/// Every method has a default, so an implementation overrides only what it needs and a hook
/// added in a later version breaks no one. Methods take `&self`: one handler serves every
/// session, concurrently; keep per-session state in the data attached by
/// [`authorize`](Handler::authorize) or in your own map keyed by [`SessionId`](crate::SessionId).
///
/// The handshake hooks ([`check_origin`](Handler::check_origin),
/// [`authorize`](Handler::authorize), [`select_subprotocol`](Handler::select_subprotocol)) run
/// **before** the upgrade, so a refusal is an HTTP status, not a close frame.
///
/// For one session, [`open`](Handler::open) runs first, then each
/// [`on_message`](Handler::on_message) in arrival order (the next message is not read until the
/// previous call returns), then [`on_close`](Handler::on_close) exactly once. Different sessions
/// run concurrently. A panic in a hook closes that session with 1011 and still runs `on_close`.
///
/// ```
/// use wshub::{CloseReason, Handler, Message, Session};
///
/// struct Chat;
///
/// #[wshub::async_trait]
/// impl Handler for Chat {
///     async fn open(&self, session: &Session) {
///         let _ = session.subscribe("lobby");
///     }
///     async fn on_message(&self, session: &Session, message: Message) {
///         session.hub().publish("lobby", message);
///     }
///     async fn on_close(&self, session: &Session, reason: CloseReason) {
///         println!("{} left: {reason}", session.id());
///     }
/// }
/// ```
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Decides whether a browser page from `origin` may connect. Runs only for requests that
    /// carry an `Origin` header not listed in
    /// [`Config::allowed_origins`](crate::Config::allowed_origins); `false` answers HTTP 403.
    ///
    /// Default: same-origin, as Tornado — the origin's host and port must equal the `Host`
    /// header (see [`Request::is_same_origin`]).
    fn check_origin(&self, origin: &str, request: &Request) -> bool {
        request.is_same_origin(origin)
    }

    /// Authorizes the upgrade: sees the path, query, headers and peer address, may refuse with
    /// an HTTP status, and may attach typed data to the session through
    /// [`Request::extensions_mut`] (read it back with [`Session::data`]). Default: accept.
    ///
    /// ```
    /// use wshub::{Handler, Reject, Request};
    /// use wshub::http::StatusCode;
    ///
    /// #[derive(Clone)] // attached data must be Clone + Send + Sync
    /// struct User(String);
    /// struct Auth;
    ///
    /// #[wshub::async_trait]
    /// impl Handler for Auth {
    ///     async fn authorize(&self, req: &mut Request) -> Result<(), Reject> {
    ///         let token = req.query_param("token").ok_or(Reject::new(StatusCode::UNAUTHORIZED))?;
    ///         let user = User(token.to_string()); // look the token up in your store
    ///         req.extensions_mut().insert(user);
    ///         Ok(())
    ///     }
    /// }
    /// ```
    async fn authorize(&self, request: &mut Request) -> Result<(), Reject> {
        let _ = request;
        Ok(())
    }

    /// Chooses one of the subprotocols the client offered (`Sec-WebSocket-Protocol`), or none.
    /// Default: none. A browser that offered protocols fails the connection when none is chosen.
    ///
    /// ```
    /// # use wshub::{Handler, Request};
    /// struct Graphql;
    /// #[wshub::async_trait]
    /// impl Handler for Graphql {
    ///     fn select_subprotocol(&self, offered: &[&str], _req: &Request) -> Option<String> {
    ///         offered.iter().find(|p| **p == "graphql-transport-ws").map(|p| p.to_string())
    ///     }
    /// }
    /// ```
    fn select_subprotocol(&self, offered: &[&str], request: &Request) -> Option<String> {
        let _ = (offered, request);
        None
    }

    /// Answers a plain HTTP request (not a WebSocket upgrade) that reached the hub's own
    /// listener ([`Hub::serve`](crate::Hub::serve) or [`Hub::accept`](crate::Hub::accept)), so
    /// one port can serve the page that opens the socket, or a health check. Default: `None`,
    /// which answers `426 Upgrade Required`. Not called when wshub is mounted in an axum router
    /// (the router has its own routes).
    ///
    /// ```
    /// use wshub::{Bytes, Handler, Request, http::Response};
    ///
    /// struct Site;
    /// #[wshub::async_trait]
    /// impl Handler for Site {
    ///     fn http(&self, req: &Request) -> Option<Response<Bytes>> {
    ///         (req.path() == "/").then(|| {
    ///             Response::builder()
    ///                 .header("content-type", "text/html; charset=utf-8")
    ///                 .body(Bytes::from_static(b"<script>new WebSocket('/ws')</script>"))
    ///                 .unwrap()
    ///         })
    ///     }
    /// }
    /// ```
    fn http(&self, request: &Request) -> Option<http::Response<Bytes>> {
        let _ = request;
        None
    }

    /// The session is registered and may send, subscribe and be found through the hub.
    async fn open(&self, session: &Session) {
        let _ = session;
    }

    /// A complete message arrived from the client.
    async fn on_message(&self, session: &Session, message: Message) {
        let _ = (session, message);
    }

    /// The session joined `topic` ([`Session::subscribe`], [`Hub::subscribe`](crate::Hub::subscribe),
    /// [`Session::subscribe_from`] or [`Session::apply`]); not called when it already was
    /// subscribed. Runs synchronously on the subscribing task: note the event, do not block.
    fn on_subscribe(&self, session: &Session, topic: &str) {
        let _ = (session, topic);
    }

    /// The session left `topic`: unsubscribed, or ended (then before
    /// [`on_close`](Handler::on_close), once per topic it was in). Runs synchronously; note
    /// the event, do not block.
    fn on_unsubscribe(&self, session: &Session, topic: &str) {
        let _ = (session, topic);
    }

    /// What [`Hub::presence`](crate::Hub::presence) shows for this session on topics with
    /// presence ([`Config::presence`](crate::Config::presence)), taken when it joins: typically
    /// a user name from the data [`authorize`](Handler::authorize) attached. Default: `None`.
    ///
    /// ```
    /// # struct User(String);
    /// # struct App;
    /// # impl wshub::Handler for App {
    /// fn presence_info(&self, session: &wshub::Session) -> Option<String> {
    ///     session.data::<User>().map(|u| u.0.clone())
    /// }
    /// # }
    /// ```
    fn presence_info(&self, session: &Session) -> Option<String> {
        let _ = session;
        None
    }

    /// The session ended and has already left the registry and every topic. Runs exactly once
    /// per session that was opened, whatever ended it.
    async fn on_close(&self, session: &Session, reason: CloseReason) {
        let _ = (session, reason);
    }
}

/// Why a session ended, as given to [`Handler::on_close`].
#[derive(Debug)]
#[non_exhaustive]
pub enum CloseReason {
    /// The client started the close handshake with this frame (code 1005 when it carried none);
    /// wshub answered it.
    Client(CloseFrame),
    /// wshub sent this close frame first: an application close ([`Session::close`],
    /// [`Hub::close`](crate::Hub::close)), shutdown (1001), the idle timeout (1001), the
    /// slow-consumer policy (1008), a protocol error (1002), invalid UTF-8 (1007), an oversized
    /// message (1009) or a panicking handler (1011).
    Server(CloseFrame),
    /// Nothing arrived within `ping_timeout` of a ping: the peer is presumed dead and the
    /// connection was dropped.
    PingTimeout,
    /// The client went away without a close handshake (EOF or connection reset).
    Disconnected,
    /// Another I/O error ended the connection.
    Io(std::io::Error),
}

impl CloseReason {
    /// The close frame of a clean close, whichever side sent it first.
    pub fn frame(&self) -> Option<&CloseFrame> {
        match self {
            CloseReason::Client(f) | CloseReason::Server(f) => Some(f),
            _ => None,
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Client(frame) => write!(f, "closed by client: {frame}"),
            CloseReason::Server(frame) => write!(f, "closed by server: {frame}"),
            CloseReason::PingTimeout => f.write_str("ping timeout"),
            CloseReason::Disconnected => f.write_str("disconnected without close handshake"),
            CloseReason::Io(e) => write!(f, "I/O error: {e}"),
        }
    }
}

/// The upgrade request, as the handshake hooks see it; kept by the [`Session`] afterwards.
///
/// ```
/// # fn show(req: &wshub::Request) {
/// println!("{} from {} (query {:?})", req.path(), req.peer_addr(), req.query());
/// # }
/// ```
pub struct Request {
    method: Method,
    target: PathAndQuery,
    headers: Headers,
    peer: SocketAddr,
    extensions: Extensions,
}

/// A request's headers: the whole map during the handshake; once the session is open, the
/// ones it keeps, as `name:value\n` lines in one allocation, made a map only when
/// [`Request::headers`] is first called (an idle session that never asks holds no map).
struct Headers {
    lines: Bytes,
    map: OnceLock<Box<HeaderMap>>,
}

impl Headers {
    fn map(&self) -> &HeaderMap {
        self.map.get_or_init(|| Box::new(parse_lines(&self.lines)))
    }

    /// The first value of `name` (any case), without making the map.
    fn first(&self, name: &str) -> Option<&[u8]> {
        if let Some(map) = self.map.get() {
            return map.get(name).map(HeaderValue::as_bytes);
        }
        entries(&self.lines)
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, value)| &self.lines[value])
    }
}

/// The `name:value\n` lines as each name and the range of its value in `lines`.
fn entries(lines: &[u8]) -> impl Iterator<Item = (&[u8], std::ops::Range<usize>)> {
    let mut start = 0;
    lines.split(|&b| b == b'\n').filter_map(move |line| {
        let at = start;
        start += line.len() + 1;
        let colon = line.iter().position(|&b| b == b':')?;
        Some((&line[..colon], at + colon + 1..at + line.len()))
    })
}

/// The map of `name:value\n` lines; the values are slices of `lines`, not copies.
fn parse_lines(lines: &Bytes) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in entries(lines) {
        // Every line was a valid header when it was written.
        let name = HeaderName::from_bytes(name);
        let value = HeaderValue::from_maybe_shared(lines.slice(value));
        if let (Ok(name), Ok(value)) = (name, value) {
            map.append(name, value);
        }
    }
    map
}

impl Request {
    pub(crate) fn new(
        method: Method,
        target: PathAndQuery,
        headers: HeaderMap,
        peer: SocketAddr,
    ) -> Self {
        Request {
            method,
            target,
            headers: Headers {
                lines: Bytes::new(),
                map: OnceLock::from(Box::new(headers)),
            },
            peer,
            extensions: Extensions::new(),
        }
    }

    /// Keeps what a session may read of its request — the target and the headers not in
    /// `dropped` — in one allocation of exactly their size, so the request head (with the
    /// handshake's key, version and extension offers, or hyper's read buffer under axum) is
    /// freed, and the header map is made again only if the application asks for it.
    pub(crate) fn keep_for_session(&mut self, dropped: &[HeaderName]) {
        let map = self.headers.map.take().map(|m| *m).unwrap_or_default();
        let kept: Vec<_> = map.iter().filter(|(n, _)| !dropped.contains(n)).collect();
        let target_len = self.target.as_str().len();
        let lines_len: usize = kept
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 2)
            .sum();
        let mut buf = Vec::with_capacity(target_len + lines_len);
        buf.extend_from_slice(self.target.as_str().as_bytes());
        for (name, value) in kept {
            buf.extend_from_slice(name.as_str().as_bytes());
            buf.push(b':');
            buf.extend_from_slice(value.as_bytes());
            buf.push(b'\n');
        }
        let raw = Bytes::from(buf);
        // The target was valid where it came from; should that ever not hold, the old one
        // stays.
        if let Ok(target) = PathAndQuery::from_maybe_shared(raw.slice(..target_len)) {
            self.target = target;
        }
        self.headers = Headers {
            lines: raw.slice(target_len..),
            map: OnceLock::new(),
        };
    }

    /// The request method (`GET` for every upgrade).
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The path and query of the request target, e.g. `/live?room=7`.
    pub fn path_and_query(&self) -> &PathAndQuery {
        &self.target
    }

    /// The path, e.g. `/live`.
    pub fn path(&self) -> &str {
        self.target.path()
    }

    /// The raw query string, without `?`.
    pub fn query(&self) -> Option<&str> {
        self.target.query()
    }

    /// The first value of a query parameter, undecoded (`?token=abc` gives `Some("abc")`).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
    }

    /// The request headers. Once the session is open, the headers that only served the
    /// handshake (`Upgrade`, `Connection`, `Sec-WebSocket-Key`, `Sec-WebSocket-Version`,
    /// `Sec-WebSocket-Extensions`) are no longer kept; everything else is. An open session
    /// keeps them compactly and makes this map on the first call; [`header`](Self::header)
    /// reads one value without it.
    pub fn headers(&self) -> &HeaderMap {
        self.headers.map()
    }

    /// A header's value (the first, if repeated; the name in any case), when present and
    /// visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        let value = self.headers.first(name)?;
        // As `HeaderValue::to_str`: visible ASCII, space and tab.
        if value
            .iter()
            .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
        {
            std::str::from_utf8(value).ok()
        } else {
            None
        }
    }

    /// The TCP peer address (behind a proxy, the proxy's; read `X-Forwarded-For` yourself if
    /// you trust the proxy).
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Typed data attached to this request, carried over to the session.
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// Attaches typed data for the session (see [`Handler::authorize`]).
    pub fn extensions_mut(&mut self) -> &mut Extensions {
        &mut self.extensions
    }

    /// Whether `origin` (`scheme://host[:port]`) names the host and port of the `Host` header;
    /// default ports (80 for http, 443 for https) may be written or left out on either side.
    ///
    /// ```
    /// # use wshub::Request;
    /// # fn check(req: &Request) {
    /// // With `Host: example.com`:
    /// assert!(req.is_same_origin("https://example.com"));
    /// assert!(!req.is_same_origin("https://evil.example"));
    /// # }
    /// ```
    pub fn is_same_origin(&self, origin: &str) -> bool {
        let Some(host) = self.header("host") else {
            return false;
        };
        let Some((scheme, authority)) = origin.split_once("://") else {
            return false;
        };
        let default_port = match scheme.to_ascii_lowercase().as_str() {
            "http" | "ws" => "80",
            "https" | "wss" => "443",
            _ => return false,
        };
        normalize_authority(authority, default_port) == normalize_authority(host, default_port)
    }
}

fn normalize_authority(authority: &str, default_port: &str) -> String {
    let authority = authority.trim().trim_end_matches('/').to_ascii_lowercase();
    match authority.rsplit_once(':') {
        Some((host, port)) if port == default_port && !host.ends_with(':') => host.to_string(),
        _ => authority,
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("target", &self.target)
            .field("peer", &self.peer)
            .field("headers", self.headers())
            .finish_non_exhaustive()
    }
}

/// A refused upgrade: the HTTP response the client gets instead of `101 Switching Protocols`.
///
/// ```
/// use wshub::{Reject, http::StatusCode};
/// let r = Reject::new(StatusCode::UNAUTHORIZED)
///     .with_body("token expired")
///     .with_header("www-authenticate", "Bearer");
/// assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
/// ```
#[derive(Debug, Clone)]
pub struct Reject {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Reject {
    /// A refusal with `status` and the status's reason phrase as body.
    pub fn new(status: StatusCode) -> Self {
        Reject {
            status,
            headers: HeaderMap::new(),
            body: Bytes::from_static(status.canonical_reason().unwrap_or("refused").as_bytes()),
        }
    }

    /// Replaces the plain-text body.
    #[must_use]
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Adds a response header; an invalid name or value is ignored.
    #[must_use]
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            self.headers.append(n, v);
        }
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// A complete response, written as it is (for [`Handler::http`]).
    pub(crate) fn from_response(response: http::Response<Bytes>) -> Self {
        let (parts, body) = response.into_parts();
        Reject {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }
}
