//! The HTTP upgrade: reading the request within limits, the handshake policy (capacity,
//! origin, authorization, subprotocol) and the response. Every refusal is an HTTP status
//! written before any WebSocket byte.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, StatusCode, Uri, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::engine::Engine;
use crate::handler::{Reject, Request};
use crate::registry::Refusal;

/// The most header lines an upgrade request may have.
const MAX_HEADERS: usize = 64;

/// The request line and headers of an upgrade request.
pub(crate) struct Head {
    pub(crate) method: Method,
    pub(crate) target: PathAndQuery,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
}

impl Head {
    /// The head of a request that another HTTP server (hyper, under axum) already parsed.
    #[cfg(feature = "axum")]
    pub(crate) fn from_parts(parts: http::request::Parts) -> Head {
        Head {
            method: parts.method,
            target: parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
            version: parts.version,
            headers: parts.headers,
        }
    }
}

/// Why a handshake did not produce a session.
pub(crate) enum Refused {
    /// Answer with this refusal, then close.
    Respond(Reject),
    /// A plain HTTP request answered by [`Handler::http`](crate::Handler::http).
    Answered(Reject),
    /// The client went away (or sent nothing): close without answering.
    Gone,
}

impl From<Reject> for Refused {
    fn from(r: Reject) -> Self {
        Refused::Respond(r)
    }
}

/// A place among `max_sessions` (and the peer's `max_sessions_per_ip`), held from the
/// capacity check until the session is registered; the session then owns it.
pub(crate) struct Admission {
    core: Option<Arc<Engine>>,
    ip: IpAddr,
}

impl Admission {
    /// The registered session gives the place back when it ends.
    pub(crate) fn transfer(mut self) {
        self.core = None;
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(core) = self.core.take() {
            core.registry.release(self.ip);
        }
    }
}

/// A handshake the policy accepted: what the session keeps, and the 101 response.
pub(crate) struct Accepted {
    pub(crate) request: Request,
    pub(crate) subprotocol: Option<String>,
    pub(crate) accept_key: String,
    pub(crate) admission: Admission,
    /// permessage-deflate: the session's parameters and the response's extension header.
    pub(crate) deflate: Option<(crate::deflate::Negotiated, String)>,
}

impl Accepted {
    /// The `101 Switching Protocols` response.
    pub(crate) fn response(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
            self.accept_key
        );
        if let Some(p) = &self.subprotocol {
            out.push_str("Sec-WebSocket-Protocol: ");
            out.push_str(p);
            out.push_str("\r\n");
        }
        if let Some((_, extensions)) = &self.deflate {
            out.push_str("Sec-WebSocket-Extensions: ");
            out.push_str(extensions);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        out.into_bytes()
    }
}

/// Reads an HTTP/1.x request head of at most `max` bytes. Returns it with any bytes that
/// followed it (a client may send its first frame without waiting for the response).
pub(crate) async fn read_head<S: AsyncRead + Unpin>(
    io: &mut S,
    max: usize,
) -> Result<(Head, Bytes), Refused> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        let n = io.read_buf(&mut buf).await.map_err(|_| Refused::Gone)?;
        if n == 0 {
            return Err(Refused::Gone);
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let head = to_head(&req, &buf, len)?;
                // Copy what followed (usually nothing) so the request buffer is freed now.
                let rest = Bytes::copy_from_slice(&buf[len..]);
                return Ok((head, rest));
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() >= max {
                    return Err(too_large());
                }
                // Never read past the limit: reserve only up to it.
                buf.reserve((max - buf.len()).min(4096));
            }
            Err(httparse::Error::TooManyHeaders) => return Err(too_large()),
            Err(_) => return Err(bad_request("malformed HTTP request").into()),
        }
    }
}

