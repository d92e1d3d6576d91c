//! The browser client, shipped in the crate: `wshub.js` (one dependency-free ES module) and
//! its TypeScript types `wshub.d.ts`, with a one-line way to serve both.
//!
//! `wshub.js` speaks the JSON protocol of `PROTOCOL.md`: it reconnects with exponential backoff
//! and full jitter, resubscribes each topic `since` the last position it processed (so a page
//! misses nothing and sees nothing twice), detects gaps and dead connections, keeps a bounded
//! queue of what is sent while offline, and reports presence. The server side needs
//! [`Config::envelope`](crate::Config::envelope) and the client's commands passed to
//! [`ClientCommand::parse`](crate::protocol::ClientCommand::parse) + [`Session::apply`](crate::Session::apply).
//!
//! From the hub's own listener, answer the two paths in [`Handler::http`](crate::Handler::http):
//!
//! ```
//! use wshub::{Bytes, Handler, Request, http::Response};
//!
//! struct Site;
//! #[wshub::async_trait]
//! impl Handler for Site {
//!     fn http(&self, request: &Request) -> Option<Response<Bytes>> {
//!         // GET /wshub.js and GET /wshub.d.ts; `None` for every other request.
//!         wshub::browser::serve(request)
//!     }
//! }
//! ```
//!
//! In an axum router, merge [`axum::browser_client`](crate::axum::browser_client) (feature
//! `axum`). The page then imports it:
//!
//! ```html
//! <script type="module">
//!   import { connect } from "/wshub.js";
//!   connect("/ws").subscribe("board", { onPublication: (data) => console.log(data) });
//! </script>
//! ```
//!
//! Both files are answered with a strong `ETag` (a hash of the text), `Cache-Control:
//! no-cache` (browsers revalidate on each load and get `304 Not Modified` while the crate's
//! version is the same, so a page never runs a client older than its server) and the
//! `Content-Type` of the file.

use bytes::Bytes;
use http::{Method, Response, StatusCode, header};

use crate::handler::Request;

/// One file served to browsers: its path, media type, text and strong entity tag.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Asset {
    /// The path it is served at, e.g. `/wshub.js`.
    pub path: &'static str,
    /// The `Content-Type` it is served with.
    pub content_type: &'static str,
    /// The file's text.
    pub text: &'static str,
    /// The strong `ETag`: a quoted 64-bit FNV-1a hash of the text, in hexadecimal.
    pub etag: &'static str,
}

/// `wshub.js`, served at `/wshub.js` as `text/javascript`.
///
/// ```
/// assert!(wshub::browser::SCRIPT.text.contains("export function connect"));
/// assert_eq!(wshub::browser::SCRIPT.path, "/wshub.js");
/// ```
pub const SCRIPT: Asset = Asset {
    path: "/wshub.js",
    content_type: "text/javascript; charset=utf-8",
    text: SCRIPT_TEXT,
    etag: SCRIPT_ETAG,
};

/// `wshub.d.ts`, the TypeScript types of [`SCRIPT`], served at `/wshub.d.ts`.
pub const TYPES: Asset = Asset {
    path: "/wshub.d.ts",
    content_type: "application/typescript; charset=utf-8",
    text: TYPES_TEXT,
    etag: TYPES_ETAG,
};

/// Both files, in the order [`serve`] looks them up.
pub const ASSETS: [Asset; 2] = [SCRIPT, TYPES];

const SCRIPT_TEXT: &str = include_str!("wshub.js");
const TYPES_TEXT: &str = include_str!("wshub.d.ts");
const SCRIPT_TAG: [u8; 18] = etag_of(SCRIPT_TEXT);
const TYPES_TAG: [u8; 18] = etag_of(TYPES_TEXT);
const SCRIPT_ETAG: &str = ascii(&SCRIPT_TAG);
const TYPES_ETAG: &str = ascii(&TYPES_TAG);