fn too_large() -> Refused {
    Refused::Respond(
        Reject::new(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
            .with_body("request header too large"),
    )
}

fn bad_request(why: &'static str) -> Reject {
    Reject::new(StatusCode::BAD_REQUEST).with_body(why)
}

/// Builds the head from a parse of `buf`. Header values and the target are slices of one
/// copy of the head, not an allocation each; a session keeps a compact copy of what it needs
/// (`Request::keep_for_session`).
fn to_head(req: &httparse::Request<'_, '_>, buf: &[u8], len: usize) -> Result<Head, Reject> {
    let raw = Bytes::copy_from_slice(&buf[..len]);
    let slice = |part: &[u8]| {
        let start = part.as_ptr() as usize - buf.as_ptr() as usize;
        raw.slice(start..start + part.len())
    };
    let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
        .map_err(|_| bad_request("bad method"))?;
    let path = req.path.unwrap_or("");
    let uri = Uri::from_maybe_shared(slice(path.as_bytes()))
        .map_err(|_| bad_request("bad request target"))?;
    // Absolute-form targets (`GET http://host/path`) keep only their path and query.
    let target = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let version = match req.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| bad_request("bad header name"))?;
        let value = HeaderValue::from_maybe_shared(slice(h.value))
            .map_err(|_| bad_request("bad header value"))?;
        headers.append(name, value);
    }
    Ok(Head {
        method,
        target,
        version,
        headers,
    })
}

/// Headers that only served the handshake: a session does not keep them.
const HANDSHAKE_ONLY: [HeaderName; 5] = [
    header::UPGRADE,
    header::CONNECTION,
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_VERSION,
    header::SEC_WEBSOCKET_EXTENSIONS,
];

/// Whether a comma-separated header contains `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Whether `key` is the base64 form of 16 bytes (RFC 6455 section 4.1).
pub(crate) fn is_valid_key(key: &[u8]) -> bool {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22].iter().all(|c| ALPHABET.contains(c))
        // 16 bytes leave the last character's low four bits zero.
        && b"AQgw".contains(&key[21])
}

/// Whether the request asks for a WebSocket upgrade at all (`Upgrade: websocket` and
/// `Connection: upgrade`); other requests are plain HTTP.
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    has_token(headers, header::UPGRADE, "websocket")
        && has_token(headers, header::CONNECTION, "upgrade")
}

pub(crate) fn upgrade_required(why: &'static str) -> Reject {
    Reject::new(StatusCode::UPGRADE_REQUIRED)
        .with_body(why)
        .with_header("upgrade", "websocket")
        .with_header("connection", "Upgrade")
        .with_header("sec-websocket-version", "13")
}

/// Answers a parsed request: a plain HTTP request goes to [`Handler::http`] (426 without an
/// answer), an upgrade through the handshake policy.
///
/// [`Handler::http`]: crate::Handler::http
pub(crate) async fn negotiate(
    core: &Arc<Engine>,
    head: Head,
    peer: SocketAddr,
) -> Result<Accepted, Refused> {
    let h = &head.headers;
    if !is_upgrade(h) {
        let request = Request::new(head.method, head.target, head.headers, peer);
        if let Some(response) = core.handler.http(&request) {
            return Err(Refused::Answered(Reject::from_response(response)));
        }
        let why = "this endpoint speaks WebSocket only";
        return Err(Refused::Respond(upgrade_required(why)));
    }
    policy(core, head, peer).await.map_err(Refused::Respond)
}

/// Applies the handshake policy to a parsed request, running the handler's hooks.
/// The handshake policy for an upgrade request: protocol checks, capacity, origin,
/// authorization, subprotocol.
pub(crate) async fn policy(
    core: &Arc<Engine>,
    head: Head,
    peer: SocketAddr,
) -> Result<Accepted, Reject> {
    let h = &head.headers;
    if head.method != Method::GET {
        return Err(Reject::new(StatusCode::METHOD_NOT_ALLOWED).with_header("allow", "GET"));
    }
    if head.version != Version::HTTP_11 {
        return Err(bad_request("WebSocket needs HTTP/1.1"));
    }
    if h.get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(upgrade_required(
            "unsupported Sec-WebSocket-Version; 13 is supported",
        ));
    }
    let key = match h.get(header::SEC_WEBSOCKET_KEY) {
        Some(k) if is_valid_key(k.as_bytes()) => k.as_bytes().to_vec(),
        _ => return Err(bad_request("missing or invalid Sec-WebSocket-Key")),
    };
    if !h.contains_key(header::HOST) {
        return Err(bad_request("missing Host header"));
    }
    if core.is_shutting_down() {
        return Err(unavailable("server shutting down"));
    }
    let ip = peer.ip();
    match core.registry.admit(
        ip,
        core.config.max_sessions,
        core.config.max_sessions_per_ip,
    ) {
        Ok(()) => {}
        Err(Refusal::Full) => return Err(unavailable("too many sessions")),
        Err(Refusal::PerIp) => {
            return Err(Reject::new(StatusCode::TOO_MANY_REQUESTS)
                .with_body("too many sessions from this address")
                .with_header("retry-after", "5"));
        }
    }
    let admission = Admission {
        core: Some(core.clone()),
        ip,
    };
    let mut request = Request::new(head.method, head.target, head.headers, peer);

    if let Some(origin) = request.header("origin") {
        if !core.config.origin_listed(origin) && !core.handler.check_origin(origin, &request) {
            tracing::debug!(%peer, origin, "upgrade refused: origin not allowed");
            return Err(Reject::new(StatusCode::FORBIDDEN).with_body("origin not allowed"));
        }
    }
    core.handler.authorize(&mut request).await?;

    let offered: Vec<&str> = request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let subprotocol = if offered.is_empty() {
        None
    } else {
        core.handler
            .select_subprotocol(&offered, &request)
            .filter(|p| offered.contains(&p.as_str()))
    };
    let deflate = negotiate_deflate(core, &request);
    request.keep_for_session(&HANDSHAKE_ONLY);
    Ok(Accepted {
        accept_key: tungstenite::handshake::derive_accept_key(&key),
        request,
        subprotocol,
        admission,
        deflate,
    })
}

/// permessage-deflate, unless the configuration or the session (a [`NoCompression`] put in
/// the request's extensions by a hook) declines it.
///
/// [`NoCompression`]: crate::NoCompression
#[cfg(feature = "deflate")]
fn negotiate_deflate(
    core: &Engine,
    request: &Request,
) -> Option<(crate::deflate::Negotiated, String)> {
    if request.extensions().get::<crate::NoCompression>().is_some() {
        return None;
    }
    crate::deflate::negotiate(&core.config, request.headers())
}

#[cfg(not(feature = "deflate"))]
fn negotiate_deflate(
    _core: &Engine,
    _request: &Request,
) -> Option<(crate::deflate::Negotiated, String)> {
    None
}

pub(crate) fn unavailable(why: &'static str) -> Reject {
    Reject::new(StatusCode::SERVICE_UNAVAILABLE)
        .with_body(why)
        .with_header("retry-after", "5")
}

/// Writes a refusal as a complete HTTP response and closes the write side.
pub(crate) async fn write_reject<S: AsyncWrite + Unpin>(io: &mut S, reject: &Reject) {
    let _ = io.write_all(&encode_response(reject)).await;
    let _ = io.shutdown().await;
}

/// A complete HTTP/1.1 response that closes the connection.
fn encode_response(reject: &Reject) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-length: {}\r\nconnection: close\r\n",
        reject.status.as_u16(),
        reject.status.canonical_reason().unwrap_or(""),
        reject.body.len()
    )
    .into_bytes();
    if !reject.headers.contains_key(header::CONTENT_TYPE) {
        out.extend_from_slice(b"content-type: text/plain; charset=utf-8\r\n");
    }
    for (name, value) in &reject.headers {
        if name == header::CONTENT_LENGTH || name == header::CONNECTION {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&reject.body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_validation_follows_rfc_6455() {
        assert!(is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ="));
        assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25jZR=="));
        assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25j!Q=="));
        assert!(!is_valid_key(b""));
    }
}