/// `"` + 16 hex digits of the FNV-1a hash of `text` + `"`, computed at compile time.
const fn etag_of(text: &str) -> [u8; 18] {
    let bytes = text.as_bytes();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    let digits = b"0123456789abcdef";
    let mut out = [b'"'; 18];
    let mut j = 0;
    while j < 16 {
        out[1 + j] = digits[((hash >> (60 - 4 * j)) & 0xf) as usize];
        j += 1;
    }
    out
}

const fn ascii(bytes: &'static [u8]) -> &'static str {
    match std::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(_) => panic!("an entity tag is ASCII"),
    }
}

impl Asset {
    /// The response to a `GET` of this file: `200` with the text, or `304 Not Modified` when
    /// `if_none_match` (the request's `If-None-Match` header) names this version.
    ///
    /// ```
    /// use wshub::browser::SCRIPT;
    /// assert_eq!(SCRIPT.response(None).status(), 200);
    /// assert_eq!(SCRIPT.response(Some(SCRIPT.etag)).status(), 304);
    /// assert_eq!(SCRIPT.response(Some("\"stale\"")).status(), 200);
    /// ```
    pub fn response(&self, if_none_match: Option<&str>) -> Response<Bytes> {
        let fresh = if_none_match.is_some_and(|tags| {
            tags.split(',')
                .map(str::trim)
                .any(|t| t == "*" || t == self.etag || t.strip_prefix("W/") == Some(self.etag))
        });
        let (status, body) = if fresh {
            (StatusCode::NOT_MODIFIED, Bytes::new())
        } else {
            (StatusCode::OK, Bytes::from_static(self.text.as_bytes()))
        };
        let mut response = Response::new(body);
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::ETAG, header::HeaderValue::from_static(self.etag));
        headers.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-cache"),
        );
        headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(self.content_type),
        );
        response
    }
}

/// Answers `GET /wshub.js` and `GET /wshub.d.ts` (with `If-None-Match` → `304`); `None` for
/// any other request, so it chains in [`Handler::http`](crate::Handler::http):
///
/// ```
/// # use wshub::{Bytes, Request, http::Response};
/// # fn page(_: &Request) -> Option<Response<Bytes>> { None }
/// fn http(request: &Request) -> Option<Response<Bytes>> {
///     wshub::browser::serve(request).or_else(|| page(request))
/// }
/// ```
pub fn serve(request: &Request) -> Option<Response<Bytes>> {
    if request.method() != Method::GET {
        return None;
    }
    let asset = ASSETS.iter().find(|a| a.path == request.path())?;
    Some(asset.response(request.header("if-none-match")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entity_tags_are_quoted_hashes_of_distinct_texts() {
        for asset in ASSETS {
            assert_eq!(asset.etag.len(), 18);
            assert!(asset.etag.starts_with('"') && asset.etag.ends_with('"'));
            assert!(asset.etag[1..17].bytes().all(|b| b.is_ascii_hexdigit()));
        }
        assert_ne!(SCRIPT.etag, TYPES.etag);
        assert_ne!(etag_of("a"), etag_of("b"));
    }

    /// The README states the size of wshub.js; this keeps it true.
    #[test]
    fn the_readme_states_the_size_of_the_script() {
        let n = SCRIPT.text.len();
        let size = format!("{},{:03} bytes", n / 1000, n % 1000);
        let readme = include_str!("../../README.md");
        assert!(
            readme.contains(&size),
            "README.md should say wshub.js is {size}"
        );
    }

    #[test]
    fn a_list_of_tags_or_a_weak_tag_also_matches() {
        let list = format!("\"x\", {}", SCRIPT.etag);
        assert_eq!(SCRIPT.response(Some(&list)).status(), 304);
        let weak = format!("W/{}", SCRIPT.etag);
        assert_eq!(SCRIPT.response(Some(&weak)).status(), 304);
        assert_eq!(SCRIPT.response(Some(TYPES.etag)).status(), 200);
        let ok = SCRIPT.response(None);
        assert_eq!(
            ok.headers()["content-type"],
            "text/javascript; charset=utf-8"
        );
        assert_eq!(ok.body().len(), SCRIPT.text.len());
    }
}
